"""Downstream evaluation: does adding synthetic images help a classifier (and a segmenter) on held-out real data?

Arms (`plan_arms`), each trained from scratch per seed with the same network, steps and batch size:
`real`; `real+synthetic` at every ratio of synthetic to real images (the headline one, `synthetic_ratio`,
named plain `real+synthetic`); `synthetic` only; and low-data arms `real f%` / `real f%+synthetic`. All are
tested on the real test split. A gain is the paired per-seed difference arm minus its baseline (mean and std
over seeds) with 95% and 90% intervals from a paired bootstrap over the training seeds and the test subjects
(`evaluation.statistics`: a patient's slices are resampled together); the paired tests between arms (an NFE
against the best, flow matching against the DDPM baseline) are `comparisons`.
Low-data arms are leak-free: `real f%` is one class-stratified subset (`stratified_subset`, fixed across seeds by
`eval.subset_seed`), and the synthetic images of `real f%+synthetic` come from a generator trained on exactly that
subset (its store records the indices, checked here); without such a store the `+synthetic` arm is not run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import zarr

from motfm_core.config import EvalConfig
from motfm_core.data.rows import Rows, largest, row_bytes, take_rows
from motfm_core.data.store import Splits, load_splits, stratified_subset
from motfm_core.data.synthetic import open_synthetic
from motfm_core.device import default_device
from motfm_core.errors import BadInput
from motfm_core.evaluation.metrics import (
    Gain,
    Stat,
    classification_metrics,
    summarise,
)
from motfm_core.evaluation.segmentation import score_segmenter, train_segmenter
from motfm_core.evaluation.statistics import Comparison, compare_arms, paired_interval
from motfm_core.evaluation.supervised import predict_proba, train_classifier
from motfm_core.results import Result, optional

__all__ = ["Arm", "Augmentation", "SegmentationResult", "Sizes", "evaluate_augmentation", "low_data_stores",
           "plan_arms", "train_arm"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm(Result):
    """One downstream training set: a share of the real train split plus synthetic images."""

    name: str
    real_fraction: float  # share of the real train split (stratified by class); 0 = none
    ratio: float  # synthetic images per image of the *full* real train split; inf = every synthetic image
    baseline: str | None  # the arm its gain is measured against
    generator: float = 1.0  # the real fraction its synthetic images' generator was trained on
    nfe: int = 0  # > 0: its synthetic images come from the all-data generator's store sampled at this NFE
    family: str = "flow"  # "ddpm": from the same-backbone DDPM baseline's store sampled (DDIM) at `nfe`


# per arm, per seed ("0", "1", ...), per metric; per arm, per metric
PerSeed = dict[str, dict[str, dict[str, float]]]
Summary = dict[str, dict[str, Stat]]
Gains = dict[str, dict[str, Gain]]


@dataclass(frozen=True)
class Sizes(Result):
    """Image counts: the real train and test splits, the synthetic store, and each arm's (real, synthetic)."""

    real_train: int
    synthetic_added: int  # by the headline arm
    synthetic_total: int
    real_test: int
    arms: dict[str, dict[str, int]]


@dataclass(frozen=True)
class SegmentationResult(Result):
    """The segmenter's arms: Dice and HD95 per seed, their summaries and every augmented arm's gain."""

    mask_classes: int
    per_seed: PerSeed
    summary: Summary
    gains: Gains


@dataclass(frozen=True)
class Augmentation(Result):
    """Does adding synthetic images help? Per-arm, per-seed test metrics, summaries over seeds and the gain of
    every augmented arm over its baseline (`gain`: the headline arm's); the segmenter's when it ran."""

    arms: list[Arm]
    headline: str
    per_seed: PerSeed
    summary: Summary
    gain: dict[str, Gain]
    gains: Gains
    sizes: Sizes
    num_classes: int
    seconds: float
    segmentation: SegmentationResult | None = optional()
    comparisons: list[Comparison] | None = optional()  # paired tests between arms (evaluation.statistics)


