"""Train task: real dataset store -> flow-matching checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import ModelConfig, SampleConfig, TrainConfig, from_dict
from motfm_core.training import train_flow_matching, train_mask_generator
from tasks import BACKOFF, GPU_TAG, transient


@task(name="train", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def train_task(data_path: str, model: dict, train: dict, run_dir: str) -> str:
    """Train (or resume, or reuse) the image model; channels and classes come from the store (`model_for_data`).
    Returns `<run_dir>/checkpoints/model.pt`."""
    ckpt = train_flow_matching(data_path, from_dict(ModelConfig, model, "model"), from_dict(TrainConfig, train, "train"),
                               Path(run_dir) / "checkpoints", progress=get_run_logger().info)
    return str(ckpt)


@task(name="train-masks", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def train_masks_task(data_path: str, model: dict, train: dict, sample: dict, run_dir: str) -> str | None:
    """Train (or reuse) the class-conditional mask generator when `sample.mask_source` is "generated"; returns
    `<run_dir>/checkpoints-masks/model.pt`, or None when no mask generator is needed."""
    ckpt = train_mask_generator(data_path, from_dict(ModelConfig, model, "model"), from_dict(TrainConfig, train, "train"),
                                from_dict(SampleConfig, sample, "sample").mask_source,
                                Path(run_dir) / "checkpoints-masks", progress=get_run_logger().info)
    return None if ckpt is None else str(ckpt)
