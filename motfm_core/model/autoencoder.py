"""The autoencoder of latent flow matching (`model.space="latent"`): images <-> latents `factor` times smaller per axis.

MONAI's KL-regularised `AutoencoderKL`, without attention, so it is fully convolutional: its stage trains it on random
patches (L1 + KL, optionally a patch adversarial loss), which fits memory whatever the image size; it then encodes
and decodes whole images or windows (`latents.LatentCodec`), so readers, the audit and the metrics see images.
Checkpoints hold tensors and plain values only (`torch.load(..., weights_only=True)`), published atomically.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL

from motfm_core import __version__
from motfm_core.config import AutoencoderConfig, auto_norm_groups, config_hash
from motfm_core.data.rows import take_rows
from motfm_core.data.store import SPLITS, open_store, stratified_subset
from motfm_core.device import default_device
from motfm_core.errors import BadInput, InputMissing
from motfm_core.model.checkpoints import resumable, save_atomic
from motfm_core.model.step import lr_at
from motfm_core.scale import to_model_space

__all__ = ["build_autoencoder", "config_of", "kl_loss", "load_autoencoder", "patch_sides", "train_autoencoder"]

log = logging.getLogger(__name__)
# the settings that change neither the trained weights nor what they encode: not in the stage's key
KEY_EXEMPT = ("tile", "tile_overlap", "checkpoint", "checkpoint_every", "share_checkpoint")


def build_autoencoder(cfg: AutoencoderConfig, spatial_dims: int, in_channels: int) -> AutoencoderKL:
    """MONAI `AutoencoderKL` without attention (fully convolutional: patches in training, whole images after)."""
    levels = len(cfg.channels)
    return AutoencoderKL(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels,
                         channels=tuple(cfg.channels), latent_channels=cfg.latent_channels,
                         num_res_blocks=(cfg.num_res_blocks,) * levels, norm_num_groups=auto_norm_groups(cfg.channels),
                         attention_levels=(False,) * levels, with_encoder_nonlocal_attn=False,
                         with_decoder_nonlocal_attn=False)


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    return (0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1)).flatten(1).sum(1).mean()


def patch_sides(image_shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The sides of a training patch: `size` voxels, or the image's side where it is smaller."""
    return tuple(min(size, side) for side in image_shape)


def _random_patches(images: np.ndarray, sides: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    """One random patch of `sides` from each image (N, C, *S), in model space [-1, 1]."""
    out = []
    for img in images:
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(img.shape[1:], sides, strict=True)]
        out.append(img[(slice(None), *(slice(a, a + p) for a, p in zip(start, sides, strict=True)))])
    return to_model_space(torch.from_numpy(np.stack(out).astype(np.float32)))


