"""Evaluate task: downstream arms, quality and memorisation of a synthetic version -> evaluation.json."""

from __future__ import annotations

from prefect import get_run_logger, task

from motfm_core.config import EvalConfig
from motfm_core.evaluation.evaluate import evaluate_run
from tasks import BACKOFF, GPU_TAG, progress_bar, transient

__all__ = ["evaluate_task"]

@task(name="evaluate", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def evaluate_task(data_path: str, synthetic_path: str, cfg: EvalConfig, run_dir: str,
                  low_data: dict[str, str] | None = None, nfe_stores: dict[str, str] | None = None,
                  nfe_curve: str | None = None, ddpm_stores: dict[str, str] | None = None) -> str:
    """`<run_dir>/evaluation.json` (reused when its key matches); `low_data` maps each real fraction ("0.25") to
    the store of the generator trained on that subset only, `nfe_stores` each NFE ("1") to the all-data
    generator's store sampled at it, `nfe_curve` the nfe-curve task's samples, `ddpm_stores` each DDIM NFE to the
    DDPM baseline's store. Returns the path."""
    low = {float(f): p for f, p in (low_data or {}).items()}
    by_nfe = {int(n): p for n, p in (nfe_stores or {}).items()}
    return str(evaluate_run(data_path, synthetic_path, cfg, run_dir, low, progress=get_run_logger().info,
                            advance=progress_bar(f"evaluation: {len(cfg.seeds)} seed(s) x arms, quality, audit"),
                            nfe_stores=by_nfe, nfe_curve=nfe_curve,
                            ddpm_stores={int(n): p for n, p in (ddpm_stores or {}).items()}))
