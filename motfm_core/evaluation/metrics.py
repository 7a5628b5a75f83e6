"""Classification metrics and summaries over seeds (scikit-learn where it has them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from motfm_core.results import Result, optional

__all__ = ["Gain", "Stat", "classification_metrics", "straightness", "summarise"]


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
    """A paired per-seed gain (arm minus its baseline) with its 95% and 90% intervals from the two-level bootstrap
    over training seeds and test subjects (`evaluation.statistics`): None, with n_boot 0, where the metric has none
    (AUROC). `subjects`: how many test subjects were resampled (0 in reports made before subjects were)."""

    ci95_low: float | None = None
    ci95_high: float | None = None
    n_boot: int = 0
    ci90_low: float | None = optional()
    ci90_high: float | None = optional()
    subjects: int = 0


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
