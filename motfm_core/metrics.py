"""Classification metrics and summaries over seeds (scikit-learn where it has them)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


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


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max over seeds."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": int(len(a))}
