import pytest
import torch

from motfm_core.model.paths import CondOTPath, sample_time


def test_path_endpoints_and_target():
    x0, x1 = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    path = CondOTPath()
    xt0, u = path.sample(x0, x1, torch.zeros(4))
    xt1, _ = path.sample(x0, x1, torch.ones(4))
    assert torch.allclose(xt0, x0) and torch.allclose(xt1, x1)
    assert torch.allclose(u, x1 - x0)
    xt, _ = path.sample(x0, x1, torch.full((4,), 0.25))
    assert torch.allclose(xt, 0.75 * x0 + 0.25 * x1)


def test_target_is_time_derivative_of_path():
    """u_t must equal d x_t / dt (checked by finite differences), also with sigma_min > 0."""
    path = CondOTPath(sigma_min=0.1)
    x0, x1 = torch.randn(3, 2, 4, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, 4, dtype=torch.float64)
    t, h = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), 1e-6
    (xa, u), (xb, _) = path.sample(x0, x1, t), path.sample(x0, x1, t + h)
    assert torch.allclose((xb - xa) / h, u, atol=1e-5)


def test_path_rejects_bad_shapes():
    with pytest.raises(ValueError, match="t must have shape"):
        CondOTPath().sample(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(3))


@pytest.mark.parametrize("scheme", ["uniform", "logit_normal"])
def test_time_sampling_is_continuous_in_unit_interval(scheme):
    t = sample_time(5000, scheme, torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1
    assert len(torch.unique(t)) > 4000  # continuous, never quantised to a grid
    if scheme == "logit_normal":
        assert abs(float(t.mean()) - 0.5) < 0.02 and float(t.std()) < 0.25


def test_unknown_time_scheme():
    with pytest.raises(ValueError, match="unknown time sampling"):
        sample_time(3, "beta")


def test_time_shift_moves_mass_towards_noise():
    from motfm_core.model.paths import shift_time

    t = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_time(t, 1.0), t)
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] < t[1:-1]).all()
    g = torch.Generator().manual_seed(0)
    assert sample_time(4000, "uniform", g, shift=3.0).mean() < 0.4
