"""Conditioning masks for a mask-conditioned generator: where each synthetic sample's mask comes from.

A mask of the bundled brain set nearly *is* its image, so conditioning on the training masks themselves makes the
generator hand back its training slices. Three sources (`sample.mask_source`):
- `train`: the n-th sample of class c takes the n-th training mask of class c (cycling); copies by construction.
- `deformed`: that training mask under a random affine + elastic deformation (MONAI `Rand2DElastic` /
  `Rand3DElastic`, nearest-neighbour so labels stay labels), drawn from the sample's own seed; the drawn
  rotation/scale/translation are returned per sample so the store records them.
- `generated`: a class-conditional flow model over one-hot masks (trained by `training.train_flow_matching` with
  `target="masks"`) samples a new mask from the sample's own seed; the argmax over classes is the mask.
Every source draws from per-sample seeds only, so any batch or shard layout gives the same masks.
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import torch

from motfm_core.config import MaskSource, SampleConfig
from motfm_core.errors import BadInput

__all__ = ["AUTO_MASK_SOURCE", "cycle_by_class", "deform", "deform_columns", "MASK_SEED_SALT", "mask_seeds",
           "MASK_SOURCES", "resolve_mask_source"]

MASK_SOURCES = tuple(s for s in get_args(MaskSource) if s != "auto")  # the sources "auto" can mean
AUTO_MASK_SOURCE = "deformed"  # what sample.mask_source="auto" means: the source that measured best on the demo data


def resolve_mask_source(mask_source: str, mask_conditioned: bool) -> str | None:
    """The mask source a generator samples with: None for a model without mask conditioning, `AUTO_MASK_SOURCE`
    for "auto". An explicit source for a model that takes no masks is refused, naming the key and the choices."""
    if not mask_conditioned:
        if mask_source != "auto":
            raise BadInput(f"sample.mask_source={mask_source!r} cannot apply: the model is not mask-conditioned "
                           "(the dataset has no masks, or model.mask_conditioning='none'); leave "
                           f"sample.mask_source='auto' or condition on masks (choices: {', '.join(MASK_SOURCES)})")
        return None
    return AUTO_MASK_SOURCE if mask_source == "auto" else mask_source
MASK_SEED_SALT = 0x6D61736B  # "mask": a mask's seed differs from its image noise seed


def mask_seeds(seeds: np.ndarray) -> np.ndarray:
    """The seed each sample's mask is drawn from, derived from (never equal to) its noise seed."""
    return np.asarray([np.random.SeedSequence([int(s), MASK_SEED_SALT]).generate_state(1)[0] for s in seeds],
                      dtype=np.int64)


def cycle_by_class(labels: np.ndarray, pool_labels: np.ndarray) -> np.ndarray:
    """For each label, the index into `pool_labels` of the n-th pool member of that class (n-th occurrence,
    cycling); raises when a class has no member."""
    source = np.empty(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, c in enumerate(np.asarray(labels).tolist()):
        pool = np.nonzero(pool_labels == c)[0]
        if len(pool) == 0:
            raise BadInput(f"no training mask of class {c} to condition on")
        source[i] = pool[seen.get(c, 0) % len(pool)]
        seen[c] = seen.get(c, 0) + 1
    return source


def deform_columns(spatial_dims: int) -> list[str]:
    """Names of the per-sample deformation parameters `deform` returns (radians, factors, pixels)."""
    axes = "xyz"[:spatial_dims]
    rot = ["rotate"] if spatial_dims == 2 else [f"rotate_{a}" for a in axes]
    return rot + [f"scale_{a}" for a in axes] + [f"translate_{a}" for a in axes]


def _deformer(cfg: SampleConfig, spatial_dims: int, side: int):
    from monai.transforms import Rand2DElastic, Rand3DElastic

    rot = np.deg2rad(cfg.deform_rotate)
    trans = cfg.deform_translate * side
    common = dict(magnitude_range=(0.0, cfg.deform_elastic), prob=1.0, scale_range=(cfg.deform_scale,) * spatial_dims,
                  translate_range=(trans,) * spatial_dims, mode="nearest", padding_mode="zeros")
    spacing = max(2.0, cfg.deform_elastic_spacing * side)
    if spatial_dims == 2:
        return Rand2DElastic(spacing=(spacing, spacing), rotate_range=(rot,), **common)
    # 3D: rotate in the axial plane only (about the last axis), as the slices were cut
    return Rand3DElastic(sigma_range=(spacing / 2, spacing / 2), rotate_range=(0.0, 0.0, rot), **common)


def deform(masks: np.ndarray, seeds: np.ndarray, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each mask (N, 1, *spatial) under its own random affine + elastic deformation seeded by `seeds`.

    Returns (deformed masks uint8, parameters (N, len(deform_columns)) float32)."""
    spatial_dims = masks.ndim - 2
    t = _deformer(cfg, spatial_dims, min(masks.shape[2:]))
    out = np.empty(masks.shape, dtype=np.uint8)
    params = np.empty((len(masks), len(deform_columns(spatial_dims))), dtype=np.float32)
    for i, (m, s) in enumerate(zip(masks, seeds)):
        t.set_random_state(seed=int(s) % (2 ** 32))
        out[i] = np.asarray(t(torch.from_numpy(np.asarray(m, dtype=np.float32)), randomize=True)).round()
        g = t.rand_affine_grid
        rot = g.rotate_params[:1] if spatial_dims == 2 else g.rotate_params
        params[i] = [*rot, *g.scale_params, *g.translate_params]
    return out, params
