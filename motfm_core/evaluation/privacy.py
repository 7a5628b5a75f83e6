"""Memorisation audit: is any synthetic image a near-copy of a real training image?

For each synthetic image, the distance to its nearest real training image; the reference is the same
distance for real *test* images (unseen by the generator). A synthetic image closer to the training set
than the `quantile` (default 1%) of test images are is flagged as a suspicious copy. Distances are RMS
differences in pixel space (images in [0, 1]), the most literal notion of a copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from motfm_core.data.rows import Rows
from motfm_core.data.store import Splits, load_splits
from motfm_core.data.synthetic import open_synthetic
from motfm_core.evaluation.figures import figure_dpi
from motfm_core.model.guard import nearest
from motfm_core.results import Result, optional

__all__ = ["Audit", "ClosePair", "CopyGuard", "audit_stores", "closest_pairs_png", "memorisation_audit"]


@dataclass(frozen=True)
class ClosePair(Result):
    """A synthetic image, its nearest training image and their RMS distance."""

    synthetic: int
    train: int
    distance: float


@dataclass(frozen=True)
class CopyGuard(Result):
    """What the sampler's copy guard did: its threshold (None when off) and how many samples it redrew."""

    enabled: bool
    threshold: float | None
    redrawn_samples: int
    redraws: int


@dataclass(frozen=True)
class Audit(Result):
    """The memorisation audit of one synthetic set: flag threshold, flagged images, nearest-train distance
    statistics (synthetic and real test) and the closest pairs; for a store, also the reference set's size, the
    copy guard's counts and the closest-pairs PNG."""

    threshold: float
    quantile: float
    fraction_flagged: float
    flagged: list[int]
    synthetic_nn: dict[str, float]
    test_nn: dict[str, float]
    closest: list[ClosePair]
    reference_images: int | None = optional()
    copy_guard: CopyGuard | None = optional()
    png: str | None = optional()


def memorisation_audit(train: Any, test: Any, synthetic: Any, quantile: float = 0.01) -> Audit:
    """Flags synthetic images nearer to a training image than nearly all unseen real images are; `synthetic` may
    be a Zarr array (read in batches)."""
    d_syn, j_syn = nearest(synthetic, train)
    d_test, _ = nearest(test, train)
    threshold = float(np.quantile(d_test, quantile))
    flagged = np.nonzero(d_syn < threshold)[0]
    order = np.argsort(d_syn)
    return Audit(threshold=threshold, quantile=quantile, fraction_flagged=float(len(flagged) / len(d_syn)),
                 flagged=flagged.tolist(),
                 synthetic_nn={"median": float(np.median(d_syn)), "min": float(d_syn.min())},
                 test_nn={"median": float(np.median(d_test)), "min": float(d_test.min())},
                 closest=[ClosePair(int(i), int(j_syn[i]), float(d_syn[i])) for i in order[:8]])


def closest_pairs_png(train: Any, synthetic: Any, audit: Audit, out_png: str | Path) -> Path:
    """Side-by-side PNG of the closest synthetic/train pairs (top row synthetic, bottom row its neighbour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = audit.closest
    fig, axes = plt.subplots(2, len(pairs), figsize=(1.3 * len(pairs), 3), squeeze=False)
    for k, p in enumerate(pairs):
        for row, img in enumerate((synthetic[p.synthetic], train[p.train])):
            view = img[0][..., img.shape[-1] // 2] if img.ndim == 4 else img[0]
            axes[row, k].imshow(view, cmap="gray", vmin=0, vmax=1)
            axes[row, k].axis("off")
        axes[0, k].set_title(f"d={p.distance:.3f}", fontsize=7)
    axes[0, 0].text(-0.1, 0.5, "synthetic", rotation=90, transform=axes[0, 0].transAxes, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "nearest train", rotation=90, transform=axes[1, 0].transAxes, va="center", ha="right")
    fig.suptitle(f"closest pairs; flag threshold {audit.threshold:.3f} (test images' {audit.quantile:.0%} "
                 "quantile)", fontsize=8)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=figure_dpi(max(train.shape[2:4]), 1.3), bbox_inches="tight")  # images at their size
    plt.close(fig)
    return out_png


def audit_stores(real_path: str | Path, synthetic_path: str | Path, out_png: str | Path | None = None,
                 quantile: float = 0.01, real: Splits | None = None) -> Audit:
    """Audit a complete synthetic store against the real images its generator was trained on (the store's
    `train_indices`, else the whole train split), with real test images as the reference; writes the
    closest-pairs PNG when `out_png` is given. Adds the copy guard's counts when the store has them. `real`: the
    train and test splits, when already loaded."""
    real = real or load_splits(real_path)
    train, test = real["train"]["images"], real["test"]["images"]
    root = zarr.open_group(str(synthetic_path), mode="r", zarr_format=3)
    indices = root.attrs.get("train_indices")
    if indices is not None:  # the generator's own share, left where the split is (read as the split is)
        train = train[np.asarray(indices, dtype=np.int64)] if isinstance(train, np.ndarray) else Rows(
            (train, np.asarray(indices, dtype=np.int64)))
    synthetic = open_synthetic(synthetic_path)["images"]  # read in batches: memory does not grow with its size
    audit = dataclasses.replace(memorisation_audit(train, test, synthetic, quantile), reference_images=int(len(train)))
    if "redraws" in root.array_keys():
        redraws = np.asarray(root["redraws"][:])
        threshold = root.attrs.get("copy_threshold")
        audit = dataclasses.replace(audit, copy_guard=CopyGuard(
            enabled=threshold is not None, threshold=None if threshold is None else float(threshold),
            redrawn_samples=int((redraws > 0).sum()), redraws=int(redraws.sum())))
    if out_png is not None:
        audit = dataclasses.replace(audit, png=str(closest_pairs_png(train, synthetic, audit, out_png)))
    return audit
