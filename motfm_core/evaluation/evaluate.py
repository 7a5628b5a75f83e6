"""The evaluate stage: downstream arms, quality metrics and the memorisation audit of one synthetic version (and
of each low-data generator's), reading the real splits once; cached in `evaluation.json` by a key over the real
data, the synthetic versions, the eval config and the package version."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from motfm_core import __version__
from motfm_core.allocator import mmap_large_buffers
from motfm_core.config import EvalConfig, config_hash
from motfm_core.data.rows import row_bytes
from motfm_core.data.store import load_split, open_split, open_store
from motfm_core.data.versions import hold_version
from motfm_core.evaluation.downstream import Augmentation, evaluate_augmentation
from motfm_core.evaluation.privacy import Audit, audit_stores
from motfm_core.evaluation.quality import Quality, synthetic_quality
from motfm_core.files import write_json_atomic
from motfm_core.results import Result

__all__ = ["Evaluation", "evaluate_run", "evaluation_key", "read_evaluation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation(Result):
    """evaluation.json: the downstream arms (its keys at the top level, as readers of the file know them), the
    quality metrics, the memorisation audit of the synthetic store and of each low-data generator's store (keyed
    by its real fraction, e.g. "0.25"), and the cache key."""

    augmentation: Augmentation
    quality: Quality
    memorisation: Audit
    low_data_memorisation: dict[str, Audit]
    key: str

    def to_json(self) -> dict[str, Any]:
        return {**self.augmentation.to_json(), "quality": self.quality.to_json(),
                "memorisation": self.memorisation.to_json(),
                "low_data_memorisation": {f: a.to_json() for f, a in self.low_data_memorisation.items()},
                "key": self.key}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Evaluation:
        return cls(augmentation=Augmentation.from_json(data), quality=Quality.from_json(data["quality"]),
                   memorisation=Audit.from_json(data["memorisation"]),
                   low_data_memorisation={f: Audit.from_json(a) for f, a in data["low_data_memorisation"].items()},
                   key=data["key"])


def read_evaluation(path: str | Path) -> Evaluation:
    """The typed evaluation from an evaluation.json."""
    return Evaluation.from_json(json.loads(Path(path).read_text()))


def real_split(data_path: str | Path, split: str, memory_mb: int, say: Callable[[str], None] = log.info
               ) -> dict[str, Any]:
    """One real split as the evaluation reads it: loaded when its images and masks fit `memory_mb` (eval.memory_mb,
    as an arm's synthetic images are), else left in the store and read a batch at a time by each metric
    (`store.open_split`), so a split's size never sets the memory. The scores are the same either way (tested);
    reading from the store costs time (benchmarks/RESULTS.md, "Evaluation memory against the real splits")."""
    lazy = open_split(data_path, split)
    size = sum(row_bytes(lazy[k]) * len(lazy[k]) for k in ("images", "masks") if k in lazy)
    if size <= memory_mb * 2**20:
        return load_split(data_path, split)
    say(f"evaluate: the real {split} split ({size / 2**20:.0f} MB) is over eval.memory_mb ({memory_mb}); reading "
        "it from the store a batch at a time")
    return lazy


def evaluation_key(data_path: str | Path, synthetic_path: str | Path, cfg: EvalConfig,
                   low_data: Mapping[float, str | Path], nfe_stores: Mapping[int, str | Path] | None = None,
                   nfe_curve: str | Path | None = None, ddpm_stores: Mapping[int, str | Path] | None = None) -> str:
    """What an evaluation depends on: real data fingerprint, synthetic versions' run keys, the NFE curve's
    samples, config, version."""
    parts = [cfg, open_store(data_path).attrs["fingerprint"], open_store(synthetic_path).attrs["run_key"],
             __version__, sorted((f, open_store(p).attrs["run_key"]) for f, p in low_data.items())]
    if nfe_stores:  # (left out when empty: evaluations without NFE arms keep their keys)
        parts.append(sorted((n, open_store(p).attrs["run_key"]) for n, p in nfe_stores.items()))
    if ddpm_stores:
        parts.append(("ddpm", sorted((n, open_store(p).attrs["run_key"]) for n, p in ddpm_stores.items())))
    if nfe_curve is not None:
        with np.load(nfe_curve) as curve:
            parts.append(("nfe-curve", str(curve["key"])))
    return config_hash(*parts)


def evaluate_run(data_path: str | Path, synthetic_path: str | Path, cfg: EvalConfig, run_dir: str | Path,
                 low_data: Mapping[float, str | Path] | None = None,
                 progress: Callable[[str], None] | None = None,
                 advance: Callable[[float], None] | None = None,
                 nfe_stores: Mapping[int, str | Path] | None = None, nfe_curve: str | Path | None = None,
                 ddpm_stores: Mapping[int, str | Path] | None = None) -> Path:
    """`<run_dir>/evaluation.json`: classifier (and segmenter) arms over seeds, quality metrics and the memorisation
    audit; `low_data` maps each real fraction to the store of the generator trained on that subset only,
    `nfe_stores` each NFE to the all-data generator's store sampled at it, `nfe_curve` the sampling stage's fresh
    samples per NFE (`motfm_core.model.sampling.sample_nfe_curve`), scored into the quality-vs-NFE curve, `ddpm_stores`
    each DDIM NFE to the same-backbone DDPM baseline's store sampled at it. An
    existing file with the same key is reused. Returns its path. `advance` gets the share done: the downstream
    trainings count for 90% (they take most of the time), the quality metrics and audits for the rest."""
    say = progress or log.info
    out = Path(run_dir) / "evaluation.json"
    low = {float(f): p for f, p in (low_data or {}).items()}
    by_nfe = {int(n): p for n, p in (nfe_stores or {}).items()}
    ddpm = {int(n): p for n, p in (ddpm_stores or {}).items()}
    key = evaluation_key(data_path, synthetic_path, cfg, low, by_nfe, nfe_curve, ddpm)
    if out.exists() and json.loads(out.read_text()).get("key") == key:
        say(f"evaluate: {out} already holds this data, synthetic version and config (key {key}); reusing it")
        return out
    mmap_large_buffers()  # read batches freed go back to the system: memory stays flat however large the store
    real = {split: real_split(data_path, split, cfg.memory_mb, say) for split in ("train", "test")}
    with contextlib.ExitStack() as leases:  # another run's pruning leaves the versions read here alone
        for store in (synthetic_path, *low.values(), *by_nfe.values(), *ddpm.values()):
            leases.enter_context(hold_version(store))
        result = Evaluation(
            augmentation=evaluate_augmentation(data_path, synthetic_path, cfg, progress=say, low_data=low, real=real,
                                               advance=(lambda f: advance(0.9 * f)) if advance else None,
                                               nfe_stores=by_nfe, ddpm_stores=ddpm),
            quality=synthetic_quality(data_path, synthetic_path, cfg, nfe_curve=nfe_curve, real=real,
                                      arm_stores={**{f"NFE {n}": p for n, p in by_nfe.items()},
                                                  **{f"DDPM NFE {n}": p for n, p in ddpm.items()}}),
            memorisation=audit_stores(data_path, synthetic_path, Path(run_dir) / "closest_pairs.png", real=real),
            low_data_memorisation={f"{f:g}": audit_stores(data_path, p, real=real) for f, p in sorted(low.items())},
            key=key)
    write_json_atomic(out, result.to_json())
    if advance:
        advance(1.0)
    q, base, g = result.quality.synthetic_vs_test, result.quality.train_vs_test, result.augmentation.gain["accuracy"]
    say(f"evaluate: in-domain FID synthetic-vs-test {q.fid:.3f} (real train-vs-test {base.fid:.3f}), precision "
        f"{q.precision:.2f}, recall {q.recall:.2f}, density {q.density:.2f}, coverage {q.coverage:.2f}")
    say(f"evaluate: accuracy gain {g.mean:+.3f} ± {g.std:.3f} over {g.n} seeds (95% CI {g.ci95_low:+.3f}.."
        f"{g.ci95_high:+.3f}); {100 * result.memorisation.fraction_flagged:.1f}% of synthetic images flagged as "
        "near-copies")
    return out