def plan_arms(cfg: EvalConfig, low_data_generators: bool = True, nfes: tuple[int, ...] = (),
              ddpm_nfes: tuple[int, ...] = ()) -> list[Arm]:
    """real; real+synthetic at every ratio (the headline one named plain `real+synthetic`); synthetic only; per
    NFE n of `nfes` (stores sampled at other NFEs): `real+synthetic NFE n` and `synthetic NFE n`; the same per
    DDIM NFE of `ddpm_nfes` (the DDPM baseline's stores): `real+synthetic DDPM NFE n`, `synthetic DDPM NFE n`;
    and per low-data fraction f: `real f%` and, when its own generator exists, `real f%+synthetic` (the headline
    number of synthetic images from the generator trained on that subset)."""
    head = cfg.synthetic_ratio
    arms = [Arm("real", 1.0, 0.0, None)]
    for r in sorted({*cfg.ratios, head}):
        arms.append(Arm("real+synthetic" if r == head else f"real+synthetic x{r:g}", 1.0, r, "real"))
    arms.append(Arm("synthetic", 0.0, float("inf"), "real"))
    for n in sorted(nfes):
        arms += [Arm(f"real+synthetic NFE {n}", 1.0, head, "real", nfe=n),
                 Arm(f"synthetic NFE {n}", 0.0, float("inf"), "real", nfe=n)]
    for n in sorted(ddpm_nfes):
        arms += [Arm(f"real+synthetic DDPM NFE {n}", 1.0, head, "real", nfe=n, family="ddpm"),
                 Arm(f"synthetic DDPM NFE {n}", 0.0, float("inf"), "real", nfe=n, family="ddpm")]
    for f in sorted(cfg.real_fractions, reverse=True):
        base = f"real {f:.0%}"
        arms.append(Arm(base, f, 0.0, None))
        if low_data_generators:
            arms.append(Arm(f"{base}+synthetic", f, head, base, generator=f))
    return arms


