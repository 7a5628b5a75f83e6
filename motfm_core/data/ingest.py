"""Ingestion: any supported source -> normalised, resized, patient-split Zarr v3 store."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from motfm_core import __version__
from motfm_core.config import DataConfig, config_hash
from motfm_core.data.brain import MRICRON, build_brain_mri
from motfm_core.data.phantom import build_phantom
from motfm_core.data.preprocess import NORMALISATION, normalise, patient_split, resize
from motfm_core.data.readers import MAX_MASK_VALUES, RawSet, read_folder, read_medmnist
from motfm_core.data.store import SCHEMA_VERSION, SPLITS, open_store, write_dataset

__all__ = [
    "MIN_TEST", "MIN_TRAIN_PER_CLASS", "MIN_VAL", "check_sizes", "check_source", "ingest", "load_source",
    "source_signature",
]

log = logging.getLogger(__name__)


def mask_classes(raw: RawSet) -> dict[int, int]:
    """{value in the mask files: class} over the whole set: the distinct values in order (the smallest, usually 0,
    is background), so a 0/255 mask reads as classes 0/1; an identity when the values already are 0..K-1."""
    values = sorted(set().union(*(np.unique(m).tolist() for m in raw.masks if m is not None)))
    if len(values) > MAX_MASK_VALUES:
        raise ValueError(f"{raw.origin}: the masks hold {len(values)} distinct values in all ({values[:20]}...), at "
                         f"most {MAX_MASK_VALUES} classes; use one value per class across every mask file")
    return {int(v): k for k, v in enumerate(values)}


def _prepare(raw: RawSet, cfg: DataConfig) -> dict[str, Any]:
    """Normalise, slice volumes for 2D, resize, and stack a RawSet; masks become classes 0..K-1."""
    target = cfg.spatial_shape
    classes = mask_classes(raw)
    lookup = np.array(list(classes), dtype=np.int64)  # sorted values: np.searchsorted maps each to its class
    imgs, labels, masks, groups, split = [], [], [], [], []
    for k, (img, lab, mask, grp) in enumerate(zip(raw.images, raw.labels, raw.masks, raw.groups)):
        name = raw.files[k] if k < len(raw.files) else f"{raw.origin} sample {k}"
        nd = img.ndim - 1
        if nd not in (2, 3):
            raise ValueError(f"{name}: has {nd} spatial dims (shape {img.shape[1:]}); expected a 2D image or a 3D "
                             "volume (split 4-D series into one volume per file)")
        if nd == 2 and cfg.spatial_dims == 3:
            raise ValueError(f"{name}: is 2D but data.spatial_dims=3; use data.spatial_dims=2")
        if float(img.max()) <= float(img.min()):
            raise ValueError(f"{name}: image is blank (every pixel is {float(img.min()):g}); remove its row")
        img = normalise(img)
        if mask is not None:
            mask = np.searchsorted(lookup, mask).astype(np.uint8)
        if nd == 3 and cfg.spatial_dims == 2:  # a volume in 2D mode: its axial slices with enough foreground
            keep = [z for z in range(img.shape[-1]) if (img[..., z] > 0.05).mean() >= 0.05]
            pieces = [(img[..., z], None if mask is None else mask[..., z]) for z in keep]
        else:
            pieces = [(img, mask)]
        if not pieces:
            raise ValueError(f"{name}: contributed no sample (no axial slice has >= 5% of its pixels above 5% of the "
                             "intensity range); check the file or remove its row")
        for im, mk in pieces:
            imgs.append(resize(im, target))
            masks.append(None if mk is None else resize(mk, target, nearest=True).astype(np.uint8))
            labels.append(lab)
            groups.append(grp)
            split.append(raw.split[k] if raw.split is not None else -1)
    if not imgs:
        raise ValueError(f"{raw.origin}: no usable samples found")
    has_masks = [m is not None for m in masks]
    if any(has_masks) and not all(has_masks):
        raise ValueError(f"{raw.origin}: some samples have masks and some do not; give a mask for every row or none")
    out = {"images": np.stack(imgs), "labels": np.array(labels), "group_names": groups, "mask_values": classes}
    out["masks"] = np.stack([m for m in masks if m is not None]) if all(has_masks) else None
    out["split"] = (np.array(split, dtype=np.uint8) if raw.split is not None
                    else patient_split(groups, cfg.val_fraction, cfg.test_fraction, cfg.seed, labels))
    return out


MIN_TRAIN_PER_CLASS, MIN_TEST, MIN_VAL = 2, 2, 1  # FID/KID need two samples per compared set


def check_sizes(source: str, labels: np.ndarray, split: np.ndarray) -> None:
    """Refuse, with the numbers needed, a dataset too small to train and evaluate: every class needs
    MIN_TRAIN_PER_CLASS training samples, the test split MIN_TEST samples (the quality metrics compare sets) and
    the validation split MIN_VAL."""
    classes = np.unique(labels)
    train = {int(c): int(((split == 0) & (labels == c)).sum()) for c in classes}
    n_val, n_test = int((split == 1).sum()), int((split == 2).sum())
    short = [f"class {c} has {n} training sample(s), needs >= {MIN_TRAIN_PER_CLASS}" for c, n in train.items()
             if n < MIN_TRAIN_PER_CLASS]
    if n_test < MIN_TEST:
        short.append(f"the test split has {n_test} sample(s), needs >= {MIN_TEST}")
    if n_val < MIN_VAL:
        short.append(f"the val split has {n_val} sample(s), needs >= {MIN_VAL}")
    if short:
        raise ValueError(f"{source}: too small to train and evaluate: {'; '.join(short)}; add data (more subjects) or "
                         "change data.val_fraction / data.test_fraction")


def check_classes_in_splits(source: str, labels: np.ndarray, split: np.ndarray, class_names: list[str],
                            groups: list[str]) -> None:
    """Refuse a dataset with a class missing from the val or test split, naming the class and the fix: its
    scores (AUROC, per-class F1) would be undefined and the report's verdict meaningless."""
    for c in np.unique(labels):
        missing = [n for n, code in SPLITS.items() if not ((split == code) & (labels == c)).any()]
        if missing:
            name = class_names[c] if c < len(class_names) else str(c)
            subjects = len({g for g, lab in zip(groups, labels) if lab == c})
            raise ValueError(f"{source}: class {name!r} has no sample in the {'/'.join(missing)} split ({subjects} "
                             "subject(s) hold it; a split by subject needs one per split): add subjects of that class, "
                             "or give the split yourself (a MedMNIST .npz keeps its own)")


