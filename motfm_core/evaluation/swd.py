"""Sliced Wasserstein distance between Laplacian-pyramid patches of two image sets (the pixel-level half of the
quality metrics), read a batch of images at a time so that a set left in its store never sits in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from motfm_core.data.rows import rows_per_batch, take_rows

__all__ = ["swd"]


def _laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first, then the coarsest low-pass; x (B, C, H, W)."""
    out, cur = [], x
    for _ in range(levels - 1):
        down = F.avg_pool2d(cur, 2)
        out.append(cur - F.interpolate(down, scale_factor=2, mode="bilinear", align_corners=False))
        cur = down
    return out + [cur]


def _picked(images: Any, most: int, seed: int) -> np.ndarray:
    """The rows SWD scores: all of them, or `most` at random (sorted) when there are more."""
    n = images.shape[0]
    return np.arange(n) if n <= most else np.sort(np.random.RandomState(seed).choice(n, most, replace=False))


def _slices_2d(images: Any, rows: np.ndarray, channel: int | None = None) -> Iterator[torch.Tensor]:
    """(b, C, H, W) float64 batches of the `rows` of `images` (3D: their middle slice along the last axis; one
    `channel` when given), read a batch at a time."""
    step = rows_per_batch(images)
    for i in range(0, len(rows), step):
        block = take_rows(images, rows[i:i + step])
        if channel is not None:
            block = block[:, channel:channel + 1]
        yield torch.from_numpy(np.asarray(block[..., block.shape[-1] // 2] if block.ndim == 5 else block,
                                          dtype=np.float64))


def _level_patches(images: Any, rows: np.ndarray, channel: int | None, levels: int, size: int,
                   where: list[tuple[torch.Tensor, torch.Tensor]], keep: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per pyramid level, the size x size patches `keep[level]` (indices into every image's patches, image by image)
    cut at the corners `where[level]` ((i, j), a row of corners an image), built a batch of images at a time: only
    the kept patches are held, never the images or their pyramids (a pyramid is per image, so the patches are the
    ones the whole set's would give)."""
    n = where[0][0].shape[1]
    order = [torch.argsort(k) for k in keep]
    out = [torch.empty(0)] * levels
    at = 0
    for x in _slices_2d(images, rows, channel):
        b = len(x)
        for lvl, band in enumerate(_laplacian_pyramid(x, levels)):
            i, j = (c[at:at + b] for c in where[lvl])
            windows = band.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, H', W', size, size)
            cut = windows[torch.arange(b)[:, None].expand_as(i), :, i, j].reshape(b * n, -1)
            if not out[lvl].numel():
                out[lvl] = torch.empty(len(keep[lvl]), cut.shape[1], dtype=cut.dtype)
            ranked = keep[lvl][order[lvl]]  # the kept indices, ascending: this batch's are a run of them
            lo, hi = (int(torch.searchsorted(ranked, v)) for v in (at * n, (at + b) * n))
            out[lvl][order[lvl][lo:hi]] = cut[ranked[lo:hi] - at * n]
        at += b
    return out


def swd(real: Any, fake: Any, levels: int = 3, patches_per_image: int = 64, size: int = 7,
        projections: int = 256, seed: int = 0, most: int = 2000, channel: int | None = None) -> dict[str, float]:
    """Sliced Wasserstein distance (x 1e3) between Laplacian-pyramid patches, per level and averaged.

    Images (N, C, H, W[, D]) in [0, 1] (numpy, Zarr or `Rows`, read a batch at a time: only the patches compared
    are held); 3D volumes are scored on their middle slice along the last axis; a set of more than `most` images is
    scored on `most` of them at random (patches are matched in number between the sets anyway). Level 0 is the
    finest detail; fewer levels are used when the image is too small; lower is better. Patches hold every channel;
    `channel` scores one alone.
    """
    g = torch.Generator().manual_seed(seed)
    side = min(real.shape[2:4])
    size = min(size, side)
    levels = max(1, min(levels, int(np.log2(side / size)) + 1))  # the coarsest level still holds a patch
    sets = [(x, _picked(x, most, seed)) for x in (real, fake)]
    n, c = patches_per_image, (1 if channel is not None else int(real.shape[1]))
    # every random draw first, in the order one pass over whole pyramids made them: per level, the patch corners
    # of each set, the matched subsets, the projections; then the patches are cut a batch of images at a time
    draws = []
    for lvl in range(levels):
        h, w = real.shape[2] >> lvl, real.shape[3] >> lvl
        where = [(torch.randint(0, h - size + 1, (len(r), n), generator=g),
                  torch.randint(0, w - size + 1, (len(r), n), generator=g)) for _, r in sets]
        m = min(len(r) for _, r in sets) * n
        keep = [torch.randperm(len(r) * n, generator=g)[:m] for _, r in sets]
        d = torch.randn(c * size * size, projections, generator=g, dtype=torch.float64)
        draws.append((where, keep, d / d.norm(dim=0, keepdim=True)))
    patches = [_level_patches(x, r, channel, levels, size, [draws[lvl][0][k] for lvl in range(levels)],
                              [draws[lvl][1][k] for lvl in range(levels)]) for k, (x, r) in enumerate(sets)]
    out = {}
    for lvl, (_, _, d) in enumerate(draws):
        pa, pb = patches[0][lvl], patches[1][lvl]
        both = torch.cat([pa, pb])
        mu, sd = both.mean(0), both.std(0) + 1e-8
        proj_a, proj_b = ((pa - mu) / sd) @ d, ((pb - mu) / sd) @ d
        out[f"level{lvl}"] = float((proj_a.sort(0).values - proj_b.sort(0).values).abs().mean() * 1e3)
    out["mean"] = float(np.mean(list(out.values())))
    return out
