import numpy as np
import pytest
import torch

from motfm_core.config import ModelConfig, SampleConfig
from motfm_core.model.baselines import ddpm_loss, diffusion_sample
from motfm_core.model.nets import build_model
from motfm_core.model.sampling import generate, sample_plan
from motfm_core.model.training import load_checkpoint
from tests.conftest import TINY_MODEL


def test_ddpm_loss_of_the_true_noise_is_zero():
    """An oracle that returns the noise actually added gives zero loss (checks the objective's wiring)."""
    x1, y = torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(0))

    class Oracle(torch.nn.Module):
        null_class = 1

        def forward(self, xk, t, yy, mask=None):
            assert torch.all(t * 1000 == torch.round(t * 1000))  # integer diffusion steps, exactly
            return noise

    assert float(ddpm_loss(Oracle(), x1, y, 0.0, torch.Generator().manual_seed(0))) < 1e-12


@pytest.mark.parametrize("steps", [1, 5, 50])
def test_ddim_spends_one_evaluation_per_step(ddpm_checkpoint, steps):
    model, _ = load_checkpoint(ddpm_checkpoint)
    cfg = SampleConfig(samples_per_class=1, solver="ddim", nfe=steps)
    labels, seeds = sample_plan(3, cfg)
    images, nfe = generate(model, labels, seeds, cfg)
    assert nfe == steps and images.shape == (3, 1, 16, 16) and np.isfinite(images).all()


def test_ddpm_needs_all_1000_steps_and_spends_them(ddpm_checkpoint):
    model, _ = load_checkpoint(ddpm_checkpoint)
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="use solver 'ddim'"):
        diffusion_sample(model, x, torch.tensor([0, 1]), "ddpm", 50)
    _, nfe = diffusion_sample(model, x, torch.tensor([0, 1]), "ddpm", 1000, step_seeds=[1, 2])
    assert nfe == 1000


def test_solver_must_match_the_model(ddpm_checkpoint, tiny_checkpoint):
    labels, seeds = np.array([0]), np.array([1])
    with pytest.raises(ValueError, match="cannot sample a DDPM"):
        generate(load_checkpoint(ddpm_checkpoint)[0], labels, seeds, SampleConfig(solver="euler"))
    with pytest.raises(ValueError, match="cannot sample a flow-matching"):
        generate(load_checkpoint(tiny_checkpoint)[0], labels, seeds, SampleConfig(solver="ddim"))


def test_same_backbone():
    a = build_model(ModelConfig(image_size=16, num_classes=3, **TINY_MODEL))
    b = build_model(ModelConfig(image_size=16, num_classes=3, prediction="epsilon", **TINY_MODEL))
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


def test_ddpm_samples_do_not_depend_on_the_batch_layout():
    """Each sample's per-step noise comes from its own seed: batch size 1, 2 or 3 give the same samples (a shared
    generator made them differ by up to 0.99). The noise predictor is a per-sample function, so any difference is
    the sampler's; the UNet's own batching is left out (it would only add ~1e-7 of conv rounding and 50 s)."""

    class PerSample(torch.nn.Module):
        null_class = 2
        cfg = ModelConfig(image_size=8, num_classes=2, prediction="epsilon", **TINY_MODEL)

        def forward(self, x, t, y, mask=None):
            return 0.5 * x * (1 + t.view(-1, 1, 1, 1)) + 0.1 * y.view(-1, 1, 1, 1)

    model = PerSample()
    labels, seeds = np.array([0, 1, 0]), np.array([11, 12, 13])
    runs = [generate(model, labels, seeds, SampleConfig(solver="ddpm", nfe=1000, batch_size=b))[0] for b in (1, 2, 3)]
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)
    np.testing.assert_allclose(runs[0], runs[2], atol=1e-6)
    other, _ = generate(model, labels, np.array([11, 99, 13]), SampleConfig(solver="ddpm", nfe=1000, batch_size=3))
    np.testing.assert_allclose(other[0], runs[0][0], atol=1e-6)
    assert np.abs(other[1] - runs[0][1]).max() > 0.1  # another seed, another sample


@pytest.mark.parametrize("steps", [10, 50, 30])
def test_trailing_ddim_steps_land_where_the_next_step_is_evaluated(steps):
    """MONAI's DDIM evaluates linspace(999, 0, n) but moves the sample 1000 // n back each step (10 steps: from 999
    to the noise level of 899, then evaluated as 888); `trailing` spacing evaluates exactly where each step lands."""
    from monai.networks.schedulers import DDIMScheduler

    ratio = 1000 // steps
    default = DDIMScheduler(1000)
    default.set_timesteps(steps)
    t = default.timesteps.tolist()
    assert t[0] == 999 and any(a - ratio != b for a, b in zip(t, t[1:]))  # the mismatch (steps dividing 1000)
    trailing = DDIMScheduler(1000, steps_offset=ratio - 1)
    trailing.set_timesteps(steps)
    t = trailing.timesteps.tolist()
    assert t[0] == 999 and len(t) == steps and t[-1] - ratio < 0  # from pure noise to the clean image
    assert all(abs((a - ratio) - b) <= 1 for a, b in zip(t, t[1:]))


def test_both_spacings_sample_and_spend_one_evaluation_per_step(ddpm_checkpoint):
    model, _ = load_checkpoint(ddpm_checkpoint)
    out = {}
    for spacing in ("linspace", "trailing"):
        cfg = SampleConfig(samples_per_class=1, solver="ddim", nfe=10, ddim_spacing=spacing)
        labels, seeds = sample_plan(3, cfg)
        out[spacing], nfe = generate(model, labels, seeds, cfg)
        assert nfe == 10 and np.isfinite(out[spacing]).all()
    assert not np.allclose(out["linspace"], out["trailing"])
