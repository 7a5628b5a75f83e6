"""Sampling tasks: plan the sharded synthetic store, fan its shards out over Dask, publish the version; the
quality-vs-NFE curve's fresh samples."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import SampleConfig
from motfm_core.data import open_store, publish_latest
from motfm_core.model.distributed import sample_on_cluster
from motfm_core.model.sampling import ShardResult, prepare_version, sample_nfe_curve
from tasks import BACKOFF, GPU_TAG, progress_bar, transient

__all__ = ["nfe_curve_task", "plan_sampling_task", "publish_task", "sample_shards_task"]

@task(name="plan-sampling")
def plan_sampling_task(checkpoint: str, cfg: SampleConfig, run_dir: str, mask_checkpoint: str | None = None
                       ) -> tuple[str, list[int]]:
    """Create (or reopen, to resume) the synthetic version for this checkpoint (and mask generator) and sample
    config under `<run_dir>/synthetic/`; returns its path and the shards still to write."""
    store, todo = prepare_version(checkpoint, cfg, Path(run_dir) / "synthetic", mask_checkpoint)
    attrs = open_store(store).attrs
    get_run_logger().info("sample: %s holds %d samples in %d-sample shards; %d shard(s) to write", store,
                          attrs["num_samples"], attrs["shard_size"], len(todo))
    return str(store), todo


@task(name="sample-shards", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def sample_shards_task(checkpoint: str, store: str, shards: list[int], cfg: SampleConfig) -> list[ShardResult]:
    """Write the given shards on a Dask cluster (`sample.scheduler` / $MOTFM_DASK_SCHEDULER, else a local
    one with `sample.workers` workers); finished shards are skipped."""
    return sample_on_cluster(checkpoint, store, shards, cfg, say=get_run_logger().info,
                             advance=progress_bar(f"sampling: {len(shards)} shard(s) of {store}"))


@task(name="publish-synthetic")
def publish_task(store: str, keep_versions: int = 0, grace_hours: float = 24.0) -> str:
    """Move `synthetic/latest` to this complete version (atomically, never backwards) and prune to the newest
    `keep_versions` (0 = all; a pruned version is deleted `grace_hours` later and never while leased)."""
    latest = publish_latest(store, keep=keep_versions, grace=3600.0 * grace_hours)
    get_run_logger().info("sample: %s -> %s", latest, Path(store).name)
    return str(latest)


@task(name="sample-nfe-curve", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def nfe_curve_task(store: str, nfes: list[int], samples_per_class: int, run_dir: str) -> str | None:
    """`<run_dir>/nfe-curve.npz`: the version's generator sampled afresh at each NFE (reused when its key
    matches), for the quality-vs-NFE curve; None for a diffusion checkpoint."""
    out = sample_nfe_curve(store, tuple(nfes), samples_per_class, Path(run_dir) / "nfe-curve.npz")
    if out is not None:
        get_run_logger().info("sample: %d fresh samples per class at NFE %s for the quality-vs-NFE curve -> %s",
                              samples_per_class, ", ".join(map(str, nfes)), out)
    return None if out is None else str(out)
