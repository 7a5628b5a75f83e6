import numpy as np
import pytest
import torch

from motfm_core.model.enhance import EnhanceConfig, classical, degrade, train_and_evaluate


def test_degradations():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    noisy = degrade(x, EnhanceConfig(task="denoise", level=0.1), torch.Generator().manual_seed(0))
    assert abs(float((noisy - x).std()) - 0.1) < 0.02
    low = degrade(x, EnhanceConfig(task="superres", level=4))
    assert low.shape == x.shape
    # a 4x area-downsampled image has no detail finer than 4 px: downsampling it again loses nothing more
    assert not torch.allclose(low, x)
    flat = torch.full((1, 1, 16, 16), 0.3)
    assert torch.allclose(degrade(flat, EnhanceConfig(task="superres", level=2)), flat, atol=1e-6)


def test_classical_gaussian_filter_removes_noise():
    clean = np.zeros((1, 1, 32, 32), np.float32) + 0.5
    noisy = clean + np.random.RandomState(0).randn(*clean.shape).astype(np.float32) * 0.1
    out = classical(noisy, EnhanceConfig(), sigma=1.5)
    assert np.abs(out - clean).mean() < 0.5 * np.abs(noisy - clean).mean()


def test_bad_enhance_config():
    with pytest.raises(ValueError, match="integer factor"):
        EnhanceConfig(task="superres", level=1.5).validate()
    with pytest.raises(ValueError, match=r"enhance.task must be one of \['denoise', 'superres'\], got 'deblur'"):
        EnhanceConfig(task="deblur").validate()


@pytest.mark.parametrize("task,level", [("denoise", 0.2), ("superres", 2)])
def test_enhancement_flow_trains_and_is_scored(phantom_store, tmp_path, task, level):
    cfg = EnhanceConfig(task=task, level=level, channels=(16, 16), steps=60, batch_size=8, nfe=2)
    out = train_and_evaluate(phantom_store, cfg, tmp_path, device="cpu", progress=lambda m: None)
    assert (tmp_path / f"enhance-{task}.pt").exists() and out.nfe == 2
    for score in (out.degraded, out.classical, out.flow):
        assert np.isfinite(score.psnr) and -1 <= score.ssim <= 1
    if task == "denoise":  # even a short training must beat the raw noisy input on this easy phantom set
        assert out.flow.psnr > out.degraded.psnr
