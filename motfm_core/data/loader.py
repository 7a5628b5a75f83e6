"""Random training batches read from a store, for a training set larger than the memory it is given.

Step `s`'s batch is `batch` rows drawn from the training rows by a generator seeded with (seed, s): the same batches
for any number of loader workers, and after a resume at step `s`. A batch is read with `take_rows` (sorted rows, one
chunk file per sample in a real store), in DataLoader worker processes that read ahead of the step where cores are
free for them (on CUDA; on a CPU only beyond the training's threads), into pinned memory on CUDA. What a loader
holds is a few batches, never the dataset (`loader_bytes`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from motfm_core.data.rows import take_rows

__all__ = ["PREFETCH", "WORKERS", "RandomBatches", "batch_loader", "loader_bytes", "loader_workers"]

WORKERS = 2  # loader processes at most: reading and decoding a batch overlaps the step that trains on the one before
PREFETCH = 2  # batches each worker reads ahead


class RandomBatches(IterableDataset):
    """(images (B, C, *S) float32, labels (B,), masks (B, 1, *S) uint8) of steps `start`..`stop` - 1, each of
    `batch` rows of `rows` (store rows) drawn from (seed, step); images or masks not asked for (`images`, `masks`)
    are empty tensors (a mask generator reads only the masks)."""

    def __init__(self, path: str | Path, rows: np.ndarray, labels: np.ndarray, batch: int, seed: int, start: int,
                 stop: int, masks: bool, images: bool = True) -> None:
        self.path, self.rows, self.labels = str(Path(path).resolve()), np.asarray(rows), np.asarray(labels)
        self.batch, self.seed, self.start, self.stop, self.masks = batch, seed, start, stop, masks
        self.images = images

    def indices(self, step: int) -> np.ndarray:
        """Positions into `rows` of step `step`'s batch."""
        return np.random.default_rng([self.seed, step]).integers(0, len(self.rows), self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        first, every = (0, 1) if info is None else (info.id, info.num_workers)
        root: Any = zarr.open_group(self.path, mode="r", zarr_format=3)  # opened here: in the worker process
        for step in range(self.start + first, self.stop, every):
            idx = self.indices(step)
            images = torch.from_numpy(take_rows(root["images"], self.rows[idx])) if self.images else torch.empty(0)
            masks = torch.from_numpy(take_rows(root["masks"], self.rows[idx])) if self.masks else torch.empty(0)
            yield images, torch.from_numpy(self.labels[idx]).long(), masks


def loader_workers(cuda: bool) -> int:
    """Loader processes for a training step on CUDA (WORKERS) or on a CPU (as many as the cores torch's threads leave
    free, at most WORKERS): on a CPU a loader process that takes a core the step's threads use slows every step more
    than reading in the step costs (RESULTS.md, "Training from the store")."""
    return WORKERS if cuda else max(0, min(WORKERS, (os.cpu_count() or 1) - torch.get_num_threads()))


def batch_loader(batches: RandomBatches, pin: bool, workers: int | None = None) -> DataLoader:
    """A DataLoader over `batches` whose workers (`loader_workers` unless given; 0: read in the step) read ahead, in
    step order (pinned memory when `pin`: a CUDA step)."""
    workers = min(loader_workers(pin) if workers is None else workers, max(0, batches.stop - batches.start))
    return DataLoader(batches, batch_size=None, num_workers=workers, pin_memory=pin,
                      prefetch_factor=PREFETCH if workers else None)


def loader_bytes(row_bytes: int, batch: int) -> int:
    """What a loader holds at most: the batch trained on and PREFETCH batches read ahead by each of up to WORKERS
    workers."""
    return row_bytes * batch * (1 + WORKERS * PREFETCH)
