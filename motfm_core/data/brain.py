"""The bundled real demo set: axial brain-MRI slices with tissue masks and anatomical level classes.

Sources (real T1 MRI, installed from package registries, nothing downloaded at run time):
- `mni152`: MNI ICBM152 2009a symmetric T1 with grey/white-matter probability maps, shipped in the
  `nilearn` wheel (nilearn/datasets/data/).
- `colin27`: Colin27 single-subject T1 (`ch2bet`, skull-stripped) with the AAL atlas drawn on it, from
  Debian's `mricron-data` (/usr/share/mricron/templates). Used when installed (`make data`).

Both lie in MNI space, so every slice is resampled from world coordinates on one grid:
x in [-96, 96] mm, y in [-116, 76] mm (a 192 mm square), axial level z every 1 mm.

Class label = axial level band, defined in MNI z (mm): 0 `inferior` (z < -20: cerebellum, brainstem,
temporal poles), 1 `middle` (-20 <= z < 25: basal ganglia, ventricles), 2 `superior` (z >= 25:
centrum semiovale to vertex). Slices with under 8% brain are dropped.
Mask: 0 background, 1 CSF, 2 grey matter, 3 white matter (MNI152: argmax of the tissue maps inside
the brain; Colin27: AAL regions = grey matter, the rest of the brain split into CSF/white matter by an
Otsu threshold on T1 intensity).
Split: by source volume and 12 mm slab (slab k: test if k % 5 == 1, val if k % 5 == 3, else train,
shifted per volume), and slices within 2 mm of a slab of another split are dropped, so test slices never
neighbour training slices. Group = (volume, slab).

3D (`data.spatial_dims=3`): sub-volume blocks of image_size x image_size x depth voxels at 2 mm (1 mm samples,
averaged; masks: nearest tissue at the voxel centre), cut from both volumes on the same MNI grid at in-plane
positions every half block and axial positions every 4 mm; blocks with under 8% brain are dropped. Class = level
band of the block's centre z; split by volume and 28 mm slab (the 2D rule, shifted per volume so that every
split holds every band), a block kept only when it and 2 mm beyond it lie in slabs of its own split, so no test
block overlaps or touches a training block. Group = (volume, slab of the block's centre).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from motfm_core.config import DataConfig
from motfm_core.data.preprocess import normalise, resize
from motfm_core.errors import BadInput

__all__ = ["band", "build_brain_mri", "check_blocks", "CLASS_NAMES", "MASK_NAMES", "MRICRON", "volumes", "Z_RANGE"]

log = logging.getLogger(__name__)

CLASS_NAMES = ["inferior (z<-20mm)", "middle (-20<=z<25mm)", "superior (z>=25mm)"]
MASK_NAMES = ["background", "csf", "grey_matter", "white_matter"]
MRICRON = Path("/usr/share/mricron/templates")
FOV_X, FOV_Y, FOV_MM = -96.0, -116.0, 192
Z_RANGE = (-72, 90)
SLAB_MM, GUARD_MM, MIN_BRAIN = 12, 2, 0.08
VOXEL_MM_3D, SLAB_MM_3D, Z_STRIDE_3D = 2, 28, 2  # 3D blocks: voxel size, split slab, axial stride (voxels)
SHIFTS_3D = (3, 0)  # slab shift of each volume in 3D: every split then holds every class (tests/core/test_brain.py)


def band(z: float) -> int:
    return 0 if z < -20 else 1 if z < 25 else 2


def _nilearn_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _nilearn_dir()
    t1, aff = _load(d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm, _ = _load(d / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    wm, _ = _load(d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    gm, wm = gm / 255.0, wm / 255.0
    brain = ndimage.binary_closing(gm + wm > 0.3, iterations=3)
    brain = np.stack([ndimage.binary_fill_holes(brain[..., z]) for z in range(brain.shape[-1])], -1)
    csf = np.clip(1.0 - gm - wm, 0, 1)
    tissue = np.argmax(np.stack([csf, gm, wm]), 0).astype(np.uint8) + 1
    return t1 * brain, np.where(brain, tissue, 0).astype(np.uint8), aff


def _colin27() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t1, aff = _load(MRICRON / "ch2bet.nii.gz")
    aal, aal_aff = _load(MRICRON / "aal.nii.gz")
    if aal.shape != t1.shape or not np.allclose(aal_aff, aff):
        raise BadInput(f"{MRICRON}: aal.nii.gz is not on the ch2bet.nii.gz grid; reinstall mricron-data")
    brain = t1 > 0
    gm = (aal > 0) & brain
    rest = brain & ~gm
    wm = rest & (t1 > _otsu(t1[rest]))
    mask = np.zeros(t1.shape, np.uint8)
    mask[rest] = 1
    mask[gm] = 2
    mask[wm] = 3
    return t1, mask, aff


def _plane(vol: np.ndarray, affine: np.ndarray, z: float, n: int, order: int) -> np.ndarray:
    """Sample an axial plane at world z on an n x n grid covering the FOV (pixel centres)."""
    step = FOV_MM / n
    xs = FOV_X + step * (np.arange(n) + 0.5)
    ys = FOV_Y + step * (np.arange(n) + 0.5)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    world = np.stack([gx, gy, np.full_like(gx, z), np.ones_like(gx)]).reshape(4, -1)
    vox = (np.linalg.inv(affine) @ world)[:3]
    plane = ndimage.map_coordinates(vol, vox, order=order, mode="constant", cval=0.0).reshape(n, n)
    return np.ascontiguousarray(plane.T[::-1])  # rows: anterior at the top; columns: x (radiological left)


def _slab_split(z: np.ndarray, shift: int, slab_mm: int = SLAB_MM) -> np.ndarray:
    """Split of world z (0 train, 1 val, 2 test): slab k is test if (k + shift) % 5 == 1, val if it is 3."""
    slab = np.floor((z - Z_RANGE[0]) / slab_mm).astype(int) + shift
    return np.where(slab % 5 == 1, 2, np.where(slab % 5 == 3, 1, 0)).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def volumes() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The available source volumes: name -> (T1 brain, tissue mask, affine); read once per process (~45 MB
    each), so callers must not modify them."""
    vols = {"mni152": _mni152()}
    if (MRICRON / "ch2bet.nii.gz").exists():
        vols["colin27"] = _colin27()
    else:
        log.warning("brain-mri: %s not found (apt-get install mricron-data); using the MNI152 volume only", MRICRON)
    return vols


