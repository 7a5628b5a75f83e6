"""Random batches read from a store: the same batches for any number of loader workers and after a resume, each
the rows drawn for its step."""

from __future__ import annotations

import numpy as np
import torch

from motfm_core.data.loader import RandomBatches, batch_loader
from motfm_core.data.store import open_store, split_rows


def _batches(store, workers: int, start: int, stop: int) -> list[tuple[torch.Tensor, ...]]:
    rows, labels = split_rows(open_store(store), "train")
    batches = RandomBatches(store, rows, labels, 5, seed=3, start=start, stop=stop, masks=True)
    if workers == 0:
        return list(batches)
    return list(batch_loader(batches, pin=False, workers=workers))


def test_batches_are_the_rows_drawn_for_each_step_whatever_the_workers(phantom_store):
    root = open_store(phantom_store)
    rows, labels = split_rows(root, "train")
    here, loaded, resumed = (_batches(phantom_store, 0, 0, 7), _batches(phantom_store, 2, 0, 7),
                             _batches(phantom_store, 2, 4, 7))
    assert len(here) == len(loaded) == 7 and len(resumed) == 3
    for a, b in zip(here, loaded):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for a, b in zip(here[4:], resumed):  # a resume at step 4 reads steps 4.. as an uninterrupted run does
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    idx = RandomBatches(phantom_store, rows, labels, 5, seed=3, start=0, stop=7, masks=True).indices(2)
    images, y, masks = here[2]
    np.testing.assert_array_equal(images.numpy(), root["images"][:][rows[idx]])
    np.testing.assert_array_equal(masks.numpy(), root["masks"][:][rows[idx]])
    np.testing.assert_array_equal(y.numpy(), labels[idx])
    assert not torch.equal(here[0][0], here[1][0])  # steps draw different rows
