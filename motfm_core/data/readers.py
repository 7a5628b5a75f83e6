"""Readers for the formats users bring: NIfTI, DICOM or PNG/JPEG folders with a labels CSV, MedMNIST `.npz`.

Every reader returns a `RawSet`: images at their native size (C, *spatial) with labels, optional
masks, a group (patient) id and, where the format records it, the voxel spacing per sample. Volumes whose format
records where their voxels are (NIfTI's affine, a DICOM series' position and orientation) are reoriented to RAS as
they are read, and keep the affine of the array returned (`Image`). Errors name the file and the fix.

labels.csv columns: `filename` (relative to the folder), `label` (int or name), optional `mask`
(a file of the same shape), optional `subject` (patient id; defaults to the filename). A DICOM `filename` is a
`.dcm` file (a 2D image, or a multi-frame volume) or a folder holding one series (one file per slice, any names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "Image", "NIFTI_SUFFIXES", "RawSet", "read_any", "read_dicom",
           "read_folder", "read_image", "read_medmnist", "read_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass
class RawSet:
    """Samples before resizing: per-sample arrays (C, *spatial), labels, masks or None, groups."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    split: list[int] | None = None  # given by the source (MedMNIST), else decided at ingest
    origin: str = ""
    files: list[str] = field(default_factory=list)  # where each sample came from (errors name it)
    spacings: list[tuple[float, ...] | None] = field(default_factory=list)  # mm per axis of the image, if known
    affines: list[np.ndarray | None] = field(default_factory=list)  # voxel -> RAS mm of each volume, if known
    modalities: list[str | None] = field(default_factory=list)  # DICOM's Modality of each sample, if recorded
    orientations: list[str | None] = field(default_factory=list)  # each volume's axis codes in its file ("LPS")
    subject_column: bool = True  # False: a folder without a `subject` column (each file is its own group)


@dataclass(frozen=True)
class Image:
    """A file as read: its pixels and, where the format records them, its spacing (mm per array axis), the affine
    of `pixels` (voxel index -> RAS mm; volumes, after reorientation to RAS), the file's own axis codes and its
    modality."""

    pixels: np.ndarray
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    orientation: str | None = None
    modality: str | None = None  # DICOM's Modality ("CT", "MR", ...), where the file records it


def _canonical(pixels: np.ndarray, affine: np.ndarray, path: Path, modality: str | None = None) -> Image:
    """A volume and its affine reoriented to RAS (nibabel's closest canonical orientation: axis flips and
    permutations only, no resampling), with the file's axis codes; refuses an affine that cannot place voxels."""
    import nibabel as nib

    from motfm_core.data.geometry import axis_codes, check_affine, spacing_of

    check_affine(affine, str(path))
    canonical = nib.as_closest_canonical(nib.Nifti1Image(pixels, affine))
    out = np.asarray(canonical.dataobj, dtype=np.float32)
    return Image(out, spacing_of(canonical.affine), np.asarray(canonical.affine, float), axis_codes(affine),
                 modality)


MAX_MASK_VALUES = 16  # distinct values a mask file may hold: a label image, not a grey-level picture


def _mm(spacing: tuple[float, ...] | None) -> str:
    return " x ".join(f"{s:g}" for s in np.round(spacing or (), 3))


def read_mask(path: Path, like: Image, image: Path) -> np.ndarray:
    """A mask file as a label image (1, *spatial) of its integer values (rounded, any range: 0/255 and 16-bit
    label maps too); refused, naming the file, when it is not on the grid of its image `like` (shape, and affine
    where both record one) or holds more than MAX_MASK_VALUES distinct values (a grey-level image, or a JPEG's
    ringing, is not a mask)."""
    read = read_any(path)
    mask, shape = read.pixels, like.pixels.shape
    if read.affine is not None and like.affine is not None and not np.allclose(read.affine, like.affine, atol=1e-3):
        raise ValueError(f"{path}: label map on another grid than its image {image} (affines differ: voxel sizes "
                         f"{_mm(read.spacing)} vs {_mm(like.spacing)} mm, "
                         "or another origin or orientation); resample the label map onto the image's grid "
                         "(nearest neighbour)")
    if mask.shape != shape:
        raise ValueError(f"{path}: mask shape {mask.shape} != image shape {shape} of {image}; resample the mask "
                         "onto the image grid")
    mask = np.rint(mask).astype(np.int64)
    values = np.unique(mask)
    if len(values) > MAX_MASK_VALUES:
        raise ValueError(f"{path}: a mask with {len(values)} distinct values (at most {MAX_MASK_VALUES}: one per "
                         "class); save label masks losslessly (PNG, NIfTI) with one value per class")
    return mask[None]


