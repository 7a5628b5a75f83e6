"""Downstream segmenter: MONAI `UNet` trained with `DiceCELoss`, scored per test image with Dice and HD95.

Used by `downstream.evaluate_augmentation` when both the real and the synthetic store carry masks (the
synthetic masks are the real training masks each sample was conditioned on).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.nets import UNet
from torch import nn

from motfm_core.config import EvalConfig
from motfm_core.data.rows import rows_per_batch
from motfm_core.evaluation.supervised import ArrayRows, Downsampled, fit
from motfm_core.scale import to_model_space

__all__ = ["build_segmenter", "predict_masks", "score_segmenter", "segmentation_scores", "train_segmenter"]

def build_segmenter(spatial_dims: int, in_channels: int, num_classes: int, cfg: EvalConfig) -> nn.Module:
    """A small MONAI UNet (residual units, batch norm) with one output channel per mask class; on images pooled by
    cfg.downsample, its logits brought back to the input's size."""
    net = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
               channels=tuple(cfg.seg_channels), strides=(2,) * (len(cfg.seg_channels) - 1), num_res_units=1,
               norm="batch")
    return net if cfg.downsample == 1 else Downsampled(net, cfg.downsample, spatial_dims, upsample=True)


def train_segmenter(x: ArrayRows, masks: ArrayRows, num_classes: int, cfg: EvalConfig, seed: int,
                    device: torch.device) -> nn.Module:
    """Train from scratch on images (N, C, *S) and integer masks (N, 1, *S) (arrays or `Rows`, read a batch at a
    time) for cfg.seg_steps minibatches."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_segmenter(len(x.shape) - 2, x.shape[1], num_classes, cfg).to(device)
    return fit(model, DiceCELoss(to_onehot_y=True, softmax=True), x, masks, cfg.seg_steps, cfg, gen, device)


@torch.inference_mode()
def predict_masks(model: nn.Module, x: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    """Integer masks (N, 1, *S) by argmax over the segmenter's classes, `batch` images at a time (fewer for volumes)."""
    batch = rows_per_batch(x, batch)
    out = [model(to_model_space(torch.from_numpy(x[i:i + batch]).float().to(device))).argmax(1, keepdim=True).cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def score_segmenter(model: nn.Module, x: ArrayRows, truth: ArrayRows, num_classes: int, device: torch.device,
                    batch: int = 64) -> dict[str, np.ndarray]:
    """Per-image Dice and HD95 of the segmenter's masks for images `x` against `truth` (arrays or `Rows`), a batch
    at a time: neither the images, the truth nor the predicted masks of the whole set are held at once."""
    batch = rows_per_batch(x, batch)
    parts = [segmentation_scores(predict_masks(model, np.asarray(x[i:i + batch]), device, batch),
                                 np.asarray(truth[i:i + batch]), num_classes) for i in range(0, len(x), batch)]
    return {m: np.concatenate([p[m] for p in parts]) for m in ("dice", "hd95")}


def segmentation_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per-image Dice and HD95 (pixels), each averaged over the foreground classes present in the truth.

    A class absent from an image's truth is left out of that image's mean; HD95 of a class the prediction
    misses entirely is the image diagonal (MONAI returns inf), so a miss counts as the worst distance.
    """
    import warnings

    onehot = [torch.from_numpy(np.eye(num_classes, dtype=np.float32)[a[:, 0]]).movedim(-1, 1)
              for a in (pred, truth)]
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(*onehot).numpy()
    with warnings.catch_warnings():  # an all-empty prediction warns and gives inf: handled below
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(*onehot).numpy()
    present = onehot[1][:, 1:].flatten(2).sum(-1).numpy() > 0
    diagonal = float(np.sqrt(sum(s ** 2 for s in pred.shape[2:])))
    hd = np.where(np.isfinite(hd), hd, diagonal)
    # an image with no foreground class (a healthy slice: normal data) has no mean, NaN, and np.nanmean's "Mean of
    # empty slice" warning for it, printed for every such image of a run, says nothing wrong
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"dice": np.nanmean(np.where(present, dice, np.nan), 1),
                "hd95": np.nanmean(np.where(present, hd, np.nan), 1)}
