"""Enhancement task: train and score the degraded -> clean flow for one task (denoise / superres)."""

from __future__ import annotations

from prefect import get_run_logger, task

from motfm_core.config import EnhanceConfig
from motfm_core.model.enhance import run_enhancement
from tasks import BACKOFF, GPU_TAG, transient

__all__ = ["enhance_task"]

@task(name="enhance", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def enhance_task(data_path: str, cfg: EnhanceConfig, run_dir: str) -> str:
    """Writes `<run_dir>/enhance-<task>.json` (PSNR/SSIM of input, classical baseline, flow); returns its path."""
    return str(run_enhancement(data_path, cfg, run_dir, progress=get_run_logger().info))
