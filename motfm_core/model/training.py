"""Training (flow matching, or the same-backbone DDPM baseline): loss, EMA, warmup, grad clipping, bf16 on CUDA,
atomic resumable checkpoints.

Checkpoints hold only tensors and plain Python values, so `torch.load(..., weights_only=True)` reads
them. `model.pt` (the product) = EMA weights + model/train config + data fingerprint + class names;
`last.pt` adds the raw weights, optimizer, step and RNG state to resume an interrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import zarr
from torch.nn.parallel import DistributedDataParallel

from motfm_core import __version__
from motfm_core.config import AutoencoderConfig, ModelConfig, TrainConfig, config_hash
from motfm_core.data.loader import RandomBatches, batch_loader, loader_bytes
from motfm_core.data.store import channel_names, mask_classes, open_store
from motfm_core.device import default_device
from motfm_core.errors import BadInput, InputMissing
from motfm_core.files import file_sha256
from motfm_core.model import ddp
from motfm_core.model.checkpoints import resumable, save_atomic
from motfm_core.model.latents import encode_train_split
from motfm_core.model.memory import MemoryPlanError, is_out_of_memory, out_of_memory, plan_training
from motfm_core.model.nets import VelocityUNet, build_model
from motfm_core.model.step import ema_decay, flow_matching_loss, train_step
from motfm_core.model.trainset import (
    masked,
    one_hot,
    streams,
    training_bytes,
    training_rows,
    training_set,
)
from motfm_core.scale import to_model_space

__all__ = ["ema_decay", "flow_matching_loss", "load_checkpoint", "model_for_data", "PROGRESS_SECONDS", "reflow_pairs",
           "TARGETS", "train_flow_matching", "train_mask_generator", "train_step"]

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30.0  # training says where it is at least this often


@torch.no_grad()
def reflow_pairs(teacher: VelocityUNet, y: torch.Tensor, masks: torch.Tensor | None, cfg: TrainConfig,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """cfg.reflow_pairs (x0, x1 = teacher ODE(x0)) couplings in model space, labels (and masks) cycling over
    the training set so classes keep their proportions."""
    from motfm_core.model.nets import guided_velocity
    from motfm_core.model.solvers import solve

    idx = torch.arange(cfg.reflow_pairs, device=y.device) % len(y)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 7919)
    m = teacher.cfg
    shape = m.sample_shape
    out: dict[str, list[torch.Tensor]] = {"x0": [], "x1": []}
    for i in range(0, len(idx), 64):
        part = idx[i:i + 64]
        x0 = torch.randn((len(part), *shape), generator=g).to(device)
        mk = None if masks is None else masks[part]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x1, _ = solve(guided_velocity(teacher, y[part], 1.0, mk), x0, cfg.reflow_steps, "midpoint")
        out["x0"].append(x0)
        out["x1"].append(x1.float().clamp(-1, 1))
    pairs = {k: torch.cat(v) for k, v in out.items()}
    pairs["y"] = y[idx]
    if masks is not None:
        pairs["masks"] = masks[idx]
    return pairs


TARGETS = ("images", "masks")


def model_for_data(cfg: ModelConfig, data_path: str | Path, target: str = "images") -> ModelConfig:
    """`cfg` with the geometry of the dataset at `data_path` filled in: input channels, classes, mask classes,
    and `mask_conditioning="auto"` resolved ("concat" when the store has masks, else "none").

    target="masks" configures the class-conditional mask generator: one input channel per mask class (one-hot),
    no mask conditioning."""
    if target not in TARGETS:
        raise BadInput(f"target must be one of {TARGETS}, got {target!r}")
    root = open_store(data_path)
    has_masks = "masks" in root.array_keys()
    classes = mask_classes(root)
    values = asdict(cfg)
    values["num_classes"] = len(root.attrs["class_names"])
    if target == "masks":
        if not has_masks:
            raise BadInput(f"{data_path}: sample.mask_source='generated' needs a dataset with masks; this one has "
                           "none")
        values.update(in_channels=classes, mask_conditioning="none", mask_classes=0)
    else:
        if cfg.space == "pixel":  # latent: the autoencoder's latent channels, set from the config
            values["in_channels"] = int(root["images"].shape[1])
        mode = values["mask_conditioning"]
        if mode == "auto":
            mode = "concat" if has_masks else "none"
        if mode != "none" and not has_masks:
            raise BadInput(f"{data_path}: model.mask_conditioning={mode!r} needs a dataset with masks, and this one "
                           "has none; use model.mask_conditioning='none' (or 'auto')")
        values.update(mask_conditioning=mode, mask_classes=classes if mode != "none" else 0)
    out = ModelConfig(**values)
    out.validate()
    return out


def train_mask_generator(data_path: str | Path, model_cfg: ModelConfig, cfg: TrainConfig, mask_source: str,
                         out_dir: str | Path, device: str | torch.device | None = None,
                         progress: Callable[[str], None] | None = None,
                         advance: Callable[[float], None] | None = None) -> Path | None:
    """The class-conditional mask generator that `sample.mask_source="generated"` needs (same backbone settings
    and training recipe as the image model, on one-hot masks of the same real subset); None when the image model
    is not mask-conditioned or masks come from elsewhere. Run before the image model's training, it also refuses
    a mask source that cannot apply before any training starts."""
    from motfm_core.model.masks import resolve_mask_source

    masked = model_for_data(model_cfg, data_path).mask_conditioning != "none"
    if resolve_mask_source(mask_source, masked) != "generated":
        return None
    return train_flow_matching(data_path, model_cfg, cfg, out_dir, device, progress, target="masks", advance=advance)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", sha256: str | None = None
                    ) -> tuple[VelocityUNet, dict[str, Any]]:
    """EMA model (eval mode) and the checkpoint's metadata; needs no other file. With `sha256`, the bytes loaded
    are those the hash names (read once, hashed, then loaded), or a ValueError says the file changed."""
    path = Path(path)
    if not path.exists():
        raise InputMissing(f"{path}: no checkpoint; run the train stage first")
    if sha256 is None:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    else:
        data = path.read_bytes()
        found = hashlib.sha256(data).hexdigest()
        if found != sha256:
            raise BadInput(f"{path}: not the checkpoint this synthetic version records (sha256 {found[:12]}, "
                           f"recorded {sha256[:12]}): it was replaced, e.g. by another run into the same folder; "
                           "run the sampling stage again (it plans a version for the checkpoint there now)")
        ckpt = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    stored: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["model_config"].items()}
    cfg = ModelConfig(**stored)
    model = build_model(cfg).to(device)
    model.load_state_dict(ckpt["ema"])
    model.eval()
    return model, {k: v for k, v in ckpt.items() if k not in ("ema", "model", "optimizer", "rng")}


def train_flow_matching(
    data_path: str | Path, model_cfg: ModelConfig, cfg: TrainConfig, out_dir: str | Path,
    device: str | torch.device | None = None, progress: Callable[[str], None] | None = None,
    target: str = "images", advance: Callable[[float], None] | None = None,
    autoencoder: str | Path | None = None, autoencoder_cfg: AutoencoderConfig | None = None,
) -> Path:
    """Train on the store's train split (or its `cfg.real_fraction` share); returns `out_dir/model.pt`. Resumes
    from `last.pt`; skips if done. `model_cfg` geometry is filled from the store (`model_for_data`); with
    target="masks" the model learns the class-conditional distribution of one-hot masks instead of images.
    `progress` gets a log line at least every PROGRESS_SECONDS, `advance` the share of steps done (a progress bar).
    `cfg.devices` > 1 trains data-parallel in that many spawned processes (`motfm_core.model.ddp`; `device` is then
    one GPU per rank, or the CPU), with the same result as one process up to float rounding. A model_cfg.space
    "latent" model trains on the latents of `autoencoder` (the train-autoencoder stage's checkpoint; its
    `autoencoder_cfg` gives the encoding window), encoded once (`encode_train_split`)."""
    if (model_cfg.space == "latent") != (autoencoder is not None):
        raise BadInput("model.space='latent' trains on an autoencoder's latents: give the train-autoencoder "
                       "stage's checkpoint (the flow does), and only then")
    model_cfg = model_for_data(model_cfg, data_path, target)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or log.info
    fingerprint = open_store(data_path).attrs["fingerprint"]
    teacher_sha = file_sha256(cfg.reflow_from) if cfg.reflow_from else ""
    if cfg.reflow_from and model_cfg.prediction != "velocity":
        raise BadInput("train.reflow_from: reflow applies to flow-matching (velocity) models only")
    # neither the device count, the memory budget nor gradient checkpointing changes the result: not in the key,
    # so a run resumes on another machine or with another plan
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("devices", "memory_gb")}
    ae_sha = file_sha256(autoencoder) if autoencoder is not None else ""
    key = config_hash(replace(model_cfg, gradient_checkpointing="auto"), recipe, fingerprint, __version__,
                      teacher_sha, target, *([ae_sha] if ae_sha else []))
    final = out_dir / "model.pt"
    if final.exists() and torch.load(final, weights_only=True, map_location="cpu").get("run_key") == key:
        say(f"train: {final} already trained with this data and config (key {key}); reusing it")
        return final
    dev = default_device(device)
    latents = None
    if autoencoder is not None:
        latents = encode_train_split(data_path, autoencoder, autoencoder_cfg or AutoencoderConfig(), dev, say,
                                     cfg.real_fraction, cfg.subset_seed, out_dir)
    held, stream = training_bytes(data_path, cfg, model_cfg, target), False
    try:
        plan = plan_training(model_cfg, cfg, dev, held)
    except MemoryPlanError:
        if not streams(cfg):
            raise
        # too large to hold: read from the store a batch at a time, the plan counting what the loader holds
        # a row as the loader holds it: the image and its uint8 mask (the mask generator: the mask alone)
        per = (4 * math.prod(model_cfg.sample_shape) if target == "images" else 0) + (
            math.prod(model_cfg.spatial_shape) if masked(model_cfg) or target == "masks" else 0)
        plan, stream = plan_training(model_cfg, cfg, dev, loader_bytes(per, cfg.batch_size)), True
        say(f"train: the training set ({held / 1e9:.2f} GB) does not fit beside a step; reading it from the store "
            "a batch at a time")
    say(f"train: plan: {plan.line()}")
    model_cfg = replace(model_cfg, gradient_checkpointing="on" if plan.gradient_checkpointing else "off")
    args = (data_path, model_cfg, cfg, out_dir, key, teacher_sha, target, latents, stream)
    try:
        if cfg.devices > 1:
            say(f"train: data-parallel over {cfg.devices} processes "
                f"({'one GPU each' if torch.cuda.is_available() else 'CPU, gloo'})")
            ddp.spawn(_fit, args, cfg.devices, say, advance)
        else:
            _fit(*args, rank=ddp.Rank(device=dev), say=say, advance=advance)
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory("train", plan.line(), e, "use a smaller train.batch_size, "
                                "model.gradient_checkpointing=on or a smaller model.size") from None
        raise
    return final


def _reflow_from_teacher(model: VelocityUNet, y_all: torch.Tensor, m_all: torch.Tensor | None, cfg: TrainConfig,
                         say: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """The teacher's (noise, sample) couplings that reflow trains on; `model` starts from the teacher's weights.
    The teacher must have `model`'s architecture."""
    device = next(model.parameters()).device
    teacher, _ = load_checkpoint(cfg.reflow_from, device)
    same = [asdict(replace(c, gradient_checkpointing="auto")) for c in (teacher.cfg, model.cfg)]
    if same[0] != same[1]:  # checkpointing is how a step runs, not the architecture
        raise BadInput(f"{cfg.reflow_from}: the reflow teacher's model config differs from this one; reflow "
                       "keeps the architecture (use the teacher run's model settings)")
    say(f"train: reflow: generating {cfg.reflow_pairs} couplings with {cfg.reflow_from} "
        f"({cfg.reflow_steps} midpoint steps)")
    pairs = reflow_pairs(teacher, y_all, m_all, cfg, device)
    model.load_state_dict(teacher.state_dict())
    return pairs