def check_source(source: str) -> None:
    """Refuse a data source that does not exist (before any work: the CLI calls it before Prefect starts)."""
    if source == "brain-mri" or source.startswith("phantom"):
        return
    if not Path(source).exists():
        raise FileNotFoundError(f"{source}: data source not found; give 'brain-mri', a MedMNIST .npz, "
                                "or a folder with labels.csv")


def load_source(cfg: DataConfig) -> tuple[dict[str, np.ndarray], dict]:
    """Read and prepare cfg.source; returns arrays and store attributes."""
    src = cfg.source
    if src == "brain-mri":
        return build_brain_mri(cfg)
    if src.startswith("phantom"):
        return build_phantom(cfg)
    check_source(src)
    path = Path(src)
    raw = read_medmnist(path) if path.suffix == ".npz" else read_folder(path)
    arrays = _prepare(raw, cfg)
    attrs: dict[str, Any] = {"source": str(path), "class_names": raw.class_names, "normalisation": NORMALISATION,
                             "spacing": "resampled to image_size (source spacing per file where known: source_spacing)",
                             "notes": source_notes(raw, arrays.pop("mask_values"))}
    known = {str(Path(f).relative_to(path)): list(sp) for f, sp in zip(raw.files, raw.spacings) if sp is not None}
    if known:  # DICOM records its spacing (mm per axis); resizing changes it, so the source's is kept beside
        attrs["source_spacing"] = known
    return arrays, attrs


def source_notes(raw: RawSet, mask_values: dict[int, int]) -> list[str]:
    """What a user should know about how their files were read (logged, stored and shown in the report): masks
    whose values were mapped to classes, and a folder without a subject column."""
    notes = []
    if mask_values and list(mask_values) != list(range(len(mask_values))):
        pairs = ", ".join(f"{v} -> {c}" for v, c in mask_values.items())
        notes.append(f"mask values read as classes: {pairs}")
    volumes = any(img.ndim == 4 for img in raw.images)
    if not raw.subject_column and not volumes:
        notes.append("labels.csv has no subject column: every file is its own group, so images of one patient "
                     "can land in train and test (optimistic scores); add a subject column")
    for note in notes:
        log.warning("ingest: %s: %s", raw.origin, note)
    return notes


def source_signature(source: str) -> list:
    """What identifies the source's content cheaply: (relative path, size, mtime) of every file it reads; for
    the bundled set, which source volumes are installed. A changed file re-ingests; an unchanged one does not."""
    if source == "brain-mri":
        return ["mni152", (MRICRON / "ch2bet.nii.gz").exists()]
    path = Path(source)
    if source.startswith("phantom") or not path.exists():
        return []
    files = [path] if path.is_file() else sorted(  # not our own outputs (a store written inside the folder)
        p for p in path.rglob("*") if p.is_file() and not any(part.endswith(".zarr") or part.startswith(".")
                                                                for part in p.relative_to(path).parts))
    return [(str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in files]


def ingest(cfg: DataConfig, out_path: str | Path, progress: Callable[[str], None] | None = None) -> Path:
    """Build the real dataset store at out_path; a store built from the same config, source files and
    package version is reused."""
    say = progress or log.info
    out_path = Path(out_path)
    content = {k: v for k, v in asdict(cfg).items() if k != "keep_previous"}  # what is kept is not what is built
    key = config_hash(content, source_signature(cfg.source), __version__, SCHEMA_VERSION)
    if (out_path / "zarr.json").exists():
        try:
            attrs = open_store(out_path).attrs
            if attrs.get("ingest_key") == key:
                say(f"ingest: {cfg.source} -> {out_path} ({attrs['num_samples']} samples, fingerprint "
                    f"{attrs['fingerprint'][:12]}): already built from this config (key {key}); reusing it")
                return out_path
        except ValueError:
            pass
    arrays, attrs = load_source(cfg)
    groups = arrays.pop("group_names")
    uniq = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    attrs.update({"ingest_key": key, "data_config": asdict(cfg), "spatial_dims": cfg.spatial_dims,
                  "group_names": list(uniq)})
    check_sizes(cfg.source, arrays["labels"], arrays["split"])
    if cfg.source != "brain-mri" and not cfg.source.startswith("phantom"):  # users' data: the bundled sets are fixed
        check_classes_in_splits(cfg.source, arrays["labels"], arrays["split"], attrs["class_names"],
                                list(groups))
    path = write_dataset(out_path, arrays["images"], arrays["labels"], arrays["split"],
                         np.array([uniq[g] for g in groups]), attrs, masks=arrays["masks"],
                         keep_previous=cfg.keep_previous)
    counts = {n: int((arrays["split"] == c).sum()) for n, c in (("train", 0), ("val", 1), ("test", 2))}
    say(f"ingest: {cfg.source} -> {path} ({len(arrays['labels'])} samples {counts}, shape "
        f"{arrays['images'].shape[1:]}, fingerprint {open_store(path).attrs['fingerprint'][:12]})")
    return path
