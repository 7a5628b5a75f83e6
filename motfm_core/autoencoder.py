"""The autoencoder of latent flow matching (`model.space="latent"`): images <-> latents `factor` times smaller per axis.

MONAI's KL-regularised `AutoencoderKL`, without attention, so it is fully convolutional: its stage trains it on random
patches (L1 + KL, optionally a patch adversarial loss), which fits memory whatever the image size, and it then encodes
and decodes whole images, or overlapping windows blended with Gaussian weights where a whole image would not fit. The
flow trains on the train split's latents, encoded once (`encode_train_split`) and shifted and scaled to unit variance
(`LatentCodec`); every sample is decoded before it is written, so readers, the audit and the metrics see images.
Checkpoints hold tensors and plain values only (`torch.load(..., weights_only=True)`), published atomically.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from monai.inferers import sliding_window_inference
from monai.networks.nets import AutoencoderKL

from motfm_core import __version__
from motfm_core.config import AutoencoderConfig, TrainConfig, auto_norm_groups, config_hash
from motfm_core.data.rows import take_rows
from motfm_core.data.store import SPLITS, open_store, stratified_subset
from motfm_core.memory import GB, PROCESS_GB, SAMPLING_SHARE, MemoryPlanError, available_memory, trace_peak
from motfm_core.step import lr_at
from motfm_core.utils import (
    atomic_path,
    default_device,
    file_sha256,
    resumable,
    save_atomic,
    to_image_space,
    to_model_space,
)

__all__ = ["autoencoder_plan", "build_autoencoder", "encode_train_split", "LatentCodec", "latent_masks",
           "load_autoencoder", "train_autoencoder", "whole_fits", "WHOLE_TILE"]

log = logging.getLogger(__name__)
WHOLE_TILE = 32  # latent side of a window when a whole image does not fit (128 px at the default 4x)
# the settings that change neither the trained weights nor what they encode: not in the stage's key
EXECUTION_ONLY = ("tile", "tile_overlap", "checkpoint", "checkpoint_every")


def build_autoencoder(cfg: AutoencoderConfig, spatial_dims: int, in_channels: int) -> AutoencoderKL:
    """MONAI `AutoencoderKL` without attention (fully convolutional: patches in training, whole images after)."""
    levels = len(cfg.channels)
    return AutoencoderKL(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels,
                         channels=tuple(cfg.channels), latent_channels=cfg.latent_channels,
                         num_res_blocks=(cfg.num_res_blocks,) * levels, norm_num_groups=auto_norm_groups(cfg.channels),
                         attention_levels=(False,) * levels, with_encoder_nonlocal_attn=False,
                         with_decoder_nonlocal_attn=False)


def _kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    return (0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1)).flatten(1).sum(1).mean()


def _patch_sides(image_shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    return tuple(min(size, side) for side in image_shape)


def _patches(images: np.ndarray, sides: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    """One random patch of `sides` from each image (N, C, *S), in model space [-1, 1]."""
    out = []
    for img in images:
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(img.shape[1:], sides, strict=True)]
        out.append(img[(slice(None), *(slice(a, a + p) for a, p in zip(start, sides, strict=True)))])
    return to_model_space(torch.from_numpy(np.stack(out).astype(np.float32)))


def _schedule(cfg: AutoencoderConfig) -> TrainConfig:
    """The learning-rate schedule of the flow's training (`step.lr_at`: linear warm-up over 5% of the steps, then
    cosine decay to 10% of autoencoder.lr)."""
    return TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=max(1, cfg.steps // 20))


def _key(cfg: AutoencoderConfig, fingerprint: str, *subset: float) -> str:
    return config_hash({k: v for k, v in asdict(cfg).items() if k not in EXECUTION_ONLY}, fingerprint, __version__,
                       "cosine", *subset)


def _adversary(cfg: AutoencoderConfig, sides: tuple[int, ...], in_channels: int) -> torch.nn.Module | None:
    """MONAI's patch discriminator for `adversarial_weight` > 0: three strided layers on 64-voxel patches, fewer on
    smaller ones (each halves the patch)."""
    if not cfg.adversarial_weight:
        return None
    from monai.networks.nets import PatchDiscriminator

    layers = max(1, min(3, int(math.log2(min(sides))) - 3))
    return PatchDiscriminator(spatial_dims=len(sides), num_layers_d=layers, channels=32, in_channels=in_channels,
                              out_channels=1)


def train_autoencoder(data_path: str | Path, cfg: AutoencoderConfig, out_dir: str | Path,
                      device: str | torch.device | None = None, progress: Callable[[str], None] | None = None,
                      advance: Callable[[float], None] | None = None, real_fraction: float = 1.0,
                      subset_seed: int = 0) -> Path:
    """Train (or resume from `last.pt`, or reuse) the autoencoder on random patches of the train split (or of its
    class-stratified `real_fraction` share, the one a low-data generator trains on, so that nothing else of the split
    leaks into it); returns `out_dir/autoencoder.pt`. With `cfg.checkpoint` that trained autoencoder is checked
    against the data and used."""
    say = progress or log.info
    root = open_store(data_path)
    fingerprint, images = root.attrs["fingerprint"], root["images"]
    image_shape = tuple(images.shape[2:])
    if cfg.checkpoint:
        return _check_given(cfg.checkpoint, fingerprint, image_shape, int(images.shape[1]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subset = (real_fraction, subset_seed) if real_fraction < 1 else ()
    key, final, last = _key(cfg, fingerprint, *subset), out_dir / "autoencoder.pt", out_dir / "last.pt"
    if final.exists() and torch.load(final, weights_only=True, map_location="cpu").get("run_key") == key:
        say(f"autoencoder: {final} already trained with this data and config (key {key}); reusing it")
        return final
    dev = default_device(device)
    dims, channels = len(image_shape), int(images.shape[1])
    rows = np.nonzero(root["split"][:] == SPLITS["train"])[0]
    rows = rows[stratified_subset(np.asarray(root["labels"][:])[rows], real_fraction, subset_seed)]
    sides = _patch_sides(image_shape, cfg.patch_size)
    torch.manual_seed(cfg.seed)
    ae = build_autoencoder(cfg, dims, channels).to(dev)
    disc = _adversary(cfg, sides, channels)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=1e-4)
    opt_d = None if disc is None else torch.optim.AdamW(disc.to(dev).parameters(), lr=cfg.lr, weight_decay=1e-4)
    step, losses = 0, []
    state = resumable(last, key, dev)
    if state is not None:
        ae.load_state_dict(state["state"])
        opt.load_state_dict(state["optimizer"])
        if disc is not None and opt_d is not None:
            disc.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["optimizer_d"])
        step, losses = state["step"], list(state["losses"])
        say(f"autoencoder: resuming from {last} at step {step}/{cfg.steps}")
    meta = {"config": asdict(cfg), "run_key": key, "real_fraction": real_fraction, "subset_seed": subset_seed,
            "data_fingerprint": fingerprint, "data_path": str(data_path),
            "spatial_dims": dims, "in_channels": channels, "image_shape": list(image_shape), "factor": cfg.factor,
            "patch": list(sides)}
    say(f"autoencoder: {sum(p.numel() for p in ae.parameters()) / 1e6:.2f}M parameters, {cfg.factor}x per axis to "
        f"{cfg.latent_channels} latent channels; {cfg.steps} steps of {cfg.batch_size} patches of "
        f"{'x'.join(map(str, sides))} from {len(rows)} training images")
    t0, said, first, schedule = time.time(), time.time(), step, _schedule(cfg)
    ae.train()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])  # a step's draws follow from its index: resumable as is
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # (the posterior sample of AutoencoderKL's forward)
        batch = take_rows(images, rows[rng.integers(0, len(rows), cfg.batch_size)])
        x = _patches(batch, sides, rng).to(dev)
        for group in opt.param_groups + ([] if opt_d is None else opt_d.param_groups):
            group["lr"] = lr_at(step, schedule)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            recon, mu, sigma = ae(x)
            loss = F.l1_loss(recon.float(), x) + cfg.kl_weight * _kl(mu.float(), sigma.float())
            adversarial = disc is not None and step >= cfg.adversarial_start
            if adversarial and disc is not None:
                loss = loss + cfg.adversarial_weight * (disc(recon)[-1].float() - 1).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        if adversarial and disc is not None and opt_d is not None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                fake, real = disc(recon.detach())[-1].float(), disc(x)[-1].float()
                loss_d = 0.5 * (fake.pow(2).mean() + (real - 1).pow(2).mean())  # least squares: real 1, fake 0
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        step += 1
        losses.append(float(loss.detach()))
        saving = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if saving:
            extra = {} if disc is None or opt_d is None else {"discriminator": disc.state_dict(),
                                                              "optimizer_d": opt_d.state_dict()}
            save_atomic({**meta, **extra, "step": step, "losses": losses, "state": ae.state_dict(),
                         "optimizer": opt.state_dict()}, last)
        now = time.time()
        if saving or now - said >= 30:
            per = (now - t0) / (step - first)
            say(f"autoencoder: step {step}/{cfg.steps} loss {np.mean(losses[-50:]):.4f}, {per:.2f} s/step, ETA "
                f"{per * (cfg.steps - step):.0f}s" + (", checkpoint" if saving else ""))
            said = now
            if advance:
                advance(step / cfg.steps)
    save_atomic({**meta, "step": step, "losses": losses, "state": ae.state_dict(),
                 "train_seconds": time.time() - t0}, final)
    return final


def _check_given(path: str | Path, fingerprint: str, image_shape: tuple[int, ...], channels: int) -> Path:
    """A user's trained autoencoder, refused (naming it and the fix) unless trained on this data at this size."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"autoencoder.checkpoint={path}: no such file; leave it empty to train one")
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if "state" not in meta or "image_shape" not in meta:
        raise ValueError(f"autoencoder.checkpoint={path}: not an autoencoder.pt of the train-autoencoder stage")
    if meta["data_fingerprint"] != fingerprint:
        raise ValueError(f"autoencoder.checkpoint={path} was trained on other data ({meta['data_path']}); leave "
                         "autoencoder.checkpoint empty to train one on this data")
    if tuple(meta["image_shape"]) != image_shape or meta["in_channels"] != channels:
        raise ValueError(f"autoencoder.checkpoint={path} was trained on {meta['in_channels']} x "
                         f"{'x'.join(map(str, meta['image_shape']))} images, this data is {channels} x "
                         f"{'x'.join(map(str, image_shape))}; leave autoencoder.checkpoint empty to train one")
    return path


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[AutoencoderKL, dict[str, Any]]:
    """The trained autoencoder (eval mode) and its checkpoint's metadata."""
    meta = torch.load(path, map_location=device, weights_only=True)
    ae = build_autoencoder(_config(meta), meta["spatial_dims"], meta["in_channels"]).to(device)
    ae.load_state_dict(meta["state"])
    return ae.eval(), {k: v for k, v in meta.items() if k not in ("state", "optimizer")}


