"""Enhancement task: train and score the degraded -> clean flow for one task (denoise / superres)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import from_dict
from motfm_core.enhance import EnhanceConfig, train_and_evaluate
from tasks import BACKOFF, GPU_TAG, transient


@task(name="enhance", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def enhance_task(data_path: str, enhance: dict, run_dir: str) -> str:
    """Writes `<run_dir>/enhance-<task>.json` (PSNR/SSIM of input, classical baseline, flow); returns its path."""
    logger = get_run_logger()
    cfg = from_dict(EnhanceConfig, enhance, "enhance")
    result = train_and_evaluate(data_path, cfg, Path(run_dir) / "checkpoints", progress=logger.info)
    out = Path(run_dir) / f"enhance-{cfg.task}.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    logger.info("enhance[%s]: PSNR input %.2f, %s %.2f, flow (NFE %d) %.2f", cfg.task, result["degraded"]["psnr"],
                result["classical"]["method"], result["classical"]["psnr"], result["nfe"], result["flow"]["psnr"])
    return str(out)
