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

from motfm_core import cluster
from motfm_core.cluster import ALLOWED_ENV, SCHEDULER_ENV, check_scheduler
from motfm_core.config import SampleConfig
from motfm_core.data.versions import hold_version

if TYPE_CHECKING:
    from distributed import Client

    from motfm_core.model.sampling import ShardResult

__all__ = ["ALLOWED_ENV", "check_scheduler", "dask_client", "default_workers", "run_cluster", "sample_on_cluster",
           "sample_shards", "SCHEDULER_ENV", "worker_device"]

log = logging.getLogger(__name__)


def default_workers() -> int:
    """One worker per visible GPU; on a CPU one worker (the network already uses every core)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def dask_client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int | None = None,
                timeout: str = "30s") -> contextlib.AbstractContextManager[Client]:
    """`cluster.dask_client` for sampling: a local cluster has one worker per GPU (one on a CPU) unless told."""
    return cluster.dask_client(scheduler, workers or default_workers(), threads_per_worker, timeout)


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