def encode_train_split(data_path: str | Path, autoencoder: str | Path, cfg: AutoencoderConfig,
                       device: str | torch.device | None = None,
                       progress: Callable[[str], None] | None = None) -> Path:
    """The train split of `data_path` as latents of unit variance (masks on the latent grid, `latent_masks`) in
    `<autoencoder's folder>/latents.zarr`, encoded once per autoencoder and dataset. Its attrs hold the `record` a
    latent checkpoint keeps to decode (autoencoder path and sha256, the latents' mean and scale, cfg's window)."""
    say = progress or log.info
    root = open_store(data_path)
    sha = file_sha256(autoencoder)
    key = f"{sha[:16]}-{root.attrs['fingerprint'][:16]}"
    out = Path(autoencoder).parent / "latents.zarr"
    if (out / "zarr.json").exists() and zarr.open_group(str(out), mode="r").attrs.get("key") == key:
        return out
    dev = default_device(device)
    ae, meta = load_autoencoder(autoencoder, dev)
    codec = LatentCodec(ae, replace(_config(meta), tile=cfg.tile, tile_overlap=cfg.tile_overlap), 0.0, 1.0)
    rows = np.nonzero(root["split"][:] == SPLITS["train"])[0]
    t0, latents = time.time(), []
    for i in range(0, len(rows), 8):
        latents.append(codec.encode(torch.from_numpy(take_rows(root["images"], rows[i:i + 8])).to(dev)).cpu())
    z = torch.cat(latents).numpy()
    mean, std = float(z.mean()), float(z.std())
    record = {"checkpoint": str(Path(autoencoder).resolve()), "sha256": sha, "mean": mean, "scale": 1.0 / std,
              "tile": cfg.tile, "overlap": cfg.tile_overlap, "sample_shape": list(root["images"].shape[1:])}
    z = ((z - mean) / std).astype(np.float32)
    say(f"autoencoder: encoded {len(rows)} training images to {z.shape[1]} x {'x'.join(map(str, z.shape[2:]))} "
        f"latents in {time.time() - t0:.0f}s (mean {mean:.3f}, std {std:.3f}: scaled to unit variance)")
    if out.exists():
        shutil.rmtree(out)  # a cache of another autoencoder or dataset
    with atomic_path(out) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.create_array("images", data=z, chunks=(1, *z.shape[1:]))
        group.create_array("labels", data=np.asarray(root["labels"][:])[rows].astype(np.int64))
        if "masks" in root.array_keys():
            classes = len(root.attrs.get("mask_names", [])) or int(np.asarray(root["masks"][:]).max()) + 1
            masks = np.concatenate([latent_masks(take_rows(root["masks"], rows[i:i + 8]), codec.factor, classes)
                                    for i in range(0, len(rows), 8)])
            group.create_array("masks", data=masks, chunks=(1, *masks.shape[1:]))
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
            raise FileNotFoundError(f"{path}: the autoencoder this latent model was trained with is missing or "
                                    "changed; re-run its train-autoencoder stage")
        ae, meta = load_autoencoder(path, device)
        cfg = replace(_config(meta), tile=int(record.get("tile", 0)), tile_overlap=float(record.get("overlap", 0.25)))
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


