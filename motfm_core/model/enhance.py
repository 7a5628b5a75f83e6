"""Image enhancement by flow matching from an informed source: degraded image -> clean image.

The path starts at the degraded image plus a little noise, x0 = D(x1) + s * eps, and ends at the clean
image x1; the UNet sees [x_t, D(x1)] (the degraded image as extra channels) and learns v = x1 - x0.
Degradations are made here from the real data: `denoise` adds Gaussian noise (sigma = `level`);
`superres` area-downsamples by `level` and upsamples bicubically (the classical baseline's input).
Evaluation on the real test split: PSNR and SSIM (MONAI metrics) of the degraded input, the classical
baseline (Gaussian filter with its sigma tuned on the val split / bicubic) and the flow at a given NFE.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import PSNRMetric, SSIMMetric
from monai.networks.nets import DiffusionModelUNet
from scipy.ndimage import gaussian_filter

from motfm_core.config import EnhanceConfig, auto_norm_groups
from motfm_core.data.store import load_split
from motfm_core.device import default_device
from motfm_core.errors import BadInput
from motfm_core.files import write_json_atomic
from motfm_core.model.checkpoints import save_atomic
from motfm_core.model.nets import TIME_SCALE
from motfm_core.model.paths import CondOTPath
from motfm_core.model.solvers import solve
from motfm_core.results import Result, optional
from motfm_core.scale import to_image_space, to_model_space

__all__ = ["Enhancement", "Fidelity", "build_enhancer", "classical", "degrade", "enhance", "run_enhancement",
           "train_and_evaluate"]


@dataclass(frozen=True)
class Fidelity(Result):
    """PSNR (dB) and SSIM against the clean test images; `method` names the classical baseline."""

    psnr: float
    ssim: float
    method: str | None = optional()


@dataclass(frozen=True)
class Enhancement(Result):
    """One enhancement task (`enhance-<task>.json`): its config, training, and the test-split fidelity of the
    degraded input, the classical baseline and the flow at `nfe`."""

    config: dict[str, Any]
    train_seconds: float
    final_loss: float
    test_images: int
    nfe: int
    seconds_per_image: float
    degraded: Fidelity
    classical: Fidelity
    flow: Fidelity


def degrade(x: torch.Tensor, cfg: EnhanceConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The degraded version of clean images x (B, C, H, W) in [0, 1]."""
    if cfg.task == "denoise":
        return x + cfg.level * torch.randn(x.shape, generator=generator, device=x.device)
    f = int(cfg.level)
    small = F.interpolate(x, scale_factor=1 / f, mode="area")
    return F.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False)


def classical(degraded: np.ndarray, cfg: EnhanceConfig, sigma: float) -> np.ndarray:
    """Gaussian filter (denoise) or the bicubic upsampling already in the degraded image (superres)."""
    if cfg.task == "superres":
        return np.clip(degraded, 0, 1)
    return np.clip(gaussian_filter(degraded, sigma=(0, 0, sigma, sigma)), 0, 1)


def build_enhancer(cfg: EnhanceConfig, channels_in: int) -> DiffusionModelUNet:
    return DiffusionModelUNet(spatial_dims=2, in_channels=2 * channels_in, out_channels=channels_in,
                              channels=tuple(cfg.channels), attention_levels=(False,) * len(cfg.channels),
                              num_res_blocks=1, norm_num_groups=auto_norm_groups(tuple(cfg.channels)))


