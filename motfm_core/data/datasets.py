"""Readers for training jobs: lazy PyTorch / MONAI-style datasets over motfm Zarr stores, mixing, dask.

Each dataset opens its store lazily in the process that reads it, so it is safe with
`DataLoader(num_workers > 0)`: no open handle is pickled into the workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import zarr
from torch.utils.data import ConcatDataset, Dataset, Subset

from motfm_core.data.rows import Rows
from motfm_core.data.store import SPLITS, open_store
from motfm_core.data.synthetic import require_complete
from motfm_core.errors import BadInput

__all__ = ["as_dask", "mix_real_synthetic", "Rows", "ZarrDictDataset", "ZarrImageDataset"]

class ZarrImageDataset(Dataset):
    """(image, label) pairs from a real (`split` selects) or synthetic store, one sample read per item.

    image: float32 tensor (C, H, W[, D]) in [0, 1]; label: int. Synthetic stores must be complete.
    """

    def __init__(self, path: str | Path, split: str | None = None, transform: Callable | None = None) -> None:
        # the version `latest` points to now: a publish during training must not switch versions under it
        self.path, self.transform, self._root = str(Path(path).resolve()), transform, None
        root = zarr.open_group(self.path, mode="r", zarr_format=3)
        n = root["labels"].shape[0]
        if "split" in root.array_keys():
            open_store(self.path)  # refuses a real dataset with a chunk file missing (zarr would serve zeros)
            if split is not None and split not in SPLITS:
                raise BadInput(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
            self.index = (np.arange(n) if split is None else np.nonzero(root["split"][:] == SPLITS[split])[0])
        else:
            if split is not None:
                raise BadInput(f"{path}: a synthetic store has no splits; leave split=None")
            require_complete(path)
            self.index = np.arange(n)
        self.has_masks = "masks" in root.array_keys()

    def _store(self) -> zarr.Group:
        if self._root is None:  # opened in the reading process (DataLoader workers included)
            self._root = zarr.open_group(self.path, mode="r", zarr_format=3)
        return self._root

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_root": None}

    def __len__(self) -> int:
        return len(self.index)

    def item(self, i: int) -> dict[str, Any]:
        """The raw sample as a dict: image, label and, when the store has them, mask."""
        j, root = int(self.index[i]), self._store()
        out: dict[str, Any] = {"image": torch.from_numpy(np.asarray(root["images"][j], dtype=np.float32)),
                               "label": int(root["labels"][j])}
        if self.has_masks:
            out["mask"] = torch.from_numpy(np.asarray(root["masks"][j]))
        return out

    def __getitem__(self, i: int):
        d = self.item(i)
        image = self.transform(d["image"]) if self.transform else d["image"]
        return image, d["label"]


class ZarrDictDataset(ZarrImageDataset):
    """MONAI-style dict samples {"image", "label"[, "mask"]}; `transform` is a MONAI dict transform (e.g.
    `monai.transforms.Compose([RandFlipd(keys=["image", "mask"], prob=0.5)])`)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        d = self.item(i)
        return self.transform(d) if self.transform else d


def mix_real_synthetic(real: Dataset, synthetic: Dataset, ratio: float, seed: int = 0) -> ConcatDataset:
    """All of `real` plus round(ratio * len(real)) synthetic samples drawn without replacement."""
    if ratio < 0:
        raise BadInput(f"ratio must be >= 0, got {ratio}")
    n_real, n_syn = len(real), len(synthetic)  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours do
    n = int(round(ratio * n_real))
    if n > n_syn:
        raise BadInput(f"ratio {ratio} needs {n} synthetic samples, the store has {n_syn} (ratio <= "
                       f"{n_syn / max(1, n_real):.2f} fits {n_real} real samples); sample more or lower the ratio")
    pick = np.random.RandomState(seed).choice(n_syn, n, replace=False)
    return ConcatDataset([real, Subset(synthetic, pick.tolist())])


def as_dask(path: str | Path, name: str = "images"):
    """A lazy dask array over one array of a store, one dask chunk per Zarr shard (or chunk, when unsharded);
    refuses a synthetic store with unfinished shards."""
    import dask.array as da

    path = Path(path).resolve()  # pinned to the version `latest` points to now
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    if "num_shards" in root.attrs:
        require_complete(path)
    else:
        open_store(path)
    arr = root[name]
    return da.from_zarr(arr, chunks=arr.shards or arr.chunks)
