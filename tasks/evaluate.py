"""Evaluate task: downstream classifier real-only vs real+synthetic -> evaluation.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import get_run_logger, task

from motfm_core import __version__
from motfm_core.config import EvalConfig, config_hash, from_dict
from motfm_core.data import open_store
from motfm_core.downstream import evaluate_augmentation
from motfm_core.privacy import audit_stores
from motfm_core.quality import synthetic_quality
from tasks import BACKOFF, GPU_TAG, transient


@task(name="evaluate", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def evaluate_task(data_path: str, synthetic_path: str, eval: dict, run_dir: str,
                  low_data: dict[str, str] | None = None) -> str:
    """Classifier (and segmenter) arms over seeds, quality metrics and the memorisation audit ->
    `<run_dir>/evaluation.json`; `low_data` maps each real fraction ("0.25") to the store of the generator trained
    on that subset only. Returns the path."""
    logger = get_run_logger()
    cfg = from_dict(EvalConfig, eval, "eval")
    out = Path(run_dir) / "evaluation.json"
    syn_attrs = open_store(synthetic_path).attrs
    low = {float(f): p for f, p in (low_data or {}).items()}
    key = config_hash(cfg, open_store(data_path).attrs["fingerprint"], syn_attrs["run_key"], __version__,
                      sorted((f, open_store(p).attrs["run_key"]) for f, p in low.items()))
    if out.exists() and json.loads(out.read_text()).get("key") == key:
        logger.info("evaluate: %s already holds this data, synthetic version and config (key %s); reusing it",
                    out, key)
        return str(out)
    result = evaluate_augmentation(data_path, synthetic_path, cfg, progress=logger.info, low_data=low)
    result["quality"] = synthetic_quality(data_path, synthetic_path, cfg, checkpoint=syn_attrs.get("checkpoint"))
    result["memorisation"] = audit_stores(data_path, synthetic_path, Path(run_dir) / "closest_pairs.png")
    result["low_data_memorisation"] = {f"{f:g}": audit_stores(data_path, p) for f, p in sorted(low.items())}
    q = result["quality"]
    logger.info("evaluate: in-domain FID synthetic-vs-test %.3f (real train-vs-test %.3f), precision %.2f, "
                "recall %.2f", q["synthetic_vs_test"]["fid"], q["train_vs_test"]["fid"],
                q["synthetic_vs_test"]["precision"], q["synthetic_vs_test"]["recall"])
    result["key"] = key
    tmp = out.with_name(".evaluation.json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    g, mem = result["gain"]["accuracy"], result["memorisation"]  # accuracy always has a CI
    logger.info("evaluate: accuracy gain %+.3f ± %.3f over %d seeds (95%% CI %+.3f..%+.3f); %.1f%% of synthetic "
                "images flagged as near-copies", g["mean"], g["std"], g["n"], g["ci95_low"], g["ci95_high"],
                100 * mem["fraction_flagged"])
    return str(out)
