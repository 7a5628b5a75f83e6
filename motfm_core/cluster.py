"""The Dask cluster a run fans work out over (the sampler's shards, the ingest's subjects): an existing scheduler
this machine allows, else a local cluster of worker processes closed with the block."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from motfm_core.errors import BadInput

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["ALLOWED_ENV", "SCHEDULER_ENV", "check_scheduler", "dask_client"]

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


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int, threads_per_worker: int | None = None, timeout: str = "30s",
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
    if workers < 1:
        raise BadInput(f"a local cluster needs at least one Dask worker, got workers={workers}")
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    # One Dask task at a time per worker (nthreads=1); torch inside it uses `threads` intra-op threads (it reads
    # OMP_NUM_THREADS at start). Dask's nanny sets, before spawning a worker, OMP/MKL/OpenBLAS threads to 1 and
    # MALLOC_TRIM_THRESHOLD_=65536; the latter turns off glibc's dynamic mmap threshold, so every large tensor is
    # mmap'd and page-faulted afresh, which slows UNet sampling on a CPU several-fold (RESULTS.md, "Sampling
    # throughput"). Replace that environment.
    environ = {k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=40) as cluster, Client(cluster) as client:
        yield client