def _key(cfg: AutoencoderConfig, fingerprint: str, *subset: float) -> str:
    return config_hash({k: v for k, v in asdict(cfg).items() if k not in KEY_EXEMPT}, fingerprint, __version__,
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


@dataclass
class _Networks:
    """The autoencoder being trained, its optional patch discriminator and their optimizers: the state a checkpoint
    saves and a resumed stage loads."""

    ae: AutoencoderKL
    disc: torch.nn.Module | None
    opt: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None

    @classmethod
    def build(cls, cfg: AutoencoderConfig, dims: int, channels: int, sides: tuple[int, ...],
              dev: torch.device) -> "_Networks":
        torch.manual_seed(cfg.seed)
        ae = build_autoencoder(cfg, dims, channels).to(dev)
        disc = _adversary(cfg, sides, channels)
        opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=1e-4)
        opt_d = None if disc is None else torch.optim.AdamW(disc.to(dev).parameters(), lr=cfg.lr, weight_decay=1e-4)
        return cls(ae, disc, opt, opt_d)

    def load(self, state: dict[str, Any]) -> None:
        self.ae.load_state_dict(state["state"])
        self.opt.load_state_dict(state["optimizer"])
        if self.disc is not None and self.opt_d is not None:
            self.disc.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["optimizer_d"])

    def state(self) -> dict[str, Any]:
        extra = {} if self.disc is None or self.opt_d is None else {"discriminator": self.disc.state_dict(),
                                                                    "optimizer_d": self.opt_d.state_dict()}
        return {**extra, "state": self.ae.state_dict(), "optimizer": self.opt.state_dict()}

    def step(self, x: torch.Tensor, cfg: AutoencoderConfig, step: int) -> float:
        """One optimisation step on patches `x` after `step` steps (L1 + KL, and the adversarial terms once
        `adversarial_start` is reached); returns the autoencoder's loss."""
        ae, disc, opt, opt_d, dev = self.ae, self.disc, self.opt, self.opt_d, x.device
        for group in opt.param_groups + ([] if opt_d is None else opt_d.param_groups):
            # the flow's schedule: linear warm-up over 5% of the steps, then cosine decay to 10% of autoencoder.lr
            group["lr"] = lr_at(step, cfg.steps, cfg.lr, max(1, cfg.steps // 20))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            recon, mu, sigma = ae(x)
            loss = F.l1_loss(recon.float(), x) + cfg.kl_weight * kl_loss(mu.float(), sigma.float())
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
        return float(loss.detach())


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
    sides = patch_sides(image_shape, cfg.patch_size)
    nets = _Networks.build(cfg, dims, channels, sides, dev)
    step, losses = 0, []
    state = resumable(last, key, dev)
    if state is not None:
        nets.load(state)
        step, losses = state["step"], list(state["losses"])
        say(f"autoencoder: resuming from {last} at step {step}/{cfg.steps}")
    meta = {"config": asdict(cfg), "run_key": key, "real_fraction": real_fraction, "subset_seed": subset_seed,
            "data_fingerprint": fingerprint, "data_path": str(data_path),
            "spatial_dims": dims, "in_channels": channels, "image_shape": list(image_shape), "factor": cfg.factor,
            "patch": list(sides)}
    say(f"autoencoder: {sum(p.numel() for p in nets.ae.parameters()) / 1e6:.2f}M parameters, {cfg.factor}x per axis "
        f"to {cfg.latent_channels} latent channels; {cfg.steps} steps of {cfg.batch_size} patches of "
        f"{'x'.join(map(str, sides))} from {len(rows)} training images")
    t0, said, first = time.time(), time.time(), step
    nets.ae.train()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])  # a step's draws follow from its index: resumable as is
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # (the posterior sample of AutoencoderKL's forward)
        batch = take_rows(images, rows[rng.integers(0, len(rows), cfg.batch_size)])
        losses.append(nets.step(_random_patches(batch, sides, rng).to(dev), cfg, step))
        step += 1
        saving = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if saving:
            save_atomic({**meta, **nets.state(), "step": step, "losses": losses}, last)
        now = time.time()
        if saving or now - said >= 30:
            per = (now - t0) / (step - first)
            say(f"autoencoder: step {step}/{cfg.steps} loss {np.mean(losses[-50:]):.4f}, {per:.2f} s/step, ETA "
                f"{per * (cfg.steps - step):.0f}s" + (", checkpoint" if saving else ""))
            said = now
            if advance:
                advance(step / cfg.steps)
    save_atomic({**meta, "step": step, "losses": losses, "state": nets.ae.state_dict(),
                 "train_seconds": time.time() - t0}, final)
    return final


def _check_given(path: str | Path, fingerprint: str, image_shape: tuple[int, ...], channels: int) -> Path:
    """A user's trained autoencoder, refused (naming it and the fix) unless trained on this data at this size."""
    path = Path(path)
    if not path.exists():
        raise InputMissing(f"autoencoder.checkpoint={path}: no such file; leave it empty to train one")
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if "state" not in meta or "image_shape" not in meta:
        raise BadInput(f"autoencoder.checkpoint={path}: not an autoencoder.pt of the train-autoencoder stage")
    if meta["data_fingerprint"] != fingerprint:
        raise BadInput(f"autoencoder.checkpoint={path} was trained on other data ({meta['data_path']}); leave "
                       "autoencoder.checkpoint empty to train one on this data")
    if tuple(meta["image_shape"]) != image_shape or meta["in_channels"] != channels:
        raise BadInput(f"autoencoder.checkpoint={path} was trained on {meta['in_channels']} x "
                       f"{'x'.join(map(str, meta['image_shape']))} images, this data is {channels} x "
                       f"{'x'.join(map(str, image_shape))}; leave autoencoder.checkpoint empty to train one")
    return path


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[AutoencoderKL, dict[str, Any]]:
    """The trained autoencoder (eval mode) and its checkpoint's metadata."""
    meta = torch.load(path, map_location=device, weights_only=True)
    ae = build_autoencoder(config_of(meta), meta["spatial_dims"], meta["in_channels"]).to(device)
    ae.load_state_dict(meta["state"])
    return ae.eval(), {k: v for k, v in meta.items() if k not in ("state", "optimizer")}


def config_of(meta: dict[str, Any]) -> AutoencoderConfig:
    """The AutoencoderConfig a checkpoint's metadata records."""
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    return AutoencoderConfig(**values)
