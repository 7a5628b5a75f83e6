"""What the store says about how the user's files were read: its attributes (`normalisation`, `spacing`, the files'
own spacing and orientation) and the notes a user should read (logged, stored, shown in the report)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from motfm_core.config import DataConfig
from motfm_core.data.geometry import spacing_of
from motfm_core.data.preprocess import NORMALISATION
from motfm_core.data.readers import RawSet

__all__ = ["Provenance", "source_attrs", "source_notes"]

log = logging.getLogger(__name__)


@dataclass
class Provenance:
    """Per source sample, what its file recorded: enough to describe the set without holding its pixels."""

    origin: str
    files: list[str] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # (C, *spatial) as read
    spacings: list[tuple[float, ...] | None] = field(default_factory=list)
    orientations: list[str | None] = field(default_factory=list)
    subject_column: bool = True

    @classmethod
    def of(cls, raw: RawSet) -> Provenance:
        return cls(raw.origin, list(raw.files), [tuple(img.shape) for img in raw.images], list(raw.spacings),
                   list(raw.orientations), raw.subject_column)


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


def _resize_note(source: Provenance, fits: list[str], target: tuple[int, ...]) -> list[str]:
    """Images resized to the configured size, from which sizes: a 96 px set stored at 48 px loses detail, and the
    user should read it, not find it."""
    sizes: Counter[str] = Counter()
    for shape, fit in zip(source.shapes, fits):
        spatial = tuple(shape[1:1 + len(target)])
        if fit == "resize" and spatial != target:
            sizes[" x ".join(map(str, spatial))] += 1
    if not sizes:
        return []
    froms = ", ".join(f"{s} ({n})" for s, n in sizes.most_common(4)) + (" and others" if len(sizes) > 4 else "")
    key = "data.image_size" + (" and data.depth" if len(target) == 3 else "")
    return [f"{sum(sizes.values())} of {len(fits)} images resized from {froms} to {' x '.join(map(str, target))} "
            f"({key}); the store holds them at that size"]


def _geometry_notes(source: Provenance, fits: list[str], affine: np.ndarray | None) -> list[str]:
    """What was done to the volumes' geometry: how many were reoriented and from what, and the spacings they were
    resampled from and to."""
    notes = []
    codes = [o for o in source.orientations if o is not None]
    turned = Counter(o for o in codes if o != "RAS")
    if turned:
        froms = ", ".join(f"{n} from {o}" for o, n in turned.most_common())
        notes.append(f"{sum(turned.values())} of {len(codes)} volumes reoriented to RAS ({froms})")
    if affine is not None:
        placed = [i for i, f in enumerate(fits) if f != "resize"]
        spacings = Counter(" x ".join(f"{s:g}" for s in np.round(np.asarray(sp), 2)) for sp in
                           (source.spacings[i] for i in placed) if sp is not None)
        grids = np.array([spacing_of(a) for a in affine if np.isfinite(a).all()])
        to = f"{grids.min():.2f}-{grids.max():.2f}" if grids.max() - grids.min() > 0.005 else f"{grids.min():.2f}"
        how = "fov: each volume's foreground in view" if "fov" in fits else "crop: a fixed spacing"
        notes.append(f"{len(placed)} volumes resampled from " + ", ".join(f"{s} mm ({n})" for s, n in
                                                                           spacings.most_common())
                     + f" to {to} mm isotropic ({how})")
    return notes


def source_notes(source: Provenance, mask_values: dict[int, int], fits: list[str] | None = None,
                 affine: np.ndarray | None = None, modes: list[str] | None = None,
                 cfg: DataConfig | None = None) -> list[str]:
    """What a user should know about how their files were read (logged, stored and shown in the report): masks
    whose values were mapped to classes, a folder without a subject column, the volumes' geometry and CT read in
    Hounsfield units."""
    notes = _geometry_notes(source, fits or [], affine)
    if cfg is not None:
        notes += _resize_note(source, fits or [], cfg.spatial_shape)
    ct = (modes or []).count("ct")
    if ct and cfg is not None:
        why = "their DICOM Modality is CT" if cfg.intensity == "auto" else "data.intensity=ct"
        notes.append(f"{ct} of {len(modes or [])} images read as CT ({why}): Hounsfield units "
                     f"{cfg.ct_window[0]:g}..{cfg.ct_window[1]:g} mapped to [0, 1] (data.ct_window), so synthetic "
                     "images can be written back in HU")
    if mask_values and list(mask_values) != list(range(len(mask_values))):
        pairs = ", ".join(f"{v} -> {c}" for v, c in mask_values.items())
        notes.append(f"mask values read as classes: {pairs}")
    volumes = any(len(shape) == 4 for shape in source.shapes)
    if not source.subject_column and not volumes:
        notes.append("labels.csv has no subject column: every file is its own group, so images of one patient "
                     "can land in train and test (optimistic scores); add a subject column")
    for note in notes:
        log.warning("ingest: %s: %s", source.origin, note)
    return notes


def source_attrs(source: Provenance, arrays: dict[str, Any], cfg: DataConfig, class_names: list[str],
                 channel_names: list[str], root: Path) -> dict[str, Any]:
    """The store attributes that describe a user's source (`arrays`: `assemble`'s, its `fits`, `modes` and
    `mask_values` taken out): how it was normalised and placed, its notes, the mask values, the files' own spacing
    and orientation by path relative to `root`."""
    fits, modes, values = arrays.pop("fits"), arrays.pop("modes"), arrays.pop("mask_values")
    attrs: dict[str, Any] = {"source": str(root), "class_names": class_names, "channel_names": channel_names,
                             "normalisation": _normalisation_text(modes, cfg),
                             "spacing": _spacing_text(fits, arrays.get("affine")),
                             "notes": source_notes(source, values, fits, arrays.get("affine"), modes, cfg)}
    if values:  # the label files' own values, in class order (class k was value values[k])
        attrs["mask_values"] = [int(v) for v in values]
    known = {_relative(f, root): list(sp) for f, sp in zip(source.files, source.spacings) if sp is not None}
    if known:  # the files' own spacing (mm per axis, RAS order for reoriented volumes), kept beside the stored grid's
        attrs["source_spacing"] = known
    codes = {_relative(f, root): o for f, o in zip(source.files, source.orientations) if o is not None}
    if codes:
        attrs["source_orientation"] = codes
    return attrs


def _relative(file: str, root: Path) -> str:
    return str(Path(file).relative_to(root))