def _system_error(exc: BaseException) -> bool:
    """An OSError the operating system raised (it has an errno: a network file system's EIO, a missing file),
    which a retry or the user's path fixes: passed on as it is, not turned into a bad-file ValueError. Decoders'
    own OSErrors (PIL's "image file is truncated") carry no errno."""
    return isinstance(exc, OSError) and exc.errno is not None


def _read_labels_csv(folder: Path) -> pd.DataFrame:
    csv = folder / "labels.csv"
    if not csv.exists():
        raise FileNotFoundError(f"{csv}: missing; a folder source needs labels.csv with columns filename,label")
    try:
        df = pd.read_csv(csv)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{csv}: cannot parse as CSV ({exc}); needs a header filename,label[,mask][,subject]") from exc
    missing = {"filename", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{csv}: missing column(s) {sorted(missing)}; needs filename,label[,mask][,subject]")
    if df["label"].isna().any():
        bad = df.loc[df["label"].isna(), "filename"].tolist()[:5]
        raise ValueError(f"{csv}: empty label for {bad}; give every row a label")
    if df["filename"].duplicated().any():
        dupes = df.loc[df["filename"].duplicated(), "filename"].tolist()[:5]
        raise ValueError(f"{csv}: duplicated filename(s) {dupes}")
    return df


def _class_map(labels: pd.Series) -> tuple[dict, list[str]]:
    values = sorted(labels.unique(), key=lambda v: (str(type(v)), v))
    return {v: i for i, v in enumerate(values)}, [str(v) for v in values]


def _check_unlisted(folder: Path, listed: set[str], suffixes: tuple[str, ...], csv_cols: pd.DataFrame) -> None:
    masks = set(csv_cols["mask"].dropna()) if "mask" in csv_cols else set()
    series = {name.rstrip("/") for name in listed | masks if (folder / name).is_dir()}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if any(rel.startswith(d + "/") for d in series):  # a slice of a listed DICOM series
            continue
        if f.name.lower().endswith(suffixes) and rel not in listed and rel not in masks:
            raise ValueError(f"{f}: image has no row in {folder / 'labels.csv'}; add it with its label or move it out")


def read_nifti(path: Path) -> Image:
    """A NIfTI file as float32: a volume reoriented to RAS with its affine and spacing, a 2D image as it is
    stored (with its in-plane spacing); a clear error for corrupt or non-finite files and unusable affines."""
    import nibabel as nib

    try:
        nii = nib.load(str(path))
        arr = np.asarray(nii.get_fdata(dtype=np.float32))
        affine = np.asarray(nii.affine, dtype=float)
    except Exception as exc:  # nibabel raises many types for corrupt files
        if _system_error(exc):
            raise
        raise ValueError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc}); re-export or remove it") from exc
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN/inf values; fix or remove the file")
    if arr.ndim == 3 and min(arr.shape) > 1:
        _check_pixdim(path, nii.header)
        return _canonical(arr, affine, path)
    zooms = tuple(float(z) for z, n in zip(nii.header.get_zooms(), arr.shape) if n > 1)
    return Image(np.squeeze(arr), zooms[:2] if np.squeeze(arr).ndim == 2 else None)


def _check_pixdim(path: Path, header: Any) -> None:
    """Refuse a volume placed by a pixdim of 0 (no sform): nibabel reads that 0 as 1 mm with a warning, which would
    place the voxels where the file does not say they are."""
    from nibabel import Nifti1Header
    from nibabel.openers import ImageOpener

    if int(header["sform_code"]) > 0:
        return
    with ImageOpener(str(path)) as f:
        raw = Nifti1Header.from_fileobj(f, check=False)
    zeros = [axis for axis, z in zip("xyz", raw["pixdim"][1:4]) if float(z) == 0.0]
    if zeros:
        raise ValueError(f"{path}: its affine is singular (pixdim {'/'.join(zeros)} = 0 mm and no sform to place "
                         "the voxels); set the voxel spacing in the header (pixdim) and re-export it")


