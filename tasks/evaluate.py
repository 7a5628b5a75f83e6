"""Evaluate task: downstream classifier real-only vs real+synthetic -> evaluation.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import EvalConfig, from_dict
from motfm_core.downstream import evaluate_augmentation
from motfm_core.privacy import audit_stores
from motfm_core.quality import synthetic_quality


@task(name="evaluate")
def evaluate_task(data_path: str, synthetic_path: str, eval: dict, run_dir: str) -> str:
    """Classifier arms over seeds plus in-domain quality metrics -> `<run_dir>/evaluation.json`; returns its path."""
    logger = get_run_logger()
    cfg = from_dict(EvalConfig, eval, "eval")
    result = evaluate_augmentation(data_path, synthetic_path, cfg, progress=logger.info)
    result["quality"] = synthetic_quality(data_path, synthetic_path, cfg)
    result["memorisation"] = audit_stores(data_path, synthetic_path, Path(run_dir) / "closest_pairs.png")
    q = result["quality"]
    logger.info("evaluate: in-domain FID synthetic-vs-test %.3f (real train-vs-test %.3f), precision %.2f, "
                "recall %.2f", q["synthetic_vs_test"]["fid"], q["train_vs_test"]["fid"],
                q["synthetic_vs_test"]["precision"], q["synthetic_vs_test"]["recall"])
    out = Path(run_dir) / "evaluation.json"
    tmp = out.with_name(".evaluation.json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    g, mem = result["gain"]["accuracy"], result["memorisation"]  # accuracy always has a CI
    logger.info("evaluate: accuracy gain %+.3f ± %.3f over %d seeds (95%% CI %+.3f..%+.3f); %.1f%% of synthetic "
                "images flagged as near-copies", g["mean"], g["std"], g["n"], g["ci95_low"], g["ci95_high"],
                100 * mem["fraction_flagged"])
    return str(out)
