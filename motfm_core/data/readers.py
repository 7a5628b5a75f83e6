"""Readers for the formats users bring: NIfTI, DICOM or PNG/JPEG folders with a labels CSV, MedMNIST `.npz`.

Every reader returns a `RawSet`: images at their native size (C, *spatial) with labels, optional
masks, a group (patient) id and, where the format records it, the voxel spacing per sample. Volumes whose format
records where their voxels are (NIfTI's affine, a DICOM series' position and orientation) are reoriented to RAS as
they are read, and keep the affine of the array returned (`Image`). Errors name the file and the fix.

labels.csv columns: `filename` (relative to the folder), `label` (int or name), optional `mask`
(a file of the same shape), optional `subject` (patient id; defaults to the filename). A DICOM `filename` is a
`.dcm` file (a 2D image, or a multi-frame volume) or a folder holding one series (one file per slice, any names).
Several sequences per sample: columns `image_<name>` (e.g. `image_t1,image_t2,image_flair`) instead of `filename`,
one file each, stacked as channels in column order; or a 4-D NIfTI whose last axis holds the sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from motfm_core.data.dicom import DICOM_SUFFIXES, read_dicom, read_dicom_image
from motfm_core.data.geometry import Image, canonical, stack_channels
from motfm_core.errors import BadInput, InputMissing
from motfm_core.files import system_error

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "Image", "Listing", "NIFTI_SUFFIXES", "RawSet", "Row", "check_channels",
           "channel_names_of", "distinct_values", "list_folder", "read_any", "read_dicom", "read_folder", "read_image",
           "read_medmnist", "read_nifti", "read_row"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_SEQUENCES = 8  # a 4-D NIfTI's last axis up to this many is sequences (channels); more is a time series
MAX_MASK_VALUES = 16  # distinct values a mask file may hold: a label image, not a grey-level picture


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
    channel_names: list[str] = field(default_factory=lambda: ["image"])  # one per channel of every sample


def _mm(spacing: tuple[float, ...] | None) -> str:
    return " x ".join(f"{s:g}" for s in np.round(spacing or (), 3))


def distinct_values(labels: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer label map; by counting when they are small and non-negative (a
    volume's label map: several times faster than sorting its voxels, as np.unique does)."""
    flat = labels.ravel()
    if flat.size and 0 <= flat.min() and flat.max() < 2**16:
        return np.flatnonzero(np.bincount(flat))
    return np.unique(flat)


def read_mask(path: Path, like: Image, image: Path) -> np.ndarray:
    """A mask file as a label image (1, *spatial) of its integer values (rounded, any range: 0/255 and 16-bit
    label maps too); refused, naming the file, when it is not on the grid of its image `like` (shape, and affine
    where both record one) or holds more than MAX_MASK_VALUES distinct values (a grey-level image, or a JPEG's
    ringing, is not a mask)."""
    read = read_any(path)
    mask, shape = read.pixels, like.channels.shape[1:]
    if read.affine is not None and like.affine is not None and not np.allclose(read.affine, like.affine, atol=1e-3):
        raise BadInput(f"{path}: label map on another grid than its image {image} (affines differ: voxel sizes "
                       f"{_mm(read.spacing)} vs {_mm(like.spacing)} mm, "
                       "or another origin or orientation); resample the label map onto the image's grid "
                       "(nearest neighbour)")
    if mask.shape != shape:
        raise BadInput(f"{path}: mask shape {mask.shape} != image shape {shape} of {image}; resample the mask "
                       "onto the image grid")
    mask = np.rint(mask).astype(np.int32)  # a label map's values (BraTS' 4, a 16-bit atlas) in half int64's memory
    values = distinct_values(mask)
    if len(values) > MAX_MASK_VALUES:
        raise BadInput(f"{path}: a mask with {len(values)} distinct values (at most {MAX_MASK_VALUES}: one per "
                       "class); save label masks losslessly (PNG, NIfTI) with one value per class")
    return mask[None]


