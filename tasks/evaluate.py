"""Evaluate task: downstream classifier real-only vs real+synthetic -> evaluation.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import EvalConfig, from_dict
from motfm_core.downstream import evaluate_augmentation


@task(name="evaluate")
def evaluate_task(data_path: str, synthetic_path: str, eval: dict, run_dir: str) -> str:
    """Train the classifier arms over seeds and write `<run_dir>/evaluation.json`; returns its path."""
    logger = get_run_logger()
    result = evaluate_augmentation(data_path, synthetic_path, from_dict(EvalConfig, eval, "eval"),
                                   progress=logger.info)
    out = Path(run_dir) / "evaluation.json"
    tmp = out.with_name(".evaluation.json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    g = result["gain"]["accuracy"]
    logger.info("evaluate: accuracy gain %+.3f ± %.3f over %d seeds", g["mean"], g["std"], g["n"])
    return str(out)
