"""Image-quality metrics without Inception/ImageNet weights (none can be fetched here).

Semantic: the feature extractor is the downstream classifier trained on the real training split;
features are the spatial average of its last convolutional stage (channels[-1] numbers per image, 2D
or 3D). On those: FID (MONAI `FIDMetric`), KID (unbiased polynomial-kernel MMD^2, Binkowski et al. 2018)
and improved precision/recall (k-NN manifolds, Kynkaanniemi et al. 2019).
Detail: a classifier of anatomical level is blind to blur and noise (a sigma-1 blur barely moves its FID:
benchmarks/RESULTS.md, "Figures once kept in code comments"), so `swd` (its own module) adds the sliced Wasserstein
distance between 7x7 patches of Laplacian pyramid levels (Karras et al. 2018), which needs no weights and ranks blur and
noise correctly. Always read them against the real-vs-real baseline (train split vs test split) reported beside them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import FIDMetric
from scipy.spatial.distance import cdist
from torch import nn

from motfm_core.config import EvalConfig
from motfm_core.data.rows import rows_per_batch, take_rows
from motfm_core.data.store import Splits, channel_names, load_split, load_splits, open_store
from motfm_core.data.synthetic import open_synthetic, sampling_seconds
from motfm_core.device import default_device
from motfm_core.evaluation.supervised import train_classifier
from motfm_core.evaluation.swd import swd
from motfm_core.model.latents import LatentCodec
from motfm_core.results import Result, optional
from motfm_core.scale import to_model_space

__all__ = ["density_coverage", "Diversity", "diversity", "FeatureExtractor", "fid", "kid", "NfePoint",
           "precision_recall", "Quality", "quality", "score_nfe_curve", "scores", "Scores", "swd", "synthetic_quality"]


@dataclass(frozen=True)
class Scores(Result):
    """One set against the real test split: FID, KID, precision/recall and density/coverage on in-domain
    features; pixel-level SWD per pyramid level (`level0` finest, `mean`) when images were given."""

    fid: float
    kid: float
    precision: float
    recall: float
    swd: dict[str, float] | None = optional()
    density: float | None = optional()  # reports written before density/coverage lack them
    coverage: float | None = optional()
    swd_channels: dict[str, float] | None = optional()  # fine SWD of each channel alone, for multi-channel images
    seconds_per_image: float | None = optional()  # a synthetic store's: what sampling it took an image (its records)


@dataclass(frozen=True)
class NfePoint(Result):
    """Fresh Euler samples at one NFE: FID and fine SWD against real test, and seconds per image."""

    nfe: int
    fid: float
    swd_fine: float
    seconds_per_image: float


@dataclass(frozen=True)
class Diversity(Result):
    """Mean MS-SSIM of random same-class pairs (higher = less diverse) and how many pairs."""

    ms_ssim: float
    pairs: int


@dataclass(frozen=True)
class Reconstruction(Result):
    """How well a latent model's autoencoder reproduces real test images (the ceiling it sets on the synthetic ones):
    mean PSNR (dB, data range 1) and SSIM over `images` test images, and fine SWD against the originals."""

    psnr: float
    ssim: float
    swd_fine: float
    images: int


@dataclass(frozen=True)
class Quality(Result):
    """Synthetic vs real test beside real train vs real test (the baseline); for a store, also the feature size,
    intra-class diversity (`synthetic`, `real_train`), the quality-vs-NFE curve when measured and the scores of
    the other stores the downstream arms train on (`arm_stores`: "NFE 1", "DDPM NFE 10", ...)."""

    synthetic_vs_test: Scores
    train_vs_test: Scores
    feature_dim: int | None = optional()
    diversity: dict[str, Diversity] | None = optional()
    nfe_curve: list[NfePoint] | None = optional()
    reconstruction: Reconstruction | None = optional()  # latent models: the autoencoder on real test images
    arm_stores: dict[str, Scores] | None = optional()


class FeatureExtractor:
    """In-domain features: average-pooled last conv stage of a classifier trained on real training images."""

    def __init__(self, classifier: nn.Module, device: torch.device | str = "cpu") -> None:
        self.net, self.device = cast(nn.Module, classifier.net).eval(), torch.device(device)

    @classmethod
    def train(cls, real_path: str | Path, cfg: EvalConfig | None = None, seed: int = 0,
              device: torch.device | str = "cpu", data: dict[str, np.ndarray] | None = None) -> "FeatureExtractor":
        """Train on the real train split (`data`, when already loaded)."""
        data = data or load_split(real_path, "train")
        k = int(data["labels"].max()) + 1
        return cls(train_classifier(data["images"], data["labels"], k, cfg or EvalConfig(steps=300), seed,
                                    torch.device(device)), device)

    @torch.inference_mode()
    def __call__(self, images: Any, batch: int = 256) -> np.ndarray:
        """(N, C, *spatial) images in [0, 1] (numpy, or a Zarr array read a batch at a time) -> (N, D) float64
        features."""
        batch = rows_per_batch(images, batch)
        out = []
        for i in range(0, images.shape[0], batch):
            x = to_model_space(torch.from_numpy(np.asarray(images[i:i + batch], dtype=np.float32)).to(self.device))
            out.append(self.net(x).flatten(2).mean(2).double().cpu())
        return torch.cat(out).numpy()


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two feature sets (MONAI FIDMetric)."""
    return float(FIDMetric()(torch.from_numpy(fake), torch.from_numpy(real)))


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 20, subset_size: int = 100, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over subsets."""
    rng = np.random.RandomState(seed)
    d = real.shape[1]
    m = min(subset_size, len(real), len(fake))
    vals = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        vals.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(vals))


def _distance_blocks(a: np.ndarray, b: np.ndarray, block: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start row, Euclidean distances of a[start:start + block] to every row of b): memory O(block * len(b))."""
    for i in range(0, len(a), block):
        yield i, cdist(a[i:i + block], b)