@torch.no_grad()
def enhance(model: DiffusionModelUNet, degraded: torch.Tensor, cfg: EnhanceConfig,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Integrate the enhancement flow from a degraded batch; returns (images in [0, 1], NFE)."""
    cond = to_model_space(degraded)
    x0 = cond + cfg.source_noise * torch.randn(cond.shape, generator=generator, device=cond.device)
    out, nfe = solve(lambda x, t: model(torch.cat([x, cond], 1), t * TIME_SCALE), x0, cfg.nfe, "euler")
    return to_image_space(out), nfe


def _scores(pred: np.ndarray, clean: np.ndarray, method: str | None = None) -> Fidelity:
    p, c = torch.from_numpy(np.clip(pred, 0, 1)).float(), torch.from_numpy(clean).float()
    return Fidelity(psnr=float(PSNRMetric(max_val=1.0)(p, c).mean()),
                    ssim=float(SSIMMetric(spatial_dims=2, data_range=1.0)(p, c).mean()), method=method)


def train_and_evaluate(data_path: str | Path, cfg: EnhanceConfig, out_dir: str | Path,
                       device: str | torch.device | None = None,
                       progress: Callable[[str], None] | None = None) -> Enhancement:
    """Train the enhancement flow on real train images and score it on real test images."""
    cfg.validate()
    device = default_device(device)
    say = progress or print
    train, val, test = (load_split(data_path, s) for s in ("train", "val", "test"))
    if train["images"].ndim != 4:
        raise BadInput(f"{data_path}: enhancement supports 2D images (N, C, H, W) only")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = build_enhancer(cfg, train["images"].shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    x_all = torch.from_numpy(train["images"]).to(device)
    path, t0, losses = CondOTPath(), time.time(), []
    for step in range(cfg.steps):
        x1c = x_all[torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen, device=device)]
        cond = to_model_space(degrade(x1c, cfg, gen))
        x1 = to_model_space(x1c)
        x0 = cond + cfg.source_noise * torch.randn(x1.shape, generator=gen, device=device)
        t = torch.rand(x1.shape[0], generator=gen, device=device)
        xt, ut = path.sample(x0, x1, t)
        loss = (model(torch.cat([xt, cond], 1), t * TIME_SCALE) - ut).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, cfg.steps // 5) == 0:
            say(f"enhance[{cfg.task}]: step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.4f}")
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_atomic({"state_dict": model.state_dict(), "config": asdict(cfg)}, out_dir / f"enhance-{cfg.task}.pt")

    def degraded_of(images: np.ndarray, seed: int) -> np.ndarray:
        g = torch.Generator(device=device).manual_seed(seed)
        return degrade(torch.from_numpy(images).to(device), cfg, g).cpu().numpy()

    val_deg, test_deg = degraded_of(val["images"], 1), degraded_of(test["images"], 2)
    sigma = 0.0
    if cfg.task == "denoise":  # tune the classical filter on val, never on test
        sigma = max((0.5, 0.75, 1.0, 1.5, 2.0),
                    key=lambda s: _scores(classical(val_deg, cfg, s), val["images"]).psnr)
    t1 = time.perf_counter()
    flow_out, nfe = enhance(model, torch.from_numpy(test_deg).to(device), cfg,
                            torch.Generator(device=device).manual_seed(3))
    seconds = time.perf_counter() - t1
    method = "bicubic" if cfg.task == "superres" else f"gaussian filter sigma={sigma}"
    return Enhancement(config=asdict(cfg), train_seconds=time.time() - t0, final_loss=float(np.mean(losses[-50:])),
                       test_images=int(len(test_deg)), nfe=nfe, seconds_per_image=seconds / len(test_deg),
                       degraded=_scores(test_deg, test["images"]),
                       classical=_scores(classical(test_deg, cfg, sigma), test["images"], method),
                       flow=_scores(flow_out.cpu().numpy(), test["images"]))


def run_enhancement(data_path: str | Path, cfg: EnhanceConfig, run_dir: str | Path,
                    progress: Callable[[str], None] | None = None) -> Path:
    """Train and score one enhancement task; writes `<run_dir>/enhance-<task>.json` (checkpoint under
    `<run_dir>/checkpoints/`) and returns its path."""
    result = train_and_evaluate(data_path, cfg, Path(run_dir) / "checkpoints", progress=progress)
    out = write_json_atomic(Path(run_dir) / f"enhance-{cfg.task}.json", result.to_json())
    (progress or print)(f"enhance[{cfg.task}]: PSNR input {result.degraded.psnr:.2f}, {result.classical.method} "
                        f"{result.classical.psnr:.2f}, flow (NFE {result.nfe}) {result.flow.psnr:.2f}")
    return out
