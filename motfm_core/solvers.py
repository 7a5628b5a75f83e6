"""Fixed-step ODE solvers for dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data).

A solver takes any velocity function and knows nothing of networks. Each returns the samples and
the number of velocity evaluations (NFE) it actually spent, counted by a wrapper, never inferred.
`steps` is the number of solver steps: Euler spends `steps` evaluations, midpoint and Heun 2 per
step, RK4 4 per step. One step works for all of them.
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Counted:
    """Wraps a velocity function and counts its calls."""

    def __init__(self, fn: Velocity) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls += 1
        return self.fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32))


def _grid(steps: int, t0: float, t1: float) -> list[float]:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float64).tolist()


def _step_euler(v: _Counted, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    return x + h * v(x, t)


def _step_midpoint(v: _Counted, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    return x + h * v(x + 0.5 * h * v(x, t), t + 0.5 * h)


def _step_heun(v: _Counted, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    k1 = v(x, t)
    k2 = v(x + h * k1, t + h)
    return x + 0.5 * h * (k1 + k2)


def _step_rk4(v: _Counted, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    k1 = v(x, t)
    k2 = v(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = v(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = v(x + h * k3, t + h)
    return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


SOLVERS = {"euler": _step_euler, "midpoint": _step_midpoint, "heun": _step_heun, "rk4": _step_rk4}


@torch.no_grad()
def solve(
    velocity: Velocity, x0: torch.Tensor, steps: int, method: str = "euler", t0: float = 0.0, t1: float = 1.0
) -> tuple[torch.Tensor, int]:
    """Integrate from x0 at t0 to t1 in `steps` equal steps; returns (x at t1, NFE spent)."""
    if method not in SOLVERS:
        raise ValueError(f"unknown solver {method!r}; choose one of {sorted(SOLVERS)}")
    step, v = SOLVERS[method], _Counted(velocity)
    grid, x = _grid(steps, t0, t1), x0
    for ta, tb in zip(grid[:-1], grid[1:]):
        x = step(v, x, ta, tb - ta)
    return x, v.calls


def euler(velocity: Velocity, x0: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """Explicit Euler: exactly `steps` network evaluations."""
    return solve(velocity, x0, steps, "euler")