def _grid_3d(t1: np.ndarray, tissue: np.ndarray, affine: np.ndarray, v: int = VOXEL_MM_3D
             ) -> tuple[np.ndarray, np.ndarray]:
    """A volume and its tissue mask on the 3D grid: the FOV x Z_RANGE at `v` mm, axes (x-plane rows, columns,
    z up). Intensities: 1 mm planes averaged over each voxel; mask: the tissue at the voxel's centre."""
    nz = (Z_RANGE[1] - Z_RANGE[0]) // v
    fine = np.stack([_plane(t1, affine, Z_RANGE[0] + j + 0.5, FOV_MM, order=1) for j in range(nz * v)], -1)
    n = FOV_MM // v
    img = fine.reshape(n, v, n, v, nz, v).mean((1, 3, 5))
    labels = tissue.astype(np.float32)  # map_coordinates interpolates floats (order 0: a label stays a label)
    mask = np.stack([_plane(labels, affine, Z_RANGE[0] + v * k + v / 2, n, order=0) for k in range(nz)],
                    -1).astype(np.uint8)
    return img.astype(np.float32), mask


def check_blocks(cfg: DataConfig) -> str:
    """How the 3D demo set's blocks of cfg's size are split ("slabs" or "by-brain"), or BadInput when they cannot
    be: decided from the settings alone (no volume is read), so the pre-start check refuses it in seconds."""
    size, depth, v = cfg.image_size, cfg.depth, int(cfg.voxel_mm or VOXEL_MM_3D)
    n, nz = FOV_MM // v, (Z_RANGE[1] - Z_RANGE[0]) // v
    deepest = (SLAB_MM_3D - 2 * GUARD_MM) // v  # a test block must fit one slab with its guard
    if size <= n // 2 and depth <= deepest:
        return "slabs"
    if not cfg.voxel_mm:
        raise BadInput(f"brain-mri 3D: blocks of {size} x {size} x {depth} voxels at {v} mm do not fit the "
                       f"{FOV_MM} mm field of view and {SLAB_MM_3D} mm split slabs; use data.image_size <= "
                       f"{n // 2} and data.depth <= {deepest}")
    if not (MRICRON / "ch2bet.nii.gz").exists() or size > n or depth > nz:
        raise BadInput(f"brain-mri 3D: blocks of {size} x {size} x {depth} voxels at {v} mm are split by brain, "
                       f"which needs both bundled brains (make data installs the second) and blocks within the "
                       f"{n} x {n} x {nz} voxel grid")
    return "by-brain"


