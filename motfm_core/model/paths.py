"""Probability paths: how x_t and its target velocity are built from a noise/data pair.

Conditional optimal-transport path (Lipman et al. 2023; MOTFM uses sigma_min = 0):
    x_t = (1 - (1 - sigma_min) t) x0 + t x1,    u_t = x1 - (1 - sigma_min) x0,
with x0 ~ N(0, I) at t = 0 and data x1 at t = 1. Time is continuous in [0, 1]; it is never quantised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motfm_core.errors import BadInput

__all__ = ["CondOTPath", "sample_time", "shift_time"]

@dataclass(frozen=True)
class CondOTPath:
    """Straight-line path from noise to data with optional minimum noise level sigma_min."""

    sigma_min: float = 0.0

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x_t, u_t) for x0, x1 of shape (B, C, H, W[, D]) and t of shape (B,)."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 shape {tuple(x0.shape)} != x1 shape {tuple(x1.shape)}")
        if t.shape != (x0.shape[0],):
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        tb = t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        a = 1.0 - (1.0 - self.sigma_min) * tb
        xt = a * x0 + tb * x1
        ut = x1 - (1.0 - self.sigma_min) * x0
        return xt, ut


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift (SD3): noise level s = 1 - t becomes shift*s / (1 + (shift-1)*s); shift 1 is identity."""
    s = 1.0 - t
    return 1.0 - shift * s / (1.0 + (shift - 1.0) * s)


def sample_time(
    n: int, scheme: str = "uniform", generator: torch.Generator | None = None, device: str | torch.device = "cpu",
    shift: float = 1.0,
) -> torch.Tensor:
    """Draw n training times in (0, 1): `uniform`, or `logit_normal` (SD3/MONAI RFlow: sigmoid of N(0, 1))."""
    if scheme == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    elif scheme == "logit_normal":
        t = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    else:
        raise BadInput(f"unknown time sampling scheme {scheme!r}; use 'uniform' or 'logit_normal'")
    return t if shift == 1.0 else shift_time(t, shift)
