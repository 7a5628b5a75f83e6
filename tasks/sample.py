"""Sampling tasks: plan the sharded synthetic store, then one task per shard."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task

from motfm_core import code_version
from motfm_core.config import SampleConfig, config_hash, from_dict
from motfm_core.data import create_synthetic_store, incomplete_shards, publish_latest, version_for
from motfm_core.sampling import sample_shard
from motfm_core.training import load_checkpoint


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@task(name="plan-sampling")
def plan_sampling_task(checkpoint: str, sample: dict, run_dir: str) -> tuple[str, list[int]]:
    """Create (or reopen, to resume) the synthetic version for this checkpoint and sample config under
    `<run_dir>/synthetic/`; returns its path and the shards still to write."""
    logger = get_run_logger()
    cfg = from_dict(SampleConfig, sample, "sample")
    model, meta = load_checkpoint(checkpoint)
    m = model.cfg
    shape = (m.in_channels, m.image_size, m.image_size) + ((m.depth,) if m.spatial_dims == 3 else ())
    ckpt_hash = _sha256(checkpoint)
    attrs = {"checkpoint": checkpoint, "checkpoint_sha256": ckpt_hash, "model_config": meta["model_config"],
             "solver": cfg.solver, "nfe": cfg.nfe, "guidance": cfg.guidance, "sample_config": asdict(cfg),
             "class_names": meta["class_names"], "source_fingerprint": meta["data_fingerprint"],
             "code_version": code_version()}
    # keep_versions only prunes; it does not make a new dataset
    attrs["run_key"] = f"{ckpt_hash[:16]}-{config_hash({**asdict(cfg), 'keep_versions': 0})}"
    n = len(meta["class_names"]) * cfg.samples_per_class
    version = version_for(Path(run_dir) / "synthetic", attrs["run_key"])
    store = create_synthetic_store(version, n, shape, cfg.shard_size, attrs,
                                   with_masks=m.mask_conditioning != "none")
    todo = incomplete_shards(store)
    logger.info("sample: %s holds %d samples in %d-sample shards; %d shard(s) to write", store, n,
                cfg.shard_size, len(todo))
    return str(store), todo


@task(name="sample-shard")
def sample_shard_task(checkpoint: str, store: str, index: int, sample: dict) -> dict:
    """Generate and write one shard (skipped when its completion record exists)."""
    result = sample_shard(checkpoint, store, index, from_dict(SampleConfig, sample, "sample"))
    if not result["skipped"]:
        get_run_logger().info("sample: shard %d: %d images, NFE %d, %.2fs", index, result["count"], result["nfe"],
                              result["seconds"])
    return result


@task(name="publish-synthetic")
def publish_task(store: str, sample: dict) -> str:
    """Move `synthetic/latest` to this complete version (atomically) and prune old versions if asked."""
    latest = publish_latest(store, keep=from_dict(SampleConfig, sample, "sample").keep_versions)
    get_run_logger().info("sample: %s -> %s", latest, Path(store).name)
    return str(latest)