def _read_labels_csv(folder: Path) -> pd.DataFrame:
    csv = folder / "labels.csv"
    if not csv.exists():
        raise InputMissing(f"{csv}: missing; a folder source needs labels.csv with columns filename,label")
    try:
        df = pd.read_csv(csv)
    except UnicodeDecodeError as exc:
        raise BadInput(f"{csv}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadInput(f"{csv}: cannot parse as CSV ({exc}); needs a header filename,label[,mask][,subject]") from exc
    columns = image_columns(df)
    missing = {"label"} - set(df.columns) | ({"filename"} - set(df.columns) if columns == ["filename"] else set())
    if missing:
        raise BadInput(f"{csv}: missing column(s) {sorted(missing)}; needs filename,label[,mask][,subject] (or "
                       "image_<sequence> columns for several sequences per sample)")
    if df["label"].isna().any():
        bad = df.loc[df["label"].isna(), columns[0]].tolist()[:5]
        raise BadInput(f"{csv}: empty label for {bad}; give every row a label")
    for column in columns:
        empty = df[column].isna() | (df[column].astype(str).str.strip() == "")
        if empty.any():
            who = (df.loc[empty, "subject"] if "subject" in df.columns else df.index[empty]).tolist()[:5]
            raise BadInput(f"{csv}: no {column} file for {who}; every row needs a file in each of "
                           f"{', '.join(columns)}")
        if df[column].duplicated().any():
            dupes = df.loc[df[column].duplicated(), column].tolist()[:5]
            raise BadInput(f"{csv}: duplicated {column} file(s) {dupes}")
    return df


def image_columns(df: pd.DataFrame) -> list[str]:
    """labels.csv's image columns: every `image_*` column in order (one sequence each), else `filename`."""
    return [c for c in df.columns if str(c).startswith("image_")] or ["filename"]


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
            raise BadInput(f"{f}: image has no row in {folder / 'labels.csv'}; add it with its label or move it out")


def read_nifti(path: Path) -> Image:
    """A NIfTI file as float32: a volume reoriented to RAS with its affine and spacing, a 2D image as it is
    stored (with its in-plane spacing); a clear error for corrupt or non-finite files and unusable affines."""
    import nibabel as nib

    try:
        nii = nib.load(str(path))
        arr = np.asarray(nii.get_fdata(dtype=np.float32))
        affine = np.asarray(nii.affine, dtype=float)
    except Exception as exc:  # nibabel raises many types for corrupt files
        if system_error(exc):
            raise
        raise BadInput(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc}); re-export or remove it") from exc
    if not np.isfinite(arr).all():
        raise BadInput(f"{path}: contains NaN/inf values; fix or remove the file")
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 4:
        if arr.shape[-1] > MAX_SEQUENCES:
            raise BadInput(f"{path}: a 4-D volume with {arr.shape[-1]} frames on its last axis: a time series, not "
                           f"sequences (at most {MAX_SEQUENCES}); list one volume per file, or its sequences as "
                           "image_* columns")
        _check_pixdim(path, nii.header)
        return canonical(arr, affine, path)
    if arr.ndim == 3 and min(arr.shape) > 1:
        _check_pixdim(path, nii.header)
        return canonical(arr, affine, path)
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
        raise BadInput(f"{path}: its affine is singular (pixdim {'/'.join(zeros)} = 0 mm and no sform to place "
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
        if system_error(exc):
            raise
        raise BadInput(f"{path}: cannot read image ({exc}); re-export or remove it") from exc
    return arr


def read_any(path: Path) -> Image:
    """An image or mask listed in labels.csv, by its suffix (a folder: a DICOM series)."""
    name = path.name.lower()
    if path.is_dir() or name.endswith(DICOM_SUFFIXES):
        return read_dicom_image(path)
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(IMAGE_SUFFIXES):
        return Image(read_image(path))
    raise BadInput(f"{path}: unsupported file type; use {NIFTI_SUFFIXES + DICOM_SUFFIXES + IMAGE_SUFFIXES} or a "
                   "folder holding one DICOM series")


MAX_LISTED = 20  # missing files named in one error; the count says how many more


def _check_listed(folder: Path, df: pd.DataFrame, columns: list[str]) -> None:
    """Every file labels.csv lists (images of every column, masks) exists, checked before any is read: the error
    names all that are missing (up to MAX_LISTED), not the first alone."""
    mask = ["mask"] if "mask" in df.columns else []
    missing = [name for c in [*columns, *mask] for name in df[c].dropna().astype(str)
               if name and not (folder / name).exists()]
    if missing:
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise InputMissing(f"{folder / 'labels.csv'}: {len(missing)} listed file(s) missing: "
                           f"{', '.join(missing[:MAX_LISTED])}{more}; fix those rows or add the files")


@dataclass(frozen=True)
class Row:
    """One labels.csv row: its image file per image column, its mask file, its label's code and its subject."""

    index: int  # the row's position in labels.csv
    files: tuple[str, ...]  # relative to the folder
    mask: str | None
    label: int
    subject: str


@dataclass
class Listing:
    """A folder source as labels.csv lists it, checked before any image is read: every listed file exists and no
    image is left unlisted."""

    folder: Path
    rows: list[Row]
    class_names: list[str]
    channel_names: list[str]  # from the image_* columns; a 4-D file's sequences are named when read
    subject_column: bool
    table: list[dict[str, str]]  # labels.csv's rows as text: what an interrupted ingest is resumed against


def list_folder(folder: str | Path) -> Listing:
    """labels.csv of a NIfTI, DICOM or PNG/JPEG folder as a `Listing` (no pixel read)."""
    folder = Path(folder)
    df = _read_labels_csv(folder)
    cmap, names = _class_map(df["label"])
    columns = image_columns(df)
    _check_listed(folder, df, columns)
    rows = []
    for i, (_, row) in enumerate(df.iterrows()):
        subject = row["subject"] if "subject" in df.columns and pd.notna(row.get("subject")) else row[columns[0]]
        mask = row["mask"] if "mask" in df.columns and isinstance(row["mask"], str) and row["mask"] else None
        rows.append(Row(i, tuple(str(row[c]) for c in columns), mask, cmap[row["label"]], str(subject)))
    listed = {str(v) for c in columns for v in df[c]}
    _check_unlisted(folder, listed, NIFTI_SUFFIXES + DICOM_SUFFIXES + IMAGE_SUFFIXES, df)
    return Listing(folder, rows, names, [c[len("image_"):] for c in columns] if columns != ["filename"] else
                   ["image"], "subject" in df.columns, df.astype(str).to_dict("records"))


def read_row(listing: Listing, row: Row) -> RawSet:
    """One row's files as a RawSet of one sample: its sequences stacked as channels, its mask checked against
    them."""
    paths = [listing.folder / f for f in row.files]
    reads = [read_any(path) for path in paths]
    img = reads[0] if len(reads) == 1 else stack_channels(reads, listing.channel_names, f"subject {row.subject}")
    mask = None
    if row.mask is not None:
        mf = listing.folder / row.mask
        if not mf.exists():
            raise InputMissing(f"{mf}: mask of {paths[0].name} is missing")
        mask = read_mask(mf, img, paths[0])
    return RawSet([img.channels], [row.label], [mask], [row.subject], listing.class_names, origin=str(listing.folder),
                  files=[str(paths[0])], spacings=[img.spacing], affines=[img.affine], modalities=[img.modality],
                  orientations=[img.orientation], subject_column=listing.subject_column,
                  channel_names=channel_names_of(listing, img.channels.shape[0]))


def channel_names_of(listing: Listing, count: int) -> list[str]:
    """The channel names of a sample of `count` channels: the image_* columns', or `channel<i>` for a 4-D file's."""
    one_file = listing.channel_names == ["image"]
    return [f"channel{i}" for i in range(count)] if one_file and count > 1 else listing.channel_names


def check_channels(name: str, count: int, expected: int) -> None:
    """Refuse, naming the file, a sample whose sequences differ in number from the others'."""
    if count != expected:
        raise BadInput(f"{name}: {count} sequence(s), the samples before it {expected}; every sample needs the same "
                       "sequences (a 4-D NIfTI: on its last axis)")


def read_folder(folder: str | Path) -> RawSet:
    """NIfTI, DICOM or PNG/JPEG folder with labels.csv, read whole into memory (`list_folder`, then `read_row` of
    every row); the file suffixes decide the reader (a listed folder is a DICOM series)."""
    listing = list_folder(folder)
    out = RawSet(class_names=listing.class_names, origin=str(listing.folder), subject_column=listing.subject_column,
                 channel_names=listing.channel_names)
    for row in listing.rows:
        one = read_row(listing, row)
        if not out.images:
            out.channel_names = one.channel_names
        check_channels(one.files[0], one.images[0].shape[0], len(out.channel_names))
        for name in ("images", "labels", "masks", "groups", "files", "spacings", "affines", "orientations",
                     "modalities"):
            getattr(out, name).extend(getattr(one, name))
    return out


def read_medmnist(path: str | Path) -> RawSet:
    """A MedMNIST `.npz` ({train,val,test}_{images,labels}); its own split is kept."""
    path = Path(path)
    try:
        data = np.load(path)
    except Exception as exc:
        if system_error(exc):
            raise
        raise BadInput(f"{path}: cannot read .npz ({exc}); download the file again") from exc
    split: list[int] = []
    out = RawSet(origin=str(path), split=split)
    for code, part in enumerate(("train", "val", "test")):
        ki, kl = f"{part}_images", f"{part}_labels"
        if ki not in data or kl not in data:
            raise BadInput(f"{path}: missing arrays {ki!r}/{kl!r}; expected a MedMNIST file")
        imgs, labels = data[ki], data[kl]
        if labels.ndim == 2 and labels.shape[1] > 1:
            raise BadInput(f"{path}: multi-label MedMNIST ({labels.shape[1]} labels) is not supported; "
                           "pick a single-label dataset")
        labels = labels.reshape(-1)
        if len(imgs) != len(labels):
            raise BadInput(f"{path}: {ki} has {len(imgs)} images but {kl} has {len(labels)} labels")
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
