"""Latents of a trained autoencoder: the train split encoded once and scaled to unit variance (`encode_train_split`),
masks carried to the latent grid (`latent_masks`), and the codec that encodes and decodes images whole or in
overlapping windows blended with Gaussian weights (`LatentCodec`), as the memory plan allows."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from monai.inferers import sliding_window_inference
from monai.networks.nets import AutoencoderKL

from motfm_core.config import AutoencoderConfig
from motfm_core.data.rows import take_rows
from motfm_core.data.store import SPLITS, mask_classes, open_store, stratified_subset
from motfm_core.device import default_device
from motfm_core.errors import InputMissing
from motfm_core.files import atomic_path, file_sha256
from motfm_core.model.autoencoder import config_of, load_autoencoder
from motfm_core.model.memory import WHOLE_TILE, whole_fits
from motfm_core.scale import to_image_space, to_model_space

__all__ = ["encode_train_split", "LatentCodec", "latent_masks"]

log = logging.getLogger(__name__)

ENCODE_BATCH = 8  # training images encoded (and their latents written) at a time


def encode_train_split(data_path: str | Path, autoencoder: str | Path, cfg: AutoencoderConfig,
                       device: str | torch.device | None = None,
                       progress: Callable[[str], None] | None = None, real_fraction: float = 1.0,
                       subset_seed: int = 0, out_dir: str | Path | None = None) -> Path:
    """The generator's share of the train split of `data_path` (`real_fraction`, class-stratified by `subset_seed`:
    a low-data generator's latents and their statistics come from its own share only) as latents of unit variance
    (masks on the latent grid, `latent_masks`) in `<out_dir>/latents.zarr` (default: beside the autoencoder),
    encoded once per autoencoder, dataset and share, with `indices` into the train split. Its attrs hold the
    `record` a latent checkpoint keeps to decode (autoencoder path and sha256, the latents' mean and scale, cfg's
    window)."""
    say = progress or log.info
    root = open_store(data_path)
    sha = file_sha256(autoencoder)
    key = f"{sha[:16]}-{root.attrs['fingerprint'][:16]}-{real_fraction:g}-{subset_seed}"
    out = Path(out_dir or Path(autoencoder).parent) / "latents.zarr"
    if (out / "zarr.json").exists() and zarr.open_group(str(out), mode="r").attrs.get("key") == key:
        return out
    dev = default_device(device)
    ae, meta = load_autoencoder(autoencoder, dev)
    codec = LatentCodec(ae, replace(config_of(meta), tile=cfg.tile, tile_overlap=cfg.tile_overlap), 0.0, 1.0)
    rows = np.nonzero(root["split"][:] == SPLITS["train"])[0]
    indices = stratified_subset(np.asarray(root["labels"][:])[rows], real_fraction, subset_seed)
    rows = rows[indices]
    if out.exists():
        shutil.rmtree(out)  # a cache of another autoencoder or dataset
    t0, total, squares, count = time.time(), 0.0, 0.0, 0
    with atomic_path(out) as tmp:
        # written a batch at a time as encoded, then scaled in place: the share's latents are never held whole
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        images: Any = None
        for i in range(0, len(rows), ENCODE_BATCH):
            z = codec.encode(torch.from_numpy(take_rows(root["images"], rows[i:i + ENCODE_BATCH])).to(dev)).cpu()
            z64 = z.numpy().astype(np.float64)
            total, squares, count = total + z64.sum(), squares + (z64 ** 2).sum(), count + z64.size
            if images is None:
                images = group.create_array("images", shape=(len(rows), *z.shape[1:]), chunks=(1, *z.shape[1:]),
                                            dtype="float32")
            images[i:i + len(z)] = z.numpy()
        mean = float(total / count)
        std = float(np.sqrt(max(squares / count - mean ** 2, 0.0)))
        for i in range(0, len(rows), ENCODE_BATCH):
            images[i:i + ENCODE_BATCH] = ((images[i:i + ENCODE_BATCH] - mean) / std).astype(np.float32)
        record = {"checkpoint": str(Path(autoencoder).resolve()), "sha256": sha, "mean": mean, "scale": 1.0 / std,
                  "tile": cfg.tile, "overlap": cfg.tile_overlap, "sample_shape": list(root["images"].shape[1:])}
        say(f"autoencoder: encoded {len(rows)} training images to {images.shape[1]} x "
            f"{'x'.join(map(str, images.shape[2:]))} latents in {time.time() - t0:.0f}s (mean {mean:.3f}, std "
            f"{std:.3f}: scaled to unit variance)")
        group.create_array("labels", data=np.asarray(root["labels"][:])[rows].astype(np.int64))
        group.create_array("indices", data=indices.astype(np.int64))
        if "masks" in root.array_keys():
            classes = mask_classes(root)
            grid = None
            for i in range(0, len(rows), ENCODE_BATCH):
                m = latent_masks(take_rows(root["masks"], rows[i:i + ENCODE_BATCH]), codec.factor, classes)
                if grid is None:
                    grid = group.create_array("masks", shape=(len(rows), *m.shape[1:]), chunks=(1, *m.shape[1:]),
                                              dtype="uint8")
                grid[i:i + len(m)] = m
        group.attrs.update({"key": key, "record": record, "source": str(data_path)})
    return out


def latent_masks(masks: np.ndarray, factor: int, classes: int) -> np.ndarray:
    """Integer masks (N, 1, *S) on the latent grid (N, 1, *S/factor): the class covering most of each latent
    voxel's factor^dims block (ties to the lower class), so thin structures are kept where they dominate."""
    dims = masks.ndim - 2
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    out = []
    for m in masks:  # one image at a time: its one-hot is `classes` x the mask's size
        one_hot = F.one_hot(torch.from_numpy(m[0].astype(np.int64)), classes).movedim(-1, 0).float()[None]
        out.append(pool(one_hot, factor).argmax(1).to(torch.uint8).numpy())
    return np.stack(out)


