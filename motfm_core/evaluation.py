"""The evaluate stage: downstream arms, quality metrics and the memorisation audit of one synthetic version (and
of each low-data generator's), reading the real splits once; cached in `evaluation.json` by a key over the real
data, the synthetic versions, the eval config and the package version."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from motfm_core import __version__
from motfm_core.config import EvalConfig, config_hash
from motfm_core.data.store import load_splits, open_store
from motfm_core.downstream import evaluate_augmentation
from motfm_core.privacy import audit_stores
from motfm_core.quality import synthetic_quality
from motfm_core.utils import write_json_atomic

__all__ = ["evaluate_run", "evaluation_key"]

log = logging.getLogger(__name__)


def evaluation_key(data_path: str | Path, synthetic_path: str | Path, cfg: EvalConfig,
                   low_data: dict[float, str | Path]) -> str:
    """What an evaluation depends on: real data fingerprint, synthetic versions' run keys, config, version."""
    return config_hash(cfg, open_store(data_path).attrs["fingerprint"], open_store(synthetic_path).attrs["run_key"],
                       __version__, sorted((f, open_store(p).attrs["run_key"]) for f, p in low_data.items()))


def evaluate_run(data_path: str | Path, synthetic_path: str | Path, cfg: EvalConfig, run_dir: str | Path,
                 low_data: dict[float, str | Path] | None = None,
                 progress: Callable[[str], None] | None = None) -> Path:
    """`<run_dir>/evaluation.json`: classifier (and segmenter) arms over seeds, quality metrics and the memorisation
    audit; `low_data` maps each real fraction to the store of the generator trained on that subset only. An
    existing file with the same key is reused. Returns its path."""
    say = progress or log.info
    out = Path(run_dir) / "evaluation.json"
    low = {float(f): p for f, p in (low_data or {}).items()}
    key = evaluation_key(data_path, synthetic_path, cfg, low)
    if out.exists() and json.loads(out.read_text()).get("key") == key:
        say(f"evaluate: {out} already holds this data, synthetic version and config (key {key}); reusing it")
        return out
    real = load_splits(data_path)
    result = evaluate_augmentation(data_path, synthetic_path, cfg, progress=say, low_data=low, real=real)
    checkpoint = open_store(synthetic_path).attrs.get("checkpoint")
    result["quality"] = synthetic_quality(data_path, synthetic_path, cfg, checkpoint=checkpoint, real=real)
    result["memorisation"] = audit_stores(data_path, synthetic_path, Path(run_dir) / "closest_pairs.png", real=real)
    result["low_data_memorisation"] = {f"{f:g}": audit_stores(data_path, p, real=real) for f, p in sorted(low.items())}
    result["key"] = key
    write_json_atomic(out, result)
    q, g, mem = result["quality"]["synthetic_vs_test"], result["gain"]["accuracy"], result["memorisation"]
    say(f"evaluate: in-domain FID synthetic-vs-test {q['fid']:.3f} (real train-vs-test "
        f"{result['quality']['train_vs_test']['fid']:.3f}), precision {q['precision']:.2f}, recall {q['recall']:.2f}")
    say(f"evaluate: accuracy gain {g['mean']:+.3f} ± {g['std']:.3f} over {g['n']} seeds (95% CI "
        f"{g['ci95_low']:+.3f}..{g['ci95_high']:+.3f}); {100 * mem['fraction_flagged']:.1f}% of synthetic images "
        "flagged as near-copies")
    return out
