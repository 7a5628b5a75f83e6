"""Train tasks: real dataset store -> flow-matching checkpoint (and the mask generator when masks are generated)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import AutoencoderConfig, ModelConfig, TrainConfig
from motfm_core.model.autoencoder import train_autoencoder
from motfm_core.model.training import train_flow_matching, train_mask_generator
from tasks import BACKOFF, GPU_TAG, progress_bar, transient

__all__ = ["train_autoencoder_task", "train_masks_task", "train_task"]


@task(name="train-autoencoder", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def train_autoencoder_task(data_path: str, cfg: AutoencoderConfig, train: TrainConfig, run_dir: str) -> str:
    """Train (or resume, or reuse) the autoencoder of a latent model on the generator's own share of the train split
    (`train.real_fraction`). Returns `<run_dir>/autoencoder/autoencoder.pt` (or `cfg.checkpoint`, checked)."""
    return str(train_autoencoder(data_path, cfg, Path(run_dir) / "autoencoder", progress=get_run_logger().info,
                                 advance=progress_bar(f"autoencoder: {cfg.steps} steps ({run_dir})"),
                                 real_fraction=train.real_fraction, subset_seed=train.subset_seed))

@task(name="train", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def train_task(data_path: str, model: ModelConfig, train: TrainConfig, run_dir: str, autoencoder: str | None = None,
               autoencoder_cfg: AutoencoderConfig | None = None) -> str:
    """Train (or resume, or reuse) the image model; channels and classes come from the store (`model_for_data`), a
    latent model's inputs from `autoencoder`. Returns `<run_dir>/checkpoints/model.pt`."""
    return str(train_flow_matching(data_path, model, train, Path(run_dir) / "checkpoints",
                                   progress=get_run_logger().info,
                                   advance=progress_bar(f"training {train.steps} steps ({run_dir})"),
                                   autoencoder=autoencoder, autoencoder_cfg=autoencoder_cfg))


@task(name="train-masks", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def train_masks_task(data_path: str, model: ModelConfig, train: TrainConfig, mask_source: str,
                     run_dir: str) -> str | None:
    """Train (or reuse) the class-conditional mask generator when `mask_source` resolves to "generated"; returns
    `<run_dir>/checkpoints-masks/model.pt`, or None when no mask generator is needed."""
    ckpt = train_mask_generator(data_path, model, train, mask_source, Path(run_dir) / "checkpoints-masks",
                                progress=get_run_logger().info,
                                advance=progress_bar(f"mask generator: {train.steps} steps ({run_dir})"))
    return None if ckpt is None else str(ckpt)
