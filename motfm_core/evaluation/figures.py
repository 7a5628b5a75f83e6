"""Figures of a run report (sample grid, gains, training loss) and the markdown that carries them inline, so a
page that cannot reach the run folder (Prefect's UI) still shows them."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import numpy as np
import zarr

from motfm_core.data.store import channel_names, open_split
from motfm_core.evaluation.downstream import Augmentation
from motfm_core.evaluation.quality import Quality

__all__ = ["figure_dpi", "gain_figure", "inline_figures", "loss_figure", "sample_grid"]


def figure_dpi(image_px: int, cell_inches: float, least: int = 80) -> int:
    """Resolution of a figure of images drawn in cells `cell_inches` wide: enough that each is drawn at least at its
    own pixel size (a 192 px slice in a 1.1 inch cell needs 175 dpi), never under `least`."""
    return max(least, math.ceil(image_px / cell_inches))


def _middle(img: np.ndarray, channel: int = 0) -> np.ndarray:
    """A 2D view of (C, H, W[, D]): one channel, middle slice for 3D."""
    img = img[channel]
    return img[..., img.shape[-1] // 2] if img.ndim == 3 else img


def sample_grid(real_path: str | Path, synthetic_path: str | Path, out_png: str | Path, per_class: int = 8) -> Path:
    """PNG with, per class, one row of real training images and one row of synthetic images (a row per channel of
    each, for images of several channels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = open_split(real_path, "train")  # a few images a class are read, not the split
    root = zarr.open_group(str(synthetic_path), mode="r", zarr_format=3)
    sx, sy = root["images"], root["labels"][:]
    smasks = root["masks"] if "masks" in root.array_keys() else None  # overlay the conditioning masks
    names = list(root.attrs.get("class_names", []))
    k = int(max(real["labels"].max(), sy.max()) + 1)
    channels = channel_names(root.attrs, int(sx.shape[1])) if sx.shape[1] > 1 else [""]
    per = 2 * len(channels)  # rows per class
    fig, axes = plt.subplots(k * per, per_class, figsize=(per_class * 1.1, k * per * 1.2), squeeze=False)
    for c in range(k):
        ri = np.nonzero(real["labels"] == c)[0][:per_class]
        si = np.nonzero(sy == c)[0][:per_class]
        rows = (("real", [real["images"][i] for i in ri],
                 [real["masks"][i] for i in ri] if smasks is not None and "masks" in real else []),
                ("synthetic", [sx[int(i)] for i in si], [smasks[int(i)] for i in si] if smasks is not None else []))
        for row, (kind, imgs, masks) in enumerate(rows):
            for ch, channel in enumerate(channels):
                line = per * c + row * len(channels) + ch
                for j in range(per_class):
                    ax = axes[line, j]
                    ax.axis("off")
                    if j < len(imgs):
                        ax.imshow(_middle(imgs[j], ch), cmap="gray", vmin=0, vmax=1)
                    if j < len(masks) and _middle(masks[j]).max() > 0:
                        mask = _middle(masks[j])
                        ax.contour(mask, levels=np.arange(0.5, mask.max()), linewidths=0.3, alpha=0.5, cmap="autumn")
                name = names[c] if c < len(names) else str(c)
                axes[line, 0].set_title(f"{kind}: {name}" + (f" ({channel})" if channel else ""), fontsize=7,
                                        loc="left")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=figure_dpi(max(real["images"].shape[2:4]), 1.1))  # each image at its own size or more
    plt.close(fig)
    return out_png


def gain_figure(ev: Augmentation, quality: Quality, out_png: str | Path) -> Path:
    """PNG: augmentation gain (95% CI) per augmented arm for each task, and quality vs NFE when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("classifier accuracy gain", ev.gains, "accuracy")]
    if ev.segmentation is not None:
        panels.append(("segmenter Dice gain", ev.segmentation.gains, "dice"))
    curve = quality.nfe_curve
    fig, axes = plt.subplots(1, len(panels) + bool(curve), figsize=(5.2 * (len(panels) + bool(curve)), 3.6),
                             squeeze=False)
    baselines = {a.name: a.baseline for a in ev.arms}
    for ax, (title, gains, metric) in zip(axes[0], panels):
        stats = [gains[name][metric] for name in gains]
        mean = np.array([s.mean for s in stats])
        lo = np.array([s.mean if s.ci95_low is None else s.ci95_low for s in stats])
        hi = np.array([s.mean if s.ci95_high is None else s.ci95_high for s in stats])
        y = np.arange(len(stats))
        # a percentile interval need not hold the mean over seeds (a skewed resampling, or a Dice mean over seeds
        # beside an interval of paired per-image differences): the bar then ends at the point
        ax.errorbar(mean, y, xerr=[np.maximum(mean - lo, 0), np.maximum(hi - mean, 0)], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, [f"{name} vs {baselines[name]}" for name in gains], fontsize=7)
        # few x ticks: Dice gains of a few thousandths got six long labels that ran into each other
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(axis="x", labelsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{title} (mean, 95% CI)", fontsize=9)
    if curve:
        ax = axes[0][-1]
        nfe = [r.nfe for r in curve]
        ax.plot(nfe, [r.fid for r in curve], "o-", label="FID (in-domain)")
        ax.set_xscale("log")
        ax.set_xlabel("NFE (Euler)")
        ax.set_ylabel("FID")
        ax2 = ax.twinx()
        ax2.plot(nfe, [r.swd_fine for r in curve], "s--", color="C1", label="fine SWD")
        ax2.set_ylabel("fine SWD (x1e3)")
        base = quality.train_vs_test
        ax.axhline(base.fid, color="C0", lw=0.7, ls=":")
        if base.swd:
            ax2.axhline(base.swd["level0"], color="C1", lw=0.7, ls=":")
        ax.set_title("quality vs NFE (dotted: real train vs test)", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def loss_figure(loss_curve: list[float], steps: int, final_loss: float, out_png: str | Path, every: int = 50
                ) -> Path:
    """PNG: the generator's training loss (`loss_curve`: means of `every` steps) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    x = [min(every * (i + 1), steps) for i in range(len(loss_curve))]
    ax.plot(x, loss_curve, "o-" if len(loss_curve) <= 60 else "-", ms=3)
    ax.set_xlabel("training step")
    ax.set_ylabel("flow-matching loss" + (f" (mean of {every} steps)" if every > 1 else ""))
    ax.set_title(f"training loss: final {final_loss:.4f} after {steps} steps", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def inline_figures(markdown: str, base: str | Path) -> str:
    """`markdown` with each `![alt](name.png)` whose file exists under `base` replaced by a base64 `data:` URI, so
    the figures render wherever the text goes (a Prefect artifact is stored in the server's database and shown by
    a browser that cannot read the run folder); other images are left as they are."""
    base = Path(base)

    def embed(m: re.Match[str]) -> str:
        png = base / m.group(2)
        if not png.is_file():
            return m.group(0)
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode('ascii')})"

    return _IMAGE.sub(embed, markdown)
