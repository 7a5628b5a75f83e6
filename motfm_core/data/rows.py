"""Reading rows (samples) of a stored array a batch at a time, from numpy or Zarr, with memory that does not grow
with the store."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["row_bytes", "rows_per_batch", "take_rows"]


def row_bytes(array: Any) -> int:
    """Bytes of one row (sample) of `array` (numpy or Zarr, (N, ...)) in memory."""
    return int(np.prod(array.shape[1:])) * np.dtype(array.dtype).itemsize


def rows_per_batch(array: Any, most: int = 256, budget: int = 2**25) -> int:
    """How many rows of `array` (numpy or Zarr, (N, ...)) to read at once: `most`, fewer when they would pass
    `budget` bytes (32 MiB: 256 2D images of 48 px, 8 volumes of 64^3; a network's activations on them are many
    times that)."""
    return max(1, min(most, budget // max(1, row_bytes(array))))


def take_rows(array: Any, idx: np.ndarray) -> np.ndarray:
    """`array[idx]` for integer row indices in any order and with repeats, for a numpy or a Zarr array. From Zarr,
    the sorted distinct rows are read with plain slices of whole chunks, at most `rows_per_batch` rows (plus a
    chunk) at a time, each chunk once. Not zarr's `oindex`: on a sharded array it held many times the rows' size
    in memory (RESULTS.md, "Evaluation memory")."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(array, np.ndarray):
        return array[idx]
    rows, inverse = np.unique(idx, return_inverse=True)
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    chunk, step = array.chunks[0], rows_per_batch(array)
    i = 0
    while i < len(rows):
        start = rows[i] // chunk * chunk
        j = int(np.searchsorted(rows, start + max(chunk, step), side="left"))
        stop = min(array.shape[0], (rows[j - 1] // chunk + 1) * chunk)
        out[i:j] = array[start:stop][rows[i:j] - start]
        i = j
    if len(rows) == len(idx) and np.array_equal(rows, idx):
        return out  # already sorted and distinct (an arm's rows): no second copy
    return out[inverse]
