"""Fan sampling out over a Dask cluster: one shard per Dask task, one GPU per worker.

We use `dask.distributed` directly rather than prefect-dask's `DaskTaskRunner`: the unit of work is one shard on a
worker that keeps its model loaded and its device pinned, workers of an existing cluster need no Prefect API
access, and a task runner would also ship ingest/train/evaluate to the cluster. Exactly-once output does not depend
on the scheduler: a shard is addressed by index and its completion record is written after its data, so a task
that Dask re-runs after a lost worker rewrites the same bytes and finds the record present.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from motfm_core.config import SampleConfig
from motfm_core.data.versions import hold_version
from motfm_core.errors import BadInput

if TYPE_CHECKING:
    from distributed import Client

    from motfm_core.model.sampling import ShardResult

__all__ = ["ALLOWED_ENV", "check_scheduler", "dask_client", "default_workers", "run_cluster", "sample_on_cluster",
           "sample_shards", "SCHEDULER_ENV", "worker_device"]

log = logging.getLogger(__name__)
SCHEDULER_ENV = "MOTFM_DASK_SCHEDULER"
ALLOWED_ENV = "MOTFM_DASK_SCHEDULERS_ALLOWED"  # comma-separated: more schedulers a run may name


def check_scheduler(address: str) -> None:
    """Refuse a run's `sample.scheduler` unless this machine's environment names it ($MOTFM_DASK_SCHEDULER or
    $MOTFM_DASK_SCHEDULERS_ALLOWED): a run unpickles what the scheduler's workers return, so a scheduler anyone
    could put in a flow parameter would run their code here."""
    if not address:
        return
    allowed = {os.environ.get(SCHEDULER_ENV, ""), *os.environ.get(ALLOWED_ENV, "").split(",")} - {""}
    if address not in allowed:
        raise BadInput(f"sample.scheduler={address!r} is not a Dask scheduler this worker may use; name it in "
                       f"${SCHEDULER_ENV} or ${ALLOWED_ENV} in the worker's environment, or leave "
                       "sample.scheduler empty (a local cluster, or the worker's own $MOTFM_DASK_SCHEDULER)")


def default_workers() -> int:
    """One worker per visible GPU; on a CPU one worker (the network already uses every core)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                threads_per_worker: int | None = None, timeout: str = "30s",
                ) -> Iterator[Client]:
    """A client to `scheduler` (or `$MOTFM_DASK_SCHEDULER`; unreachable within `timeout` raises OSError),
    else to a fresh `LocalCluster` of `workers` single-task worker processes that is closed on exit."""
    import dask
    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if address:
        with Client(address, timeout=timeout) as client:
            yield client
        return
    n = workers or default_workers()
    if n < 1:
        raise BadInput(f"sampling needs at least one Dask worker, got workers={n}")
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n)
    # One Dask task at a time per worker (nthreads=1); torch inside it uses `threads` intra-op threads (it reads
    # OMP_NUM_THREADS at start). Dask's nanny sets, before spawning a worker, OMP/MKL/OpenBLAS threads to 1 and
    # MALLOC_TRIM_THRESHOLD_=65536; the latter turns off glibc's dynamic mmap threshold, so every large tensor is
    # mmap'd and page-faulted afresh, which slows UNet sampling on a CPU several-fold (RESULTS.md, "Sampling
    # throughput"). Replace that environment.
    environ = {k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=40) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def run_cluster(cfg: SampleConfig) -> Iterator[str]:
    """One Dask cluster for every sampling stage of a run: yields the scheduler address to sample on, that of
    `cfg.scheduler` (or $MOTFM_DASK_SCHEDULER) when set, else of a LocalCluster of `cfg.workers` kept up for the
    block (a LocalCluster's workers take seconds to start, and a run samples once per generator)."""
    check_scheduler(cfg.scheduler)
    address = cfg.scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        yield address
        return
    with dask_client(workers=cfg.workers or None) as client:
        yield client.scheduler.address


def worker_device() -> str:
    """This worker's device: `cuda:<i>` for LocalCluster worker i (round robin over visible GPUs), `cuda` on
    an external worker (its CUDA_VISIBLE_DEVICES pins it), else `cpu`."""
    if not torch.cuda.is_available():
        return "cpu"
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return "cuda"
    return f"cuda:{int(name) % torch.cuda.device_count()}" if isinstance(name, int) else "cuda"


def _run_shard(checkpoint: str, store: str, index: int, cfg: SampleConfig) -> ShardResult:
    """The Dask task: sample one shard on this worker's device."""
    from motfm_core.model.sampling import sample_shard

    return sample_shard(checkpoint, store, index, cfg, device=worker_device())


def sample_shards(
    checkpoint: str | Path, store: str | Path, shards: list[int], cfg: SampleConfig, client,
    progress: Callable[[ShardResult], None] | None = None, retries: int = 2,
) -> list[ShardResult]:
    """Sample `shards` of `store` on the cluster behind `client`; each result is reported to `progress` as it
    finishes. A task lost with its worker is re-run (up to `retries` times) on another worker."""
    from distributed import as_completed

    # a key names the store by its full path: on a shared cluster, v0001.zarr of another run (or of a low-data
    # generator) is another task, never a finished one to reuse
    tag = hashlib.sha256(str(Path(store).resolve()).encode()).hexdigest()[:12]
    results = []
    with hold_version(store):  # another run's pruning leaves the version alone while its shards are written
        futures = [client.submit(_run_shard, str(checkpoint), str(store), i, cfg,
                                 key=f"motfm-shard-{Path(store).name}-{tag}-{i}", retries=retries, pure=False)
                   for i in shards]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            if progress:
                progress(result)
    return sorted(results, key=lambda r: r.shard)


def sample_on_cluster(checkpoint: str | Path, store: str | Path, shards: list[int], cfg: SampleConfig,
                      say: Callable[[str], None] = log.info, advance: Callable[[float], None] | None = None
                      ) -> list[ShardResult]:
    """Write `shards` of `store` on the run's Dask cluster (`cfg.scheduler` / $MOTFM_DASK_SCHEDULER, else a local one
    of `cfg.workers` workers), saying a line per shard written and giving `advance` the share done; finished shards
    are skipped."""
    if not shards:
        return []
    done: list[ShardResult] = []

    def report(r: ShardResult) -> None:
        done.append(r)
        if advance:
            advance(len(done) / len(shards))
        if not r.skipped:
            say(f"sample: shard {r.shard} on {r.device}: {r.count} images, NFE {r.nfe}, {r.seconds:.2f}s, "
                f"{r.rejected} redrawn as near-copies ({len(done)}/{len(shards)})")

    with dask_client(cfg.scheduler or None, cfg.workers or None) as client:
        say(f"sample: {len(shards)} shard(s) on Dask {client.scheduler.address} "
            f"({len(client.scheduler_info()['workers'])} worker(s))")
        return sample_shards(checkpoint, store, shards, cfg, client, progress=report)
