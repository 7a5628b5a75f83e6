"""Evaluate task: downstream classifier real-only vs real+synthetic -> evaluation.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import EvalConfig, from_dict
from motfm_core.downstream import evaluate_augmentation
from motfm_core.quality import synthetic_quality


@task(name="evaluate")
def evaluate_task(data_path: str, synthetic_path: str, eval: dict, run_dir: str) -> str:
    """Classifier arms over seeds plus in-domain quality metrics -> `<run_dir>/evaluation.json`; returns its path."""
    logger = get_run_logger()
    cfg = from_dict(EvalConfig, eval, "eval")
    result = evaluate_augmentation(data_path, synthetic_path, cfg, progress=logger.info)
    result["quality"] = synthetic_quality(data_path, synthetic_path, cfg)
    q = result["quality"]
    logger.info("evaluate: in-domain FID synthetic-vs-test %.3f (real train-vs-test %.3f), precision %.2f, "
                "recall %.2f", q["synthetic_vs_test"]["fid"], q["train_vs_test"]["fid"],
                q["synthetic_vs_test"]["precision"], q["synthetic_vs_test"]["recall"])
    out = Path(run_dir) / "evaluation.json"
    tmp = out.with_name(".evaluation.json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    g = result["gain"]["accuracy"]
    logger.info("evaluate: accuracy gain %+.3f ± %.3f over %d seeds", g["mean"], g["std"], g["n"])
    return str(out)
