"""Image-quality metrics in an in-domain feature space (no Inception/ImageNet weights exist here).

The feature extractor is the downstream classifier trained on the real training split; features are
the spatial average of its last convolutional stage (channels[-1] numbers per image, 2D or 3D). On
those features: FID (MONAI `FIDMetric`), KID (unbiased polynomial-kernel MMD^2, Binkowski et al. 2018)
and improved precision/recall (k-NN manifolds, Kynkaanniemi et al. 2019). Always read them against
the real-vs-real baseline (train split vs test split) reported beside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.metrics import FIDMetric
from torch import nn

from motfm_core.config import EvalConfig
from motfm_core.data.store import load_split
from motfm_core.downstream import train_classifier


class FeatureExtractor:
    """In-domain features: average-pooled last conv stage of a classifier trained on real training images."""

    def __init__(self, classifier: nn.Module, device: torch.device | str = "cpu") -> None:
        self.net, self.device = classifier.net.eval(), torch.device(device)

    @classmethod
    def train(cls, real_path: str | Path, cfg: EvalConfig | None = None, seed: int = 0,
              device: torch.device | str = "cpu") -> "FeatureExtractor":
        data = load_split(real_path, "train")
        k = int(data["labels"].max()) + 1
        return cls(train_classifier(data["images"], data["labels"], k, cfg or EvalConfig(steps=300), seed,
                                    torch.device(device)), device)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, C, *spatial) images in [0, 1] -> (N, D) float64 features."""
        out = []
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.asarray(images[i:i + batch], dtype=np.float32)).to(self.device) * 2 - 1
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


def _knn_radius(feats: np.ndarray, k: int) -> np.ndarray:
    dist = np.sqrt(((feats[:, None] - feats[None]) ** 2).sum(-1))
    return np.sort(dist, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Precision: share of fakes inside the real k-NN manifold (fidelity); recall: the converse (coverage)."""
    k = min(k, len(real) - 1, len(fake) - 1)
    r_real, r_fake = _knn_radius(real, k), _knn_radius(fake, k)
    d = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1))  # (n_fake, n_real)
    precision = float((d <= r_real[None]).any(1).mean())
    recall = float((d.T <= r_fake[None]).any(1).mean())
    return {"precision": precision, "recall": recall}


def quality(real_train: np.ndarray, real_test: np.ndarray, fake: np.ndarray) -> dict[str, dict[str, float]]:
    """Synthetic vs real test, beside the real-vs-real baseline (real train vs real test), on features."""
    def block(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        return {"fid": fid(a, b), "kid": kid(a, b), **precision_recall(a, b)}

    return {"synthetic_vs_test": block(real_test, fake), "train_vs_test": block(real_test, real_train)}


def synthetic_quality(real_path: str | Path, synthetic_path: str | Path, cfg: EvalConfig | None = None,
                      device: torch.device | str = "cpu") -> dict:
    """Train the in-domain extractor on the real train split and score the synthetic store against real test."""
    from motfm_core.downstream import load_synthetic

    extractor = FeatureExtractor.train(real_path, cfg, device=device)
    fake, _ = load_synthetic(synthetic_path)
    feats = {name: extractor(load_split(real_path, name)["images"]) for name in ("train", "test")}
    out = quality(feats["train"], feats["test"], extractor(fake))
    out["feature_dim"] = int(feats["train"].shape[1])
    return out
