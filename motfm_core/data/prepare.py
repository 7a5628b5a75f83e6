"""One source sample as the store holds it: intensities mapped to [0, 1] (`data.intensity`), a volume placed by
`data.fit` (or sliced for a 2D run) and resized. The ingest prepares samples one at a time (`prepare_sample`), in this
process or on Dask workers, and assembles them (`assemble`); `prepare` does both for a set held in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from motfm_core.config import DataConfig
from motfm_core.data.geometry import fit_volume
from motfm_core.data.preprocess import patient_split, percentile_window, resize, to_unit
from motfm_core.data.readers import MAX_MASK_VALUES, RawSet, distinct_values
from motfm_core.errors import BadInput

__all__ = ["CT_PLAUSIBLE", "Prepared", "assemble", "class_lookup", "prepare", "prepare_sample"]


@dataclass
class Prepared:
    """What one source sample contributes to the store: one piece (an image, a volume) or, for a volume in a 2D
    run, one per kept axial slice. Masks keep the mask file's own values: classes are numbered over the whole set
    (`class_lookup`), which no single sample knows."""

    images: np.ndarray  # (P, C, *S) float32 in [0, 1]
    masks: np.ndarray | None  # (P, 1, *S) the mask file's values, float32 (exact: nearest-neighbour resampling)
    grids: list[np.ndarray | None]  # the stored grid's affine per piece (None: resized, no geometry)
    windows: list[list[tuple[float, float]]]  # per piece, per channel: the source window mapped to [0, 1]
    fit: str  # data.fit as applied ("resize", "fov", "crop")
    mode: str  # data.intensity as applied ("percentile", "ct")
    mask_values: list[int] = field(default_factory=list)  # the distinct values of the mask file, before resampling


def _source_affine(raw: RawSet, k: int, nd: int) -> np.ndarray | None:
    """Where sample `k`'s voxels are (RAS mm): the reader's affine, else a volume's spacing alone (a DICOM file or
    series that records no position: its axes are taken as stored), else None (2D images, MedMNIST)."""
    affine = raw.affines[k] if k < len(raw.affines) else None
    spacing = raw.spacings[k] if k < len(raw.spacings) else None
    if affine is None and nd == 3 and spacing is not None and len(spacing) == 3:
        affine = np.diag([*spacing, 1.0])
    return affine


def _fit_of(cfg: DataConfig, affine: np.ndarray | None, nd: int, name: str) -> str:
    """data.fit for one sample: "auto" is "fov" for a volume with a known geometry in a 3D run, else "resize"; an
    explicit "fov"/"crop" on a file that records no geometry is refused by name."""
    if cfg.fit == "auto":
        return "fov" if affine is not None and nd == 3 and cfg.spatial_dims == 3 else "resize"
    if cfg.fit != "resize" and (affine is None or nd != 3):
        raise BadInput(f"{name}: data.fit={cfg.fit!r} places volumes by their spacing, which this file does not "
                       "record (2D images and MedMNIST have none); use data.fit=resize or data.fit=auto")
    return cfg.fit


CT_PLAUSIBLE = (100.0, -500.0)  # a CT volume in HU reaches above 100 (tissue, bone) and below -500 (air)


def _intensity_of(cfg: DataConfig, raw: RawSet, k: int, img: np.ndarray, name: str) -> str:
    """data.intensity for sample `k`: "auto" is "ct" for a DICOM whose Modality is CT, else "percentile"; "ct" on
    values that cannot be Hounsfield units is refused by name."""
    modality = raw.modalities[k] if k < len(raw.modalities) else None
    mode = cfg.intensity if cfg.intensity != "auto" else "ct" if modality == "CT" else "percentile"
    if mode == "ct" and (float(img.max()) < CT_PLAUSIBLE[0] or float(img.min()) > CT_PLAUSIBLE[1]):
        raise BadInput(f"{name}: data.intensity='ct' but its values ({float(img.min()):g}..{float(img.max()):g}) "
                       f"cannot be Hounsfield units (CT reaches above {CT_PLAUSIBLE[0]:g} and below "
                       f"{CT_PLAUSIBLE[1]:g}); use data.intensity=percentile for MR and photos")
    return mode


def _to_unit(img: np.ndarray, mode: str, cfg: DataConfig) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(C, *S) mapped to [0, 1] per channel, with each channel's window (lo, hi): source units = lo + x (hi - lo)
    inside it. "ct": the fixed HU window data.ct_window; "percentile": the channel's foreground percentiles."""
    windows = [(float(cfg.ct_window[0]), float(cfg.ct_window[1])) if mode == "ct" else percentile_window(c)
               for c in img]
    return np.stack([to_unit(c, lo, hi) for c, (lo, hi) in zip(img, windows)]), [
        (float(lo), float(hi)) for lo, hi in windows]


