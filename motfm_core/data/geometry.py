"""Where a volume's voxels are: its orientation and spacing, and how it is brought to the store's grid.

Volumes are read as the field reads them: reoriented to RAS (nibabel's closest canonical orientation), so the same
anatomy stored flipped (its affine saying so) reads as the same array, and resampled by its spacing in millimetres
(MONAI's transforms, which carry the affine along), so an anisotropic volume is not squashed along its coarse axis.
`data.fit` chooses how a volume reaches the target shape:
- `fov`: crop to the foreground's bounding box, pad it to the target's aspect in millimetres, resample to the target
  shape: one isotropic spacing, the whole foreground in view (the default for volumes);
- `crop`: resample to `data.spacing_mm`, then crop or pad around the foreground's centre to the target shape
  (MAISI-style pipelines: a fixed physical scale, the field of view set by the shape);
- `resize`: zero-pad to a cube in voxels and resize (2D photos, MedMNIST, and what the project did before).
Masks follow their image's crop and resampling with nearest-neighbour interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motfm_core.errors import BadInput

__all__ = ["anti_aliasing_sigma", "axis_codes", "canonical", "check_affine", "fit_volume", "Image", "smooth",
           "spacing_of", "stack_channels"]

SHEAR_TOLERANCE = 1e-3  # |cos| between two voxel axes above which an affine is sheared, not merely oblique-rounded


@dataclass(frozen=True)
class Image:
    """A file as read: its pixels and, where the format records them, its spacing (mm per array axis), the affine
    of `pixels` (voxel index -> RAS mm; volumes, after reorientation to RAS), the file's own axis codes and its
    modality."""

    pixels: np.ndarray  # (*S), or (C, *S) with channel_first (a 4-D NIfTI's sequences)
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    orientation: str | None = None
    modality: str | None = None  # DICOM's Modality ("CT", "MR", ...), where the file records it
    channel_first: bool = False

    @property
    def channels(self) -> np.ndarray:
        """The pixels as (C, *S)."""
        return self.pixels if self.channel_first else self.pixels[None]


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    """mm per voxel along each array axis: the lengths of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0))


def axis_codes(affine: np.ndarray) -> str:
    """The orientation an affine stores, as three letters ("RAS", "LPS", ...)."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, float)))


def check_affine(affine: np.ndarray, where: str) -> None:
    """Refuse an affine that cannot place voxels: a zero spacing (singular) or axes sheared beyond
    SHEAR_TOLERANCE, naming `where` and the fix."""
    m = np.asarray(affine, float)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(m)) or np.any(spacing < 1e-6) or abs(np.linalg.det(m)) < 1e-9:
        raise BadInput(f"{where}: its affine is singular (voxel spacing {tuple(np.round(spacing, 4))} mm); fix the "
                       "header's pixdim / sform (a spacing of 0 places no voxel) and re-export it")
    unit = m / spacing
    cos = np.abs(unit.T @ unit - np.eye(3))
    if cos.max() > SHEAR_TOLERANCE:
        raise BadInput(f"{where}: its affine is sheared (voxel axes at cos {cos.max():.3f} from square); "
                       "resample it onto a rectilinear grid first (e.g. SimpleITK's ResampleImageFilter)")


def canonical(pixels: np.ndarray, affine: np.ndarray, path: Path, modality: str | None = None) -> Image:
    """A volume (X, Y, Z[, C]) and its affine reoriented to RAS (nibabel's closest canonical orientation: axis flips
    and permutations only, no resampling), with the file's axis codes; refuses an affine that cannot place voxels.
    A 4-D volume's last axis is its channels (returned first)."""
    import nibabel as nib

    check_affine(affine, str(path))
    turned = nib.as_closest_canonical(nib.Nifti1Image(pixels, affine))
    # C order once, here: a flipped volume is otherwise a view with negative strides, which numpy's results keep
    # (ufuncs follow the input's layout), so every later pass over it (and each ravel) copied it again
    out = np.asarray(turned.dataobj, dtype=np.float32)
    out = np.ascontiguousarray(np.moveaxis(out, -1, 0) if out.ndim == 4 else out)
    return Image(out, spacing_of(turned.affine), np.asarray(turned.affine, float), axis_codes(affine), modality,
                 channel_first=out.ndim == 4)