def read_image(path: Path) -> np.ndarray:
    """Grayscale float32 array of a PNG/JPEG file; 16-bit and float images keep their full range (intensities are
    normalised per image at ingest), colour images are converted to luminance."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode.startswith(("I", "F")):  # 16/32-bit integer or float: converting to "L" would clip at 255
                arr = np.asarray(im, dtype=np.float32)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        if _system_error(exc):
            raise
        raise ValueError(f"{path}: cannot read image ({exc}); re-export or remove it") from exc
    return arr


def _dicom_pixels(ds: Any, path: Path) -> np.ndarray:
    """One DICOM dataset's pixels in modality units (rescale slope/intercept or modality LUT applied), colour as
    luminance, MONOCHROME1 inverted so that higher is brighter; frames last: (H, W) or (H, W, frames)."""
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM file without pixel data (a report or structure set?); list image files only")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for compressed data it has no decoder for
        if _system_error(exc):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__  # its message lists every plugin
        raise ValueError(f"{path}: cannot decode DICOM pixels ({ds.file_meta.get('TransferSyntaxUID', '?')}: "
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
        raise ValueError(f"{folder}: empty DICOM series folder; list a folder holding the series' slice files")
    slices = []
    for f in files:
        try:
            slices.append((f, pydicom.dcmread(f)))
        except Exception as exc:  # pydicom's InvalidDicomError and the errors of truncated files
            if _system_error(exc):
                raise
            raise ValueError(f"{f}: not a readable DICOM file ({type(exc).__name__}: {exc}); remove it from the "
                             "series folder") from exc
    uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(uids) > 1:
        raise ValueError(f"{folder}: holds {len(uids)} series ({sorted(uids)}); put one series per folder")
    first_file, first = slices[0]
    shape = (int(first.Rows), int(first.Columns))
    for f, ds in slices:
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise ValueError(f"{f}: slice of {int(ds.Rows)}x{int(ds.Columns)} pixels in a series of {shape[0]}x"
                             f"{shape[1]} ({first_file.name}); one series per folder, one shape per series")
    if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in slices):
        orient = np.asarray(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(orient[:3], orient[3:])
        where = np.array([float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)) for _, ds in slices])
    elif all("InstanceNumber" in ds for _, ds in slices):
        where = np.array([float(ds.InstanceNumber) for _, ds in slices])
    else:
        raise ValueError(f"{folder}: cannot order the slices (no ImagePositionPatient/ImageOrientationPatient or "
                         "InstanceNumber); export the series with positions")
    order = np.argsort(where, kind="stable")
    gaps = np.diff(where[order])
    if len(gaps) and np.min(np.abs(gaps)) < 1e-6:
        i = int(np.argmin(np.abs(gaps)))
        raise ValueError(f"{slices[order[i + 1]][0]}: same position as {slices[order[i]][0].name}; a series folder "
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
    return _canonical(volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, folder, modality)


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Float32 pixels (modality units) and spacing (mm per axis) of a DICOM image: one file (H, W), a
    multi-frame file (H, W, frames), or a folder of one series (H, W, slices) ordered by slice position (and
    reoriented to RAS where its slices record position and orientation)."""
    image = _dicom(Path(path))
    return image.pixels, image.spacing or ()


def _dicom(path: Path) -> Image:
    """A DICOM file or series folder as read by `read_dicom`, with the affine of a positioned series."""
    import pydicom

    if path.is_dir():
        return _series(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom's InvalidDicomError and the errors of truncated files
        if _system_error(exc):
            raise
        raise ValueError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); re-export or remove "
                         "it") from exc
    arr = _dicom_pixels(ds, path)
    spacing: tuple[float, ...] = _in_plane_spacing(ds)
    if arr.ndim == 3:  # multi-frame: the frame offsets (RT dose grids) or the slice spacing
        offsets = np.asarray(ds.get("GridFrameOffsetVector") or [], dtype=float)
        spacing = (*spacing, float(np.median(np.abs(np.diff(offsets)))) if len(offsets) > 1 else float(
            ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0))
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN/inf values; fix or remove the file")
    return Image(arr, spacing, modality=str(ds.get("Modality", "")) or None)