def _build_3d(cfg: DataConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The 3D demo set: sub-volume blocks (module docstring)."""
    if check_blocks(cfg) == "by-brain":
        return _build_3d_by_brain(cfg)
    size, depth, v = cfg.image_size, cfg.depth, int(cfg.voxel_mm or VOXEL_MM_3D)
    n = FOV_MM // v
    imgs, masks, labels, split, groups, centres = [], [], [], [], [], []
    mm = np.arange(Z_RANGE[0], Z_RANGE[1], dtype=float) + 0.5  # 1 mm positions, for the split and its guard
    for vi, (name, (t1, tissue, aff)) in enumerate(volumes().items()):
        img, mask = _grid_3d(normalise(t1), tissue, aff, v)
        sp = _slab_split(mm, SHIFTS_3D[vi % len(SHIFTS_3D)], SLAB_MM_3D)
        for k in range(0, img.shape[-1] - depth + 1, Z_STRIDE_3D):
            lo, hi = k * v, (k + depth) * v  # the block's extent in mm above Z_RANGE[0]
            near = sp[max(0, lo - GUARD_MM): hi + GUARD_MM]
            if (near != near[0]).any():  # the block, or 2 mm beyond it, reaches a slab of another split
                continue
            zc = Z_RANGE[0] + (lo + hi) / 2
            for i in range(0, n - size + 1, max(1, size // 2)):
                for j in range(0, n - size + 1, max(1, size // 2)):
                    m = mask[i:i + size, j:j + size, k:k + depth]
                    if (m > 0).mean() < MIN_BRAIN:
                        continue
                    imgs.append(img[None, i:i + size, j:j + size, k:k + depth])
                    masks.append(m[None])
                    labels.append(band(zc))
                    split.append(near[0])
                    centres.append([FOV_X + v * (j + size / 2), FOV_Y + v * (n - i - size / 2), zc])
                    groups.append(f"{name}/slab{int((zc - Z_RANGE[0]) // SLAB_MM_3D):02d}")
    arrays = {"images": np.clip(np.stack(imgs), 0, 1).astype(np.float32), "labels": np.array(labels),
              "masks": np.stack(masks), "split": np.array(split, np.uint8), "group_names": groups}
    attrs = {"source": "brain-mri (3D blocks): " + ", ".join(sorted({g.split("/")[0] for g in groups})),
             "class_names": CLASS_NAMES, "mask_names": MASK_NAMES, "spacing": [float(v)] * 3,
             "spacing_units": "mm (MNI space)", "block_centre_mm": centres,
             "normalisation": "per volume: percentiles [0.5, 99.5] of brain voxels -> [0, 1], clipped",
             "description": __doc__}
    return arrays, attrs


LARGE_CLASSES = ["lower (block centre z < {z} mm)", "upper (block centre z >= {z} mm)"]


def _build_3d_by_brain(cfg: DataConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Blocks too large for the split slabs (e.g. 128^3 at 1 mm: most of a brain): split by brain. The first
    volume's blocks train; the second's are the test split, but for those at the central in-plane position, which are
    the validation split (they overlap test blocks: both are of the held-out brain). Blocks at in-plane positions
    every quarter block and axial positions every 8 voxels; class = lower or upper half of the axial positions."""
    check_blocks(cfg)
    size, depth, v = cfg.image_size, cfg.depth, int(cfg.voxel_mm)
    n, nz = FOV_MM // v, (Z_RANGE[1] - Z_RANGE[0]) // v
    vols = volumes()
    rows = list(range(0, n - size + 1, max(1, size // 4)))
    levels = list(range(0, nz - depth + 1, 8))
    cut = Z_RANGE[0] + v * (levels[len(levels) // 2] + depth / 2)  # the median block centre: two halves
    imgs, masks, labels, split, groups, centres = [], [], [], [], [], []
    for vi, (name, (t1, tissue, aff)) in enumerate(vols.items()):
        img, mask = _grid_3d(normalise(t1), tissue, aff, v)
        for k in levels:
            zc = Z_RANGE[0] + v * (k + depth / 2)
            for a, i in enumerate(rows):
                for b, j in enumerate(rows):
                    imgs.append(img[None, i:i + size, j:j + size, k:k + depth])
                    masks.append(mask[None, i:i + size, j:j + size, k:k + depth])
                    labels.append(int(zc >= cut))
                    central = a == len(rows) // 2 and b == len(rows) // 2
                    split.append(0 if vi == 0 else 1 if central else 2)
                    centres.append([FOV_X + v * (j + size / 2), FOV_Y + v * (n - i - size / 2), zc])
                    groups.append(name)
    arrays = {"images": np.clip(np.stack(imgs), 0, 1).astype(np.float32), "labels": np.array(labels),
              "masks": np.stack(masks), "split": np.array(split, np.uint8), "group_names": groups}
    attrs = {"source": "brain-mri (3D blocks, split by brain): " + ", ".join(vols),
             "class_names": [c.format(z=f"{cut:g}") for c in LARGE_CLASSES], "mask_names": MASK_NAMES,
             "spacing": [float(v)] * 3, "spacing_units": "mm (MNI space)", "block_centre_mm": centres,
             "normalisation": "per volume: percentiles [0.5, 99.5] of brain voxels -> [0, 1], clipped",
             "description": __doc__ + "\n" + (_build_3d_by_brain.__doc__ or "")}
    return arrays, attrs


def build_brain_mri(cfg: DataConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Arrays (images, labels, masks, split, group_names) and attrs of the demo set at cfg.image_size: axial
    slices, or with cfg.spatial_dims=3 sub-volume blocks of cfg.image_size^2 x cfg.depth voxels."""
    if cfg.spatial_dims == 3:
        return _build_3d(cfg)
    n, size = FOV_MM, cfg.image_size
    imgs, masks, labels, split, groups, zpos = [], [], [], [], [], []
    for v, (name, (t1, tissue, aff)) in enumerate(volumes().items()):
        t1, tissue_f = normalise(t1), tissue.astype(np.float32)
        zs = np.arange(Z_RANGE[0], Z_RANGE[1] + 1, dtype=float)
        sp = _slab_split(zs, shift=2 * v)
        for i, z in enumerate(zs):
            near = sp[max(0, i - GUARD_MM): i + GUARD_MM + 1]
            if (near != sp[i]).any():  # guard: too close to a slab of another split
                continue
            m = _plane(tissue_f, aff, z, size, order=0).astype(np.uint8)
            if (m > 0).mean() < MIN_BRAIN:
                continue
            img = _plane(t1, aff, z, n, order=1)  # 1 mm grid, then area-averaged down: no aliasing
            imgs.append(resize(img[None], (size, size)))
            masks.append(m[None])
            labels.append(band(z))
            split.append(sp[i])
            zpos.append(float(z))
            groups.append(f"{name}/slab{int((z - Z_RANGE[0]) // SLAB_MM):02d}")
    arrays = {"images": np.clip(np.stack(imgs), 0, 1).astype(np.float32), "labels": np.array(labels),
              "masks": np.stack(masks), "split": np.array(split, np.uint8), "group_names": groups}
    attrs = {"source": "brain-mri: " + ", ".join(sorted({g.split("/")[0] for g in groups})),
             "class_names": CLASS_NAMES, "mask_names": MASK_NAMES,
             "spacing": [FOV_MM / size, FOV_MM / size], "spacing_units": "mm (axial plane, MNI space)",
             "slice_z_mm": zpos,
             "normalisation": "per volume: percentiles [0.5, 99.5] of brain voxels -> [0, 1], clipped",
             "description": __doc__}
    return arrays, attrs
