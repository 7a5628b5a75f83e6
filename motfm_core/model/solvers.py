"""Fixed-step ODE solvers for dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data).

A solver takes any velocity function and knows nothing of networks. Each returns the samples and
the number of velocity evaluations (NFE) it actually spent, counted by a wrapper, never inferred.
`steps` is the number of solver steps: Euler spends `steps` evaluations, midpoint and Heun 2 per
step, RK4 4 per step. One step works for all of them. `dopri5` is adaptive (Dormand-Prince 5(4)
with error control, written here so that NFE is counted exactly); `steps` is then ignored and the
NFE follows from the tolerances. `rflow` is MONAI's `RFlowScheduler` inference loop (the sampler of MONAI's and
MAISI's rectified-flow models) at its default settings, so a comparison "against MONAI's 30-step sampler" runs
MONAI's own loop on our weights rather than our reading of it.
"""

from __future__ import annotations

from typing import Callable

import torch

from motfm_core.errors import BadInput

__all__ = ["dopri5", "euler", "METHODS", "rflow", "RFLOW_TIMESTEPS", "solve", "SOLVERS", "Velocity"]

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
METHODS = (*SOLVERS, "dopri5", "rflow")
RFLOW_TIMESTEPS = 1000  # RFlowScheduler's num_train_timesteps default: its time runs 1000 (noise) -> 0 (data)


# Dormand-Prince 5(4) tableau (FSAL: the last stage of a step is the first of the next).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
         (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def dopri5(velocity: Velocity, x0: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5, t0: float = 0.0,
           t1: float = 1.0, max_nfe: int = 10_000) -> tuple[torch.Tensor, int]:
    """Adaptive Dormand-Prince 5(4) with a standard PI-free step controller; returns (x(t1), NFE)."""
    v, t, x = _Counted(velocity), t0, x0
    k1 = v(x, t)
    h = 0.1 * (t1 - t0)
    while t < t1 - 1e-12:
        if v.calls > max_nfe:
            raise RuntimeError(f"dopri5 exceeded {max_nfe} evaluations; loosen rtol/atol")
        h = min(h, t1 - t)
        ks = [k1]
        for i in range(1, 7):
            xi = x + h * sum(a * k for a, k in zip(_DP_A[i], ks))
            ks.append(v(xi, t + _DP_C[i] * h))
        x5 = x + h * sum(b * k for b, k in zip(_DP_B5, ks) if b)
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_DP_B5, _DP_B4, ks))
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        e = float((err / scale).pow(2).mean().sqrt())
        if e <= 1.0:
            t, x, k1 = t + h, x5, ks[6]
        h *= min(5.0, max(0.2, 0.9 * (e if e > 0 else 1e-10) ** -0.2))
    return x, v.calls


@torch.no_grad()
def solve(
    velocity: Velocity, x0: torch.Tensor, steps: int, method: str = "euler", t0: float = 0.0, t1: float = 1.0,
    rtol: float = 1e-5, atol: float = 1e-5,
) -> tuple[torch.Tensor, int]:
    """Integrate from x0 at t0 to t1 in `steps` equal steps (dopri5: adaptive to rtol/atol); returns (x(t1), NFE)."""
    if method == "dopri5":
        return dopri5(velocity, x0, rtol=rtol, atol=atol, t0=t0, t1=t1)
    if method == "rflow":
        if (t0, t1) != (0.0, 1.0):
            raise BadInput(f"solver 'rflow' integrates from noise (t=0) to data (t=1) only, not {t0}..{t1}; use euler")
        return rflow(velocity, x0, steps)
    if method not in SOLVERS:
        raise BadInput(f"unknown solver {method!r}; choose one of {sorted(METHODS)}")
    step, v = SOLVERS[method], _Counted(velocity)
    grid, x = _grid(steps, t0, t1), x0
    for ta, tb in zip(grid[:-1], grid[1:]):
        x = step(v, x, ta, tb - ta)
    return x, v.calls


def euler(velocity: Velocity, x0: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """Explicit Euler: exactly `steps` network evaluations."""
    return solve(velocity, x0, steps, "euler")


def rflow(velocity: Velocity, x0: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """MONAI's `RFlowScheduler` with its defaults (1000 training timesteps, timesteps rounded to integers, no
    resolution-dependent shift) and its documented loop: `set_timesteps(steps)`, then per timestep t with the next
    one t' (0 after the last) `x = step(v(x, t), t, x, t')`, a step of (t - t') / 1000. Its time runs from 1000
    (noise) to 0 (data) and ours from 0 to 1, so the network is asked at 1 - t / 1000. The maths is Euler's on
    MONAI's grid (rounded, so at 30 steps not quite even): one network evaluation a step."""
    from monai.networks.schedulers import RFlowScheduler

    if steps < 1:
        raise BadInput(f"rflow steps must be >= 1, got {steps}")
    scheduler = RFlowScheduler(num_train_timesteps=RFLOW_TIMESTEPS)
    scheduler.set_timesteps(steps, device=x0.device)
    times = [int(t) for t in scheduler.timesteps.tolist()]
    v, x = _Counted(velocity), x0
    for t, t_next in zip(times, [*times[1:], 0]):
        x, _ = scheduler.step(v(x, 1.0 - t / RFLOW_TIMESTEPS), t, x, t_next)
    return x, v.calls
