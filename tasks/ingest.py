"""Ingest task: data source -> the real dataset store."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import DataConfig
from motfm_core.data import ingest
from tasks import BACKOFF, transient

__all__ = ["ingest_task"]

@task(name="ingest", retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def ingest_task(cfg: DataConfig, run_dir: str, scheduler: str = "") -> str:
    """Build (or reuse) `<run_dir>/dataset.zarr`, a large folder on the Dask cluster at `scheduler` (else a local
    one); returns its path."""
    return str(ingest(cfg, Path(run_dir) / "dataset.zarr", progress=get_run_logger().info, scheduler=scheduler))
