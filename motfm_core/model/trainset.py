"""What a generator trains on: its share of the train split (read whole, or row by row from the store when it does
not fit beside a step), and what holding it costs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from motfm_core.config import ModelConfig, TrainConfig
from motfm_core.data.store import mask_classes, open_store, read_rows, split_rows, stratified_subset
from motfm_core.errors import BadInput

__all__ = ["masked", "one_hot", "streams", "training_bytes", "training_rows", "training_set"]


def training_set(data_path: str | Path, cfg: TrainConfig, target: str = "images",
                 latents: str | Path | None = None) -> dict[str, np.ndarray]:
    """The examples a generator trains on: the train split, or its class-stratified `cfg.real_fraction` share
    (`stratified_subset`, seeded by `cfg.subset_seed`), with `indices` into the train split. target="masks"
    gives the one-hot masks as images; `latents` (`encode_train_split`'s store of the train split) gives the
    images' latents and masks on the latent grid instead."""
    if latents is not None:  # encoded from this generator's share alone (`encode_train_split`), with its indices
        z = zarr.open_group(str(latents), mode="r", zarr_format=3)
        out = {name: np.asarray(z[name][:]) for name in z.array_keys()}
    else:  # only the share's rows are read: a low-data generator holds its share, never the whole split
        root = open_store(data_path)
        rows, _, idx = training_rows(root, cfg)
        out = read_rows(root, rows[idx])
        out["indices"] = idx
    if target == "masks":
        if "masks" not in out:
            raise BadInput(f"{data_path}: a mask generator needs a dataset with masks; this one has none")
        # one channel per class of the store's masks, as the model is sized (`model_for_data`) and as a streamed
        # batch is encoded: a class missing from this share still gets its channel
        k = mask_classes(root) if latents is None else int(out["masks"].max()) + 1
        out["images"] = one_hot(torch.from_numpy(out["masks"]), k).numpy()
        out.pop("masks")
    return out


def training_rows(root: Any, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the train split's rows in an opened store, their labels, the positions of this generator's
    `cfg.real_fraction` share among them (`stratified_subset`))."""
    rows, labels = split_rows(root, "train")
    return rows, labels, stratified_subset(labels, cfg.real_fraction, cfg.subset_seed)


def streams(cfg: TrainConfig) -> bool:
    """Whether a training set can be read from the store a batch at a time instead of held whole: every one can (a
    generator's images, a latent model's latents from their own store, the mask generator's masks one-hot encoded
    per batch) but reflow's couplings (`train.reflow_pairs` of them, made by the teacher), which are held."""
    return not cfg.reflow_from


def one_hot(masks: torch.Tensor, k: int) -> torch.Tensor:
    """Masks (N, 1, *S) of labels 0..k-1 as float32 one-hot images (N, k, *S): what a mask generator learns, held
    or read a batch at a time."""
    return torch.nn.functional.one_hot(masks[:, 0].long(), k).movedim(-1, 1).float()


def training_bytes(data_path: str | Path, cfg: TrainConfig, model_cfg: ModelConfig, target: str = "images") -> int:
    """Bytes of the training set as `_fit` holds it on the device: float32 images (one-hot masks for the mask
    generator) and, for a mask-conditioned model, the uint8 masks."""
    root = open_store(data_path)
    split = np.asarray(root["split"][:])
    n = len(stratified_subset(np.asarray(root["labels"][:])[split == 0], cfg.real_fraction, cfg.subset_seed))
    if cfg.reflow_from:
        n = 2 * cfg.reflow_pairs  # the teacher's (x0, x1) couplings
    return n * (4 * math.prod(model_cfg.sample_shape) + (math.prod(model_cfg.spatial_shape) if masked(model_cfg)
                                                           else 0))


def masked(model_cfg: ModelConfig) -> bool:
    """Whether a model is conditioned on masks (its training set holds them)."""
    return model_cfg.mask_conditioning != "none"
