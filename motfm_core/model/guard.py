"""The copy guard's measure: the RMS distance from each image to its nearest image of a reference set.

The sampler redraws a sample nearer to a training image than `copy_threshold` (the same quantile of real test
images' distances that the memorisation audit flags with), and the audit (`evaluation.privacy`) measures every
synthetic set with the same search; both import it from here, so the model never imports the evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from motfm_core.data.rows import rows_per_batch
from motfm_core.data.store import load_split

__all__ = ["copy_threshold", "nearest"]


def nearest(queries: Any, refs: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """RMS distance from each query to its nearest reference, and that reference's index. `queries` (numpy or a
    Zarr array) is read `batch` rows at a time (fewer for large samples: `rows_per_batch`)."""
    r = torch.from_numpy(np.asarray(refs, np.float32)).flatten(1)
    batch = rows_per_batch(queries, batch)
    dists, idxs = [], []
    for i in range(0, queries.shape[0], batch):
        q = torch.from_numpy(np.asarray(queries[i:i + batch], np.float32)).flatten(1)
        d = torch.cdist(q, r) / np.sqrt(q.shape[1])
        v, j = d.min(1)
        dists.append(v.numpy())
        idxs.append(j.numpy())
    return np.concatenate(dists), np.concatenate(idxs)


def copy_threshold(data_path: str | Path, train_indices: list[int], quantile: float) -> float:
    """The memorisation audit's threshold for a generator: the `quantile` of real test images' RMS distance to
    the nearest image it was trained on (`train_indices` of the train split)."""
    train, test = load_split(data_path, "train")["images"], load_split(data_path, "test")["images"]
    return float(np.quantile(nearest(test, train[np.asarray(train_indices)])[0], quantile))