def _corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The RAS mm positions of a grid's eight corner voxels."""
    grid = np.array(np.meshgrid(*[(0, s - 1) for s in shape], indexing="ij")).reshape(3, -1)
    return (affine @ np.vstack([grid, np.ones(grid.shape[1])]))[:3]


def _same_grid(a: Image, b: Image) -> bool:
    if a.pixels.shape != b.pixels.shape:
        return False
    if a.affine is None or b.affine is None:
        return a.affine is None and b.affine is None
    return bool(np.allclose(a.affine, b.affine, atol=1e-3))


def stack_channels(images: list[Image], names: list[str], where: str) -> Image:
    """One sample's sequences as one (C, *S) image on the first one's grid: volumes on the same grid are stacked;
    volumes whose grids differ but cover the same field of view (corners within 1.5 voxels) are resampled onto the
    first's (MONAI `SpatialResample`, linear); other fields of view are refused, naming `where` and the sequences."""
    first = images[0]
    shape = first.pixels.shape
    if any(im.channel_first for im in images):
        raise BadInput(f"{where}: a 4-D file among its image_* columns; give one volume per image_* column, or "
                       "one 4-D file in a filename column")
    if all(_same_grid(im, first) for im in images):
        return Image(np.stack([im.pixels for im in images]), first.spacing, first.affine, first.orientation,
                     first.modality, channel_first=True)
    if first.affine is None or any(im.affine is None for im in images):
        sizes = ", ".join(f"{n} {'x'.join(map(str, im.pixels.shape))}" for n, im in zip(names, images))
        raise BadInput(f"{where}: its sequences have different shapes ({sizes}) and record no geometry to align "
                       "them; resample them onto one grid")
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    tolerance = 1.5 * max(first.spacing or (1.0,))
    out = []
    for name, im in zip(names, images):
        assert im.affine is not None and first.affine is not None
        gap = float(np.abs(_corners(im.pixels.shape, im.affine) - _corners(shape, first.affine)).max())
        if gap > tolerance:
            raise BadInput(f"{where}: sequence {name} covers another field of view than {names[0]} (corners up to "
                           f"{gap:.1f} mm apart); register the sequences to one another (or crop them to one "
                           "field of view) before ingest")
        if _same_grid(im, first):
            out.append(im.pixels)
            continue
        moved = SpatialResample(mode="bilinear")(MetaTensor(torch.from_numpy(im.pixels[None]),
                                                            affine=torch.as_tensor(im.affine)),
                                                 dst_affine=torch.as_tensor(first.affine), spatial_size=shape)
        out.append(np.asarray(moved[0], dtype=np.float32))
    return Image(np.stack(out), first.spacing, first.affine, first.orientation, first.modality, channel_first=True)