def _resume(last: Path, key: str, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
            gen: torch.Generator, say: Callable[[str], None], steps: int) -> tuple[int, list[float]]:
    """(step, losses) to continue from: `last.pt` of this run loaded into the model, EMA, optimizer and generator,
    else (0, [])."""
    device = gen.device
    state = resumable(last, key, device)
    if state is None:
        return 0, []
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["rng"].cpu() if device.type == "cpu" else state["rng"])
    say(f"train: resuming from {last} at step {state['step']}/{steps}")
    return state["step"], list(state["losses"])


def _rank_record(seed: int, batch: int, world: int) -> dict[str, Any]:
    """What a checkpoint records of data-parallel training: every rank draws the global batch from seed `seed` and
    trains on its rows (`ddp.rank_slice`)."""
    return {"world_size": world, "rank_seeds": [seed] * world,
            "rank_rows": [[rows.start, rows.stop] for rows in (ddp.rank_slice(batch, ddp.Rank(r, world))
                                                                for r in range(world))]}


def _fit(data_path: str | Path, model_cfg: ModelConfig, cfg: TrainConfig, out_dir: Path, key: str,
         teacher_sha: str, target: str, latents: Path | None, stream: bool, rank: ddp.Rank,
         say: Callable[[str], None], advance: Callable[[float], None] | None) -> None:
    """The training loop of `train_flow_matching` as one rank (`rank.world` == 1: the only process); rank 0
    writes `last.pt` every cfg.checkpoint_every steps and `model.pt` at the end. `stream`: the training set is read
    from the store a batch at a time (`RandomBatches`), not held."""
    device, last = rank.device, out_dir / "last.pt"
    attrs = dict(open_store(data_path).attrs)
    source = data_path if latents is None else latents  # the store the batches are read from
    if stream:
        if latents is not None:  # every row of the latents' store is of this generator's share
            z = zarr.open_group(str(latents), mode="r", zarr_format=3)
            labels = np.asarray(z["labels"][:])
            rows = idx = np.arange(len(labels))
            data = {"labels": labels, "indices": np.asarray(z["indices"][:])}
        else:
            rows, labels, idx = training_rows(open_store(data_path), cfg)
            data = {"labels": labels[idx], "indices": idx}
        x_all = m_all = None
        y_all = torch.from_numpy(labels[idx]).long().to(device)
    else:
        data = training_set(data_path, cfg, target, latents)
        x_all = torch.from_numpy(data["images"])
        x_all = (x_all if latents is not None else to_model_space(x_all)).to(device)  # latents: already unit variance
        y_all = torch.from_numpy(data["labels"]).long().to(device)
        m_all = torch.from_numpy(data["masks"]).to(device) if masked(model_cfg) else None
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    pairs = None
    if cfg.reflow_from:
        pairs = _reflow_from_teacher(model, y_all, m_all, cfg, say)
        y_all, m_all = pairs["y"], pairs.get("masks")
    ema = copy.deepcopy(model).requires_grad_(False)
    forward = model if rank.world == 1 else DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the same stream on every rank
    step, losses = _resume(last, key, model, ema, opt, gen, say, cfg.steps)
    n = len(y_all)  # with reflow: the number of teacher couplings
    batch = min(cfg.batch_size, n)
    if batch % rank.world:
        raise BadInput(f"train.batch_size={batch} (capped at the {n} training examples) is not divisible by "
                       f"train.devices={rank.world}; every rank trains on an equal share")
    part = ddp.rank_slice(batch, rank)
    meta = {"model_config": asdict(model_cfg), "train_config": asdict(cfg), "run_key": key,
            "data_fingerprint": attrs["fingerprint"], "data_path": str(data_path),
            "class_names": list(attrs["class_names"]), "num_train": int(len(data["labels"])), "device": str(device),
            "channel_names": channel_names(attrs, int(open_store(data_path)["images"].shape[1]))
            if target == "images" else None,
            "reflow_teacher_sha256": teacher_sha, "target": target, "train_indices": data["indices"].tolist(),
            # a latent model's autoencoder and latent statistics: what its samples are decoded with
            "autoencoder": None if latents is None else dict(zarr.open_group(str(latents), mode="r").attrs["record"]),
            **_rank_record(cfg.seed, batch, rank.world)}
    t_start = time.time()
    first_step, last_said, t_steady = step, t_start, t_start
    model.train()
    read = None if not stream else iter(batch_loader(
        RandomBatches(source, rows[idx], labels[idx], batch, cfg.seed, step, cfg.steps,
                      masks=masked(model_cfg) or target == "masks", images=target == "images"),
        pin=device.type == "cuda"))
    while step < cfg.steps:
        x0 = None
        if read is not None:  # the next step's batch, read ahead by the loader's workers
            images, y, m = (t.to(device, non_blocking=True) for t in next(read))
            if target == "masks":  # the mask generator learns one-hot masks, as `training_set` gives them held
                images = one_hot(m, model_cfg.in_channels)  # the model's width: one channel per mask class
            # (latents are already of unit variance: model space)
            x1 = to_model_space(images) if latents is None else images
            mask = m if masked(model_cfg) else None
        else:
            i = torch.randint(0, n, (batch,), generator=gen, device=device)
            x0 = None if pairs is None else pairs["x0"][i]
            x1 = x_all[i] if pairs is None else pairs["x1"][i]  # type: ignore[index]
            y, mask = y_all[i], None if m_all is None else m_all[i]
        loss = train_step(model, ema, opt, x1, y, mask, cfg, gen, step, x0=x0, part=part, forward=forward)
        step += 1
        losses.append(float(rank.mean(loss.detach())))
        if step == first_step + 1:  # the first step pays for allocation and kernel selection: not a rate to plan by
            t_steady = time.time()
        saving = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if saving and rank.main:
            save_atomic({**meta, "step": step, "losses": losses, "model": model.state_dict(),
                         "ema": ema.state_dict(), "optimizer": opt.state_dict(), "rng": gen.get_state()}, last)
        now = time.time()
        if saving or now - last_said >= PROGRESS_SECONDS:  # a line at least every PROGRESS_SECONDS of work
            steady = step - first_step - 1
            per_step = (now - t_steady) / steady if steady else now - t_start
            say(f"train: step {step}/{cfg.steps} loss {np.mean(losses[-50:]):.4f}, {per_step:.2f} s/step, "
                f"ETA {per_step * (cfg.steps - step):.0f}s ({now - t_start:.0f}s)" + (", checkpoint" if saving else ""))
            last_said = now
            if advance:
                advance(step / cfg.steps)
    if rank.main:
        save_atomic({**meta, "step": step, "losses": losses, "ema": ema.state_dict(),
                     "train_seconds": time.time() - t_start}, out_dir / "model.pt")
