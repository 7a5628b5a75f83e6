import math

import pytest
import torch

from motfm_core.model.solvers import SOLVERS, euler, solve

PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


@pytest.mark.parametrize("method", sorted(SOLVERS))
@pytest.mark.parametrize("steps", [1, 2, 10])
def test_nfe_is_exact(method, steps):
    calls = []

    def v(x, t):
        calls.append(t)
        return torch.ones_like(x)

    x, nfe = solve(v, torch.zeros(2, 3), steps, method)
    assert nfe == len(calls) == PER_STEP[method] * steps
    assert torch.allclose(x, torch.ones(2, 3))  # constant field: exact for every method


def test_one_euler_step_evaluates_the_network_once_at_t0():
    seen = []

    def v(x, t):
        seen.append(float(t[0]))
        return -x

    x, nfe = euler(v, torch.ones(1, 1), 1)
    assert nfe == 1 and seen == [0.0] and torch.allclose(x, torch.zeros(1, 1))


def test_solver_order_on_linear_ode():
    """dx/dt = -x from x(0)=1 has x(1)=e^-1; halving h divides Euler's error by ~2 and RK4's by ~16."""
    exact = math.exp(-1.0)

    def err(method, steps):
        x, _ = solve(lambda x, t: -x, torch.ones(1, dtype=torch.float64), steps, method)
        return abs(float(x) - exact)

    assert 1.8 < err("euler", 10) / err("euler", 20) < 2.2
    assert 3.5 < err("heun", 10) / err("heun", 20) < 4.5
    assert 14 < err("rk4", 10) / err("rk4", 20) < 18
    assert err("rk4", 4) < err("heun", 8) < err("euler", 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        solve(lambda x, t: x, torch.zeros(1), 0)
    with pytest.raises(ValueError, match="unknown solver"):
        solve(lambda x, t: x, torch.zeros(1), 1, "leapfrog")


def test_dopri5_is_accurate_and_counts_its_evaluations():
    calls = []

    def v(x, t):
        calls.append(1)
        return -x * (1 + t[:, None])  # x(t) = exp(-(t + t^2/2))

    x, nfe = solve(v, torch.ones(3, 1, dtype=torch.float64), 0, "dopri5")
    assert nfe == len(calls) and 7 <= nfe < 200
    assert abs(float(x[0]) - math.exp(-1.5)) < 1e-4
    from motfm_core.model.solvers import dopri5

    x_loose, nfe_loose = dopri5(v, torch.ones(1, 1, dtype=torch.float64), rtol=1e-3, atol=1e-3)
    x_tight, nfe_tight = dopri5(v, torch.ones(1, 1, dtype=torch.float64), rtol=1e-8, atol=1e-8)
    assert nfe_loose < nfe_tight
    assert abs(float(x_tight) - math.exp(-1.5)) < abs(float(x_loose) - math.exp(-1.5)) + 1e-12
    assert abs(float(x_tight) - math.exp(-1.5)) < 1e-7


def _time_varying(x, t):
    return torch.cos(3 * t)[:, None] - x * t[:, None]


def test_rflow_is_euler_where_monai_grid_is_even():
    """1000 / 10 is whole, so MONAI's rounded timesteps are our even grid: the same images to float rounding."""
    x0 = torch.randn(4, 3, dtype=torch.float64)
    ours, nfe_ours = solve(_time_varying, x0, 10, "euler")
    theirs, nfe_theirs = solve(_time_varying, x0, 10, "rflow")
    assert nfe_ours == nfe_theirs == 10
    assert torch.allclose(ours, theirs, atol=1e-12)


def test_rflow_at_30_steps_is_euler_on_monai_rounded_grid():
    """At 30 steps MONAI rounds its timesteps (1000, 967, 933, ...): one evaluation a step, at t = 1 - t_monai / 1000,
    each step as long as the gap to the next rounded timestep."""
    seen = []

    def v(x, t):
        seen.append(float(t[0]))
        return _time_varying(x, t)

    x0 = torch.randn(2, 3, dtype=torch.float64)
    x, nfe = solve(v, x0, 30, "rflow")
    assert nfe == len(seen) == 30
    grid = [1.0 - round((1 - i / 30) * 1000) / 1000 for i in range(30)] + [1.0]
    assert seen == pytest.approx(grid[:-1], abs=1e-7)  # the network is asked at float32 times
    assert seen[:3] == pytest.approx([0.0, 0.033, 0.067], abs=1e-7)
    expected = x0.clone()
    for a, b in zip(grid[:-1], grid[1:]):
        expected = expected + (b - a) * _time_varying(expected, torch.full((2,), a, dtype=torch.float64))
    assert torch.allclose(x, expected, atol=1e-6)  # MONAI's step length is a float32 quotient


def test_rflow_refuses_a_partial_interval():
    with pytest.raises(ValueError, match="noise \\(t=0\\) to data"):
        solve(lambda x, t: x, torch.zeros(1, 1), 4, "rflow", t0=0.5)
