"""Procedural phantoms for fast unit tests only (the demo runs on real MRI).

Class 0: one disc, class 1: two small discs, class 2: a ring; random position and size, with a
class-dependent contrast band (so that a small classifier can learn the classes from a few dozen
images) and additive noise. Mask 1 marks the structures. Six samples per 'patient' group.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from motfm_core.config import DataConfig
from motfm_core.data.preprocess import patient_split

__all__ = ["build_phantom", "phantom_image"]

def phantom_image(label: int, shape: tuple[int, ...], rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """One (1, *shape) image in [0, 1] and its (1, *shape) uint8 mask."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    img = 0.2 * np.exp(-sum(g ** 2 for g in grids) / 0.6)  # soft background 'body'
    mask = np.zeros(shape, bool)
    centres = [rng.uniform(-0.4, 0.4, len(shape)) for _ in range(2 if label == 1 else 1)]
    for c in centres:
        r = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, c)))
        rad = rng.uniform(0.2, 0.35) if label != 1 else rng.uniform(0.12, 0.2)
        shape_mask = (r < rad) & (r > 0.6 * rad) if label == 2 else r < rad
        mask |= shape_mask
        img = img + (0.35 + 0.2 * label + rng.uniform(0.0, 0.1)) * shape_mask
    img = np.clip(img + rng.normal(0, 0.03, shape), 0, 1)
    return img[None].astype(np.float32), mask[None].astype(np.uint8)


def build_phantom(cfg: DataConfig, n_per_class: int = 24) -> tuple[dict[str, Any], dict[str, Any]]:
    """`phantom` or `phantom:<n_per_class>` source: arrays and attrs in the ingest format."""
    if ":" in cfg.source:
        n_per_class = int(cfg.source.split(":", 1)[1])
    rng = np.random.RandomState(cfg.seed)
    shape = cfg.spatial_shape
    imgs, masks, labels, groups = [], [], [], []
    for i in range(3 * n_per_class):
        label = i % 3
        img, mask = phantom_image(label, shape, rng)
        imgs.append(img)
        masks.append(mask)
        labels.append(label)
        groups.append(f"p{i // 6:03d}")
    arrays = {"images": np.stack(imgs), "masks": np.stack(masks), "labels": np.array(labels),
              "group_names": groups, "split": patient_split(groups, cfg.val_fraction, cfg.test_fraction, cfg.seed)}
    attrs = {"source": f"phantom ({n_per_class} per class)", "class_names": ["disc", "two discs", "ring"],
             "mask_names": ["background", "structure"], "normalisation": "synthetic, already in [0, 1]",
             "spacing": [1.0] * len(shape)}
    return arrays, attrs