def _bounding_box(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of the voxels above 0 in any channel of (C, *S); the whole volume when none is."""
    from monai.transforms import CropForeground

    if not (image > 0).any():
        return np.zeros(image.ndim - 1, int), np.array(image.shape[1:])
    start, end = CropForeground(select_fn=lambda v: v > 0, margin=0).compute_bounding_box(image)
    return np.asarray(start), np.asarray(end)


CHANNELS_AT_ONCE = 1  # sequences resampled together: each costs the same alone (scipy filters), and holds least
TRUNCATED = 4.0  # MONAI GaussianFilter's default: the kernel spans 4 sigma each side


def anti_aliasing_sigma(before: tuple[int, ...], after: tuple[int, ...]) -> tuple[float, ...]:
    """The Gaussian sigma per axis that MONAI's `Resize(anti_aliasing=True)` (and skimage's `resize`) smooths with
    before shrinking `before` to `after`: (factor - 1) / 2 on axes that shrink, 0 on the others (float32, as MONAI
    computes it)."""
    factors = np.asarray(before, np.float32) / np.asarray(after, np.float32)
    return tuple(float(s) for s in np.maximum((factors - np.float32(1)) / np.float32(2), np.float32(0)))


def smooth(x: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    """(C, *S) smoothed along each spatial axis by MONAI's Gaussian (`gaussian_1d`, erf approximation, truncated at
    4 sigma, zero padding, axis 0 first), as MONAI's `GaussianSmooth` smooths, to float32 rounding. The filtering is
    scipy's `correlate1d`: MONAI runs each 1-D kernel as a depthwise conv3d, which is several times slower on a CPU
    (RESULTS.md, "Ingest at scale")."""
    import torch
    from monai.networks.layers.convutils import gaussian_1d
    from scipy.ndimage import correlate1d

    out = np.ascontiguousarray(x, np.float32)
    for axis, s in enumerate(sigma, start=1):
        if s > 0:
            kernel = gaussian_1d(torch.tensor(s, dtype=torch.float32), truncated=TRUNCATED, approx="erf").numpy()
            out = correlate1d(out, kernel.astype(np.float64), axis=axis, mode="constant", cval=0.0,
                              output=np.float32)
    return out


def fit_volume(image: np.ndarray, mask: np.ndarray | None, affine: np.ndarray, target: tuple[int, ...], fit: str,
               spacing_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """`image` (C, *S) (foreground above 0) and its `mask` (1, *S) brought to `target` by `fit` ("fov" or "crop"),
    with the affine of the stored grid (its voxels' positions in RAS mm). `affine` is the image's. Intensities are
    resampled as they are: normalising after the fit compares volumes of any spacing on one grid."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Resize, ResizeWithPadOrCrop, Spacing, SpatialCrop

    start, end = _bounding_box(image)
    spacing = np.array(spacing_of(affine))
    if fit not in ("fov", "crop"):
        raise ValueError(f"fit_volume: fit must be 'fov' or 'crop', got {fit!r}")
    if fit == "crop" and spacing_mm <= 0:
        raise BadInput("data.fit='crop' needs data.spacing_mm > 0 (the voxel side in mm to resample to)")
    mode = "bilinear" if len(target) == 2 else "trilinear"
    if fit == "fov":
        crop = SpatialCrop(roi_start=start, roi_end=end)
        extent = (end - start) * spacing
        side = float(np.max(extent / np.array(target)))  # one spacing for every axis: the largest that fits
        size = tuple(int(min(t, max(1, round(e / side)))) for e, t in zip(extent, target))
        sigma = anti_aliasing_sigma(tuple(int(v) for v in end - start), size)  # Resize(anti_aliasing=True)'s
    else:
        centre = (start + end) / 2.0
        half = np.array(target) * spacing_mm / spacing / 2.0 + 1  # the target's half-extent in source voxels
        crop = SpatialCrop(roi_start=np.maximum(np.floor(centre - half), 0).astype(int),
                           roi_end=np.minimum(np.ceil(centre + half), image.shape[1:]).astype(int))
        # Spacing's grid is exact; it does not smooth, so axes it shrinks are smoothed first as Resize would
        sigma = tuple(float(v) for v in np.maximum((spacing_mm / spacing - 1.0) / 2.0, 0.0))
    pad = ResizeWithPadOrCrop(target)

    def place(one: np.ndarray, nearest: bool) -> MetaTensor:
        """Some channels (k, *S) on the stored grid."""
        t = crop(MetaTensor(torch.from_numpy(np.ascontiguousarray(one, np.float32)), affine=torch.as_tensor(affine)))
        if not nearest and any(sigma):  # what Resize(anti_aliasing=True) or GaussianSmooth would do, faster
            t = MetaTensor(torch.from_numpy(smooth(t.numpy(), sigma)), affine=t.affine)
        if fit == "fov":
            t = Resize(size, mode="nearest" if nearest else mode)(t)
        else:
            t = Spacing(pixdim=(spacing_mm,) * len(target), mode="nearest" if nearest else mode)(t)
        return pad(t)

    step = CHANNELS_AT_ONCE
    channels = [place(image[c:c + step], nearest=False) for c in range(0, image.shape[0], step)]
    x = channels[0]
    out = np.concatenate([c.numpy().astype(np.float32) for c in channels])
    out_mask = None if mask is None else np.rint(place(mask, nearest=True).numpy()).astype(mask.dtype)
    return out, out_mask, np.asarray(x.affine, dtype=np.float64)