def read_any(path: Path) -> Image:
    """An image or mask listed in labels.csv, by its suffix (a folder: a DICOM series)."""
    name = path.name.lower()
    if path.is_dir() or name.endswith(DICOM_SUFFIXES):
        return _dicom(path)
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(IMAGE_SUFFIXES):
        return Image(read_image(path))
    raise ValueError(f"{path}: unsupported file type; use {NIFTI_SUFFIXES + DICOM_SUFFIXES + IMAGE_SUFFIXES} or a "
                     "folder holding one DICOM series")


def read_folder(folder: str | Path) -> RawSet:
    """NIfTI, DICOM or PNG/JPEG folder with labels.csv; the file suffixes decide the reader (a listed folder is a
    DICOM series)."""
    folder = Path(folder)
    df = _read_labels_csv(folder)
    cmap, names = _class_map(df["label"])
    out = RawSet(class_names=names, origin=str(folder), subject_column="subject" in df.columns)
    for _, row in df.iterrows():
        f = folder / str(row["filename"])
        if not f.exists():
            raise FileNotFoundError(f"{f}: listed in {folder / 'labels.csv'} but missing; fix the row or add the file")
        img = read_any(f)
        mask = None
        if "mask" in df.columns and isinstance(row["mask"], str) and row["mask"]:
            mf = folder / row["mask"]
            if not mf.exists():
                raise FileNotFoundError(f"{mf}: mask of {f.name} is missing")
            mask = read_mask(mf, img, f)
        out.images.append(img.pixels[None])
        out.files.append(str(f))
        out.spacings.append(img.spacing)
        out.affines.append(img.affine)
        out.orientations.append(img.orientation)
        out.modalities.append(img.modality)
        out.masks.append(mask)
        out.labels.append(cmap[row["label"]])
        subject = row["subject"] if "subject" in df.columns and pd.notna(row.get("subject")) else row["filename"]
        out.groups.append(str(subject))
    _check_unlisted(folder, set(df["filename"].astype(str)), NIFTI_SUFFIXES + DICOM_SUFFIXES + IMAGE_SUFFIXES, df)
    return out


def read_medmnist(path: str | Path) -> RawSet:
    """A MedMNIST `.npz` ({train,val,test}_{images,labels}); its own split is kept."""
    path = Path(path)
    try:
        data = np.load(path)
    except Exception as exc:
        if _system_error(exc):
            raise
        raise ValueError(f"{path}: cannot read .npz ({exc}); download the file again") from exc
    split: list[int] = []
    out = RawSet(origin=str(path), split=split)
    for code, part in enumerate(("train", "val", "test")):
        ki, kl = f"{part}_images", f"{part}_labels"
        if ki not in data or kl not in data:
            raise ValueError(f"{path}: missing arrays {ki!r}/{kl!r}; expected a MedMNIST file")
        imgs, labels = data[ki], data[kl]
        if labels.ndim == 2 and labels.shape[1] > 1:
            raise ValueError(f"{path}: multi-label MedMNIST ({labels.shape[1]} labels) is not supported; "
                             "pick a single-label dataset")
        labels = labels.reshape(-1)
        if len(imgs) != len(labels):
            raise ValueError(f"{path}: {ki} has {len(imgs)} images but {kl} has {len(labels)} labels")
        for i, (img, lab) in enumerate(zip(imgs, labels)):
            img = np.asarray(img, dtype=np.float32)
            img = np.moveaxis(img, -1, 0) if img.ndim == 3 and img.shape[-1] == 3 else img[None]
            out.images.append(img)
            out.files.append(f"{path}[{ki}][{i}]")
            out.labels.append(int(lab))
            out.masks.append(None)
            out.groups.append(f"{part}-{i}")
            split.append(code)
    out.class_names = [str(i) for i in range(max(out.labels) + 1)]
    return out
