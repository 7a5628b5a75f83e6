"""Downstream evaluation: does adding synthetic images help a classifier on held-out real data?

Arms, each trained from scratch per seed with the same network, steps and batch size:
`real` (real train split), `real+synthetic` (plus synthetic images at `synthetic_ratio` per real
image), `synthetic` (synthetic only). All are tested on the real test split. The gain is the paired
per-seed difference real+synthetic minus real (mean and std over seeds), with a 95% bootstrap CI over
test images (paired across arms, averaged over seeds).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import zarr
from monai.networks.nets import Classifier
from torch import nn

from motfm_core.config import EvalConfig
from motfm_core.data.store import incomplete_shards, load_split
from motfm_core.metrics import bootstrap_gain, classification_metrics, summarise

log = logging.getLogger(__name__)
ARMS = ("real", "real+synthetic", "synthetic")


def build_classifier(in_shape: tuple[int, ...], num_classes: int, cfg: EvalConfig) -> nn.Module:
    """A small MONAI `Classifier` (strided residual units, batch norm: instance norm would erase contrast cues)."""
    return Classifier(in_shape=in_shape, classes=num_classes, channels=tuple(cfg.channels),
                      strides=(2,) * len(cfg.channels), num_res_units=1, norm="batch")


def train_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, cfg: EvalConfig, seed: int,
                     device: torch.device) -> nn.Module:
    """Train from scratch with AdamW and class-balanced cross-entropy for cfg.steps minibatches."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_classifier(x.shape[1:], num_classes, cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    counts = np.bincount(y, minlength=num_classes).astype(np.float32)
    weight = torch.as_tensor(counts.sum() / np.maximum(counts, 1) / num_classes, device=device)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(yt), (min(cfg.batch_size, len(yt)),), generator=gen)
        logits = model(xt[idx].to(device) * 2 - 1)
        loss = nn.functional.cross_entropy(logits, yt[idx].to(device), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def predict_proba(model: nn.Module, x: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    out = [torch.softmax(model(torch.from_numpy(x[i:i + batch]).float().to(device) * 2 - 1), 1).cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def load_synthetic(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All samples of a complete synthetic store; refuses a store with unfinished shards."""
    missing = incomplete_shards(path)
    if missing:
        raise ValueError(f"{path}: shards {missing[:10]} are incomplete; re-run the sample stage to finish them")
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    return root["images"][:], root["labels"][:]


def evaluate_augmentation(real_path: str | Path, synthetic_path: str | Path, cfg: EvalConfig,
                          device: str | torch.device | None = None,
                          progress: Callable[[str], None] | None = None) -> dict:
    """Per-arm, per-seed test metrics and the augmentation gain with its spread over seeds."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    say = progress or log.info
    train, test = load_split(real_path, "train"), load_split(real_path, "test")
    sx, sy = load_synthetic(synthetic_path)
    k = int(max(train["labels"].max(), test["labels"].max(), sy.max()) + 1)
    n_syn = min(len(sy), int(round(cfg.synthetic_ratio * len(train["labels"]))))
    results: dict[str, dict[int, dict[str, float]]] = {arm: {} for arm in ARMS}
    probas: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    t0 = time.time()
    for seed in cfg.seeds:
        pick = np.random.RandomState(seed).choice(len(sy), n_syn, replace=False)
        sets = {"real": (train["images"], train["labels"]),
                "real+synthetic": (np.concatenate([train["images"], sx[pick]]),
                                   np.concatenate([train["labels"], sy[pick]])),
                "synthetic": (sx, sy)}
        for arm, (x, y) in sets.items():
            model = train_classifier(x, y, k, cfg, seed, device)
            probas[arm].append(predict_proba(model, test["images"], device))
            results[arm][seed] = classification_metrics(test["labels"], probas[arm][-1])
            say(f"evaluate: seed {seed} {arm:>15}: " + ", ".join(f"{m} {v:.3f}" for m, v in results[arm][seed].items())
                + f" ({time.time() - t0:.0f}s)")
    metrics = list(next(iter(results["real"].values())))
    summary = {arm: {m: summarise([results[arm][s][m] for s in cfg.seeds]) for m in metrics} for arm in ARMS}
    gain = {m: {**summarise([results["real+synthetic"][s][m] - results["real"][s][m] for s in cfg.seeds]),
                **bootstrap_gain(test["labels"], probas["real"], probas["real+synthetic"], m)}
            for m in metrics}
    return {"per_seed": {arm: {str(s): v for s, v in r.items()} for arm, r in results.items()},
            "summary": summary, "gain": gain, "sizes": {"real_train": int(len(train["labels"])),
            "synthetic_added": n_syn, "synthetic_total": int(len(sy)), "real_test": int(len(test["labels"]))},
            "num_classes": k, "seconds": time.time() - t0}
