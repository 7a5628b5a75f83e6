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


REF_BLOCK_BYTES = 128 * 2**20  # references held at once when read from a store: the queries are read once a block


def nearest(queries: Any, refs: Any, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """RMS distance from each query to its nearest reference, and that reference's index. `queries` (numpy, a Zarr
    array or `Rows`) is read `batch` rows at a time (fewer for large samples: `rows_per_batch`). `refs` in memory
    are used whole; read from a store (`Rows`, Zarr) they are read REF_BLOCK_BYTES at a time, the queries once per
    block, and each query keeps the nearest so far (the first of equal distances, as in one pass)."""
    batch = rows_per_batch(queries, batch)
    n_refs = refs.shape[0]
    block = n_refs if isinstance(refs, np.ndarray) else rows_per_batch(refs, n_refs, REF_BLOCK_BYTES)
    best = np.full(queries.shape[0], np.inf, dtype=np.float32)
    where = np.zeros(queries.shape[0], dtype=np.int64)
    for r0 in range(0, n_refs, block):
        r = torch.from_numpy(np.asarray(refs[r0:r0 + block], np.float32)).flatten(1)
        for i in range(0, queries.shape[0], batch):
            q = torch.from_numpy(np.asarray(queries[i:i + batch], np.float32)).flatten(1)
            v, j = (torch.cdist(q, r) / np.sqrt(q.shape[1])).min(1)
            v, j = v.numpy(), j.numpy()
            closer = v < best[i:i + batch]
            best[i:i + batch][closer], where[i:i + batch][closer] = v[closer], j[closer] + r0
    return best, where


def copy_threshold(data_path: str | Path, train_indices: list[int], quantile: float) -> float:
    """The memorisation audit's threshold for a generator: the `quantile` of real test images' RMS distance to
    the nearest image it was trained on (`train_indices` of the train split)."""
    train, test = load_split(data_path, "train")["images"], load_split(data_path, "test")["images"]
    return float(np.quantile(nearest(test, train[np.asarray(train_indices)])[0], quantile))
