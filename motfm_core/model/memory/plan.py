"""The run's plan: the memory and FLOPs of every stage that trains or samples, on this device, before any work.

Pixel-space runs plan the flow's training step and sampling batch; latent runs also plan the autoencoder's training
step and the decoding of one image (whole, or in windows where a whole one does not fit). Each refuses, with
MemoryPlanError naming the fix, what cannot fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from motfm_core.config import AutoencoderConfig, ModelConfig, PipelineConfig, SampleConfig, TrainConfig
from motfm_core.device import default_device
from motfm_core.model.autoencoder import patch_sides
from motfm_core.model.memory.budget import (
    GB,
    PROCESS_GB,
    SAMPLING_SHARE,
    MemoryPlanError,
    available_memory,
    work_budget,
)
from motfm_core.model.memory.trace import trace_autoencoder, trace_sampling, trace_training

__all__ = ["autoencoder_plan", "plan_memory", "plan_run", "plan_sampling", "plan_training", "SamplingPlan",
           "TrainingPlan", "WHOLE_TILE", "whole_fits"]

WHOLE_TILE = 32  # latent side of a window when a whole image does not fit (128 px at the default 4x)


@dataclass(frozen=True)
class TrainingPlan:
    """One training step on `device`: what it needs and what is there."""

    device: str
    params: int
    batch: int
    tflop_per_step: float
    step_gb: float  # estimated peak of a step: weights, EMA, AdamW state, gradients, activations, overhead
    data_gb: float  # the training set, held on the device (0 when not known yet)
    gradient_checkpointing: bool
    budget_gb: float
    budget_from: str
    channels: tuple[int, ...]
    attention: str
    ranks: int = 1  # data-parallel ranks sharing this device's memory (CPU: every rank is a process here)

    def line(self) -> str:
        ckpt = ", gradient checkpointing on" if self.gradient_checkpointing else ""
        data = f" + {self.data_gb:.2f} GB training set" if self.data_gb else ""
        ranks = f", x {self.ranks} ranks on this machine" if self.ranks > 1 else ""
        return (f"{self.params / 1e6:.1f}M parameters, channels {'/'.join(map(str, self.channels))}, attention "
                f"{self.attention}; a training step: {self.tflop_per_step:.3f} TFLOP, peak {self.step_gb:.2f} GB{data} "
                f"at batch {self.batch}{ckpt}{ranks}; {self.device}: {self.budget_gb:.1f} GB to use "
                f"({self.budget_from})")


def _attention_text(cfg: ModelConfig) -> str:
    """Where the network attends: its attention levels and MONAI's mid block, which always attends at the deepest
    level."""
    from motfm_core.config.sizing import attention_tokens, level_sides

    shape, deepest = cfg.spatial_shape, len(cfg.channels) - 1

    def at(level: int) -> str:
        return f"{'x'.join(map(str, level_sides(shape, level + 1)[level]))} ({attention_tokens(shape, level)} tokens)"

    levels = [at(i) for i, on in enumerate(cfg.attention_levels) if on and i != deepest]
    where = "at " + ", ".join(levels) + " and " if levels else "at "
    mid = "" if cfg.attention_levels[deepest] else " (MONAI's mid block only)"
    return where + at(deepest) + mid


def plan_training(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device | str | None = None,
                  data_bytes: int = 0) -> TrainingPlan:
    """The plan of a training step of `model_cfg` on `device` (default: CUDA when present) within train.memory_gb
    (0: the device's free memory). Resolves model.gradient_checkpointing="auto" (on only when a step would not fit
    without it) and raises MemoryPlanError, naming the fixes, when it cannot fit."""
    dev = default_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    budget, where = work_budget(dev, train_cfg.memory_gb)

    def traced(checkpointing: bool) -> tuple[float, float, int]:
        t = trace_training(model_cfg, train_cfg, kind, checkpointing)
        return float(t.peak), t.flops, t.params

    # a trace is one rank's step; CPU data-parallel ranks are processes of this machine, each with its own copy of
    # the model, optimizer, activations and training set (on CUDA each rank has a device of its own)
    ranks = train_cfg.devices if kind == "cpu" else 1
    mode = model_cfg.gradient_checkpointing
    ckpt = mode == "on"
    need, flops, params = traced(ckpt)
    if mode == "auto" and ranks * (need + data_bytes) > budget:
        with_ckpt = traced(True)
        if with_ckpt[0] < need:
            (need, flops, params), ckpt = with_ckpt, True
    plan = TrainingPlan(str(dev), params, train_cfg.batch_size, flops / 1e12, need / GB, data_bytes / GB, ckpt,
                        budget / GB, where, tuple(model_cfg.channels), _attention_text(model_cfg), ranks)
    if ranks * (need + data_bytes) > budget:
        fixes = [f"a smaller train.batch_size (now {train_cfg.batch_size}; memory grows about linearly with it)"]
        if not ckpt:
            fixes.append("model.gradient_checkpointing=on")
        if model_cfg.size != "small" and not ckpt:
            fixes.append("a smaller model.size")
        held = f" + {plan.data_gb:.1f} GB training set" if data_bytes else ""
        raise MemoryPlanError(
            f"train: a training step needs about {plan.step_gb:.1f} GB{held}"
            + (f" in each of {ranks} ranks" if ranks > 1 else "") + f" on {dev} but {budget / GB:.1f} GB is "
            f"there ({where}); use " + ", or ".join(fixes + (["fewer train.devices"] if ranks > 1 else []))
            + " (train.memory_gb plans for another device)")
    return plan


@dataclass(frozen=True)
class SamplingPlan:
    """One sampling batch on `device`: the batch that fits (at most the one asked for) and what it needs."""

    device: str
    asked: int
    batch: int
    gb: float
    gflop_per_image: float  # one network evaluation of one image

    def line(self) -> str:
        capped = f" (capped from {self.asked} to fit)" if self.batch < self.asked else ""
        return (f"sampling: {self.gflop_per_image:.2f} GFLOP per image and evaluation, peak {self.gb:.2f} GB at "
                f"batch {self.batch}{capped}")


def plan_sampling(model_cfg: ModelConfig, sample_cfg: SampleConfig, device: torch.device | str | None = None,
                  budget_gb: float = 0.0) -> SamplingPlan:
    """The largest sampling batch up to sample.batch_size that fits SAMPLING_SHARE of `device`'s free memory (samples
    do not depend on the batch); raises MemoryPlanError when not even one image fits. Memory grows linearly with the
    batch, so two traces at batch 1 and 2 give the batch that fits when the one asked for does not."""
    dev = default_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    budget, where = work_budget(dev, budget_gb)
    budget *= SAMPLING_SHARE
    peak, flops = trace_sampling(model_cfg, sample_cfg, kind)[:2]
    per_image = flops / sample_cfg.batch_size / 1e9
    batch, need = sample_cfg.batch_size, float(peak)
    if need > budget:
        one = trace_sampling(model_cfg, replace(sample_cfg, batch_size=1), kind).peak
        two = trace_sampling(model_cfg, replace(sample_cfg, batch_size=2), kind).peak
        fixed, each = float(2 * one - two), float(max(two - one, 1))
        batch = int(min(sample_cfg.batch_size - 1, (budget - fixed) // each))
        if batch < 1:
            raise MemoryPlanError(f"sample: one image needs about {(fixed + each) / GB:.1f} GB on {dev} but "
                                  f"{budget / GB:.1f} GB is there ({SAMPLING_SHARE:.0%} of {where}); use a smaller "
                                  "model, or sample on a device with more memory")
        need = fixed + each * batch
    return SamplingPlan(str(dev), sample_cfg.batch_size, batch, need / GB, per_image)


def plan_memory(model_cfg: ModelConfig, train_cfg: TrainConfig, sample_cfg: SampleConfig,
                device: torch.device | str | None = None, data_bytes: int = 0) -> tuple[TrainingPlan, SamplingPlan]:
    """Both plans (training within train.memory_gb, sampling within the device), refusing what cannot fit."""
    return (plan_training(model_cfg, train_cfg, device, data_bytes),
            plan_sampling(model_cfg, sample_cfg, device, train_cfg.memory_gb))


def whole_fits(cfg: AutoencoderConfig, latent_shape: tuple[int, ...], device: torch.device) -> bool:
    """Whether decoding one whole image fits SAMPLING_SHARE of `device`'s free memory, by the plan."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    # encoding holds about what decoding does (the same levels in the other order)
    return trace_autoencoder(cfg, len(latent_shape), 1, latent_shape, kind, "decode")[0] <= \
        SAMPLING_SHARE * available_memory(device)[0]


