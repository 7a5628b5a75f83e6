"""Zarr v3 stores: the ingested real dataset and the sharded synthetic dataset.

Real dataset (`dataset.zarr`, written once, atomically: built under a temporary name, then renamed):
    images  float32 (N, C, H, W[, D]) in [0, 1], one chunk per sample
    labels  int64   (N,)
    masks   uint8   (N, 1, H, W[, D])            optional
    split   uint8   (N,)  0 train, 1 val, 2 test
    group   int32   (N,)  patient / source-volume id (splits never share a group)
    attrs   schema_version, source, class_names, spacing, normalisation, fingerprint, ...

Synthetic dataset (`synthetic.zarr`): `images`, `labels`, `seed` (and, for mask-conditioned models,
`masks` and `mask_source`, the train-split index of each conditioning mask, plus `mask_deform` for deformed
masks, and `redraws` when the copy guard ran) with one Zarr shard per sampling task (sharding codec), so
concurrent writers never touch the same object. After a shard's data is written, its completion record
`shards/<index>` (a Zarr group whose attributes say what was written) is staged under `.staging/` (never inside
`shards/`) and moved into place by an atomic rename. `completed_shards` is the one definition of a complete
shard that every reader, the report and the sampler use; a re-run regenerates only shards without a record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from motfm_core.data.shards import write_whole_shard
from motfm_core.utils import atomic_path

__all__ = ["CHUNK_BYTES", "completed_shards", "create_synthetic_store", "fingerprint_arrays", "incomplete_shards",
           "load_split", "load_splits", "load_synthetic", "num_shards", "open_store", "open_synthetic",
           "publish_latest", "require_complete", "row_bytes", "rows_per_batch", "samples_per_chunk", "SCHEMA_VERSION",
           "shard_bounds", "shard_complete", "SPLITS", "Splits", "stratified_subset", "take_rows", "version_for",
           "write_dataset", "write_shard"]

SCHEMA_VERSION = 1
SPLITS = {"train": 0, "val": 1, "test": 2}


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """sha256 over the bytes (and shapes) of the given arrays: identifies a dataset's content."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_dataset(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    group: np.ndarray,
    attrs: dict[str, Any],
    masks: np.ndarray | None = None,
) -> Path:
    """Write the real dataset store atomically; an existing store at `path` is kept as `<path>.old-<time>`."""
    path = Path(path)
    n = len(images)
    if images.ndim not in (4, 5):
        raise ValueError(f"{path}: images must be (N, C, H, W[, D]), got shape {images.shape}")
    for name, arr in (("labels", labels), ("split", split), ("group", group)):
        if arr.shape != (n,):
            raise ValueError(f"{path}: {name} shape {arr.shape} != ({n},)")
    if masks is not None and masks.shape[0] != n:
        raise ValueError(f"{path}: masks have {masks.shape[0]} samples, images {n}")
    if not np.isfinite(images).all():
        raise ValueError(f"{path}: images contain NaN/inf; fix the source files before ingesting")
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        sample_chunk = (1, *images.shape[1:])
        root.create_array("images", data=images.astype(np.float32), chunks=sample_chunk)
        root.create_array("labels", data=labels.astype(np.int64), chunks=(n,))
        root.create_array("split", data=split.astype(np.uint8), chunks=(n,))
        root.create_array("group", data=group.astype(np.int32), chunks=(n,))
        if masks is not None:
            root.create_array("masks", data=masks.astype(np.uint8), chunks=(1, *masks.shape[1:]))
        fp = fingerprint_arrays(images.astype(np.float32), labels.astype(np.int64), split.astype(np.uint8))
        root.attrs.update({**attrs, "schema_version": SCHEMA_VERSION, "fingerprint": fp, "num_samples": n,
                           "split_codes": SPLITS, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if path.exists():
            path.rename(path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    return path


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified share of `labels` (round(fraction * class size), at least one per
    class); the same (labels, fraction, seed) always give the same indices. fraction >= 1 gives all."""
    if fraction >= 1:
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    keep = [rng.choice(idx, max(1, int(round(fraction * len(idx)))), replace=False)
            for idx in (np.nonzero(labels == c)[0] for c in np.unique(labels))]
    return np.sort(np.concatenate(keep))


def open_store(path: str | Path) -> zarr.Group:
    """Open a store read-only with a clear error when it is missing or not a motfm store."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"{path}: no Zarr v3 store here; run the ingest (or sample) stage first")
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    if "schema_version" not in root.attrs:
        raise ValueError(f"{path}: not a motfm store (no schema_version attribute)")
    return root


def load_split(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """All samples of one split as arrays: {'images', 'labels'[, 'masks']} (fine for small datasets)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    root = open_store(path)
    idx = np.nonzero(root["split"][:] == SPLITS[split])[0]
    out = {"images": root["images"].get_orthogonal_selection((idx,)), "labels": root["labels"][:][idx]}
    if "masks" in root.array_keys():
        out["masks"] = root["masks"].get_orthogonal_selection((idx,))
    return out


Splits = dict[str, dict[str, np.ndarray]]  # {split name: load_split(...) of it}


def load_splits(path: str | Path, names: tuple[str, ...] = ("train", "test")) -> Splits:
    """Several splits at once (`load_split` each): what the evaluation reads once and hands to every metric."""
    return {name: load_split(path, name) for name in names}


# --- synthetic, sharded store --------------------------------------------------------------------


CHUNK_BYTES = 128 * 1024  # zarr-python spends ~0.3 ms per chunk: tiny chunks cap writes near 30 MB/s


def samples_per_chunk(sample_bytes: int, shard_size: int) -> int:
    """Samples per chunk inside a shard: one when a sample is large, else the largest divisor of the shard
    size that keeps a chunk near CHUNK_BYTES (reading one sample then decodes at most ~128 KiB)."""
    target = max(1, CHUNK_BYTES // max(1, sample_bytes))
    return max(d for d in range(1, min(target, shard_size) + 1) if shard_size % d == 0)


def create_synthetic_store(
    path: str | Path, num_samples: int, sample_shape: tuple[int, ...], shard_size: int, attrs: dict[str, Any],
    with_masks: bool = False, extras: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    compress: bool = True,
) -> Path:
    """Create (once) the empty sharded store; an existing store with the same plan is reused as is (with the
    codecs it was created with).

    `extras` adds per-sample arrays {name: (dtype, trailing shape)}, e.g. {"redraws": ("int32", ())};
    `compress=False` stores the images without zstd (faster to write; the other arrays keep it)."""
    path = Path(path)
    plan = {"num_samples": num_samples, "sample_shape": list(sample_shape), "shard_size": shard_size}
    if (path / "zarr.json").exists():
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
        old = {k: root.attrs.get(k) for k in plan}
        if old != plan or root.attrs.get("run_key") != attrs.get("run_key"):
            raise ValueError(
                f"{path}: an existing synthetic store has a different plan or checkpoint ({old}); "
                "choose a new output folder or remove the old store")
        return path
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        per = samples_per_chunk(4 * int(np.prod(sample_shape)), shard_size)
        root.create_array("images", shape=(num_samples, *sample_shape), dtype="float32",
                          chunks=(per, *sample_shape), shards=(shard_size, *sample_shape), fill_value=np.nan,
                          **({} if compress else {"compressors": None}))
        root.create_array("labels", shape=(num_samples,), dtype="int64", chunks=(shard_size,),
                          shards=(shard_size,), fill_value=-1)
        root.create_array("seed", shape=(num_samples,), dtype="int64", chunks=(shard_size,),
                          shards=(shard_size,), fill_value=-1)
        if with_masks:  # the real training masks each sample was conditioned on, and their train-split index
            per = samples_per_chunk(int(np.prod(sample_shape[1:])), shard_size)
            root.create_array("masks", shape=(num_samples, 1, *sample_shape[1:]), dtype="uint8",
                              chunks=(per, 1, *sample_shape[1:]), shards=(shard_size, 1, *sample_shape[1:]),
                              fill_value=0)
            root.create_array("mask_source", shape=(num_samples,), dtype="int64", chunks=(shard_size,),
                              shards=(shard_size,), fill_value=-1)
        for name, (dtype, trailing) in (extras or {}).items():
            root.create_array(name, shape=(num_samples, *trailing), dtype=dtype, chunks=(shard_size, *trailing),
                              shards=(shard_size, *trailing), fill_value=0)
        root.create_group("shards")
        root.attrs.update({**attrs, **plan, "schema_version": SCHEMA_VERSION,
                           "num_shards": num_shards(num_samples, shard_size),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return path


def num_shards(num_samples: int, shard_size: int) -> int:
    return -(-num_samples // shard_size)


def shard_bounds(index: int, num_samples: int, shard_size: int) -> tuple[int, int]:
    """[start, stop) sample range of shard `index`."""
    start = index * shard_size
    if not 0 <= start < num_samples:
        raise ValueError(f"shard {index} is outside a dataset of {num_samples} samples")
    return start, min(start + shard_size, num_samples)


def _record_dir(path: Path, index: int) -> Path:
    return path / "shards" / f"{index:05d}"


def shard_complete(path: str | Path, index: int) -> bool:
    """Shard `index` has its completion record (written, by rename, only after all of its data)."""
    return (_record_dir(Path(path), index) / "zarr.json").exists()


def completed_shards(path: str | Path) -> dict[int, dict[str, Any]]:
    """{index: completion-record attributes} of every complete shard: the one definition every reader uses."""
    path = Path(path)
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    out = {}
    for i in range(root.attrs["num_shards"]):
        record = _record_dir(path, i) / "zarr.json"
        if record.exists():
            out[i] = json.loads(record.read_text())["attributes"]
    return out


def require_complete(path: str | Path) -> None:
    """Raise (naming the store and the fix) unless every shard of a synthetic store is complete."""
    missing = incomplete_shards(path)
    if missing:
        raise ValueError(f"{path}: shards {missing[:10]} are incomplete (a sampling run did not finish); re-run the "
                         "sample stage to finish them")


def write_shard(path: str | Path, index: int, images: np.ndarray, labels: np.ndarray, seeds: np.ndarray,
                info: dict[str, Any] | None = None, masks: np.ndarray | None = None,
                mask_source: np.ndarray | None = None, extras: dict[str, np.ndarray] | None = None,
                direct: bool = True) -> None:
    """Write one shard's samples, then its completion record (atomic rename) last. A whole shard of each array is
    encoded as one file here (`shards.write_whole_shard`, the bytes zarr-python writes; 2.7x its speed at the
    demo's 32-image shards, benchmarks/writer_options.py); the last, partial shard and `direct=False` (the writer
    benchmark's comparison) go through zarr-python."""
    path = Path(path)
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    shard_size = attrs["shard_size"]
    start, stop = shard_bounds(index, attrs["num_samples"], shard_size)
    if len(images) != stop - start or len(labels) != stop - start or len(seeds) != stop - start:
        raise ValueError(f"{path}: shard {index} needs {stop - start} samples, got {len(images)}")
    has_masks = (path / "masks" / "zarr.json").exists()
    if has_masks != (masks is not None):
        raise ValueError(f"{path}: the store {'expects' if masks is None else 'has no'} masks for shard {index}")
    arrays: dict[str, np.ndarray] = {"images": np.asarray(images, np.float32), "labels": np.asarray(labels, np.int64),
                                     "seed": np.asarray(seeds, np.int64)}
    if masks is not None:
        arrays.update(masks=np.asarray(masks, np.uint8), mask_source=np.asarray(mask_source, dtype=np.int64))
    for name, values in (extras or {}).items():
        if not (path / name / "zarr.json").exists():
            raise ValueError(f"{path}: the store has no per-sample array {name!r} for shard {index}")
        arrays[name] = values
    for name, rows in arrays.items():
        whole = direct and stop - start == shard_size
        if not (whole and write_whole_shard(path / name, index, rows)):
            zarr.open_array(str(path / name), mode="r+", zarr_format=3)[start:stop] = rows
    record = _record_dir(path, index)
    tmp = path / ".staging" / f"{record.name}.tmp-{uuid.uuid4().hex[:8]}"  # outside shards/: never read as data
    tmp.mkdir(parents=True)  # a Zarr v3 group's zarr.json, as zarr.create_group writes it (without its ~4 ms)
    (tmp / "zarr.json").write_text(json.dumps({"attributes": {"start": start, "stop": stop, **(info or {})},
                                               "zarr_format": 3, "node_type": "group"}, indent=2,
                                              default=lambda v: v.item()))  # numpy scalars
    if record.exists():  # a racing duplicate finished first: same seeds, same content
        shutil.rmtree(tmp)
        return
    _commit_record(tmp, record)


def _commit_record(staged: Path, record: Path) -> None:
    """Publish a staged completion record by an atomic rename into `shards/` (the moment a shard is complete)."""
    record.parent.mkdir(exist_ok=True)
    os.replace(staged, record)
    with contextlib.suppress(OSError):  # left while another writer stages its record
        staged.parent.rmdir()


def load_synthetic(path: str | Path) -> dict[str, np.ndarray]:
    """All samples of a complete synthetic store: `images`, `labels` and, when the store has them, `masks`;
    refuses a store with unfinished shards."""
    require_complete(path)
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    out = {"images": root["images"][:], "labels": root["labels"][:]}
    if "masks" in root.array_keys():
        out["masks"] = root["masks"][:]
    return out


def open_synthetic(path: str | Path) -> dict[str, Any]:
    """A complete synthetic store without reading its images: `images` (and `masks`) stay Zarr arrays, read a
    batch at a time by slicing or with `take_rows`; `labels` is loaded (8 bytes a sample). What the evaluation
    reads, so its memory does not grow with the number of samples."""
    require_complete(path)
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    out: dict[str, Any] = {"images": root["images"], "labels": root["labels"][:]}
    if "masks" in root.array_keys():
        out["masks"] = root["masks"]
    return out


def row_bytes(array: Any) -> int:
    """Bytes of one row (sample) of `array` (numpy or Zarr, (N, ...)) in memory."""
    return int(np.prod(array.shape[1:])) * np.dtype(array.dtype).itemsize


def rows_per_batch(array: Any, most: int = 256, budget: int = 2**25) -> int:
    """How many rows of `array` (numpy or Zarr, (N, ...)) to read at once: `most`, fewer when they would pass
    `budget` bytes (32 MiB: 256 2D images of 48 px, 8 volumes of 64^3; a network's activations on them are many
    times that)."""
    return max(1, min(most, budget // max(1, row_bytes(array))))


def take_rows(array: Any, idx: np.ndarray) -> np.ndarray:
    """`array[idx]` for integer row indices in any order and with repeats, for a numpy or a Zarr array. From Zarr,
    the sorted distinct rows are read with plain slices of whole chunks, at most `rows_per_batch` rows (plus a
    chunk) at a time, each chunk once. Not zarr's `oindex`: on a sharded array it held ~40x the rows' size in
    memory (4 GB to read 100 MB of masks, zarr 3)."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(array, np.ndarray):
        return array[idx]
    rows, inverse = np.unique(idx, return_inverse=True)
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    chunk, step = array.chunks[0], rows_per_batch(array)
    i = 0
    while i < len(rows):
        start = rows[i] // chunk * chunk
        j = int(np.searchsorted(rows, start + max(chunk, step), side="left"))
        stop = min(array.shape[0], (rows[j - 1] // chunk + 1) * chunk)
        out[i:j] = array[start:stop][rows[i:j] - start]
        i = j
    if len(rows) == len(idx) and np.array_equal(rows, idx):
        return out  # already sorted and distinct (an arm's rows): no second copy
    return out[inverse]


def incomplete_shards(path: str | Path) -> list[int]:
    """Indices of shards without a completion record (see `completed_shards`)."""
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    done = completed_shards(path)
    return [i for i in range(root.attrs["num_shards"]) if i not in done]


# --- versions of the synthetic dataset ---------------------------------------------------------


def _versions(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("v[0-9][0-9][0-9][0-9].zarr") if (p / "zarr.json").exists())


def version_for(root: str | Path, run_key: str) -> Path:
    """The version to write for `run_key`: an existing version with that key (to resume or reuse it), else a
    new `v<N+1>.zarr`. A version with another key is never reopened for writing."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    versions = _versions(root)
    for version in reversed(versions):
        if zarr.open_group(str(version), mode="r", zarr_format=3).attrs.get("run_key") == run_key:
            return version
    number = int(versions[-1].name[1:5]) + 1 if versions else 1
    return root / f"v{number:04d}.zarr"


def publish_latest(version: str | Path, keep: int = 0) -> Path:
    """Point `<root>/latest` at a complete version (atomic symlink swap); keep the newest `keep` versions
    (0 = all), never removing the one published. Returns the `latest` path."""
    version = Path(version)
    require_complete(version)
    latest = version.parent / "latest"
    with atomic_path(latest) as tmp:
        os.symlink(version.name, tmp)
    if keep > 0:
        for old in _versions(version.parent)[:-keep]:
            if old != version:
                shutil.rmtree(old)
    return latest
