"""Classification metrics and summaries over seeds (scikit-learn where it has them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from motfm_core.results import Result

__all__ = ["Gain", "Stat", "bootstrap_gain", "bootstrap_paired", "classification_metrics", "straightness", "summarise"]


@dataclass(frozen=True)
class Stat(Result):
    """One metric over seeds: mean, sample std, min, max and the number of seeds."""

    mean: float
    std: float
    min: float
    max: float
    n: int


@dataclass(frozen=True)
class Gain(Stat):
    """A paired per-seed gain (arm minus its baseline) with its 95% bootstrap CI over test images: None, with
    n_boot 0, where the metric has none (AUROC)."""

    ci95_low: float | None = None
    ci95_high: float | None = None
    n_boot: int = 0


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and macro one-vs-rest AUROC from class probabilities (N, K)."""
    pred = proba.argmax(1)
    k = proba.shape[1]
    out = {"accuracy": float(accuracy_score(y_true, pred)),
           "macro_f1": float(f1_score(y_true, pred, average="macro", labels=list(range(k)), zero_division=0))}
    present = np.unique(y_true)
    if len(present) == k and k > 1:
        out["auroc"] = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=list(range(k)))
                             if k > 2 else roc_auc_score(y_true, proba[:, 1]))
    else:  # AUROC is undefined when a class is absent from the test set
        out["auroc"] = float("nan")
    return out


def _resampled(y: np.ndarray, pred: np.ndarray, idx: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 for every bootstrap resample at once (idx: (B, N) indices)."""
    yt, yp = y[idx], pred[idx]
    f1 = []
    for c in range(k):
        tp = ((yp == c) & (yt == c)).sum(1)
        fp = ((yp == c) & (yt != c)).sum(1)
        fn = ((yp != c) & (yt == c)).sum(1)
        denom = 2 * tp + fp + fn
        f1.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    return {"accuracy": (yt == yp).mean(1), "macro_f1": np.mean(f1, 0)}


def bootstrap_gain(y_true: np.ndarray, proba_base: list[np.ndarray], proba_new: list[np.ndarray],
                   metric: str = "accuracy", n_boot: int = 2000, seed: int = 0) -> dict[str, float | None]:
    """95% CI of the seed-averaged gain (new - base) by resampling test images, paired across the two arms.

    proba_base / proba_new hold one (N, K) probability array per seed, in the same seed order. Computed
    (vectorised) for accuracy and macro-F1; other metrics get no CI.
    """
    if metric not in ("accuracy", "macro_f1"):
        return {"ci95_low": None, "ci95_high": None, "n_boot": 0}
    idx = np.random.RandomState(seed).randint(0, len(y_true), (n_boot, len(y_true)))
    k = proba_base[0].shape[1]
    gains = np.mean([_resampled(y_true, b.argmax(1), idx, k)[metric] - _resampled(y_true, a.argmax(1), idx, k)[metric]
                     for a, b in zip(proba_base, proba_new)], 0)
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return {"ci95_low": float(lo), "ci95_high": float(hi), "n_boot": int(n_boot)}


def bootstrap_paired(base: list[np.ndarray], new: list[np.ndarray], n_boot: int = 2000,
                     seed: int = 0) -> dict[str, float | None]:
    """95% CI of the seed-averaged mean gain of per-image scores (new - base), resampling test images
    (paired across arms); images where a score is NaN are left out."""
    diff = np.mean([b - a for a, b in zip(base, new)], 0)
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        return {"ci95_low": None, "ci95_high": None, "n_boot": 0}
    idx = np.random.RandomState(seed).randint(0, len(diff), (n_boot, len(diff)))
    lo, hi = np.percentile(diff[idx].mean(1), [2.5, 97.5])
    return {"ci95_low": float(lo), "ci95_high": float(hi), "n_boot": int(n_boot)}


def summarise(values: list[float]) -> Stat:
    """Mean, sample standard deviation, min and max over seeds."""
    a = np.asarray(values, dtype=float)
    return Stat(mean=float(a.mean()), std=float(a.std(ddof=1)) if len(a) > 1 else 0.0, min=float(a.min()),
                max=float(a.max()), n=int(len(a)))


@torch.no_grad()
def straightness(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                 steps: int = 20) -> float:
    """Rectified-flow straightness: mean over t of E||v(x_t, t) - (x_1 - x_0)||^2 along Euler trajectories.

    0 means every trajectory is a straight line travelled at constant speed (one Euler step is exact);
    values are per element, so they compare across image sizes.
    """
    x, vs = x0, []
    for i in range(steps):
        t = torch.full((x.shape[0],), i / steps, device=x.device)
        v = velocity(x, t)
        vs.append(v)
        x = x + v / steps
    chord = x - x0
    return float(torch.stack([(v - chord).pow(2).mean() for v in vs]).mean())
