"""The ingested real dataset, a Zarr v3 store. `dataset.zarr` is a link to the current build,
`dataset.zarr.v<time>-<id>` (built under a temporary name, flushed to disk, renamed whole), and a re-ingest replaces
the link in one rename: a reader or a second run always finds the old build or the new one, never none (a crash at
any step leaves one). Earlier builds are kept beside it (`data.keep_previous`). A store is:
    images  float32 (N, C, H, W[, D]) in [0, 1], one chunk per sample
    labels  int64   (N,)
    masks   uint8   (N, 1, H, W[, D])            optional
    split   uint8   (N,)  0 train, 1 val, 2 test
    group   int32   (N,)  patient / source-volume id (splits never share a group)
    attrs   schema_version, source, class_names, spacing, normalisation, fingerprint, ...
Each array's `chunk_bytes` attribute lists the size of every chunk file (0: none, all fill value): `open_store`
refuses a store with one missing or truncated (zarr would read a missing chunk as the fill value, 0, and train on
it).

The synthetic dataset is in `synthetic.py`, its versions in `versions.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from motfm_core.data.rows import Rows, largest, rows_per_batch
from motfm_core.data.shards import chunk_key
from motfm_core.errors import BadInput, InputMissing
from motfm_core.files import atomic_path, fsync_dir, sweep_leftovers, temporary_name

__all__ = ["IMAGE_ZSTD_LEVEL", "SCHEMA_VERSION", "SPLITS", "Blocks", "Splits", "builds", "channel_names", "chunk_sizes",
           "fingerprint_arrays", "images_array", "load_split", "load_splits", "mask_classes", "open_split",
           "open_store", "read_rows", "split_rows", "stratified_subset", "write_dataset"]

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


def builds(path: str | Path) -> list[Path]:
    """Every build of the store at `path` (`<name>.v<time>-<id>`, and `<name>.old-*` of the layout before links), oldest
    first; the current one is what `path` links to."""
    path = Path(path)
    found = [*path.parent.glob(f"{path.name}.v*-*"), *path.parent.glob(f"{path.name}.old-*")]
    return sorted((p for p in found if p.is_dir() and not p.is_symlink()), key=lambda p: p.stat().st_mtime)


@dataclass(frozen=True)
class Blocks:
    """A store's images (and masks) given a block of samples at a time, in order: a dataset need not fit in
    memory to be written."""

    shape: tuple[int, ...]  # images (N, C, H, W[, D])
    mask_shape: tuple[int, ...] | None  # masks (N, 1, H, W[, D]), or None
    read: Callable[[], Iterator[tuple[np.ndarray, np.ndarray | None]]]  # (images, masks) blocks, N rows in all
    # where image row i is already encoded, (an `images_array` folder, its row), or None: its chunk file is linked
    # into the store, not encoded again (an ingest's Dask workers encode the rows they prepare); None: encode all
    encoded: Callable[[int], tuple[Path, int] | None] | None = None

    @classmethod
    def of(cls, images: np.ndarray, masks: np.ndarray | None) -> Blocks:
        """Arrays held in memory, as blocks of `rows_per_batch` samples."""
        step = rows_per_batch(images)
        return cls(images.shape, None if masks is None else masks.shape,
                   lambda: ((images[i:i + step], None if masks is None else masks[i:i + step])
                            for i in range(0, len(images), step)))


# zstd level 1 for images, real and synthetic: faster than zarr's default (level 0, i.e. zstd's 3) at about the same
# size, so writers keep up (benchmarks/RESULTS.md, "Writer options" and "Ingest at scale")
IMAGE_ZSTD_LEVEL = 1


def images_array(path: str | Path, shape: tuple[int, ...]) -> Any:
    """A new Zarr v3 float32 array of images at `path`, one chunk per sample: the store's `images`, and what an
    ingest's worker encodes its rows into (`Blocks.encoded`), so the two agree byte for byte."""
    return zarr.create_array(str(path), shape=shape, dtype=np.float32, chunks=(1, *shape[1:]), zarr_format=3,
                             compressors=ZstdCodec(level=IMAGE_ZSTD_LEVEL))