def _knn_radius(feats: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (the point itself is the 0th)."""
    out = np.empty(len(feats))
    for i, d in _distance_blocks(feats, feats, block):
        out[i:i + len(d)] = np.partition(d, k, axis=1)[:, k]
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 1024) -> dict[str, float]:
    """Precision: share of fakes inside the real k-NN manifold (fidelity); recall: the converse (coverage).
    Distances go in blocks of `block` rows (scipy `cdist`), never as an (N, N, D) array: memory grows with N, not
    N^2 * D."""
    k = min(k, len(real) - 1, len(fake) - 1)
    r_real, r_fake = _knn_radius(real, k, block), _knn_radius(fake, k, block)
    inside_real = sum(int((d <= r_real[None]).any(1).sum()) for _, d in _distance_blocks(fake, real, block))
    inside_fake = sum(int((d <= r_fake[None]).any(1).sum()) for _, d in _distance_blocks(real, fake, block))
    return {"precision": inside_real / len(fake), "recall": inside_fake / len(real)}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 1024) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020), on the same k-NN balls around the real points as precision and
    recall, so that one real outlier's large ball cannot vouch for many fakes. Density: how many real balls hold
    each fake, over k (about 1 when the fakes follow the real distribution, (k + 1) / k for a copy of the real
    set, above 1 where fakes crowd into dense real regions). Coverage: share of real points whose ball holds at
    least one fake. Written here (numpy, blocked like precision_recall) rather than taken from the authors'
    package, which computes full distance matrices."""
    k = min(k, len(real) - 1, len(fake) - 1)
    r_real = _knn_radius(real, k, block)
    held = 0  # (fake, real ball) pairs with the fake inside the ball
    covered = np.zeros(len(real), dtype=bool)
    for _, d in _distance_blocks(fake, real, block):
        inside = d <= r_real[None]
        held += int(inside.sum())
        covered |= inside.any(0)
    return {"density": held / (k * len(fake)), "coverage": float(covered.mean())}


def quality(real_train: np.ndarray, real_test: np.ndarray, fake: np.ndarray,
            images: dict[str, np.ndarray] | None = None, channel_names: list[str] | None = None) -> Quality:
    """Synthetic vs real test, beside the real-vs-real baseline (real train vs real test).

    real_train/real_test/fake are features; `images` ({"train", "test", "fake"}) adds the pixel-level SWD (per
    channel too, for several channels).
    """
    def block(b: np.ndarray, pixels: str) -> Scores:
        return scores(real_test, b, None if images is None else (images["test"], images[pixels]), channel_names)

    return Quality(synthetic_vs_test=block(fake, "fake"), train_vs_test=block(real_train, "train"))


def scores(real: np.ndarray, fake: np.ndarray, pixels: tuple[Any, Any] | None = None,
           channel_names: list[str] | None = None) -> Scores:
    """Every feature-space score of `fake` against `real` features; `pixels` (real, fake images) adds the SWD, and
    for images of several channels (named by `channel_names`) the fine SWD of each channel alone."""
    per_channel = None
    if pixels is not None and pixels[0].shape[1] > 1:
        names = channel_names or [f"channel{c}" for c in range(pixels[0].shape[1])]
        per_channel = {name: swd(*pixels, channel=c)["level0"] for c, name in enumerate(names)}
    return Scores(fid=fid(real, fake), kid=kid(real, fake), **precision_recall(real, fake),
                  **density_coverage(real, fake), swd=None if pixels is None else swd(*pixels),
                  swd_channels=per_channel)


def score_nfe_curve(path: str | Path, extractor: "FeatureExtractor", test: Any, test_feats: np.ndarray
                    ) -> list[NfePoint]:
    """FID and fine SWD against the real test split of each NFE's fresh samples in `path` (written by the sampling
    stage, `motfm_core.model.sampling.sample_nfe_curve`), beside the seconds per image they took."""
    with np.load(path) as curve:
        return [NfePoint(nfe=int(n), fid=fid(test_feats, extractor(curve[f"images_{n}"])),
                         swd_fine=swd(test, curve[f"images_{n}"])["level0"], seconds_per_image=float(sec))
                for n, sec in zip(curve["nfes"], curve["seconds_per_image"])]


def synthetic_quality(real_path: str | Path, synthetic_path: str | Path, cfg: EvalConfig | None = None,
                      device: torch.device | str | None = None, nfe_curve: str | Path | None = None,
                      real: Splits | None = None, arm_stores: dict[str, str | Path] | None = None) -> Quality:
    """Train the in-domain extractor on the real train split and score the synthetic store against real test;
    with `nfe_curve` (the sampling stage's fresh samples per NFE), also the quality-vs-NFE curve; with
    `arm_stores` (a name per store), the same scores of each. `real`: the train and test splits, when already
    loaded."""
    device = default_device(device)
    real = real or load_splits(real_path)
    extractor = FeatureExtractor.train(real_path, cfg, device=device, data=real["train"])
    syn = open_synthetic(synthetic_path)  # read in batches: memory does not grow with the store's size
    fake, fake_labels = syn["images"], syn["labels"]
    images = {name: d["images"] for name, d in real.items()}
    feats = {name: extractor(x) for name, x in images.items()}
    curve = None if nfe_curve is None else score_nfe_curve(nfe_curve, extractor, images["test"], feats["test"])
    arm_scores = {}
    names = channel_names(open_store(real_path).attrs, int(fake.shape[1]))
    for name, store in (arm_stores or {}).items():
        x = open_synthetic(store)["images"]
        arm_scores[name] = dataclasses.replace(scores(feats["test"], extractor(x), (images["test"], x), names),
                                               seconds_per_image=sampling_seconds(store)[0])
    record = open_store(synthetic_path).attrs.get("autoencoder")
    factor = cfg.downsample if cfg is not None else 1
    return dataclasses.replace(
        quality(feats["train"], feats["test"], extractor(fake), {**images, "fake": fake}, names),
        feature_dim=int(feats["train"].shape[1]), nfe_curve=curve,
        arm_stores=arm_scores or None,
        reconstruction=reconstruction(images["test"], record, device) if record else None,
        diversity=_both(diversity(fake, fake_labels, downsample=factor),
                        diversity(images["train"], real["train"]["labels"], downsample=factor)))


def _both(synthetic: Diversity | None, real_train: Diversity | None) -> dict[str, Diversity] | None:
    """The diversity pair the report compares, or None when either set has no two images of one class."""
    if synthetic is None or real_train is None:
        return None
    return {"synthetic": synthetic, "real_train": real_train}


def reconstruction(test: Any, record: dict[str, Any], device: torch.device | str = "cpu",
                   most: int = 16) -> Reconstruction:
    """The autoencoder of a latent model (`record`, as its checkpoint keeps it) on up to `most` real test images,
    evenly spaced through the split: each encoded and decoded as sampling decodes."""
    from monai.metrics import SSIMMetric

    codec = LatentCodec.load(record, device)
    pick = np.unique(np.linspace(0, len(test) - 1, min(most, len(test))).round().astype(int))
    x = torch.from_numpy(np.asarray(test[pick], dtype=np.float32))
    rec = torch.cat([codec.decode(codec.encode(xi.to(device))).cpu() for xi in x.split(1)])
    mse = (rec - x).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    ssim = SSIMMetric(spatial_dims=x.ndim - 2, data_range=1.0)(rec, x)
    return Reconstruction(psnr=float((10 * torch.log10(1 / mse)).mean()), ssim=float(ssim.mean()),
                          swd_fine=swd(x.numpy(), rec.numpy())["level0"], images=len(pick))


def diversity(images: Any, labels: np.ndarray, pairs: int = 300, seed: int = 0, downsample: int = 1,
              voxels: int = 2 ** 26) -> Diversity | None:
    """Mean MS-SSIM over random same-class pairs (MONAI `MultiScaleSSIMMetric`); higher = less diverse. None when no
    class has two images (one sample per class: not enough samples to say).

    Up to three scales; the Gaussian window (odd, 3..7) and the number of scales shrink to fit small images
    (MONAI needs every side > (window - 1) * 2**(scales - 1), e.g. 8-slice volumes). Compare the synthetic
    set's value with the real set's: well above it signals mode collapse, near 1 signals copies. `images` may be
    a Zarr array: only the pairs' images are read, a batch at a time. Large images are scored average-pooled by
    `downsample` (eval.downsample, as the downstream models see them) and on fewer pairs, so that the pairs hold at
    most `voxels` voxels (never under 20 pairs): MS-SSIM of hundreds of full-size 3D pairs costs more than the rest
    of the evaluation (RESULTS.md, "Figures once kept in code comments").
    """
    from monai.metrics import MultiScaleSSIMMetric

    rng = np.random.RandomState(seed)
    spatial = tuple(s // downsample for s in images.shape[2:])
    pairs = min(pairs, max(20, voxels // int(np.prod(spatial))))
    side = min(spatial)
    scales = max(s for s in (1, 2, 3) if s == 1 or 2 * 2 ** (s - 1) < side)
    k = max(kk for kk in (3, 5, 7) if kk == 3 or (kk - 1) * 2 ** (scales - 1) < side)
    metric = MultiScaleSSIMMetric(spatial_dims=len(spatial), data_range=1.0, kernel_size=k, kernel_sigma=k / 4,
                                  weights=(0.33, 0.34, 0.33) if scales == 3 else (1.0 / scales,) * scales)
    first, second = [], []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        if len(idx) < 2:
            continue
        n = max(1, pairs // len(np.unique(labels)))
        i, j = rng.choice(idx, n), rng.choice(idx, n)
        keep = i != j
        first.append(i[keep])
        second.append(j[keep])
    if not first or not sum(len(i) for i in first):  # no class has two images: nothing to compare (a tiny run)
        return None
    ia, ib = np.concatenate(first), np.concatenate(second)
    step = max(1, rows_per_batch(images) // 2)
    pool = (F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d) if downsample > 1 else None

    def rows(v: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(take_rows(images, v).astype(np.float32))
        return x if pool is None else pool(x, downsample)

    values = torch.cat([metric(rows(ia[k:k + step]), rows(ib[k:k + step])).flatten()
                        for k in range(0, len(ia), step)])
    return Diversity(ms_ssim=float(values.mean()), pairs=int(len(values)))