def _config(meta: dict[str, Any]) -> AutoencoderConfig:
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    return AutoencoderConfig(**values)


_PEAKS: dict[str, tuple[int, float]] = {}


def _traced(cfg: AutoencoderConfig, dims: int, channels: int, shape: tuple[int, ...], kind: str,
            what: str) -> tuple[int, float]:
    """(planned peak bytes, FLOPs) of a training step on cfg.batch_size patches of `shape` (what="train") or of
    decoding one latent of `shape` (what="decode"), traced on the meta device once per process."""
    key = repr((asdict(replace(cfg, checkpoint="")), dims, channels, shape, kind, what))
    if key not in _PEAKS:
        def run() -> None:
            with torch.device("meta"):
                ae = build_autoencoder(cfg, dims, channels)
            if what == "decode":
                with torch.inference_mode():
                    ae.decode(torch.zeros(1, cfg.latent_channels, *shape, device="meta"))
                return
            opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr)
            x = torch.zeros(cfg.batch_size, channels, *shape, device="meta")
            for _ in range(2):  # the second step holds AdamW's state as every later one does
                recon, mu, sigma = ae(x)
                loss = F.l1_loss(recon, x) + cfg.kl_weight * _kl(mu, sigma)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        _PEAKS[key] = trace_peak(run, kind)
    return _PEAKS[key]


