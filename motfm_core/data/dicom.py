"""DICOM as read by pydicom: a file (a 2D image or a multi-frame volume) or a folder holding one series, in modality
units, ordered by slice position, placed in RAS where the slices record their position and orientation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from motfm_core.data.geometry import Image, canonical
from motfm_core.errors import BadInput
from motfm_core.files import system_error

__all__ = ["DICOM_SUFFIXES", "read_dicom", "read_dicom_image"]

DICOM_SUFFIXES = (".dcm", ".dicom")


def _dicom_pixels(ds: Any, path: Path) -> np.ndarray:
    """One DICOM dataset's pixels in modality units (rescale slope/intercept or modality LUT applied), colour as
    luminance, MONOCHROME1 inverted so that higher is brighter; frames last: (H, W) or (H, W, frames)."""
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds:
        raise BadInput(f"{path}: DICOM file without pixel data (a report or structure set?); list image files only")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for compressed data it has no decoder for
        if system_error(exc):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__  # its message lists every plugin
        raise BadInput(f"{path}: cannot decode DICOM pixels ({ds.file_meta.get('TransferSyntaxUID', '?')}: "
                       f"{reason}); export it uncompressed or install a decoder (pylibjpeg)") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # RGB after pydicom's colour conversion: luminance, as for PNG
        arr = arr @ np.array([0.299, 0.587, 0.114])
    else:
        arr = apply_modality_lut(arr, ds)
    arr = np.asarray(arr, dtype=np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    return np.moveaxis(arr, 0, -1) if frames > 1 else arr


def _in_plane_spacing(ds: Any) -> tuple[float, float]:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0)
    return float(spacing[0]), float(spacing[1])


def _series(folder: Path) -> Image:
    """A folder of single-frame DICOM slices of one series -> (H, W, slices), ordered by position along the slice
    normal (else by InstanceNumber), and its spacing; reoriented to RAS where the slices record their position and
    orientation. Mixed series or slice shapes are refused by file."""
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise BadInput(f"{folder}: empty DICOM series folder; list a folder holding the series' slice files")
    slices = []
    for f in files:
        try:
            slices.append((f, pydicom.dcmread(f)))
        except Exception as exc:  # pydicom's InvalidDicomError and the errors of truncated files
            if system_error(exc):
                raise
            raise BadInput(f"{f}: not a readable DICOM file ({type(exc).__name__}: {exc}); remove it from the "
                           "series folder") from exc
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(uids) > 1:
        raise BadInput(f"{folder}: holds {len(uids)} series ({sorted(uids)}); put one series per folder")
    first_file, first = slices[0]
    shape = (int(first.Rows), int(first.Columns))
    for f, ds in slices:
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise BadInput(f"{f}: slice of {int(ds.Rows)}x{int(ds.Columns)} pixels in a series of {shape[0]}x"
                           f"{shape[1]} ({first_file.name}); one series per folder, one shape per series")
    if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in slices):
        orient = np.asarray(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(orient[:3], orient[3:])
        where = np.array([float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)) for _, ds in slices])
    elif all("InstanceNumber" in ds for _, ds in slices):
        where = np.array([float(ds.InstanceNumber) for _, ds in slices])
    else:
        raise BadInput(f"{folder}: cannot order the slices (no ImagePositionPatient/ImageOrientationPatient or "
                       "InstanceNumber); export the series with positions")
    order = np.argsort(where, kind="stable")
    gaps = np.diff(where[order])
    if len(gaps) and np.min(np.abs(gaps)) < 1e-6:
        i = int(np.argmin(np.abs(gaps)))
        raise BadInput(f"{slices[order[i + 1]][0]}: same position as {slices[order[i]][0].name}; a series folder "
                       "holds each slice once")
    volume = np.stack([_dicom_pixels(slices[i][1], slices[i][0]) for i in order], axis=-1)
    positioned = len(gaps) and "ImagePositionPatient" in first
    through = float(np.median(np.abs(gaps))) if positioned else float(
        first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    spacing = (*_in_plane_spacing(first), through)
    modality = str(first.get("Modality", "")) or None
    if not positioned or volume.shape[-1] < 2:
        return Image(volume, spacing, modality=modality)
    # DICOM's patient space is LPS: a row index moves along the column direction cosines (IOP[3:]), a column index
    # along the row's (IOP[:3]), a slice along the normal; RAS flips the first two axes
    orient = np.asarray(first.ImageOrientationPatient, dtype=float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = orient[3:] * spacing[0], orient[:3] * spacing[1]
    lps[:3, 2] = np.cross(orient[:3], orient[3:]) * through
    lps[:3, 3] = np.asarray(slices[order[0]][1].ImagePositionPatient, dtype=float)
    return canonical(volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, folder, modality)


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Float32 pixels (modality units) and spacing (mm per axis) of a DICOM image: one file (H, W), a
    multi-frame file (H, W, frames), or a folder of one series (H, W, slices) ordered by slice position (and
    reoriented to RAS where its slices record position and orientation)."""
    image = read_dicom_image(Path(path))
    return image.pixels, image.spacing or ()


def read_dicom_image(path: Path) -> Image:
    """A DICOM file or series folder as read by `read_dicom`, with the affine of a positioned series."""
    import pydicom

    if path.is_dir():
        return _series(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom's InvalidDicomError and the errors of truncated files
        if system_error(exc):
            raise
        raise BadInput(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); re-export or remove "
                       "it") from exc
    arr = _dicom_pixels(ds, path)
    spacing: tuple[float, ...] = _in_plane_spacing(ds)
    if arr.ndim == 3:  # multi-frame: the frame offsets (RT dose grids) or the slice spacing
        offsets = np.asarray(ds.get("GridFrameOffsetVector") or [], dtype=float)
        spacing = (*spacing, float(np.median(np.abs(np.diff(offsets)))) if len(offsets) > 1 else float(
            ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0))
    if not np.isfinite(arr).all():
        raise BadInput(f"{path}: contains NaN/inf values; fix or remove the file")
    return Image(arr, spacing, modality=str(ds.get("Modality", "")) or None)
