"""Sampling: checkpoint -> images, with one noise seed per sample so any sharding gives the same images.

Everything random about a sample follows from its own seed: the initial noise, DDPM's per-step noise, its
conditioning mask (`motfm_core.model.masks`) and, with the copy guard, the seeds of its redraws. So any batch size or
shard layout produces the same bytes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motfm_core import code_version
from motfm_core.config import SampleConfig, TrainConfig, config_hash, from_dict
from motfm_core.data.store import open_store
from motfm_core.data.synthetic import (
    create_synthetic_store,
    incomplete_shards,
    shard_bounds,
    shard_complete,
    shard_images,
    sweep_store,
    write_shard,
)
from motfm_core.data.versions import create_version
from motfm_core.device import default_device
from motfm_core.errors import BadInput, InputMissing
from motfm_core.files import atomic_path, file_sha256
from motfm_core.model.baselines import diffusion_sample
from motfm_core.model.guard import copy_threshold, nearest
from motfm_core.model.latents import LatentCodec, latent_masks
from motfm_core.model.masks import (
    cycle_by_class,
    deform,
    deform_columns,
    mask_seeds,
    resolve_mask_source,
)
from motfm_core.model.memory import plan_sampling
from motfm_core.model.nets import VelocityUNet, guided_velocity
from motfm_core.model.solvers import solve
from motfm_core.model.training import load_checkpoint
from motfm_core.model.trainset import training_set
from motfm_core.results import Result, optional
from motfm_core.scale import to_image_space

__all__ = ["EXECUTION_ONLY", "generate", "generate_masks", "initial_noise", "prepare_version",
           "REDRAW_STRIDE", "sample_nfe_curve", "sample_plan", "sample_shard", "Sampler", "ShardResult"]

log = logging.getLogger(__name__)
REDRAW_STRIDE = 1 << 40  # redraw k of a sample uses seed + k * REDRAW_STRIDE: never another sample's seed


@dataclass(frozen=True)
class ShardResult(Result):
    """What sampling one shard did: skipped (already complete), or its images' count, NFE, seconds, device and
    how many samples the copy guard redrew."""

    shard: int
    skipped: bool
    count: int = 0
    nfe: int | None = optional()
    seconds: float | None = optional()
    device: str | None = optional()
    rejected: int = 0


def sample_plan(num_classes: int, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """Labels and per-sample seeds of the whole synthetic set: classes interleaved, seeds = base + index."""
    n = num_classes * cfg.samples_per_class
    labels = np.arange(n) % num_classes
    seeds = cfg.seed * 1_000_003 + np.arange(n, dtype=np.int64)
    return labels, seeds


def initial_noise(seeds: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """x0 ~ N(0, I) of shape (len(seeds), *shape), each row from its own seed (CPU generator: portable)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.inference_mode()
def generate(
    model: VelocityUNet, labels: np.ndarray, seeds: np.ndarray, cfg: SampleConfig,
    device: str | torch.device = "cpu", masks: np.ndarray | None = None, codec: LatentCodec | None = None,
) -> tuple[np.ndarray, int]:
    """Images (N, C, *spatial) in [0, 1] for the given labels/seeds (and image-sized masks), and NFE spent per
    sample; the network runs under bf16 autocast as `cfg.precision` says (by default on CUDA only). A latent model
    integrates on its `codec`'s latent grid (masks resampled to it) and each batch is decoded."""
    m = model.cfg
    diffusion = cfg.solver in ("ddpm", "ddim")
    if diffusion != (m.prediction == "epsilon"):
        kind = "a DDPM (epsilon) model" if m.prediction == "epsilon" else "a flow-matching (velocity) model"
        raise BadInput(f"solver {cfg.solver!r} cannot sample {kind}; use "
                       + ("'ddpm' or 'ddim'" if m.prediction == "epsilon" else "euler/midpoint/heun/rk4/dopri5/rflow"))
    shape = m.sample_shape
    device = torch.device(device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    out, nfe = [], 0
    for i in range(0, len(labels), cfg.batch_size):
        x0 = initial_noise(seeds[i:i + cfg.batch_size], shape).to(device)
        y = torch.as_tensor(labels[i:i + cfg.batch_size], device=device).long()
        part = None if masks is None else masks[i:i + cfg.batch_size]
        if part is not None and codec is not None:
            part = latent_masks(part, codec.factor, m.mask_classes)
        mk = None if part is None else torch.as_tensor(part, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if m.prediction == "epsilon":
                step_seeds = [np.random.SeedSequence([int(s), 1]).generate_state(1)[0]
                              for s in seeds[i:i + cfg.batch_size]]
                x1, nfe = diffusion_sample(model, x0, y, cfg.solver, cfg.nfe, cfg.guidance, step_seeds, mk,
                                            cfg.ddim_spacing)
            else:
                x1, nfe = solve(guided_velocity(model, y, cfg.guidance, mk), x0, cfg.nfe, cfg.solver,
                                rtol=cfg.rtol, atol=cfg.atol)
        out.append((to_image_space(x1.float()) if codec is None else codec.decode(x1)).cpu().numpy())
    return np.concatenate(out), nfe


def generate_masks(mask_model, labels: np.ndarray, seeds: np.ndarray, cfg: SampleConfig,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """New masks (N, 1, *spatial) uint8 from a class-conditional flow over one-hot masks (Euler, cfg.nfe steps)."""
    one_hot, _ = generate(mask_model, labels, seeds, SampleConfig(solver="euler", nfe=cfg.nfe,
                                                                  batch_size=cfg.batch_size), device)
    return one_hot.argmax(1)[:, None].astype(np.uint8)


class Sampler:
    """A loaded generator with what it needs to draw samples: its training set (the masks it conditions on and the
    copy guard's reference), the mask generator when masks are generated, and the sample config."""

    def __init__(self, checkpoint: str | Path, cfg: SampleConfig, device: str | torch.device = "cpu",
                 mask_checkpoint: str | Path | None = None, copy_threshold: float | None = None,
                 sha256: dict[str, str] | None = None) -> None:
        sha256 = sha256 or {}  # the checkpoints' hashes the version records: what is loaded must be those bytes
        self.model, self.meta = load_checkpoint(checkpoint, device, sha256.get("checkpoint"))
        record = self.meta.get("autoencoder")
        self.codec = None if not record else LatentCodec.load(record, device)
        plan = plan_sampling(self.model.cfg, cfg, device)  # the batch that fits (samples do not depend on it)
        if plan.batch < cfg.batch_size:
            log.warning("sample: %s", plan.line())
            cfg = replace(cfg, batch_size=plan.batch)
        if cfg.compile:
            self.model.unet = torch.compile(self.model.unet)
        self.cfg, self.device, self.copy_threshold = cfg, str(device), copy_threshold
        self.labels, self.seeds = sample_plan(len(self.meta["class_names"]), cfg)
        saved = self.meta["train_config"]
        train_cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__annotations__})
        self.pool = training_set(self.meta["data_path"], train_cfg)  # exactly what this generator trained on
        self.masked = self.model.cfg.mask_conditioning != "none"
        self.mask_source = resolve_mask_source(cfg.mask_source, self.masked)
        self.mask_model = None
        if self.mask_source == "generated":
            if mask_checkpoint is None:
                raise BadInput("sample.mask_source='generated' needs the mask generator's checkpoint (the "
                               "train-masks stage)")
            self.mask_model, _ = load_checkpoint(mask_checkpoint, device, sha256.get("mask_checkpoint"))
        self.source_index = cycle_by_class(self.labels, self.pool["labels"]) if self.masked else None

    def conditioning(self, positions: np.ndarray, seeds: np.ndarray) -> dict[str, np.ndarray]:
        """Masks (and their provenance) for the planned samples at `positions` drawn with `seeds`; {} when the
        model is not mask-conditioned."""
        if not self.masked or self.source_index is None:  # (source_index is set exactly when masked)
            return {}
        source = self.source_index[positions]
        if self.mask_source == "train":
            return {"masks": self.pool["masks"][source], "mask_source": self.pool["indices"][source]}
        if self.mask_source == "deformed":
            masks, params = deform(self.pool["masks"][source], mask_seeds(seeds), self.cfg)
            return {"masks": masks, "mask_source": self.pool["indices"][source], "mask_deform": params}
        masks = generate_masks(self.mask_model, self.labels[positions], mask_seeds(seeds), self.cfg, self.device)
        return {"masks": masks, "mask_source": np.full(len(positions), -1, dtype=np.int64)}

    def draw(self, positions: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
        """Images (N, C, *spatial) in [0, 1] of the planned samples at `positions` with `seeds`, the NFE spent per
        sample, and their conditioning (see `conditioning`)."""
        cond = self.conditioning(positions, seeds)
        images, nfe = generate(self.model, self.labels[positions], seeds, self.cfg, self.device, cond.get("masks"),
                               self.codec)
        return images, nfe, cond

    def draw_guarded(self, positions: np.ndarray) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
        """`draw` with the copy guard (when `copy_threshold` is set): a sample nearer to a training image than the
        threshold is redrawn from seed + k * REDRAW_STRIDE (k = 1, 2, ...) up to cfg.max_redraws times. The
        conditioning then includes the final `seed` and the `redraws` count of every sample."""
        seeds = self.seeds[positions].copy()
        images, nfe, cond = self.draw(positions, seeds)
        redraws = np.zeros(len(positions), dtype=np.int32)
        if self.copy_threshold is not None:
            reference = self.pool["images"]
            for k in range(1, self.cfg.max_redraws + 1):
                bad = np.nonzero(nearest(images, reference)[0] < self.copy_threshold)[0]
                if len(bad) == 0:
                    break
                seeds[bad] = self.seeds[positions[bad]] + k * REDRAW_STRIDE
                redraws[bad] = k
                new, _, new_cond = self.draw(positions[bad], seeds[bad])
                images[bad] = new
                for name, values in new_cond.items():
                    cond[name][bad] = values
        return images, nfe, {**cond, "seed": seeds, "redraws": redraws}


_SAMPLERS: dict[tuple, Sampler] = {}


def _sampler_for(checkpoint: str, stamp: tuple, store: str, cfg: SampleConfig, device: str) -> Sampler:
    """One loaded sampler per worker process, store and config, reused by its shards (the last two are kept);
    `stamp` (mtime, size of the checkpoint) makes a rewritten checkpoint load afresh, and what is loaded must be the
    checkpoint the store records (its sha256), else every shard of the version is refused."""
    import zarr

    key = (checkpoint, stamp, store, json.dumps(asdict(cfg), sort_keys=True), device)
    if key not in _SAMPLERS:
        attrs = zarr.open_group(store, mode="r", zarr_format=3).attrs
        while len(_SAMPLERS) >= 2:
            _SAMPLERS.pop(next(iter(_SAMPLERS)))
        hashes = {k: attrs[f"{k}_sha256"] for k in ("checkpoint", "mask_checkpoint") if attrs.get(f"{k}_sha256")}
        _SAMPLERS[key] = Sampler(checkpoint, cfg, device, attrs.get("mask_checkpoint") or None,
                                 attrs.get("copy_threshold"), hashes)
    return _SAMPLERS[key]


def sample_shard(
    checkpoint: str | Path, store: str | Path, index: int, cfg: SampleConfig, device: str | None = None,
) -> ShardResult:
    """Generate and write shard `index` of `store` unless it is already complete; returns what it did."""
    if shard_complete(store, index):
        return ShardResult(shard=index, skipped=True)
    import zarr

    root = zarr.open_group(str(store), mode="r", zarr_format=3)
    start, stop = shard_bounds(index, root.attrs["num_samples"], root.attrs["shard_size"])
    device = str(default_device(device))
    if not Path(checkpoint).exists():
        raise InputMissing(f"{checkpoint}: no checkpoint; run the train stage first")
    st = Path(checkpoint).stat()
    sampler = _sampler_for(str(checkpoint), (st.st_mtime_ns, st.st_size), str(store), cfg, str(device))
    positions = np.arange(start, stop)
    t0 = time.perf_counter()
    images, nfe, cond = sampler.draw_guarded(positions)
    seconds = time.perf_counter() - t0
    seeds, redraws = cond.pop("seed"), cond.pop("redraws")
    extras = {k: v for k, v in (("mask_deform", cond.get("mask_deform")), ("redraws", redraws))
              if k in root.array_keys() and v is not None}
    write_shard(store, index, images, sampler.labels[positions], seeds,
                info={"nfe": nfe, "seconds": seconds, "device": str(device), "rejected": int((redraws > 0).sum()),
                      "redraws": int(redraws.sum())},
                masks=cond.get("masks"), mask_source=cond.get("mask_source"), extras=extras, durable=cfg.fsync)
    return ShardResult(shard=index, skipped=False, count=stop - start, nfe=nfe, seconds=seconds, device=str(device),
                       rejected=int((redraws > 0).sum()))


# where sampling runs and pruning do not change the dataset, so they are not part of its key; the encoding
# (`compression`) is: a version keeps the codecs it was created with, so another value is another version
EXECUTION_ONLY = ("keep_versions", "prune_grace_hours", "workers", "scheduler", "compile", "batch_size", "fsync")


def prepare_version(checkpoint: str | Path, cfg: SampleConfig, root: str | Path,
                    mask_checkpoint: str | Path | None = None) -> tuple[Path, list[int]]:
    """Create (or reopen, to resume) the synthetic dataset version under `root` for this checkpoint (and mask
    generator) and sample config; returns its path and the shards still to write. Settings that cannot apply
    (a mask source for a model without masks, generated masks without a mask generator) fail here, before work."""
    model, meta = load_checkpoint(checkpoint)
    m = model.cfg
    masked = m.mask_conditioning != "none"
    source = resolve_mask_source(cfg.mask_source, masked)
    if source == "generated" and not mask_checkpoint:
        raise BadInput("sample.mask_source='generated' needs a mask generator (trained by the train-masks stage); "
                       "choose sample.mask_source 'train' or 'deformed', or run the whole flow")
    ckpt_hash = file_sha256(checkpoint)
    attrs = {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt_hash, "model_config": meta["model_config"],
             "solver": cfg.solver, "nfe": cfg.nfe, "guidance": cfg.guidance, "sample_config": asdict(cfg),
             "class_names": meta["class_names"], "source_fingerprint": meta["data_fingerprint"],
             "code_version": code_version(), "train_indices": meta.get("train_indices"),
             "train_config": meta.get("train_config"), "autoencoder": meta.get("autoencoder"),
             "mask_source": source, "channel_names": meta.get("channel_names")}
    n = len(meta["class_names"]) * cfg.samples_per_class
    shape = m.sample_shape if not meta.get("autoencoder") else tuple(meta["autoencoder"]["sample_shape"])
    shard_size = cfg.shard_size or shard_images(4 * int(np.prod(shape)), n, cfg.shard_mb)
    # the key holds the layout itself: shard_mb and an explicit shard_size that give the same shards are one version
    content = {k: v for k, v in asdict(cfg).items() if k not in (*EXECUTION_ONLY, "shard_mb")}
    content["shard_size"] = shard_size
    if not masked:  # mask settings cannot change an unconditioned model's samples
        content = {k: v for k, v in content.items() if not k.startswith(("mask_", "deform_"))}
    key_parts = [content]
    if source == "generated" and mask_checkpoint:  # (checked above: generated masks need the mask generator)
        attrs["mask_checkpoint"], attrs["mask_checkpoint_sha256"] = str(mask_checkpoint), file_sha256(mask_checkpoint)
        key_parts.append(attrs["mask_checkpoint_sha256"])
    if cfg.reject_copies:
        attrs["copy_threshold"] = copy_threshold(meta["data_path"], meta["train_indices"], cfg.copy_quantile)
    attrs["run_key"] = f"{ckpt_hash[:16]}-{config_hash(*key_parts)}"
    extras: dict[str, tuple[str, tuple[int, ...]]] = {"redraws": ("int32", ())}
    if source == "deformed":
        extras["mask_deform"] = ("float32", (len(deform_columns(m.spatial_dims)),))
        attrs["mask_deform_columns"] = deform_columns(m.spatial_dims)
    store = create_version(root, attrs["run_key"], lambda version: create_synthetic_store(
        version, n, shape, shard_size, attrs, with_masks=masked, extras=extras,
        compress=cfg.compression == "zstd"))
    sweep_store(store)  # a resumed version: what a crashed writer left goes before its shards are rewritten
    return store, incomplete_shards(store)


def sample_nfe_curve(synthetic_path: str | Path, nfes: tuple[int, ...], samples_per_class: int, out: str | Path,
                     device: str | torch.device | None = None) -> Path | None:
    """Fresh Euler samples of a synthetic version's generator at each NFE, with the seconds per image each took:
    `samples_per_class` per class, the same noise seeds and masks (`sample.mask_source`, as in the store) at every
    NFE, so the quality stage's curve shows how far the step count can drop. Written to `out` (an .npz: `nfes`,
    `seconds_per_image`, `labels`, `images_<nfe>`, `key`), reused when its key (the version's run key, the NFEs
    and the count) matches. None for a diffusion (epsilon) checkpoint: the curve is of the flow's Euler steps."""
    out = Path(out)
    attrs = open_store(synthetic_path).attrs
    key = config_hash(attrs["run_key"], tuple(nfes), samples_per_class)
    if out.exists():
        with np.load(out) as done:
            if str(done["key"]) == key:
                return out
    stored = from_dict(SampleConfig, attrs.get("sample_config"), "sample")
    base = replace(stored, samples_per_class=samples_per_class, seed=99, solver="euler", compile=False,
                   reject_copies=False)
    sampler = Sampler(attrs["checkpoint"], base, default_device(device), attrs.get("mask_checkpoint"))
    if sampler.model.cfg.prediction != "velocity":
        return None
    positions = np.arange(len(sampler.labels))
    arrays: dict[str, Any] = {}
    spent, seconds = [], []
    for nfe in nfes:
        sampler.cfg = replace(base, nfe=nfe)
        t0 = time.perf_counter()
        images, used, _ = sampler.draw(positions, sampler.seeds)
        seconds.append((time.perf_counter() - t0) / len(positions))
        spent.append(used)
        arrays[f"images_{used}"] = images
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        arrays.update(key=np.array(key), nfes=np.array(spent), seconds_per_image=np.array(seconds),
                      labels=sampler.labels)
        np.savez(f, **arrays)
    return out
