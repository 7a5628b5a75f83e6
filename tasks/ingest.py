"""Ingest task: data source -> `<run_dir>/dataset.zarr`."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import DataConfig, from_dict
from motfm_core.data import ingest, open_store
from tasks import BACKOFF, transient


@task(name="ingest", retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def ingest_task(data: dict, run_dir: str) -> str:
    """Build (or reuse) the real dataset store; returns its path."""
    logger = get_run_logger()
    cfg = from_dict(DataConfig, data, "data")
    path = ingest(cfg, Path(run_dir) / "dataset.zarr")
    attrs = open_store(path).attrs
    logger.info("ingest: %s -> %s (%d samples, fingerprint %s)", cfg.source, path, attrs["num_samples"],
                attrs["fingerprint"][:12])
    return str(path)
