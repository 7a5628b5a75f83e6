"""Export a run's images as NIfTI, or as an nnU-Net raw dataset, with their geometry and intensity units.

A real sample is written on its stored grid (the `affine` the ingest recorded; 1 mm where a sample was resized, an
assumption the export log says) and in its source units: lo + x (hi - lo) of its `intensity` window (CT: Hounsfield
units, rounded to int16; percentile-mapped MR and photos: the window of that image). A synthetic sample has no source
file: it takes the median stored spacing of the real train split, centred on the origin, in RAS, and the train
split's median window (for CT the fixed HU window, so it writes back in HU).

- `nifti`: `<out>/synthetic/<case>_<channel>.nii.gz` (+ `_seg` for masks) and a labels.csv that `motfm run` reads
  back (image_<channel> columns, label, mask); with `real=True` also `<out>/real/<split>/...`.
- `nnunet`: `<out>/Dataset<ID>_<name>/` with imagesTr (`<case>_<channel index:04d>.nii.gz`), labelsTr and
  dataset.json (channel_names, labels, numTraining, file_ending): the real train split plus `synthetic_ratio` times
  as many synthetic cases, never a validation or test case (nnU-Net cross-validates on what it is given).
Everything is built under a temporary name and renamed whole; an existing target is refused, not overwritten.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from motfm_core.data.store import SPLITS, channel_names, open_store
from motfm_core.data.synthetic import require_complete
from motfm_core.errors import BadInput
from motfm_core.files import atomic_path

__all__ = ["export_nifti", "export_nnunet", "export_real", "sample_geometry"]


def _windows(real: Any) -> np.ndarray:
    """(N, C, 2) intensity windows of the real store; [0, 1] for stores written before they were recorded."""
    n, c = real["images"].shape[:2]
    if "intensity" in real.array_keys():
        return np.asarray(real["intensity"][:], dtype=np.float64)
    return np.tile(np.array([0.0, 1.0]), (n, c, 1))


def _affines(real: Any) -> np.ndarray:
    """(N, 4, 4) stored-grid affines of the real store; NaN where a sample was resized (or none was recorded)."""
    n = real["images"].shape[0]
    if "affine" in real.array_keys():
        return np.asarray(real["affine"][:], dtype=np.float64)
    return np.full((n, 4, 4), np.nan)


def sample_geometry(real: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(affine, window (C, 2)) for a synthetic sample: the median stored spacing of the real `rows` (1 mm where
    none is known) as an RAS grid centred on the origin, and their median intensity window per channel."""
    spatial = tuple(real["images"].shape[2:])
    spacing = np.ones(3)
    known = [a for a in _affines(real)[rows] if np.isfinite(a).all()]
    if known:
        spacing = np.median([np.linalg.norm(a[:3, :3], axis=0) for a in known], axis=0)
    shape3 = (*spatial, 1) if len(spatial) == 2 else spatial
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(shape3) - 1) / 2.0
    return affine, np.median(_windows(real)[rows], axis=0)


def _volume(x: np.ndarray) -> np.ndarray:
    """A stored (H, W[, D]) array as a NIfTI volume: 2D images become one-slice volumes."""
    return x[..., None] if x.ndim == 2 else x


def _to_units(x: np.ndarray, window: np.ndarray, ct: bool) -> np.ndarray:
    """[0, 1] -> the source's units: lo + x (hi - lo); CT rounded to int16 HU."""
    lo, hi = float(window[0]), float(window[1])
    units = lo + x.astype(np.float64) * (hi - lo)
    return np.rint(units).astype(np.int16) if ct else units.astype(np.float32)


def _is_ct(real: Any) -> bool:
    return str(real.attrs.get("normalisation", "")).startswith("CT:")


def _write_case(folder: Path, case: str, image: np.ndarray, mask: np.ndarray | None, affine: np.ndarray,
                window: np.ndarray, names: list[str], ct: bool, nnunet: bool) -> dict[str, str]:
    """One case's channels (and mask) as NIfTI files; returns the written names by column."""
    import nibabel as nib

    written = {}
    for c, name in enumerate(names):
        file = f"{case}_{c:04d}.nii.gz" if nnunet else f"{case}_{name}.nii.gz"
        target = folder / ("imagesTr" if nnunet else "") / file
        nib.save(nib.Nifti1Image(_to_units(_volume(image[c]), window[c], ct), affine), target)
        written[f"image_{name}"] = str(target.relative_to(folder))
    if mask is not None:
        target = folder / ("labelsTr" if nnunet else "") / (f"{case}.nii.gz" if nnunet else f"{case}_seg.nii.gz")
        nib.save(nib.Nifti1Image(_volume(mask[0]).astype(np.uint8), affine), target)
        written["mask"] = str(target.relative_to(folder))
    return written


def _label_names(data: Any) -> dict[str, int]:
    """dataset.json's labels: background 0, then each class by its name (`mask_names`), or by the value it had in
    the label files (`mask_values`: "label_4" for BraTS' enhancing tumour), else by number."""
    names = [str(m) for m in data.attrs.get("mask_names", [])]
    values = [int(v) for v in data.attrs.get("mask_values", [])]
    classes = len(names) or len(values) or int(max(np.asarray(data["masks"][:]).max(), 1)) + 1
    out = {"background": 0}
    for k in range(1, classes):
        out[names[k] if k < len(names) else f"label_{values[k]}" if k < len(values) else f"class{k}"] = k
    return out


def _synthetic(version: str | Path) -> Any:
    import zarr

    require_complete(version)
    return zarr.open_group(str(version), mode="r")