def autoencoder_plan(cfg: AutoencoderConfig, image_shape: tuple[int, ...], channels: int = 1,
                     device: str | torch.device | None = None) -> str:
    """The plan line of the autoencoder stage on `device`: a training step on its patches and the decoding of one
    image (whole, or in windows when a whole one does not fit); raises MemoryPlanError when a step cannot fit."""
    dev = default_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    dims = len(image_shape)
    sides = patch_sides(image_shape, cfg.patch_size)
    peak, flops = trace_autoencoder(cfg, dims, channels, sides, kind, "train")
    free = available_memory(dev)[0] - PROCESS_GB[kind] * GB
    if peak > free:
        raise MemoryPlanError(f"autoencoder: a training step on {cfg.batch_size} patches of "
                              f"{'x'.join(map(str, sides))} "
                              f"needs about {peak / GB:.1f} GB on {dev} but {max(free, 0) / GB:.1f} GB is free; use a "
                              "smaller autoencoder.patch_size or autoencoder.batch_size")
    latent = tuple(s // cfg.factor for s in image_shape)
    tile = cfg.tile or (0 if whole_fits(cfg, latent, dev) else WHOLE_TILE)
    window = latent if not tile else tuple(min(tile, s) for s in latent)
    decode = trace_autoencoder(cfg, dims, channels, window, kind, "decode")
    how = "whole" if window == latent else f"in {'x'.join(map(str, window))}-voxel latent windows"
    return (f"autoencoder: {cfg.factor}x per axis to {cfg.latent_channels} x {'x'.join(map(str, latent))} latents; a "
            f"training step: {flops / 1e12:.3f} TFLOP, peak {peak / GB:.2f} GB at {cfg.batch_size} patches of "
            f"{'x'.join(map(str, sides))}; decoding an image {how}: {decode[1] / 1e9:.1f} GFLOP, peak "
            f"{decode[0] / GB:.2f} GB")


def plan_run(cfg: PipelineConfig) -> str:
    """The plan's lines for a run of `cfg` (before the data is read: the data section's geometry, one channel)."""
    training, sampling = plan_memory(cfg.model, cfg.train, cfg.sample)
    lines = f"plan: {training.line()}; {sampling.line()}"
    if cfg.model.space == "latent":
        lines += "; " + autoencoder_plan(cfg.autoencoder, cfg.data.spatial_shape)
    return lines