def _arm_indices(arm: Arm, real_labels: np.ndarray, n_syn: int, seed: int,
                 subset_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(real indices, synthetic indices) of one arm for one seed: the real subset is fixed by `subset_seed` (the
    one its generator trained on), the synthetic draw follows `seed`."""
    real = stratified_subset(real_labels, arm.real_fraction, subset_seed) if arm.real_fraction else np.arange(0)
    k = n_syn if arm.ratio == float("inf") else min(n_syn, int(round(arm.ratio * len(real_labels))))
    syn = np.sort(np.random.RandomState(1000 + seed).permutation(n_syn)[:k])
    return real, syn


def _training_rows(real: np.ndarray, ri: np.ndarray, synthetic: Any, si: np.ndarray, memory_mb: int) -> Rows:
    """One arm's training images (or masks): real rows `ri`, then synthetic rows `si` of a store array, loaded when
    they fit `memory_mb`, else left in the store and read a batch at a time."""
    loaded = len(si) * row_bytes(synthetic) <= memory_mb * 2**20
    part = (take_rows(synthetic, si), None) if loaded else (synthetic, si)
    return Rows((real, ri), part)


def _gains(arms: list[Arm], results: dict[str, dict[int, dict[str, float]]], seeds: tuple[int, ...],
           ci: Callable[[Arm, str], dict[str, Any]]) -> Gains:
    """Per augmented arm and metric: paired per-seed gain over its baseline (mean/std) and a bootstrap CI."""
    out = {}
    for arm in arms:
        if arm.baseline is None:
            continue
        base = arm.baseline
        out[arm.name] = {m: Gain(**summarise([results[arm.name][s][m] - results[base][s][m] for s in seeds]).to_json(),
                                 **ci(arm, m)) for m in results[arm.name][seeds[0]]}
    return out


def _summary(arms: list[Arm], results: dict[str, dict[int, dict[str, float]]], seeds: tuple[int, ...],
             metrics: list[str]) -> Summary:
    """Per arm and metric: mean, std, min, max over seeds."""
    return {a.name: {m: summarise([results[a.name][s][m] for s in seeds]) for m in metrics} for a in arms}


def low_data_stores(synthetic: dict[float, str | Path], train_labels: np.ndarray, cfg: EvalConfig
                    ) -> dict[float, dict[str, Any]]:
    """Open each low-data generator's synthetic store (`open_synthetic`), checking it was trained on exactly the
    subset its arm uses (`stratified_subset(train labels, f, eval.subset_seed)`); raises naming the store otherwise."""
    out = {}
    for f, path in synthetic.items():
        expected = stratified_subset(train_labels, f, cfg.subset_seed).tolist()
        recorded = zarr.open_group(str(path), mode="r", zarr_format=3).attrs.get("train_indices")
        if recorded != expected:
            raise BadInput(f"{path}: its generator was not trained on the real {f:.0%} subset the arm uses "
                           f"(eval.subset_seed={cfg.subset_seed}); retrain it with train.real_fraction={f} and "
                           f"train.subset_seed={cfg.subset_seed}")
        out[f] = open_synthetic(path)
    return out


def _open_arm_stores(synthetic_path: str | Path, low_data: dict[float, str | Path],
                     nfe_stores: dict[int, str | Path] | None, ddpm_stores: dict[int, str | Path] | None,
                     train_labels: np.ndarray, cfg: EvalConfig
                     ) -> tuple[dict[float, Any], dict[int, Any], dict[int, Any]]:
    """The synthetic stores the arms train on: by generator (1.0: all data; each low-data share), by NFE, and the
    DDPM baseline's by DDIM NFE. Every low-data fraction asked for needs its generator's store."""
    missing = sorted(set(map(float, cfg.real_fractions)) - set(low_data))
    if low_data and missing:
        raise BadInput(f"eval.real_fractions {missing} have no low-data generator store; pass one per fraction")
    stores = {1.0: open_synthetic(synthetic_path), **low_data_stores(low_data, train_labels, cfg)}
    by_nfe = {int(n): open_synthetic(p) for n, p in (nfe_stores or {}).items()}
    ddpm = {int(n): open_synthetic(p) for n, p in (ddpm_stores or {}).items()}
    return stores, by_nfe, ddpm


def train_arm(arm: Arm, src: Any, train: dict[str, Any], test: dict[str, Any], seed: int, k: int,
               mask_classes: int, cfg: EvalConfig, device: torch.device
               ) -> tuple[np.ndarray, dict[str, np.ndarray] | None, dict[str, int]]:
    """One arm at one seed: its classifier's class probabilities on the test images, its segmenter's per-image
    scores (None without masks: `mask_classes` 0) and the real and synthetic images it trained on."""
    ri, si = _arm_indices(arm, train["labels"], len(src["labels"]), seed, cfg.subset_seed)
    x = _training_rows(train["images"], ri, src["images"], si, cfg.memory_mb)
    y = np.concatenate([train["labels"][ri], src["labels"][si]])
    proba = predict_proba(train_classifier(x, y, k, cfg, seed, device), test["images"], device)
    scores = None
    if mask_classes:
        masks = _training_rows(train["masks"], ri, src["masks"], si, cfg.memory_mb)
        seg = train_segmenter(x, masks, mask_classes, cfg, seed, device)
        scores = score_segmenter(seg, test["images"], test["masks"], mask_classes, device)
    return proba, scores, {"real": int(len(ri)), "synthetic": int(len(si))}


def _comparisons(arms: list[Arm], gains: Gains, probas: dict[str, list[np.ndarray]],
                 dice: dict[str, list[np.ndarray]] | None, test: dict[str, Any], margin: float) -> list[Comparison]:
    """The paired tests the report's lines rest on: each flow NFE's `real+synthetic` arm against the best one
    (by mean accuracy gain), and flow matching's headline arm against the DDPM baseline's best DDIM NFE, on
    accuracy (and Dice when the segmenter ran)."""
    flow = [a.name for a in arms if a.name == "real+synthetic" or (a.name.startswith("real+synthetic NFE "))]
    ddpm = [a.name for a in arms if a.name.startswith("real+synthetic DDPM NFE ")]
    pairs = []
    if len(flow) > 1:
        best = max(flow, key=lambda a: gains[a]["accuracy"].mean)
        pairs += [(a, best) for a in flow if a != best]
    if ddpm:
        pairs.append(("real+synthetic", max(ddpm, key=lambda a: gains[a]["accuracy"].mean)))
    out = [compare_arms(a, b, "accuracy", probas, test["group"], margin, test["labels"]) for a, b in pairs]
    if dice is not None:
        out += [compare_arms(a, b, "dice", dice, test["group"], margin) for a, b in pairs]
    return out


def evaluate_augmentation(real_path: str | Path, synthetic_path: str | Path, cfg: EvalConfig,
                          device: str | torch.device | None = None,
                          progress: Callable[[str], None] | None = None,
                          low_data: dict[float, str | Path] | None = None, real: Splits | None = None,
                          advance: Callable[[float], None] | None = None,
                          nfe_stores: dict[int, str | Path] | None = None,
                          ddpm_stores: dict[int, str | Path] | None = None) -> Augmentation:
    """Per-arm, per-seed test metrics of a classifier (and a segmenter when both stores have masks) and the
    augmentation gain of every augmented arm over its baseline, with its spread and its intervals over seeds and
    test subjects, and the paired comparisons between arms (`_comparisons`).

    `low_data` maps each of `cfg.real_fractions` to the synthetic store of a generator trained on that subset
    only; fractions without one get no `+synthetic` arm. `nfe_stores` maps NFEs to stores of the same generator
    sampled at them (arms `real+synthetic NFE n`, `synthetic NFE n`), `ddpm_stores` DDIM NFEs to the DDPM
    baseline's stores (arms `... DDPM NFE n`). `real`: the train and test splits, when
    already loaded. `advance` gets the share of (seed, arm) trainings done."""
    device = default_device(device)
    say = progress or log.info
    real = real or load_splits(real_path)
    train, test = real["train"], real["test"]
    low_data = {float(f): p for f, p in (low_data or {}).items()}
    stores, by_nfe, ddpm = _open_arm_stores(synthetic_path, low_data, nfe_stores, ddpm_stores, train["labels"], cfg)
    syn = stores[1.0]
    sy = syn["labels"]
    k = int(max(train["labels"].max(), test["labels"].max(), sy.max()) + 1)
    segment = cfg.segmentation and "masks" in train and all("masks" in s for s in [*stores.values(),
                                                                                      *by_nfe.values(),
                                                                                      *ddpm.values()])
    # int before + 1: a uint8 maximum of 255 + 1 wrapped to 0 classes (0/255 masks crashed the segmenter)
    mask_classes = max(int(largest(train["masks"])), int(largest(test["masks"]))) + 1 if segment else 0
    arms, n = plan_arms(cfg, bool(low_data), tuple(by_nfe), tuple(ddpm)), len(train["labels"])
    results: dict[str, dict[int, dict[str, float]]] = {a.name: {} for a in arms}
    seg_results: dict[str, dict[int, dict[str, float]]] = {a.name: {} for a in arms}
    probas: dict[str, list[np.ndarray]] = {a.name: [] for a in arms}
    per_image: dict[str, dict[str, list[np.ndarray]]] = {a.name: {"dice": [], "hd95": []} for a in arms}
    sizes: dict[str, dict[str, int]] = {}
    t0 = time.time()
    for seed in cfg.seeds:
        for arm in arms:
            src = (ddpm if arm.family == "ddpm" else by_nfe)[arm.nfe] if arm.nfe else stores[arm.generator]
            proba, scores, sizes[arm.name] = train_arm(arm, src, train, test, seed, k, mask_classes, cfg, device)
            probas[arm.name].append(proba)
            results[arm.name][seed] = classification_metrics(test["labels"], proba)
            line = ", ".join(f"{m} {v:.3f}" for m, v in results[arm.name][seed].items())
            if scores is not None:
                for m, v in scores.items():
                    per_image[arm.name][m].append(v)
                seg_results[arm.name][seed] = {m: float(np.nanmean(v)) for m, v in scores.items()}
                line += ", " + ", ".join(f"{m} {v:.3f}" for m, v in seg_results[arm.name][seed].items())
            say(f"evaluate: seed {seed} {arm.name:>22}: {line} ({time.time() - t0:.0f}s)")
            if advance:
                advance(sum(len(r) for r in results.values()) / (len(cfg.seeds) * len(arms)))

    def class_ci(arm: Arm, m: str) -> dict[str, Any]:
        r = paired_interval(probas[str(arm.baseline)], probas[arm.name], test["group"], m, test["labels"])
        return {k: v for k, v in r.items() if k != "mean"}

    def seg_ci(arm: Arm, m: str) -> dict[str, Any]:
        r = paired_interval(per_image[str(arm.baseline)][m], per_image[arm.name][m], test["group"], m)
        return {k: v for k, v in r.items() if k != "mean"}

    def by_seed(r: dict[str, dict[int, dict[str, float]]]) -> PerSeed:
        return {a: {str(s): v for s, v in per.items()} for a, per in r.items()}

    gains = _gains(arms, results, cfg.seeds, class_ci)
    seg_result = SegmentationResult(mask_classes, by_seed(seg_results),
                                    _summary(arms, seg_results, cfg.seeds, ["dice", "hd95"]),
                                    _gains(arms, seg_results, cfg.seeds, seg_ci)) if segment else None
    comparisons = _comparisons(arms, gains, probas, {a: s["dice"] for a, s in per_image.items()} if segment else None,
                               test, cfg.equivalence_margin)
    return Augmentation(
        comparisons=comparisons,
        arms=arms, headline="real+synthetic", per_seed=by_seed(results),
        summary=_summary(arms, results, cfg.seeds, list(results["real"][cfg.seeds[0]])),
        gain=gains["real+synthetic"], gains=gains,
        sizes=Sizes(real_train=int(n), synthetic_added=sizes["real+synthetic"]["synthetic"],
                    synthetic_total=int(len(sy)), real_test=int(len(test["labels"])), arms=sizes),
        num_classes=k, seconds=time.time() - t0, segmentation=seg_result)
