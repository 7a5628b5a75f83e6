"""Diffusion baseline on the same backbone and budget: DDPM training, DDPM (1000 steps) / DDIM sampling.

The network is the same `VelocityUNet` (same MONAI UNet, same class embedding and null class); only
the objective differs: it predicts the noise epsilon of x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps at
integer diffusion step k, which it receives as t = k / 1000 so the UNet's time embedding sees k exactly.
Schedulers are MONAI's (`DDPMScheduler`, `DDIMScheduler`, linear betas, 1000 training steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from motfm_core.config import DDPM_TIMESTEPS
from motfm_core.errors import BadInput
from motfm_core.model.nets import TIME_SCALE, VelocityUNet, guided_velocity

__all__ = ["ddpm_loss", "diffusion_sample", "NUM_TRAIN_TIMESTEPS"]

NUM_TRAIN_TIMESTEPS = DDPM_TIMESTEPS


def ddpm_loss(model: VelocityUNet, x1: torch.Tensor, y: torch.Tensor, class_dropout: float,
              generator: torch.Generator, mask: torch.Tensor | None = None, part: slice = slice(None),
              forward: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE at uniformly drawn integer steps, with label dropout for guidance; the randomness
    is drawn for the whole batch and the rows `part` go through `forward` (a DDP rank's share, as in
    `training.flow_matching_loss`)."""
    scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    noise = torch.randn(x1.shape, generator=generator, device=x1.device)
    k = torch.randint(0, NUM_TRAIN_TIMESTEPS, (x1.shape[0],), generator=generator, device=x1.device)
    xk = scheduler.add_noise(x1, noise, k)
    if class_dropout > 0:
        drop = torch.rand(y.shape, generator=generator, device=y.device) < class_dropout
        y = torch.where(drop, torch.full_like(y, model.null_class), y)
    mask = None if mask is None else mask[part]
    return ((forward or model)(xk[part], k[part].float() / TIME_SCALE, y[part], mask).float()
            - noise[part]).pow(2).mean()


@torch.no_grad()
def diffusion_sample(model: VelocityUNet, x_noise: torch.Tensor, y: torch.Tensor, method: str, steps: int,
                     guidance: float = 1.0, step_seeds: list[int] | None = None,
                     mask: torch.Tensor | None = None, spacing: str = "linspace") -> tuple[torch.Tensor, int]:
    """Reverse diffusion from x_noise: `ddpm` (must be 1000 steps) or deterministic `ddim` (any steps), its steps
    spaced `linspace` (MONAI's: linspace(999, 0, steps), each step moving the sample 1000 // steps back, which is
    not where the next evaluated step is) or `trailing` (999 - k * 1000 // steps: each step lands on the next;
    Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").

    DDPM's per-step noise of sample i comes from its own generator seeded `step_seeds[i]` (default: its row
    index), so a sample does not depend on the batch it is drawn in. Returns the samples in model space and the
    number of network evaluations spent (one per step).
    """
    if method == "ddpm":
        if steps != NUM_TRAIN_TIMESTEPS:
            raise BadInput(f"ddpm samples with all {NUM_TRAIN_TIMESTEPS} steps; use solver 'ddim' for {steps}")
        scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    elif method == "ddim":
        if not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
            raise BadInput(f"ddim steps must lie in [1, {NUM_TRAIN_TIMESTEPS}], got {steps}")
        # MONAI's steps_offset shifts linspace(999 - offset, 0) up by offset: with step_ratio - 1 the steps are
        # 999, 999 - step_ratio, .., step_ratio - 1, the very levels its step() moves the sample to
        offset = NUM_TRAIN_TIMESTEPS // steps - 1 if spacing == "trailing" else 0
        scheduler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, steps_offset=offset)
    else:
        raise BadInput(f"unknown diffusion sampler {method!r}; use 'ddpm' or 'ddim'")
    scheduler.set_timesteps(steps, device=x_noise.device)
    eps_fn = guided_velocity(model, y, guidance, mask)  # guidance mixes eps predictions the same way
    x, nfe = x_noise, 0
    gens = [torch.Generator().manual_seed(int(s)) for s in (step_seeds if step_seeds is not None
                                                            else range(x.shape[0]))]
    for k in scheduler.timesteps:
        t = torch.full((x.shape[0],), float(k) / TIME_SCALE, device=x.device)
        eps = eps_fn(x, t)
        nfe += 1
        if method == "ddim":
            x, _ = scheduler.step(eps, int(k), x)
            continue
        # MONAI's step adds sigma_k * randn(batch) from one generator; swap that draw for per-sample noise:
        # give it a generator we can replay, subtract its draw, add ours (same maths, batch-independent noise)
        replay = torch.Generator(device=x.device).manual_seed(0)
        x_prev, _ = scheduler.step(eps, int(k), x, generator=replay)
        if int(k) > 0:
            theirs = torch.randn(eps.shape, dtype=eps.dtype, device=x.device,
                                 generator=torch.Generator(device=x.device).manual_seed(0))
            ours = torch.stack([torch.randn(eps.shape[1:], generator=g) for g in gens]).to(x.device, eps.dtype)
            x_prev = x_prev + scheduler._get_variance(int(k)) ** 0.5 * (ours - theirs)
        x = x_prev
    return x, nfe
