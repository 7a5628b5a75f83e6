"""Sampling: checkpoint -> images, with one noise seed per sample so any sharding gives the same images."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from motfm_core.baselines import diffusion_sample
from motfm_core import code_version
from motfm_core.config import SampleConfig, config_hash
from motfm_core.data.store import (
    create_synthetic_store,
    incomplete_shards,
    load_split,
    shard_bounds,
    shard_complete,
    version_for,
    write_shard,
)
from motfm_core.nets import VelocityUNet, guided_velocity
from motfm_core.solvers import solve
from motfm_core.training import file_sha256, load_checkpoint, to_image_space


def sample_plan(num_classes: int, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """Labels and per-sample seeds of the whole synthetic set: classes interleaved, seeds = base + index."""
    n = num_classes * cfg.samples_per_class
    labels = np.arange(n) % num_classes
    seeds = cfg.seed * 1_000_003 + np.arange(n, dtype=np.int64)
    return labels, seeds


def mask_plan(data_path: str | Path, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks to condition each planned sample on: the n-th sample of class c takes the n-th real training
    mask of class c (cycling). Returns (masks (N, 1, *spatial) uint8, index into the train split)."""
    train = load_split(data_path, "train")
    if "masks" not in train:
        raise ValueError(f"{data_path}: the model is mask-conditioned but this dataset has no masks")
    source = np.empty(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, c in enumerate(labels.tolist()):
        pool = np.nonzero(train["labels"] == c)[0]
        if len(pool) == 0:
            raise ValueError(f"{data_path}: no training mask of class {c} to condition on")
        source[i] = pool[seen.get(c, 0) % len(pool)]
        seen[c] = seen.get(c, 0) + 1
    return train["masks"][source], source


def initial_noise(seeds: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """x0 ~ N(0, I) of shape (len(seeds), *shape), each row from its own seed (CPU generator: portable)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.inference_mode()
def generate(
    model: VelocityUNet, labels: np.ndarray, seeds: np.ndarray, cfg: SampleConfig,
    device: str | torch.device = "cpu", masks: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Images (N, C, *spatial) in [0, 1] for the given labels/seeds (and masks), and NFE spent per sample."""
    m = model.cfg
    diffusion = cfg.solver in ("ddpm", "ddim")
    if diffusion != (m.prediction == "epsilon"):
        kind = "a DDPM (epsilon) model" if m.prediction == "epsilon" else "a flow-matching (velocity) model"
        raise ValueError(f"solver {cfg.solver!r} cannot sample {kind}; use "
                         + ("'ddpm' or 'ddim'" if m.prediction == "epsilon" else "euler/midpoint/heun/rk4/dopri5"))
    shape = (m.in_channels, m.image_size, m.image_size) + ((m.depth,) if m.spatial_dims == 3 else ())
    device = torch.device(device)
    out, nfe = [], 0
    for i in range(0, len(labels), cfg.batch_size):
        x0 = initial_noise(seeds[i:i + cfg.batch_size], shape).to(device)
        y = torch.as_tensor(labels[i:i + cfg.batch_size], device=device).long()
        mk = None if masks is None else torch.as_tensor(masks[i:i + cfg.batch_size], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if m.prediction == "epsilon":
                gen = torch.Generator(device=device).manual_seed(int(seeds[i]))
                x1, nfe = diffusion_sample(model, x0, y, cfg.solver, cfg.nfe, cfg.guidance, gen, mk)
            else:
                x1, nfe = solve(guided_velocity(model, y, cfg.guidance, mk), x0, cfg.nfe, cfg.solver,
                                rtol=cfg.rtol, atol=cfg.atol)
        out.append(to_image_space(x1.float()).cpu().numpy())
    return np.concatenate(out), nfe


@functools.lru_cache(maxsize=2)
def _model_for(checkpoint: str, stamp: tuple[int, int], device: str, compile: bool) -> tuple[VelocityUNet, dict]:
    """One loaded (optionally compiled) model per worker process, reused by its shards; `stamp` (mtime, size)
    makes a rewritten checkpoint load afresh."""
    model, meta = load_checkpoint(checkpoint, device)
    if compile:
        model.unet = torch.compile(model.unet)
    return model, meta


def sample_shard(
    checkpoint: str | Path, store: str | Path, index: int, cfg: SampleConfig, device: str | None = None,
) -> dict:
    """Generate and write shard `index` of `store` unless it is already complete; returns what it did."""
    if shard_complete(store, index):
        return {"shard": index, "skipped": True}
    import zarr

    attrs = zarr.open_group(str(store), mode="r", zarr_format=3).attrs
    start, stop = shard_bounds(index, attrs["num_samples"], attrs["shard_size"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint; run the train stage first")
    st = Path(checkpoint).stat()
    model, meta = _model_for(str(checkpoint), (st.st_mtime_ns, st.st_size), str(device), cfg.compile)
    labels, seeds = sample_plan(len(meta["class_names"]), cfg)
    masks = source = None
    if model.cfg.mask_conditioning != "none":
        masks, source = mask_plan(meta["data_path"], labels)
        masks, source = masks[start:stop], source[start:stop]
    t0 = time.perf_counter()
    images, nfe = generate(model, labels[start:stop], seeds[start:stop], cfg, device, masks)
    seconds = time.perf_counter() - t0
    write_shard(store, index, images, labels[start:stop], seeds[start:stop],
                info={"nfe": nfe, "seconds": seconds, "device": str(device)}, masks=masks, mask_source=source)
    return {"shard": index, "skipped": False, "nfe": nfe, "seconds": seconds, "count": stop - start,
            "device": str(device)}


# where and how sampling runs (and pruning) does not change the dataset, so it is not part of its key
EXECUTION_ONLY = ("keep_versions", "workers", "scheduler", "compile")


def prepare_version(checkpoint: str | Path, cfg: SampleConfig, root: str | Path) -> tuple[Path, list[int]]:
    """Create (or reopen, to resume) the synthetic dataset version under `root` for this checkpoint and
    sample config; returns its path and the shards still to write."""
    model, meta = load_checkpoint(checkpoint)
    m = model.cfg
    shape = (m.in_channels, m.image_size, m.image_size) + ((m.depth,) if m.spatial_dims == 3 else ())
    ckpt_hash = file_sha256(checkpoint)
    attrs = {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt_hash, "model_config": meta["model_config"],
             "solver": cfg.solver, "nfe": cfg.nfe, "guidance": cfg.guidance, "sample_config": asdict(cfg),
             "class_names": meta["class_names"], "source_fingerprint": meta["data_fingerprint"],
             "code_version": code_version()}
    content = {k: v for k, v in asdict(cfg).items() if k not in EXECUTION_ONLY}
    attrs["run_key"] = f"{ckpt_hash[:16]}-{config_hash(content)}"
    n = len(meta["class_names"]) * cfg.samples_per_class
    version = version_for(root, attrs["run_key"])
    store = create_synthetic_store(version, n, shape, cfg.shard_size, attrs,
                                   with_masks=m.mask_conditioning != "none")
    return store, incomplete_shards(store)