@dataclass
class LatentCodec:
    """A trained autoencoder with its latent statistics: images [0, 1] <-> latents of unit variance, one image at a
    time, whole or in `cfg.tile`-voxel latent windows (0: whole when one image fits the plan, else WHOLE_TILE)."""

    autoencoder: AutoencoderKL
    cfg: AutoencoderConfig
    mean: float
    scale: float

    @classmethod
    def load(cls, record: dict[str, Any], device: str | torch.device = "cpu") -> "LatentCodec":
        """From the record a latent checkpoint keeps (`encode_train_split`'s): autoencoder path, hash, mean, scale."""
        path = Path(record["checkpoint"])
        if not path.exists() or file_sha256(path) != record["sha256"]:
            raise InputMissing(f"{path}: the autoencoder this latent model was trained with is missing or "
                               "changed; re-run its train-autoencoder stage")
        ae, meta = load_autoencoder(path, device)
        cfg = replace(config_of(meta), tile=int(record.get("tile", 0)), tile_overlap=float(record.get("overlap", 0.25)))
        return cls(ae, cfg, float(record["mean"]), float(record["scale"]))

    @property
    def factor(self) -> int:
        return self.cfg.factor

    def window(self, latent_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The latent window for images of this latent shape; None = whole images."""
        device = next(self.autoencoder.parameters()).device
        tile = self.cfg.tile or (0 if whole_fits(self.cfg, latent_shape, device) else WHOLE_TILE)
        if not tile or all(s <= tile for s in latent_shape):
            return None
        return tuple(min(tile, s) for s in latent_shape)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, *S) in [0, 1] -> scaled latents (N, latent_channels, *S/factor): the posterior mean."""
        def mean_of(x: torch.Tensor) -> torch.Tensor:
            return self.autoencoder.encode(x)[0]

        window = self.window(tuple(s // self.factor for s in images.shape[2:]))
        out = []
        for x in to_model_space(images.float()).split(1):
            z = mean_of(x) if window is None else sliding_window_inference(
                x, tuple(w * self.factor for w in window), 1, mean_of, self.cfg.tile_overlap, mode="gaussian")
            out.append((z - self.mean) * self.scale)
        return torch.cat(out)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, latent_channels, *s) -> images (N, C, *s x factor) in [0, 1] (float32)."""
        window = self.window(tuple(z.shape[2:]))
        out = []
        for zi in (z.float() / self.scale + self.mean).split(1):
            x = self.autoencoder.decode(zi) if window is None else sliding_window_inference(
                zi, window, 1, self.autoencoder.decode, self.cfg.tile_overlap, mode="gaussian")
            out.append(to_image_space(x.float()))
        return torch.cat(out)
