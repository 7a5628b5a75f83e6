"""A folder ingested a subject at a time, in memory that does not grow with the folder, resumable and fanned out.

The split, the class map and the store's layout are decided from labels.csv before any pixel is read. Each row is
then read, prepared (`prepare_sample`) and written whole as a part, `<store>.parts/row-<i>.npz` (a temporary name,
then a rename: the part existing is the row's completion record), in this process or, for more than `FEW` rows, on
the Dask cluster the sampler uses (a worker lost mid-row leaves no part; Dask runs the row again elsewhere). Before
its part, the worker encodes the row's images as the store holds them (`row-<i>-<id>.zarr`, named by the part), so
compression runs on every worker and the parts hold no raw copy of the images. The store is then written from
the parts, a part at a time: images decoded (a few ahead), checked and fingerprinted, their chunk files linked in;
masks mapped to classes and written. The parts are then removed.
An interrupted ingest resumes at the rows without a part; a part whose files changed since is prepared again; a
labels.csv that changed since is refused (`plan.json` keeps the one the parts were prepared for).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from motfm_core.allocator import trim_freed
from motfm_core.cluster import dask_client
from motfm_core.config import DataConfig
from motfm_core.data.checks import check_classes_in_splits, check_sizes
from motfm_core.data.notes import Provenance, source_attrs
from motfm_core.data.prepare import class_lookup, prepare_sample, to_classes
from motfm_core.data.preprocess import patient_split
from motfm_core.data.readers import (
    DICOM_SUFFIXES,
    MAX_LISTED,
    NIFTI_SUFFIXES,
    Listing,
    Row,
    channel_names_of,
    check_channels,
    list_folder,
    read_row,
)
from motfm_core.data.store import Blocks, chunk_sizes, images_array
from motfm_core.errors import BadInput
from motfm_core.files import atomic_path, sweep_leftovers, write_json_atomic

__all__ = ["FEW", "default_workers", "parts_dir", "prepare_folder", "prepare_row"]

log = logging.getLogger(__name__)
FEW = 8  # rows prepared in this process; more fan out over Dask workers (a local cluster takes seconds to start)
VOLUME_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES  # a 2D run may slice these (and DICOM series) into many samples
DECODE_AHEAD = 2  # parts decoded ahead of the store's write, in threads: the workers are done, their cores free
MOST_WORKERS = 8  # a local cluster's workers by default: each holds a volume or two and its own torch


def parts_dir(store: str | Path) -> Path:
    """Where an ingest into `store` keeps its prepared rows until the store is written."""
    store = Path(store)
    return store.with_name(store.name + ".parts")


def default_workers() -> int:
    """Ingest workers of a local cluster: one per CPU core (a row is one reader thread), at most MOST_WORKERS."""
    return max(1, min(MOST_WORKERS, os.cpu_count() or 1))


def _part(parts: Path, row: Row) -> Path:
    return parts / f"row-{row.index:06d}.npz"


def _encode(images: np.ndarray, parts: Path, row: Row) -> tuple[str, list[int]]:
    """A row's pieces encoded as the store's images are (an `images_array`, a chunk per piece), on the worker that
    prepared them, so the store's writer links their chunk files instead of encoding every row in one process
    (`Blocks.encoded`). Each run of a row writes its own folder (a lost worker's task may run twice, at once): the
    part written after it names the one to use, with its chunk sizes. Returns (folder name, chunk sizes)."""
    name = f"row-{row.index:06d}-{uuid.uuid4().hex[:8]}.zarr"
    with atomic_path(parts / name) as tmp:
        images_array(tmp, images.shape)[:] = images
    return name, chunk_sizes(parts / name)


def _intact(parts: Path, record: dict[str, Any]) -> bool:
    """Whether the images a part's record names are there whole (every chunk file of the size written)."""
    encoded = parts / record.get("encoded", "")
    return "encoded" in record and (encoded / "zarr.json").exists() and chunk_sizes(encoded) == record["chunk_bytes"]


def _signature(folder: Path, row: Row) -> list[list[Any]]:
    """(path, size, mtime) of every file the row reads (a DICOM series: each file in its folder)."""
    out = []
    for name in [*row.files, *([row.mask] if row.mask else [])]:
        path = folder / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out += [[str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return out


def prepare_row(listing: Listing, row: Row, cfg: DataConfig, parts: str) -> dict[str, Any]:
    """Read one row, prepare it and write its part whole; returns its record (what the store's attributes need).
    The unit of work of a Dask task: run twice (a lost worker), it writes the same bytes."""
    raw = read_row(listing, row)
    p = prepare_sample(raw, 0, cfg)
    record = {"row": row.index, "signature": _signature(listing.folder, row), "pieces": len(p.images),
              "channels": int(raw.images[0].shape[0]), "shape": list(raw.images[0].shape), "file": raw.files[0],
              "fit": p.fit, "mode": p.mode, "mask_values": p.mask_values,
              "spacing": None if raw.spacings[0] is None else [float(s) for s in raw.spacings[0]],
              "orientation": raw.orientations[0]}
    record["encoded"], record["chunk_bytes"] = _encode(p.images, Path(parts), row)
    grids = np.stack([np.full((4, 4), np.nan) if g is None else g for g in p.grids])
    arrays = {"grids": grids, "windows": np.array(p.windows, dtype=np.float64), "record": np.array(json.dumps(record))}
    if p.masks is not None:
        arrays["masks"] = p.masks
    with atomic_path(_part(Path(parts), row)) as tmp, open(tmp, "wb") as f:  # the row's completion record: last
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads the keywords as allow_pickle
    del raw, p, arrays
    trim_freed()  # the row's volumes, freed, go back to the system: a worker holds one row at a time
    return record


def _record(part: Path) -> dict[str, Any]:
    with np.load(part) as z:
        return json.loads(str(z["record"]))


def _changed_rows(old: list[dict[str, str]], new: list[dict[str, str]]) -> list[str]:
    """The labels.csv rows that differ between two readings of it, as the user finds them (line numbers)."""
    out = [f"line {i + 2}: {old[i]} -> {new[i]}" for i in range(min(len(old), len(new))) if old[i] != new[i]]
    if len(new) > len(old):
        out.append(f"{len(new) - len(old)} row(s) added")
    if len(old) > len(new):
        out.append(f"{len(old) - len(new)} row(s) removed")
    return out


def _open_parts(parts: Path, key: str, listing: Listing, say: Callable[[str], None]) -> None:
    """Make `parts` ready for rows prepared under `key` (the data config and package): kept when an interrupted
    ingest left it for the same config and labels.csv; emptied for another config; refused for another labels.csv."""
    plan = parts / "plan.json"
    if plan.exists():
        old = json.loads(plan.read_text())
        if old["key"] != key:
            say(f"ingest: {parts} holds rows prepared under another data config; preparing every row again")
            shutil.rmtree(parts)
        elif old["table"] != listing.table:
            changed = _changed_rows(old["table"], listing.table)
            more = f" and {len(changed) - MAX_LISTED} more" if len(changed) > MAX_LISTED else ""
            raise BadInput(f"{listing.folder / 'labels.csv'}: changed since the interrupted ingest into "
                           f"{parts.parent} began ({'; '.join(changed[:MAX_LISTED])}{more}); restore it to resume, or "
                           f"delete {parts} to ingest from the start")
    parts.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(parts)
    if not plan.exists():
        write_json_atomic(plan, {"key": key, "table": listing.table})


def _pending(listing: Listing, parts: Path) -> list[Row]:
    """The rows without a part, whose part was prepared from files that changed since, or whose encoded images are
    not there whole (a file lost, or a part of the layout before images were encoded on the workers)."""
    todo = []
    for row in listing.rows:
        part = _part(parts, row)
        record = _record(part) if part.exists() else None
        if record is None or record["signature"] != _signature(listing.folder, row) or not _intact(parts, record):
            todo.append(row)
    return todo


def _prepare_pending(listing: Listing, todo: list[Row], cfg: DataConfig, parts: Path, scheduler: str,
                     say: Callable[[str], None]) -> None:
    """Prepare `todo`: here when they are few (or data.workers is 1), else on Dask workers, saying how far."""
    start, total, step = time.perf_counter(), len(todo), max(1, -(-len(todo) // 10))

    def tell(done: int, where: str) -> None:
        if done % step == 0 or done == total:
            say(f"ingest: {done}/{total} rows prepared {where} ({time.perf_counter() - start:.1f}s)")

    if len(todo) <= FEW or cfg.workers == 1:
        for i, row in enumerate(todo, 1):
            prepare_row(listing, row, cfg, str(parts))
            tell(i, "here")
        return
    from distributed import as_completed

    slim = replace(listing, rows=[], table=[])  # what a task needs: not every row again in each
    tag = hashlib.sha256(str(parts.resolve()).encode()).hexdigest()[:12]
    with dask_client(scheduler or None, cfg.workers or default_workers(), threads_per_worker=1) as client:
        where = f"on Dask {client.scheduler.address} ({len(client.scheduler_info()['workers'])} worker(s))"
        # a task's error (a file that cannot be read) is the user's to fix, not retried; a lost worker's task is
        # run again by the scheduler on its own
        futures = [client.submit(prepare_row, slim, row, cfg, str(parts), key=f"motfm-ingest-{tag}-{row.index}",
                                 pure=False) for row in todo]
        try:
            for i, future in enumerate(as_completed(futures), 1):
                future.result()
                tell(i, where)
        except BaseException:
            client.cancel(futures)
            raise


def prepare_folder(cfg: DataConfig, store: Path, key: str, say: Callable[[str], None], scheduler: str = ""
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A folder source prepared into `parts_dir(store)`, row by row (resuming an interrupted ingest), as what
    `write_dataset` takes: arrays with `images` as `Blocks` read from the parts, and the store's attributes."""
    listing = list_folder(cfg.source)
    labels = np.array([r.label for r in listing.rows], dtype=np.int64)
    groups = [r.subject for r in listing.rows]
    split = patient_split(groups, cfg.val_fraction, cfg.test_fraction, cfg.seed, labels)
    sliced = cfg.spatial_dims == 2 and any(f.lower().endswith(VOLUME_SUFFIXES) or (listing.folder / f).is_dir()
                                           for r in listing.rows for f in r.files)
    if not sliced:
        check_sizes(cfg.source, labels, split)  # a row is one sample (no volume is sliced): before any pixel is read
    check_classes_in_splits(cfg.source, labels, split, listing.class_names, groups)
    parts = parts_dir(store)
    _open_parts(parts, key, listing, say)
    todo = _pending(listing, parts)
    if len(todo) < len(listing.rows):
        say(f"ingest: resuming: {len(listing.rows) - len(todo)} of {len(listing.rows)} rows already prepared in "
            f"{parts}; preparing {len(todo)}")
    _prepare_pending(listing, todo, cfg, parts, scheduler, say)
    return _from_parts(listing, parts, split, cfg)


def _from_parts(listing: Listing, parts: Path, split: np.ndarray, cfg: DataConfig
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The prepared rows as the store's arrays and attributes; the images (and masks) stay in the parts, read a
    part at a time when the store is written."""
    files = [_part(parts, row) for row in listing.rows]
    records, grids, windows = [], [], []
    for f in files:
        with np.load(f) as z:
            records.append(json.loads(str(z["record"])))
            grids.append(z["grids"])
            windows.append(z["windows"])
    for r in records:
        check_channels(r["file"], r["channels"], records[0]["channels"])
    has = [row.mask is not None for row in listing.rows]
    if any(has) and not all(has):
        raise BadInput(f"{listing.folder}: some samples have masks and some do not; give a mask for every row or none")
    classes = class_lookup([r["mask_values"] for r in records], str(listing.folder)) if all(has) else {}
    rep = [r["pieces"] for r in records]
    n, sample = sum(rep), (records[0]["channels"], *cfg.spatial_shape)

    def load(k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Part k's images, decoded (zstd lets go of the GIL: a few parts decode at once), and its masks as classes."""
        f, r = files[k], records[k]
        if not _intact(parts, r):
            raise BadInput(f"{parts / r['encoded']}: the encoded images of {r['file']} changed or went missing "
                           f"while the store was written; run the ingest again (it prepares that row again)")
        images = np.asarray(zarr.open_array(str(parts / r["encoded"]), mode="r")[:])
        if not classes:
            return images, None
        with np.load(f) as z:
            return images, to_classes(z["masks"], classes)

    def read() -> Any:  # a part a block: its chunks are linked, not encoded, so no block gathers several (a copy)
        with ThreadPoolExecutor(DECODE_AHEAD) as pool:
            coming = deque(pool.submit(load, k) for k in range(min(DECODE_AHEAD, len(files))))
            for i in range(len(files)):
                yield coming.popleft().result()
                if i + DECODE_AHEAD < len(files):
                    coming.append(pool.submit(load, i + DECODE_AHEAD))

    starts = np.cumsum([0, *rep])

    def encoded(i: int) -> tuple[Path, int]:  # store row i: piece i - starts[k] of part k
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return parts / records[k]["encoded"], i - int(starts[k])

    arrays: dict[str, Any] = {
        "images": Blocks((n, *sample), (n, 1, *sample[1:]) if classes else None, read, encoded), "masks": None,
        "labels": np.repeat([r.label for r in listing.rows], rep), "split": np.repeat(split, rep).astype(np.uint8),
        "group_names": [r.subject for r, k in zip(listing.rows, rep) for _ in range(k)],
        "intensity": np.concatenate(windows), "fits": [r["fit"] for r in records],
        "modes": [r["mode"] for r in records], "mask_values": classes}
    every = np.concatenate(grids)
    if np.isfinite(every).any():
        arrays["affine"] = every
    source = Provenance(str(listing.folder), [r["file"] for r in records], [tuple(r["shape"]) for r in records],
                        [None if r["spacing"] is None else tuple(r["spacing"]) for r in records],
                        [r["orientation"] for r in records], listing.subject_column)
    attrs = source_attrs(source, arrays, cfg, listing.class_names,
                         channel_names_of(listing, records[0]["channels"]), listing.folder)
    return arrays, attrs
