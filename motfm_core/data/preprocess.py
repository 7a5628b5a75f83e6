"""Preprocessing shared by every source: intensity normalisation, resizing to the store's shape, and the
patient-level train/val/test split. Readers and the bundled sets (`brain`, `phantom`) use it; `ingest` applies it."""

from __future__ import annotations

import numpy as np

from motfm_core.errors import BadInput

__all__ = ["NORMALISATION", "normalise", "patient_split", "percentile_window", "resize", "to_unit"]

NORMALISATION = "per image/volume: percentiles [0.5, 99.5] of foreground (>0) -> [0, 1], clipped"


def percentile_window(img: np.ndarray) -> tuple[float, float]:
    """(lo, hi): the 0.5 and 99.5 percentiles of the foreground (values > 0; all values if none is), as float64
    scalars: the arithmetic of `to_unit` then runs in float64, as it always has (the stored images depend on it)."""
    fg = img[img > 0] if (img > 0).any() else img.ravel()
    lo, hi = np.percentile(fg, [0.5, 99.5])
    return lo, hi


def to_unit(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`img` mapped linearly from [lo, hi] to [0, 1], clipped (float32); all zeros when the window is empty."""
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float32)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def normalise(img: np.ndarray) -> np.ndarray:
    """Scale intensities to [0, 1] by robust percentiles of the foreground (all voxels if none is > 0)."""
    return to_unit(img, *percentile_window(img))


def resize(img: np.ndarray, shape: tuple[int, ...], nearest: bool = False) -> np.ndarray:
    """Zero-pad (C, *spatial) to a square/cube, then resample to `shape` (area/linear; nearest for masks)."""
    spatial = img.shape[1:]
    side = max(spatial)
    pads = []
    for s in reversed(spatial):
        before = (side - s) // 2
        pads += [before, side - s - before]
    import torch  # here, not at import: store tools (`motfm inspect`) load this package without torch
    import torch.nn.functional as F

    x = F.pad(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None], pads)
    if nearest:
        y = F.interpolate(x, size=shape, mode="nearest")
    elif all(t <= side for t in shape):
        y = F.interpolate(x, size=shape, mode="area")  # averaging: no aliasing when shrinking
    else:
        y = F.interpolate(x, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear", align_corners=False)
    return y[0].numpy()


SPLIT_TRIES = 200  # seeded permutations tried for a split that puts every class in train, val and test


def _group_split(uniq: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, int]:
    order = np.random.RandomState(seed).permutation(len(uniq))
    n_test = max(1, round(test_fraction * len(uniq)))
    n_val = max(1, round(val_fraction * len(uniq)))
    return {uniq[i]: 2 if rank < n_test else 1 if rank < n_test + n_val else 0 for rank, i in enumerate(order)}


def patient_split(groups: list[str], val_fraction: float, test_fraction: float, seed: int,
                  labels: np.ndarray | list[int] | None = None) -> np.ndarray:
    """Deterministic split by group: every sample of a patient lands in the same split (0/1/2). Given `labels`,
    every class should reach train, val and test: the seed's split when it does, else the first of the next
    seeded splits that does, else the seed's (ingest then refuses the class by name)."""
    uniq = sorted(set(groups))
    if len(uniq) < 3:
        raise BadInput(f"need at least 3 patients/groups for a train/val/test split, got {len(uniq)}")
    if labels is None:
        code = _group_split(uniq, val_fraction, test_fraction, seed)
        return np.array([code[g] for g in groups], dtype=np.uint8)
    labels = np.asarray(labels)
    holders = {int(c): {g for g, lab in zip(groups, labels) if lab == c} for c in np.unique(labels)}
    for k in range(SPLIT_TRIES):
        code = _group_split(uniq, val_fraction, test_fraction, seed + k)
        if all({code[g] for g in held} == {0, 1, 2} for held in holders.values()):
            return np.array([code[g] for g in groups], dtype=np.uint8)
    code = _group_split(uniq, val_fraction, test_fraction, seed)  # none does: ingest names the class uncovered
    return np.array([code[g] for g in groups], dtype=np.uint8)
