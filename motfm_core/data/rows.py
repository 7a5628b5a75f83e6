"""Reading rows (samples) of a stored array a batch at a time, from numpy or Zarr, with memory that does not grow
with the store."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Rows", "largest", "row_bytes", "rows_per_batch", "take_rows"]


def row_bytes(array: Any) -> int:
    """Bytes of one row (sample) of `array` (numpy or Zarr, (N, ...)) in memory."""
    return int(np.prod(array.shape[1:])) * np.dtype(array.dtype).itemsize


def rows_per_batch(array: Any, most: int = 256, budget: int = 2**25) -> int:
    """How many rows of `array` (numpy or Zarr, (N, ...)) to read at once: `most`, fewer when they would pass
    `budget` bytes (32 MiB: 256 2D images of 48 px, 8 volumes of 64^3; a network's activations on them are many
    times that)."""
    return max(1, min(most, budget // max(1, row_bytes(array))))


def take_rows(array: Any, idx: np.ndarray) -> np.ndarray:
    """`array[idx]` for integer row indices in any order and with repeats, for a numpy or a Zarr array (or `Rows`).
    From a sharded Zarr array, the sorted distinct rows are read with plain slices of whole chunks, at most
    `rows_per_batch` rows (plus a chunk) at a time, each chunk once: not zarr's `oindex`, which on a sharded array
    held many times the rows' size in memory (RESULTS.md, "Evaluation memory"). From an unsharded one (the real
    store, a chunk per sample), `rows_per_batch` rows at a time by orthogonal selection: only their chunks."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(array, np.ndarray) or not hasattr(array, "chunks"):  # in memory, or `Rows` (which reads its own)
        return array[idx]
    rows, inverse = np.unique(idx, return_inverse=True)
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    chunk, step = array.chunks[0], rows_per_batch(array)
    if getattr(array, "shards", None) is None:  # unsharded (the real store: a chunk a sample): just the rows' chunks
        for i in range(0, len(rows), step):  # (slices would read every row between the ones asked for)
            out[i:i + step] = array.get_orthogonal_selection((rows[i:i + step],))
        return out if len(rows) == len(idx) and np.array_equal(rows, idx) else out[inverse]
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


class Rows:
    """Chosen rows of several arrays, stacked into one (N, ...) array without copying them. Each part is an array
    (numpy, or Zarr: read only when its rows are asked for) with the indices of its rows to use (None: all);
    `rows[idx]` gathers integer indices, a slice or one index into a numpy array. A downstream training set of real
    images in memory and synthetic images left in their store; a real split left in its store (`store.open_split`)."""

    def __init__(self, *parts: tuple[Any, np.ndarray | None]) -> None:
        self.parts = [(a, np.arange(a.shape[0]) if i is None else np.asarray(i, dtype=np.int64)) for a, i in parts]
        self.starts = np.cumsum([0] + [len(i) for _, i in self.parts])
        first = self.parts[0][0]
        if any(a.shape[1:] != first.shape[1:] for a, _ in self.parts):
            raise ValueError(f"parts of different sample shapes: {[a.shape[1:] for a, _ in self.parts]}")
        self.shape = (int(self.starts[-1]), *first.shape[1:])
        self.dtype = np.dtype(first.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: np.ndarray | slice | int) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        for k, (array, rows) in enumerate(self.parts):
            sel = part == k
            if sel.any():
                out[sel] = take_rows(array, rows[idx[sel] - self.starts[k]])
        return out


def largest(array: Any) -> Any:
    """The largest value of `array` (numpy, Zarr or `Rows`), read `rows_per_batch` rows at a time."""
    if isinstance(array, np.ndarray):
        return array.max()
    step = rows_per_batch(array)
    return max(np.asarray(array[i:i + step]).max() for i in range(0, array.shape[0], step))
