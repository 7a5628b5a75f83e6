"""Ingestion: any supported source -> normalised, resized, patient-split Zarr v3 store."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from motfm_core import __version__
from motfm_core.config import DataConfig, config_hash
from motfm_core.data.brain import MRICRON, build_brain_mri
from motfm_core.data.checks import MIN_TEST, MIN_TRAIN_PER_CLASS, MIN_VAL, check_classes_in_splits, check_sizes
from motfm_core.data.notes import Provenance, source_attrs
from motfm_core.data.parts import parts_dir, prepare_folder
from motfm_core.data.phantom import build_phantom
from motfm_core.data.prepare import prepare
from motfm_core.data.readers import read_folder, read_medmnist
from motfm_core.data.store import SCHEMA_VERSION, open_store, write_dataset
from motfm_core.errors import InputMissing
from motfm_core.files import held_in_turn

__all__ = [
    "MIN_TEST", "MIN_TRAIN_PER_CLASS", "MIN_VAL", "check_sizes", "check_source", "ingest", "load_source", "prepare",
    "source_has_masks", "source_signature",
]

log = logging.getLogger(__name__)


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
    """Read and prepare cfg.source in memory (the bundled sets, a MedMNIST file, a folder for tests and
    benchmarks: `ingest` streams a folder); returns arrays and store attributes."""
    src = cfg.source
    if src == "brain-mri":
        return build_brain_mri(cfg)
    if src.startswith("phantom"):
        return build_phantom(cfg)
    check_source(src)
    path = Path(src)
    raw = read_medmnist(path) if path.suffix == ".npz" else read_folder(path)
    arrays = prepare(raw, cfg)
    return arrays, source_attrs(Provenance.of(raw), arrays, cfg, raw.class_names, raw.channel_names, path)


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


def ingest(cfg: DataConfig, out_path: str | Path, progress: Callable[[str], None] | None = None,
           scheduler: str = "") -> Path:
    """Build the real dataset store at out_path; a store built from the same config, source files and
    package version is reused. A folder is prepared a row at a time (`parts.prepare_folder`: resumable, on the Dask
    cluster at `scheduler` or a local one when it has more than a few rows); the other sources in memory."""
    say = progress or log.info
    out_path = Path(out_path)
    # two ingests into one store take turns: the second finds the first one's store (and reuses it when it is the
    # same build); at once, one removed the row parts the other was still reading
    with held_in_turn(out_path.with_name(out_path.name + ".lock"), "ingest", say):
        return _ingest(cfg, out_path, say, scheduler)


def _ingest(cfg: DataConfig, out_path: Path, say: Callable[[str], None], scheduler: str) -> Path:
    content = {k: v for k, v in asdict(cfg).items() if k not in ("keep_previous", "workers")}  # not what is built
    key = config_hash(content, source_signature(cfg.source), __version__, SCHEMA_VERSION)
    if (out_path / "zarr.json").exists():
        try:
            attrs = open_store(out_path).attrs
            if attrs.get("ingest_key") == key:
                say(f"ingest: {cfg.source} -> {out_path} ({attrs['num_samples']} samples, fingerprint "
                    f"{attrs['fingerprint'][:12]}): already built from this config (key {key}); reusing it")
                shutil.rmtree(parts_dir(out_path), ignore_errors=True)  # an ingest stopped after it published
                return out_path
        except ValueError:
            pass
    folder = Path(cfg.source).is_dir() and cfg.source != "brain-mri" and not cfg.source.startswith("phantom")
    if folder:
        arrays, attrs = prepare_folder(cfg, out_path, config_hash(content, __version__, SCHEMA_VERSION), say,
                                       scheduler)
    else:
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
    if folder:
        shutil.rmtree(parts_dir(out_path), ignore_errors=True)  # the store holds every row now
    counts = {n: int((arrays["split"] == c).sum()) for n, c in (("train", 0), ("val", 1), ("test", 2))}
    shape = arrays["images"].shape[1:]
    say(f"ingest: {cfg.source} -> {path} ({len(arrays['labels'])} samples {counts}, shape "
        f"{shape}, fingerprint {open_store(path).attrs['fingerprint'][:12]})")
    return path