def export_nifti(data_path: str | Path, version: str | Path, out: str | Path, real: bool = False) -> Path:
    """A synthetic version (and with `real`, the real splits) as NIfTI files with a labels.csv `motfm run` reads;
    returns `out`. Refuses an existing `out`."""
    data, syn, out = open_store(data_path), _synthetic(version), Path(out)
    if out.exists():
        raise BadInput(f"{out}: already exists; export into a new folder (nothing was written)")
    names = channel_names(data.attrs, int(data["images"].shape[1]))
    classes = list(data.attrs["class_names"])
    train = np.nonzero(np.asarray(data["split"][:]) == SPLITS["train"])[0]
    affine, window = sample_geometry(data, train)
    ct = _is_ct(data)
    with atomic_path(out) as tmp:
        (tmp / "synthetic").mkdir(parents=True)
        rows = []
        masks = syn["masks"] if "masks" in syn.array_keys() else None
        for i in range(syn["images"].shape[0]):
            case = f"synthetic_{i:05d}"
            files = _write_case(tmp / "synthetic", case, np.asarray(syn["images"][i]),
                                None if masks is None else np.asarray(masks[i]), affine, window, names, ct, False)
            rows.append({"subject": case, "label": classes[int(syn["labels"][i])], **files})
        _labels_csv(tmp / "synthetic", rows)
        if real:
            _export_real(data, tmp / "real", names, ct)
    return out


def export_real(data_path: str | Path, out: str | Path) -> Path:
    """The real dataset store's splits as NIfTI (`<out>/<split>/` with a labels.csv each), every sample on its own
    stored grid and in its source units; returns `out`. Refuses an existing `out`."""
    data, out = open_store(data_path), Path(out)
    if out.exists():
        raise BadInput(f"{out}: already exists; export into a new folder (nothing was written)")
    with atomic_path(out) as tmp:
        _export_real(data, tmp, channel_names(data.attrs, int(data["images"].shape[1])), _is_ct(data))
    return out


def _export_real(data: Any, out: Path, names: list[str], ct: bool) -> None:
    """Each real split as `<out>/<split>/` with its labels.csv, every sample on its own grid and in its units."""
    classes, split = list(data.attrs["class_names"]), np.asarray(data["split"][:])
    affines, windows = _affines(data), _windows(data)
    masks = data["masks"] if "masks" in data.array_keys() else None
    groups = list(data.attrs.get("group_names", []))
    for name, code in SPLITS.items():
        folder, rows = out / name, []
        folder.mkdir(parents=True)
        for i in np.nonzero(split == code)[0]:
            affine = affines[i] if np.isfinite(affines[i]).all() else np.eye(4)
            case = f"{name}_{i:05d}"
            files = _write_case(folder, case, np.asarray(data["images"][i]),
                                None if masks is None else np.asarray(masks[i]), affine, windows[i], names, ct, False)
            group = int(data["group"][i])
            rows.append({"subject": groups[group] if group < len(groups) else case,
                         "label": classes[int(data["labels"][i])], **files})
        _labels_csv(folder, rows)


def _labels_csv(folder: Path, rows: list[dict[str, str]]) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)


def export_nnunet(data_path: str | Path, version: str | Path, out: str | Path, dataset_id: int, name: str,
                  synthetic_ratio: float = 1.0) -> Path:
    """An nnU-Net raw dataset `<out>/Dataset<ID>_<name>`: the real train split and `synthetic_ratio` times as many
    synthetic cases (never a validation or test case); returns its folder. Needs masks; refuses an existing one."""
    data, syn = open_store(data_path), _synthetic(version)
    if "masks" not in data.array_keys() or "masks" not in syn.array_keys():
        raise BadInput(f"{data_path}: nnU-Net trains segmenters and this run has no masks; give a mask column in "
                       "labels.csv, or export --to nifti")
    if not 1 <= dataset_id <= 999:
        raise BadInput(f"--dataset-id {dataset_id}: nnU-Net dataset ids are 1..999")
    target = Path(out) / f"Dataset{dataset_id:03d}_{re.sub(r'[^A-Za-z0-9]+', '', name) or 'motfm'}"
    if target.exists() or any(Path(out).glob(f"Dataset{dataset_id:03d}_*")):
        raise BadInput(f"{target}: dataset id {dataset_id} is taken in {out}; choose another --dataset-id")
    names = channel_names(data.attrs, int(data["images"].shape[1]))
    train = np.nonzero(np.asarray(data["split"][:]) == SPLITS["train"])[0]
    n_syn = min(int(round(synthetic_ratio * len(train))), int(syn["images"].shape[0]))
    affines, windows, ct = _affines(data), _windows(data), _is_ct(data)
    syn_affine, syn_window = sample_geometry(data, train)
    labels = _label_names(data)
    Path(out).mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        for i in train:
            affine = affines[i] if np.isfinite(affines[i]).all() else syn_affine
            _write_case(tmp, f"real_{i:05d}", np.asarray(data["images"][i]), np.asarray(data["masks"][i]), affine,
                        windows[i], names, ct, True)
        for j in range(n_syn):
            _write_case(tmp, f"synthetic_{j:05d}", np.asarray(syn["images"][j]), np.asarray(syn["masks"][j]),
                        syn_affine, syn_window, names, ct, True)
        (tmp / "dataset.json").write_text(json.dumps({
            "channel_names": {str(c): n for c, n in enumerate(names)}, "labels": labels,
            "numTraining": int(len(train) + n_syn), "file_ending": ".nii.gz",
            "name": name, "description": f"real train split of {data.attrs['source']} plus {n_syn} synthetic cases "
                                         f"of {Path(version).resolve().name} (motfm)"}, indent=2))
    return target