_ENCODING = ("data_type", "chunk_grid", "chunk_key_encoding", "codecs", "fill_value")  # what a chunk's bytes depend on


def _link_encoded(blocks: Blocks, images: Path, at: int, count: int) -> bool:
    """Rows at..at+count-1 linked into the array `images` from where `blocks.encoded` says they are encoded (a hard
    link, else a copy: the source stays whole for a resumed ingest); False, linking none, unless every row is there
    with the same encoding (a chunk missing at the source, all fill value or lost, is encoded again, never assumed)."""
    if blocks.encoded is None:
        return False
    meta = json.loads((images / "zarr.json").read_text())
    zeros = (0,) * (len(meta["shape"]) - 1)
    pairs = []
    for row in range(at, at + count):
        where = blocks.encoded(row)
        if where is None or not (where[0] / "zarr.json").exists():
            return False
        source = json.loads((where[0] / "zarr.json").read_text())
        chunk = where[0] / chunk_key(source, (where[1], *zeros))
        if any(source.get(k) != meta.get(k) for k in _ENCODING) or not chunk.exists():
            return False
        pairs.append((chunk, images / chunk_key(meta, (row, *zeros))))
    for chunk, to in pairs:
        to.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(chunk, to)
        except OSError:  # a file system without hard links
            shutil.copyfile(chunk, to)
    return True


