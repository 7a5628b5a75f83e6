"""Ingestion: any supported source -> normalised, resized, patient-split Zarr v3 store."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from motfm_core import __version__
from motfm_core.config import DataConfig, config_hash
from motfm_core.data.brain import MRICRON, build_brain_mri
from motfm_core.data.geometry import fit_volume, spacing_of
from motfm_core.data.phantom import build_phantom
from motfm_core.data.preprocess import NORMALISATION, patient_split, percentile_window, resize, to_unit
from motfm_core.data.readers import MAX_MASK_VALUES, RawSet, read_folder, read_medmnist
from motfm_core.data.store import SCHEMA_VERSION, SPLITS, open_store, write_dataset
from motfm_core.errors import BadInput, InputMissing

__all__ = [
    "MIN_TEST", "MIN_TRAIN_PER_CLASS", "MIN_VAL", "check_sizes", "check_source", "ingest", "load_source", "prepare",
    "source_has_masks", "source_signature",
]

log = logging.getLogger(__name__)


def mask_classes(raw: RawSet) -> dict[int, int]:
    """{value in the mask files: class} over the whole set: the distinct values in order (the smallest, usually 0,
    is background), so a 0/255 mask reads as classes 0/1; an identity when the values already are 0..K-1."""
    values = sorted(set().union(*(np.unique(m).tolist() for m in raw.masks if m is not None)))
    if len(values) > MAX_MASK_VALUES:
        raise BadInput(f"{raw.origin}: the masks hold {len(values)} distinct values in all ({values[:20]}...), at "
                       f"most {MAX_MASK_VALUES} classes; use one value per class across every mask file")
    return {int(v): k for k, v in enumerate(values)}


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


def prepare(raw: RawSet, cfg: DataConfig) -> dict[str, Any]:
    """A RawSet as the store holds it: intensities mapped to [0, 1] (`data.intensity`), volumes placed by
    `data.fit` (or sliced for 2D), resized and stacked: `images`, `labels`, `masks`, `split`, `intensity` (N, C, 2)
    the window each channel was mapped from, `affine` where volumes were placed; masks become classes 0..K-1."""
    target = cfg.spatial_shape
    classes = mask_classes(raw)
    lookup = np.array(list(classes), dtype=np.int64)  # sorted values: np.searchsorted maps each to its class
    imgs, labels, masks, groups, split, fits, modes = [], [], [], [], [], [], []
    stored: list[np.ndarray | None] = []
    windows: list[list[tuple[float, float]]] = []
    for k, (img, lab, mask, grp) in enumerate(zip(raw.images, raw.labels, raw.masks, raw.groups)):
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
        fits.append(fit)
        modes.append(mode)
        window: list[tuple[float, float]] = []
        # a fixed window maps first (the fit then finds the body above air); percentiles are taken on the stored
        # grid, after the fit, so volumes of any spacing are normalised alike
        if mode == "ct" or fit == "resize":
            img, window = _to_unit(img, mode, cfg)
        if mask is not None:
            mask = np.searchsorted(lookup, mask).astype(np.uint8)
        for im, mk in _pieces(img, mask, nd == 3 and cfg.spatial_dims == 2, name):
            grid = None
            if fit == "resize":
                im = resize(im, target)
                mk = None if mk is None else resize(mk, target, nearest=True)
            else:  # the whole volume, placed in millimetres (its affine is known)
                im, mk, grid = fit_volume(im, mk, affine, target, fit, cfg.spacing_mm)  # type: ignore[arg-type]
                if not window:
                    im, window = _to_unit(im, mode, cfg)
            imgs.append(im)
            masks.append(None if mk is None else mk.astype(np.uint8))
            stored.append(grid)
            windows.append(window)
            labels.append(lab)
            groups.append(grp)
            split.append(raw.split[k] if raw.split is not None else -1)
    if not imgs:
        raise BadInput(f"{raw.origin}: no usable samples found")
    has_masks = [m is not None for m in masks]
    if any(has_masks) and not all(has_masks):
        raise BadInput(f"{raw.origin}: some samples have masks and some do not; give a mask for every row or none")
    out = {"images": np.stack(imgs), "labels": np.array(labels), "group_names": groups, "mask_values": classes,
           "fits": fits, "modes": modes, "intensity": np.array(windows, dtype=np.float64)}
    if any(g is not None for g in stored):
        out["affine"] = np.stack([np.full((4, 4), np.nan) if g is None else g for g in stored])
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
        raise BadInput(f"{source}: too small to train and evaluate: {'; '.join(short)}; add data (more subjects) or "
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
            raise BadInput(f"{source}: class {name!r} has no sample in the {'/'.join(missing)} split ({subjects} "
                           "subject(s) hold it; a split by subject needs one per split): add subjects of that class, "
                           "or give the split yourself (a MedMNIST .npz keeps its own)")


def check_source(source: str) -> None:
    """Refuse a data source that does not exist (before any work: the CLI calls it before Prefect starts)."""
    if source == "brain-mri" or source.startswith("phantom"):
        return
    if not Path(source).exists():
        raise InputMissing(f"{source}: data source not found; give 'brain-mri', a MedMNIST .npz, "
                           "or a folder with labels.csv")


def source_has_masks(source: str) -> bool | None:
    """Whether a data source gives segmentation masks, from its header alone (labels.csv's columns); None when only
    reading it would tell."""
    if source == "brain-mri" or source.startswith("phantom"):
        return True
    path = Path(source)
    if path.suffix == ".npz":
        return False  # MedMNIST files hold class labels only
    try:
        columns = pd.read_csv(path / "labels.csv", nrows=0).columns
    except (OSError, ValueError):  # missing or unreadable: the ingest says which, with its fix
        return None
    return "mask" in columns


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
    arrays = prepare(raw, cfg)
    fits, modes = arrays.pop("fits"), arrays.pop("modes")
    attrs: dict[str, Any] = {"source": str(path), "class_names": raw.class_names, "channel_names": raw.channel_names,
                             "normalisation": _normalisation_text(modes, cfg),
                             "spacing": _spacing_text(fits, arrays.get("affine")),
                             "notes": source_notes(raw, arrays["mask_values"], fits, arrays.get("affine"), modes,
                                                   cfg)}
    values = arrays.pop("mask_values")
    if values:  # the label files' own values, in class order (class k was value values[k])
        attrs["mask_values"] = [int(v) for v in values]
    known = {str(Path(f).relative_to(path)): list(sp) for f, sp in zip(raw.files, raw.spacings) if sp is not None}
    if known:  # the files' own spacing (mm per axis, RAS order for reoriented volumes), kept beside the stored grid's
        attrs["source_spacing"] = known
    codes = {str(Path(f).relative_to(path)): o for f, o in zip(raw.files, raw.orientations) if o is not None}
    if codes:
        attrs["source_orientation"] = codes
    return arrays, attrs


def _normalisation_text(modes: list[str], cfg: DataConfig) -> str:
    """How intensities were mapped to [0, 1] (store attribute `normalisation`); each sample's window is in the
    `intensity` array."""
    ct = f"CT: Hounsfield units {cfg.ct_window[0]:g}..{cfg.ct_window[1]:g} -> [0, 1], clipped"
    if all(m == "ct" for m in modes):
        return ct
    return NORMALISATION if "ct" not in modes else f"{ct}; others {NORMALISATION}"


def _spacing_text(fits: list[str], affine: np.ndarray | None) -> str:
    """How the stored grid relates to the files' (store attribute `spacing`)."""
    if affine is None:
        return "resampled to image_size (source spacing per file where known: source_spacing)"
    return ("volumes reoriented to RAS and placed by their spacing (data.fit: " + ", ".join(sorted(set(fits))) +
            "); the stored grid's affine per sample in the `affine` array, the files' spacing in source_spacing")


def _resize_note(raw: RawSet, fits: list[str], target: tuple[int, ...]) -> list[str]:
    """Images resized to the configured size, from which sizes: a 96 px set stored at 48 px loses detail, and the
    user should read it, not find it."""
    sizes: Counter[str] = Counter()
    for img, fit in zip(raw.images, fits):
        shape = tuple(img.shape[1:1 + len(target)])
        if fit == "resize" and shape != target:
            sizes[" x ".join(map(str, shape))] += 1
    if not sizes:
        return []
    froms = ", ".join(f"{s} ({n})" for s, n in sizes.most_common(4)) + (" and others" if len(sizes) > 4 else "")
    key = "data.image_size" + (" and data.depth" if len(target) == 3 else "")
    return [f"{sum(sizes.values())} of {len(fits)} images resized from {froms} to {' x '.join(map(str, target))} "
            f"({key}); the store holds them at that size"]


def _geometry_notes(raw: RawSet, fits: list[str], affine: np.ndarray | None) -> list[str]:
    """What was done to the volumes' geometry: how many were reoriented and from what, and the spacings they were
    resampled from and to."""
    notes = []
    codes = [o for o in raw.orientations if o is not None]
    turned = Counter(o for o in codes if o != "RAS")
    if turned:
        froms = ", ".join(f"{n} from {o}" for o, n in turned.most_common())
        notes.append(f"{sum(turned.values())} of {len(codes)} volumes reoriented to RAS ({froms})")
    if affine is not None:
        placed = [i for i, f in enumerate(fits) if f != "resize"]
        source = Counter(" x ".join(f"{s:g}" for s in np.round(np.asarray(sp), 2)) for sp in
                         (raw.spacings[i] for i in placed) if sp is not None)
        grids = np.array([spacing_of(a) for a in affine if np.isfinite(a).all()])
        to = f"{grids.min():.2f}-{grids.max():.2f}" if grids.max() - grids.min() > 0.005 else f"{grids.min():.2f}"
        how = "fov: each volume's foreground in view" if "fov" in fits else "crop: a fixed spacing"
        notes.append(f"{len(placed)} volumes resampled from " + ", ".join(f"{s} mm ({n})" for s, n in
                                                                           source.most_common())
                     + f" to {to} mm isotropic ({how})")
    return notes


def source_notes(raw: RawSet, mask_values: dict[int, int], fits: list[str] | None = None,
                 affine: np.ndarray | None = None, modes: list[str] | None = None,
                 cfg: DataConfig | None = None) -> list[str]:
    """What a user should know about how their files were read (logged, stored and shown in the report): masks
    whose values were mapped to classes, a folder without a subject column, the volumes' geometry and CT read in
    Hounsfield units."""
    notes = _geometry_notes(raw, fits or [], affine)
    if cfg is not None:
        notes += _resize_note(raw, fits or [], cfg.spatial_shape)
    ct = (modes or []).count("ct")
    if ct and cfg is not None:
        why = "their DICOM Modality is CT" if cfg.intensity == "auto" else "data.intensity=ct"
        notes.append(f"{ct} of {len(modes or [])} images read as CT ({why}): Hounsfield units "
                     f"{cfg.ct_window[0]:g}..{cfg.ct_window[1]:g} mapped to [0, 1] (data.ct_window), so synthetic "
                     "images can be written back in HU")
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
        p for p in path.rglob("*") if p.is_file() and not any(".zarr" in part or part.startswith(".")
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
                         keep_previous=cfg.keep_previous,
                         extra={k: arrays[k] for k in ("affine", "intensity") if k in arrays})
    counts = {n: int((arrays["split"] == c).sum()) for n, c in (("train", 0), ("val", 1), ("test", 2))}
    say(f"ingest: {cfg.source} -> {path} ({len(arrays['labels'])} samples {counts}, shape "
        f"{arrays['images'].shape[1:]}, fingerprint {open_store(path).attrs['fingerprint'][:12]})")
    return path
