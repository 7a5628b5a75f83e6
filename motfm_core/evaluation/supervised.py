"""Supervised downstream models from scratch: the minibatch trainer every downstream network shares, and the
classifier (the evaluation's arms, and the in-domain feature extractor of the quality metrics)."""

from __future__ import annotations

import functools
from typing import Callable, cast

import numpy as np
import torch
from monai.networks.nets import Classifier
from torch import nn

from motfm_core.config import EvalConfig
from motfm_core.data.rows import Rows, rows_per_batch
from motfm_core.scale import to_model_space

__all__ = ["ArrayRows", "build_classifier", "Downsampled", "fit", "predict_proba", "train_classifier"]

ArrayRows = np.ndarray | Rows  # a training set's images or targets: in memory, or read a batch at a time


class Downsampled(nn.Module):
    """A downstream network that sees its images average-pooled by `factor` per axis (`eval.downsample`: 3D volumes
    at clinical size cost the downstream models 8x less at 2); `upsample` brings a segmenter's logits back to the
    input's size, so its loss and scores stay at native resolution. `.net` is the pooled feature stack of a classifier
    (what the quality metrics' feature extractor reads)."""

    def __init__(self, inner: nn.Module, factor: int, dims: int, upsample: bool = False) -> None:
        super().__init__()
        self.inner, self.factor, self.upsample = inner, factor, upsample
        self.pool = (nn.AvgPool2d if dims == 2 else nn.AvgPool3d)(factor)

    @property
    def net(self) -> nn.Module:
        return nn.Sequential(self.pool, cast(nn.Module, self.inner.net))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(self.pool(x))
        if self.upsample:
            y = nn.functional.interpolate(y, size=x.shape[2:], mode="bilinear" if x.ndim == 4 else "trilinear")
        return y


def build_classifier(in_shape: tuple[int, ...], num_classes: int, cfg: EvalConfig) -> nn.Module:
    """A small MONAI `Classifier` (strided residual units, batch norm: instance norm would erase contrast cues), on
    images pooled by cfg.downsample."""
    f = cfg.downsample
    net = Classifier(in_shape=(in_shape[0], *(s // f for s in in_shape[1:])), classes=num_classes,
                     channels=tuple(cfg.channels), strides=(2,) * len(cfg.channels), num_res_units=1, norm="batch")
    return net if f == 1 else Downsampled(net, f, len(in_shape) - 1)


def fit(model: nn.Module, loss_fn: Callable, x: ArrayRows, target: ArrayRows, steps: int, cfg: EvalConfig,
        gen: torch.Generator, device: torch.device) -> nn.Module:
    """Minibatch AdamW (inputs scaled to [-1, 1]) for `steps` batches of cfg.batch_size; returns it in eval mode.
    x (N, C, *S) and integer targets (N, ...) are arrays or `Rows`: only each batch's rows are read (and copied)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=gen).numpy()
        xb = torch.from_numpy(np.asarray(x[idx], dtype=np.float32))
        tb = torch.from_numpy(np.asarray(target[idx]).astype(np.int64))
        loss = loss_fn(model(to_model_space(xb.to(device))), tb.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def train_classifier(x: ArrayRows, y: np.ndarray, num_classes: int, cfg: EvalConfig, seed: int,
                     device: torch.device) -> nn.Module:
    """Train from scratch with AdamW and class-balanced cross-entropy for cfg.steps minibatches; x (N, C, *S) is an
    array or `Rows` (read a batch at a time)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_classifier(x.shape[1:], num_classes, cfg).to(device)
    counts = np.bincount(y, minlength=num_classes).astype(np.float32)
    weight = torch.as_tensor(counts.sum() / np.maximum(counts, 1) / num_classes, device=device)
    loss_fn = functools.partial(nn.functional.cross_entropy, weight=weight)
    return fit(model, loss_fn, x, y, cfg.steps, cfg, gen, device)


@torch.inference_mode()
def predict_proba(model: nn.Module, x: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    """Class probabilities (N, K) of images (N, C, *spatial) in [0, 1], `batch` at a time (fewer for volumes)."""
    batch = rows_per_batch(x, batch)
    out = [torch.softmax(model(to_model_space(torch.from_numpy(x[i:i + batch]).float().to(device))), 1).cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()