def write_dataset(
    path: str | Path,
    images: np.ndarray | Blocks,
    labels: np.ndarray,
    split: np.ndarray,
    group: np.ndarray,
    attrs: dict[str, Any],
    masks: np.ndarray | None = None,
    keep_previous: int = 1,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the real dataset store: a new build beside `path`, published by replacing the link `path` in one rename,
    then only the newest `keep_previous` earlier builds are kept; what crashed writers left beside `path` is removed
    first. `images` (with `masks`) are arrays, or `Blocks` read once, a block at a time. `extra` arrays of one row per
    sample (the stored grid's `affine`) are written beside the images, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path.parent)
    blocks = images if isinstance(images, Blocks) else Blocks.of(images, masks)
    n = blocks.shape[0]
    if len(blocks.shape) not in (4, 5):
        raise ValueError(f"{path}: images must be (N, C, H, W[, D]), got shape {blocks.shape}")
    for name, arr in (("labels", labels), ("split", split), ("group", group)):
        if arr.shape != (n,):
            raise ValueError(f"{path}: {name} shape {arr.shape} != ({n},)")
    if blocks.mask_shape is not None and blocks.mask_shape[0] != n:
        raise ValueError(f"{path}: masks have {blocks.mask_shape[0]} samples, images {n}")
    for name, arr in (extra or {}).items():
        if arr.shape[0] != n:
            raise ValueError(f"{path}: {name} has {arr.shape[0]} rows, images {n}")
    build = path.with_name(f"{path.name}.v{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    _write_build(build, blocks, labels, split, group, attrs, extra)
    _publish(path, build)
    _prune(path, keep_previous)
    return path


def _write_build(build: Path, blocks: Blocks, labels: np.ndarray, split: np.ndarray, group: np.ndarray,
                 attrs: dict[str, Any], extra: dict[str, np.ndarray] | None) -> None:
    """One build of the store at `build`, appearing whole (built under a temporary name, flushed, renamed); the
    images are written and fingerprinted a block at a time."""
    n = blocks.shape[0]
    with atomic_path(build) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        images = images_array(tmp / "images", blocks.shape)
        masks = None if blocks.mask_shape is None else root.create_array(
            "masks", shape=blocks.mask_shape, dtype=np.uint8, chunks=(1, *blocks.mask_shape[1:]))
        fp = hashlib.sha256(str((tuple(int(s) for s in blocks.shape), np.dtype(np.float32).str)).encode())

        def check_and_hash(block: np.ndarray) -> bool:  # numpy and hashlib let go of the GIL: runs beside the write
            finite = bool(np.isfinite(block).all())
            fp.update(block.data)  # the block's bytes (C order), without a copy
            return finite

        at = 0
        with ThreadPoolExecutor(1) as beside:
            for block, mask in blocks.read():
                block = np.ascontiguousarray(block, dtype=np.float32)
                checked = beside.submit(check_and_hash, block)
                if not _link_encoded(blocks, tmp / "images", at, len(block)):
                    images[at:at + len(block)] = block  # with NaN: written, then refused, and the build discarded
                if masks is not None:
                    masks[at:at + len(block)] = np.asarray(mask, dtype=np.uint8)
                if not checked.result():
                    raise BadInput(f"{build.name}: images {at}..{at + len(block) - 1} contain NaN/inf; fix the "
                                   "source files before ingesting")
                at += len(block)
        if at != n:
            raise ValueError(f"{build}: the blocks held {at} samples, the images' shape says {n}")
        root.create_array("labels", data=labels.astype(np.int64), chunks=(n,))
        root.create_array("split", data=split.astype(np.uint8), chunks=(n,))
        root.create_array("group", data=group.astype(np.int32), chunks=(n,))
        for name, arr in (extra or {}).items():
            root.create_array(name, data=arr, chunks=arr.shape)
        for arr in (labels.astype(np.int64), split.astype(np.uint8)):  # as `fingerprint_arrays(images, labels, split)`
            fp.update(str((arr.shape, arr.dtype.str)).encode())
            fp.update(np.ascontiguousarray(arr).tobytes())
        root.attrs.update({**attrs, "schema_version": SCHEMA_VERSION, "fingerprint": fp.hexdigest(), "num_samples": n,
                           "split_codes": SPLITS, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        for name in root.array_keys():
            root[name].attrs["chunk_bytes"] = _chunk_bytes(tmp / name)


def _publish(path: Path, build: Path) -> None:
    """Point the link `path` at `build` in one rename (made durable). A store of the layout before links (a
    folder at `path`) is first moved aside as `<name>.old-*`: the one step, once per such store, with no store at
    `path`."""
    if path.exists() and not path.is_symlink():
        path.rename(path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"))
    link = temporary_name(path)
    os.symlink(build.name, link)
    os.replace(link, path)
    fsync_dir(path.parent)


def _prune(path: Path, keep_previous: int) -> None:
    """Remove all but the newest `keep_previous` builds that `path` does not link to."""
    current = path.resolve()
    earlier = [b for b in builds(path) if b.resolve() != current]
    for old in earlier[:-keep_previous or None]:
        shutil.rmtree(old, ignore_errors=True)


def _chunk_files(array_dir: Path) -> list[Path]:
    """The path of each chunk along the first axis of an array written by `write_dataset` (its other axes are one
    chunk), named as zarr names them."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    n = -(-meta["shape"][0] // meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    rest = [0] * (len(meta["shape"]) - 1)
    return [array_dir / chunk_key(meta, (i, *rest)) for i in range(n)]


def chunk_sizes(array_dir: str | Path) -> list[int]:
    """The size of each chunk file along the first axis of a Zarr v3 array written a row per chunk (`write_dataset`,
    `images_array`); 0 where there is none (all fill value, or lost)."""
    return _chunk_bytes(Path(array_dir))


def _chunk_bytes(array_dir: Path) -> list[int]:
    """The size of each chunk file of an array written by `write_dataset` (0 where there is none)."""
    return [f.stat().st_size if f.exists() else 0 for f in _chunk_files(array_dir)]


_checked: set[tuple[str, float]] = set()  # stores whose chunk files held, by (path, metadata mtime)


def _check_chunks(path: Path, root: zarr.Group) -> None:
    """Refuse a real dataset store with a chunk file missing or truncated (once per process and store)."""
    key = (str(path.resolve()), (path / "zarr.json").stat().st_mtime)
    if key in _checked:
        return
    for name in root.array_keys():
        sizes = root[name].attrs.get("chunk_bytes")
        if sizes is None:  # stores written before the sizes were recorded
            continue
        for f, size in zip(_chunk_files(path / name), sizes):
            actual = f.stat().st_size if f.exists() else 0
            if actual != size:
                what = "is missing" if not actual else f"has {actual} bytes, {size} written"
                raise BadInput(f"{path}: chunk file {f.relative_to(path)} {what}; the store is damaged: delete it "
                               "and ingest again")
    _checked.add(key)


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified share of `labels` (round(fraction * class size), at least one per
    class); the same (labels, fraction, seed) always give the same indices. fraction >= 1 gives all."""
    if fraction >= 1:
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    keep = [rng.choice(idx, max(1, int(round(fraction * len(idx)))), replace=False)
            for idx in (np.nonzero(labels == c)[0] for c in np.unique(labels))]
    return np.sort(np.concatenate(keep))


def mask_classes(root: Any) -> int:
    """The classes of an opened store's masks: as many as its `mask_names`, else its largest label + 1 (read a block
    of rows at a time: a store's masks need not fit in memory); 0 without masks. What a mask-conditioned model and
    the mask generator are sized to."""
    if "masks" not in root.array_keys():
        return 0
    return len(root.attrs.get("mask_names", [])) or int(largest(root["masks"])) + 1


def channel_names(attrs: Any, channels: int) -> list[str]:
    """A store's channel names (its `channel_names` attribute), else `image` for one channel or `channel<i>`."""
    names = list(attrs.get("channel_names") or [])
    if len(names) == channels:
        return [str(n) for n in names]
    return ["image"] if channels == 1 else [f"channel{i}" for i in range(channels)]


def open_store(path: str | Path) -> zarr.Group:
    """Open a store read-only with a clear error when it is missing or not a motfm store."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise InputMissing(f"{path}: no Zarr v3 store here; run the ingest (or sample) stage first")
    # the link resolved once: a long reader keeps reading the build it opened when a re-ingest moves the link
    root = zarr.open_group(str(path.resolve()), mode="r", zarr_format=3)
    if "schema_version" not in root.attrs:
        raise BadInput(f"{path}: not a motfm store (no schema_version attribute)")
    _check_chunks(path, root)
    return root


def split_rows(root: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of one split in an opened store (`open_store`), their labels), from the small per-sample arrays."""
    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    rows = np.nonzero(root["split"][:] == SPLITS[split])[0]
    return rows, root["labels"][:][rows]


def read_rows(root: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Sorted `rows` of an opened store as arrays: {'images', 'labels', 'group'[, 'masks']}, read alone (a low-data
    share costs its own size, not its split's); `group` is each sample's subject (patient, source volume)."""
    out = {"images": root["images"].get_orthogonal_selection((rows,)), "labels": root["labels"][:][rows],
           "group": root["group"][:][rows]}
    if "masks" in root.array_keys():
        out["masks"] = root["masks"].get_orthogonal_selection((rows,))
    return out


def load_split(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """All samples of one split as arrays (`read_rows`; fine for small datasets): what the evaluation resamples by
    `group`."""
    root = open_store(path)
    return read_rows(root, split_rows(root, split)[0])


def open_split(path: str | Path, split: str) -> dict[str, Any]:
    """One split with its images (and masks) left in the store as `Rows`, read a batch at a time by whoever reads
    them; `labels` and `group` (a few bytes a sample) loaded. What the evaluation reads the real test split as, so
    its memory does not grow with that split."""
    root = open_store(path)
    rows, labels = split_rows(root, split)
    out: dict[str, Any] = {"images": Rows((root["images"], rows)), "labels": labels, "group": root["group"][:][rows]}
    if "masks" in root.array_keys():
        out["masks"] = Rows((root["masks"], rows))
    return out


Splits = dict[str, dict[str, Any]]  # {split name: load_split(...) or open_split(...) of it}


def load_splits(path: str | Path, names: tuple[str, ...] = ("train", "test")) -> Splits:
    """Several splits at once (`load_split` each): what the evaluation reads once and hands to every metric."""
    return {name: load_split(path, name) for name in names}
