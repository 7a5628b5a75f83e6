"""Data-parallel training (PyTorch DDP): `train.devices` processes, one per GPU (NCCL) or, on a CPU, one per
process group member (gloo), each training on its slice of every global batch.

Every rank draws the global batch (indices, noise, times, coupling, label dropout) from the same seeded stream and
keeps its own slice (`rank_slice`); DDP averages the gradients, so a step equals one process's step at the same
global batch up to float rounding, and a run's result does not depend on how many devices trained it. Rank 0
writes the checkpoints and says the progress; the launching process forwards what it says.
"""

from __future__ import annotations

import os
import queue
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from motfm_core.errors import BadInput

__all__ = ["check_devices", "Rank", "rank_slice", "spawn"]


@dataclass(frozen=True)
class Rank:
    """This process's place in the group: rank, world size and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """`value` averaged over the ranks (the global batch's loss from each rank's share)."""
        if self.world == 1:
            return value
        out = value.detach().clone()
        dist.all_reduce(out)
        return out / self.world


def rank_slice(batch: int, rank: Rank) -> slice:
    """The rows of a global batch of `batch` that `rank` trains on (equal shares; the caller checks divisibility)."""
    share = batch // rank.world
    return slice(rank.rank * share, (rank.rank + 1) * share)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _group(rank: int, world: int, port: int) -> Iterator[Rank]:
    """Join the process group (NCCL on CUDA, gloo on a CPU) as `rank`; left on exit."""
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:  # share the cores instead of each rank starting a thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        yield Rank(rank, world, device)
    finally:
        dist.destroy_process_group()


def _rank_main(rank: int, world: int, port: int, messages: Any, fn: Callable[..., Any], args: tuple) -> None:
    """One spawned rank: join the group, run `fn(*args, rank=..., say=..., advance=...)`; rank 0's words go to the
    launcher through `messages`."""
    with _group(rank, world, port) as me:
        def say(text: str) -> None:
            if me.main:
                messages.put(("say", text))

        def advance(share: float) -> None:
            if me.main:
                messages.put(("advance", share))

        fn(*args, rank=me, say=say, advance=advance)


def check_devices(devices: int) -> None:
    """Refuse more training processes than GPUs on a GPU machine (a CPU runs any number, with gloo)."""
    if torch.cuda.is_available() and devices > torch.cuda.device_count():
        raise BadInput(f"train.devices={devices}, but this machine has {torch.cuda.device_count()} GPU(s); use at "
                       "most that many")


def spawn(fn: Callable[..., Any], args: tuple, devices: int, say: Callable[[str], None],
          advance: Callable[[float], None] | None = None) -> None:
    """Run `fn(*args, rank=, say=, advance=)` in `devices` spawned processes (one per GPU when there are GPUs),
    forwarding rank 0's progress to `say`/`advance` here. A failed rank stops them all and raises here; so does an
    exception from `say` (the processes are ended first)."""
    check_devices(devices)
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    procs = mp.start_processes(_rank_main, args=(devices, _free_port(), messages, fn, args), nprocs=devices,
                               join=False, start_method="spawn")
    try:
        done = False
        while not done:
            done = procs.join(timeout=0.2)
            while True:  # what the ranks said so far, in order
                try:
                    kind, value = messages.get(timeout=0.05)
                except queue.Empty:
                    break
                if kind == "say":
                    say(value)
                elif advance is not None:
                    advance(value)
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
        for p in procs.processes:
            p.join()
