"""Readers for the formats users bring: NIfTI or PNG/JPEG folders with a labels CSV, MedMNIST `.npz`.

Every reader returns a `RawSet`: images at their native size (C, *spatial) with labels, optional
masks and a group (patient) id per sample. Errors name the file and the fix.

labels.csv columns: `filename` (relative to the folder), `label` (int or name), optional `mask`
(a file of the same shape), optional `subject` (patient id; defaults to the filename).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["IMAGE_SUFFIXES", "NIFTI_SUFFIXES", "RawSet", "read_folder", "read_image", "read_medmnist", "read_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if f.name.lower().endswith(suffixes) and rel not in listed and rel not in masks:
            raise ValueError(f"{f}: image has no row in {folder / 'labels.csv'}; add it with its label or move it out")


def read_nifti(path: Path) -> np.ndarray:
    """Float32 array of a NIfTI file, with a clear error for corrupt or non-finite files."""
    import nibabel as nib

    try:
        arr = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise ValueError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc}); re-export or remove it") from exc
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN/inf values; fix or remove the file")
    return np.squeeze(arr)


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
        raise ValueError(f"{path}: cannot read image ({exc}); re-export or remove it") from exc
    return arr


def read_folder(folder: str | Path) -> RawSet:
    """NIfTI or PNG/JPEG folder with labels.csv; the file suffixes decide the reader."""
    folder = Path(folder)
    df = _read_labels_csv(folder)
    cmap, names = _class_map(df["label"])
    out = RawSet(class_names=names, origin=str(folder))
    for _, row in df.iterrows():
        f = folder / str(row["filename"])
        if not f.exists():
            raise FileNotFoundError(f"{f}: listed in {folder / 'labels.csv'} but missing; fix the row or add the file")
        reader = read_nifti if f.name.lower().endswith(NIFTI_SUFFIXES) else read_image
        if not f.name.lower().endswith(NIFTI_SUFFIXES + IMAGE_SUFFIXES):
            raise ValueError(f"{f}: unsupported file type; use {NIFTI_SUFFIXES + IMAGE_SUFFIXES}")
        img = reader(f)
        mask = None
        if "mask" in df.columns and isinstance(row["mask"], str) and row["mask"]:
            mf = folder / row["mask"]
            if not mf.exists():
                raise FileNotFoundError(f"{mf}: mask of {f.name} is missing")
            mask = (read_nifti if mf.name.lower().endswith(NIFTI_SUFFIXES) else read_image)(mf)
            if mask.shape != img.shape:
                raise ValueError(f"{mf}: mask shape {mask.shape} != image shape {img.shape} of {f}; "
                                 "resample the mask onto the image grid")
            mask = np.rint(mask).astype(np.uint8)[None]
        out.images.append(img[None])
        out.files.append(str(f))
        out.masks.append(mask)
        out.labels.append(cmap[row["label"]])
        subject = row["subject"] if "subject" in df.columns and pd.notna(row.get("subject")) else row["filename"]
        out.groups.append(str(subject))
    _check_unlisted(folder, set(df["filename"].astype(str)), NIFTI_SUFFIXES + IMAGE_SUFFIXES, df)
    return out


def read_medmnist(path: str | Path) -> RawSet:
    """A MedMNIST `.npz` ({train,val,test}_{images,labels}); its own split is kept."""
    path = Path(path)
    try:
        data = np.load(path)
    except Exception as exc:
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