def _pieces(img: np.ndarray, mask: np.ndarray | None, volume_in_2d: bool, name: str
            ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """What one sample contributes: the image itself, or for a volume in a 2D run its axial slices with enough
    foreground (>= 5% of the pixels above 0.05)."""
    if not volume_in_2d:
        return [(img, mask)]
    keep = [z for z in range(img.shape[-1]) if (img[..., z] > 0.05).mean() >= 0.05]
    if not keep:
        raise BadInput(f"{name}: contributed no sample (no axial slice has >= 5% of its pixels above 5% of the "
                       "intensity range); check the file or remove its row")
    return [(img[..., z], None if mask is None else mask[..., z]) for z in keep]


def prepare_sample(raw: RawSet, k: int, cfg: DataConfig) -> Prepared:
    """Sample `k` of `raw` as the store holds it (`Prepared`); refuses, naming the file, what cannot be one. Torch
    runs it on one thread: its resampling rounds differently with another thread count, and a store must be the same
    whether its rows were prepared here or on Dask workers, in one run or resumed."""
    import torch  # here, not at import: store tools (`motfm inspect`) load this package without torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _prepare_sample(raw, k, cfg)
    finally:
        torch.set_num_threads(threads)


def _prepare_sample(raw: RawSet, k: int, cfg: DataConfig) -> Prepared:
    img, mask = raw.images[k], raw.masks[k]
    name = raw.files[k] if k < len(raw.files) else f"{raw.origin} sample {k}"
    nd = img.ndim - 1
    if nd not in (2, 3):
        raise BadInput(f"{name}: has {nd} spatial dims (shape {img.shape[1:]}); expected a 2D image or a 3D "
                       "volume (split 4-D series into one volume per file)")
    if nd == 2 and cfg.spatial_dims == 3:
        raise BadInput(f"{name}: is 2D but data.spatial_dims=3; use data.spatial_dims=2")
    if float(img.max()) <= float(img.min()):
        raise BadInput(f"{name}: image is blank (every pixel is {float(img.min()):g}); remove its row")
    affine = _source_affine(raw, k, nd)
    fit = _fit_of(cfg, affine, nd, name)
    mode = _intensity_of(cfg, raw, k, img, name)
    window: list[tuple[float, float]] = []
    # a fixed window maps first (the fit then finds the body above air); percentiles are taken on the stored
    # grid, after the fit, so volumes of any spacing are normalised alike
    if mode == "ct" or fit == "resize":
        img, window = _to_unit(img, mode, cfg)
    values = [] if mask is None else [int(v) for v in distinct_values(mask)]
    images, masks, grids, windows = [], [], [], []
    for im, mk in _pieces(img, mask, nd == 3 and cfg.spatial_dims == 2, name):
        grid = None
        if fit == "resize":
            im = resize(im, cfg.spatial_shape)
            mk = None if mk is None else resize(mk, cfg.spatial_shape, nearest=True)
        else:  # the whole volume, placed in millimetres (its affine is known)
            im, mk, grid = fit_volume(im, mk, affine, cfg.spatial_shape, fit, cfg.spacing_mm)  # type: ignore[arg-type]
            if not window:
                im, window = _to_unit(im, mode, cfg)
        images.append(im)
        masks.append(None if mk is None else np.asarray(mk, dtype=np.float32))
        grids.append(grid)
        windows.append(window)
    return Prepared(np.stack(images).astype(np.float32, copy=False),
                    None if mask is None else np.stack(masks), grids, windows, fit, mode, values)  # type: ignore[arg-type]


def class_lookup(values: list[list[int]], origin: str) -> dict[int, int]:
    """{value in the mask files: class} over the whole set (`values`: each mask file's distinct values): the distinct
    values in order (the smallest, usually 0, is background), so a 0/255 mask reads as classes 0/1; an identity when
    the values already are 0..K-1."""
    every = sorted(set().union(*values)) if values else []
    if len(every) > MAX_MASK_VALUES:
        raise BadInput(f"{origin}: the masks hold {len(every)} distinct values in all ({every[:20]}...), at "
                       f"most {MAX_MASK_VALUES} classes; use one value per class across every mask file")
    return {int(v): k for k, v in enumerate(every)}


def to_classes(masks: np.ndarray, classes: dict[int, int]) -> np.ndarray:
    """Masks of the files' values as classes 0..K-1 (uint8) by `class_lookup`'s map."""
    lookup = np.array(list(classes), dtype=np.float64)  # sorted values: np.searchsorted maps each to its class
    return np.searchsorted(lookup, np.rint(masks)).astype(np.uint8)


def assemble(parts: list[Prepared], labels: list[int], groups: list[str], split: list[int] | None, cfg: DataConfig,
             origin: str) -> dict[str, Any]:
    """Prepared samples as the store's arrays: `images`, `labels`, `masks` (classes), `split` (the source's, else by
    subject), `intensity` (N, C, 2), `affine` where volumes were placed, `group_names`, `mask_values`, `fits`,
    `modes`; each sample's label, group and split repeat over its pieces."""
    if not parts:
        raise BadInput(f"{origin}: no usable samples found")
    has = [p.masks is not None for p in parts]
    if any(has) and not all(has):
        raise BadInput(f"{origin}: some samples have masks and some do not; give a mask for every row or none")
    classes = class_lookup([p.mask_values for p in parts if p.masks is not None], origin)
    rep = [len(p.images) for p in parts]
    grids = [g for p in parts for g in p.grids]
    piece_labels = np.repeat(labels, rep)
    piece_groups = [g for g, n in zip(groups, rep) for _ in range(n)]
    out: dict[str, Any] = {"images": np.concatenate([p.images for p in parts]), "labels": piece_labels,
           "group_names": piece_groups, "mask_values": classes,
           "fits": [p.fit for p in parts], "modes": [p.mode for p in parts],
           "intensity": np.array([w for p in parts for w in p.windows], dtype=np.float64),
           "masks": to_classes(np.concatenate([p.masks for p in parts if p.masks is not None]), classes)
           if all(has) else None}
    if any(g is not None for g in grids):
        out["affine"] = np.stack([np.full((4, 4), np.nan) if g is None else g for g in grids])
    out["split"] = (np.repeat(np.asarray(split, dtype=np.uint8), rep) if split is not None
                    else patient_split(piece_groups, cfg.val_fraction, cfg.test_fraction, cfg.seed, piece_labels))
    return out


def prepare(raw: RawSet, cfg: DataConfig) -> dict[str, Any]:
    """A RawSet held in memory as the store's arrays (`assemble` of `prepare_sample` of every sample)."""
    if not raw.images:
        raise BadInput(f"{raw.origin}: no usable samples found")
    parts = [prepare_sample(raw, k, cfg) for k in range(len(raw.images))]
    return assemble(parts, raw.labels, raw.groups, raw.split, cfg, raw.origin)
