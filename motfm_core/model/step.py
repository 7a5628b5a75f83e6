"""One optimisation step of a generator: the flow-matching loss (or the DDPM baseline's), the learning-rate schedule,
clipping, AdamW and the EMA. The training loop (`motfm_core.model.training`) runs it; the memory plan
(`motfm_core.model.memory`) traces it on fake tensors, so both see the same step."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from motfm_core.config import TrainConfig
from motfm_core.model.baselines import ddpm_loss
from motfm_core.model.couplings import COUPLINGS
from motfm_core.model.nets import VelocityUNet
from motfm_core.model.paths import CondOTPath, sample_time

__all__ = ["ema_decay", "flow_matching_loss", "lr_at", "train_step"]


def flow_matching_loss(
    model: VelocityUNet, x1: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, generator: torch.Generator,
    path: CondOTPath = CondOTPath(), mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
    part: slice = slice(None), forward: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """MSE between v(x_t, t, y) and the path's target velocity, with coupling and label dropout; a given
    `x0` (reflow: the noise the teacher mapped to x1) is used as the coupling itself.

    The batch's randomness is drawn whole, then only the rows `part` go through `forward` (default: `model`;
    a DDP rank passes its wrapped model and its slice), so every rank's share is the one-process batch's."""
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        x0 = COUPLINGS[cfg.coupling](x0, x1, y)  # pairs within each class label
    t = sample_time(x1.shape[0], cfg.time_sampling, generator, x1.device, cfg.time_shift)
    xt, ut = path.sample(x0, x1, t)
    if cfg.class_dropout > 0:
        drop = torch.rand(y.shape, generator=generator, device=y.device) < cfg.class_dropout
        y = torch.where(drop, torch.full_like(y, model.null_class), y)
    mask = None if mask is None else mask[part]
    return ((forward or model)(xt[part], t[part], y[part], mask).float() - ut[part]).pow(2).mean()


def ema_decay(step: int, cfg: TrainConfig) -> float:
    """The EMA decay of the update after `step` optimizer steps: cfg.ema_decay, ramped up from 0.1 as
    (1 + step) / (10 + step) while that is lower when cfg.ema_warmup (the usual warm-up, e.g. diffusers' EMAModel)."""
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


def lr_at(step: int, steps: int, lr: float, warmup_steps: int) -> float:
    """The learning rate after `step` of `steps` steps: linear warm-up to `lr`, then cosine decay to 10% of it."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    frac = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_step(model: VelocityUNet, ema: nn.Module, opt: torch.optim.Optimizer, x1: torch.Tensor, y: torch.Tensor,
               mask: torch.Tensor | None, cfg: TrainConfig, gen: torch.Generator, step: int,
               x0: torch.Tensor | None = None, part: slice = slice(None),
               forward: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """One optimisation step on the batch (x1, y, mask) after `step` steps: learning rate, loss (bf16 autocast on
    CUDA), backward, clipping, AdamW, EMA; returns the loss. The memory plan traces this same function."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
    with torch.autocast("cuda", dtype=torch.bfloat16) if x1.is_cuda else contextlib.nullcontext():
        if model.cfg.prediction == "epsilon":
            loss = ddpm_loss(model, x1, y, cfg.class_dropout, gen, mask, part, forward)
        else:
            loss = flow_matching_loss(model, x1, y, cfg, gen, mask=mask, x0=x0, part=part, forward=forward)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # DDP: the gradients arrive averaged over the ranks, the global batch's gradient
    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    with torch.no_grad():
        decay = ema_decay(step, cfg)
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)
    return loss