def whole_fits(cfg: AutoencoderConfig, latent_shape: tuple[int, ...], device: torch.device) -> bool:
    """Whether decoding one whole image fits SAMPLING_SHARE of `device`'s free memory, by the plan."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    # encoding holds about what decoding does (the same levels in the other order)
    return _traced(cfg, len(latent_shape), 1, latent_shape, kind, "decode")[0] <= \
        SAMPLING_SHARE * available_memory(device)[0]


def autoencoder_plan(cfg: AutoencoderConfig, image_shape: tuple[int, ...], channels: int = 1,
                     device: str | torch.device | None = None) -> str:
    """The plan line of the autoencoder stage on `device`: a training step on its patches and the decoding of one
    image (whole, or in windows when a whole one does not fit); raises MemoryPlanError when a step cannot fit."""
    dev = default_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    dims = len(image_shape)
    sides = _patch_sides(image_shape, cfg.patch_size)
    peak, flops = _traced(cfg, dims, channels, sides, kind, "train")
    free = available_memory(dev)[0] - PROCESS_GB[kind] * GB
    if peak > free:
        raise MemoryPlanError(f"autoencoder: a training step on {cfg.batch_size} patches of "
                              f"{'x'.join(map(str, sides))} "
                              f"needs about {peak / GB:.1f} GB on {dev} but {max(free, 0) / GB:.1f} GB is free; use a "
                              "smaller autoencoder.patch_size or autoencoder.batch_size")
    latent = tuple(s // cfg.factor for s in image_shape)
    tile = cfg.tile or (0 if whole_fits(cfg, latent, dev) else WHOLE_TILE)
    window = latent if not tile else tuple(min(tile, s) for s in latent)
    decode = _traced(cfg, dims, channels, window, kind, "decode")
    how = "whole" if window == latent else f"in {'x'.join(map(str, window))}-voxel latent windows"
    return (f"autoencoder: {cfg.factor}x per axis to {cfg.latent_channels} x {'x'.join(map(str, latent))} latents; a "
            f"training step: {flops / 1e12:.3f} TFLOP, peak {peak / GB:.2f} GB at {cfg.batch_size} patches of "
            f"{'x'.join(map(str, sides))}; decoding an image {how}: {decode[1] / 1e9:.1f} GFLOP, peak "
            f"{decode[0] / GB:.2f} GB")
