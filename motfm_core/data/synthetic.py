"""The sharded synthetic dataset (`synthetic.zarr`, one version of it) and its completion records.

Arrays: `images`, `labels`, `seed` (and, for mask-conditioned models, `masks` and `mask_source`, the train-split
index of each conditioning mask, plus `mask_deform` for deformed masks, and `redraws` when the copy guard ran), with
one Zarr shard per sampling task (sharding codec), so concurrent writers never touch the same object.

After a shard's data is written and flushed to disk, its completion record `shards/<index>` (a Zarr group whose
attributes say what was written, and the size of every file the shard's data lives in) is staged under `.staging/`
(never inside `shards/`) and moved into place by an atomic rename. A shard is complete when its record exists and
every file the record lists is there with its size: zarr reads a missing shard file as the fill value, so a file
deleted or truncated after the fact would otherwise be served as NaN images and -1 labels. `completed_shards` is
the one definition every reader, the report and the sampler use; a re-run regenerates only the other shards.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from motfm_core.data.shards import shard_file, sweep_locks, write_rows
from motfm_core.data.store import IMAGE_ZSTD_LEVEL, SCHEMA_VERSION
from motfm_core.errors import BadInput, InputMissing
from motfm_core.files import atomic_path, fsync_dir, fsync_tree, sweep_leftovers, temporary_name

__all__ = ["CHUNK_BYTES", "StoreDamaged", "completed_shards", "create_synthetic_store", "damaged_shards",
           "incomplete_shards", "load_synthetic", "num_shards", "open_synthetic", "require_complete",
           "samples_per_chunk", "sampling_seconds", "shard_bounds", "shard_complete", "shard_images", "shard_states",
           "sweep_store", "write_shard"]

CHUNK_BYTES = 128 * 1024  # per-chunk overhead dominates below this (one-sample chunks capped the writer)
# a store sized by bytes still has at least this many shards when it has the samples: one per GPU of an 8-GPU
# node, and a progress bar that moves
MIN_SHARDS = 8


class StoreDamaged(BadInput):
    """A synthetic store whose shards are unfinished, or whose recorded files are missing or truncated; or one read
    under a lease that lapsed, or read after it was pruned."""


# versions whose reader's lease lapsed (resolved path -> why), recorded by `versions.hold_version`: every read of
# one fails loudly, since pruning may have deleted it under the reader
LAPSED: dict[str, str] = {}


def samples_per_chunk(sample_bytes: int, shard_size: int) -> int:
    """Samples per chunk inside a shard: one when a sample is large, else the largest divisor of the shard
    size that keeps a chunk near CHUNK_BYTES (reading one sample then decodes at most ~128 KiB)."""
    target = max(1, CHUNK_BYTES // max(1, sample_bytes))
    return max(d for d in range(1, min(target, shard_size) + 1) if shard_size % d == 0)


def shard_images(sample_bytes: int, num_samples: int, shard_mb: float) -> int:
    """Samples per shard when shards are sized by bytes: as many as hold about `shard_mb` MiB of float32 images
    (a multiple of the samples in one ~128 KiB chunk), but no more than leave MIN_SHARDS shards. Per-shard costs
    (three arrays' files, a completion record, their flushes to disk) are paid per shard, so the writer's speed
    follows the shard's bytes, not its image count (benchmarks/RESULTS.md, writer options)."""
    per = max(1, int(shard_mb * 2**20) // max(1, sample_bytes))
    per = min(per, max(1, -(-num_samples // MIN_SHARDS)))
    chunk = max(1, CHUNK_BYTES // max(1, sample_bytes))  # samples in one ~128 KiB chunk
    return per - per % chunk if per >= chunk else per


def create_synthetic_store(
    path: str | Path, num_samples: int, sample_shape: tuple[int, ...], shard_size: int, attrs: dict[str, Any],
    with_masks: bool = False, extras: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    compress: bool = True,
) -> Path:
    """Create (once) the empty sharded store; an existing store with the same plan is reused as is.

    `extras` adds per-sample arrays {name: (dtype, trailing shape)}, e.g. {"redraws": ("int32", ())};
    `compress=False` stores the images without zstd (faster to write; the other arrays keep it)."""
    path = Path(path)
    plan = {"num_samples": num_samples, "sample_shape": list(sample_shape), "shard_size": shard_size}
    if (path / "zarr.json").exists():
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
        old = {k: root.attrs.get(k) for k in plan}
        if old != plan or root.attrs.get("run_key") != attrs.get("run_key"):
            raise BadInput(
                f"{path}: an existing synthetic store has a different plan or checkpoint ({old}); "
                "choose a new output folder or remove the old store")
        return path
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        per = samples_per_chunk(4 * int(np.prod(sample_shape)), shard_size)
        root.create_array("images", shape=(num_samples, *sample_shape), dtype="float32",
                          chunks=(per, *sample_shape), shards=(shard_size, *sample_shape), fill_value=np.nan,
                          compressors=ZstdCodec(level=IMAGE_ZSTD_LEVEL) if compress else None)
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


def _file_problem(path: Path, files: dict[str, int]) -> str | None:
    """Why the files a record lists ({relative path: size in bytes; 0 = no file, all fill value}) do not hold
    the shard's data, or None when they do."""
    for rel, size in files.items():
        if size == 0:
            continue
        try:
            actual = (path / rel).stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual} bytes, its record says {size}"
    return None


def shard_states(path: str | Path) -> tuple[dict[int, dict[str, Any]], dict[int, str], list[int]]:
    """One pass over a store's completion records: (complete {index: record attributes}, damaged {index: what is
    wrong}, missing [indices without a record]). Complete = record present and every file it lists whole (records
    written before file sizes were recorded list none)."""
    path = Path(path)
    num = zarr.open_group(str(path), mode="r", zarr_format=3).attrs["num_shards"]
    done: dict[int, dict[str, Any]] = {}
    damaged: dict[int, str] = {}
    missing: list[int] = []
    for i in range(num):
        record = _record_dir(path, i) / "zarr.json"
        if not record.exists():
            missing.append(i)
            continue
        attrs = json.loads(record.read_text())["attributes"]
        problem = _file_problem(path, attrs.get("files", {}))
        if problem:
            damaged[i] = problem
        else:
            done[i] = attrs
    return done, damaged, missing


def damaged_shards(path: str | Path) -> dict[int, str]:
    """{index: what is wrong} for shards whose record exists but whose data files are missing or truncated."""
    return shard_states(path)[1]


def completed_shards(path: str | Path) -> dict[int, dict[str, Any]]:
    """{index: completion-record attributes} of every complete shard (record present, files whole): the one
    definition every reader uses."""
    return shard_states(path)[0]


def sampling_seconds(path: str | Path) -> tuple[float, str]:
    """Seconds per image the store's sampling took (the sum over its complete shards' records, copy-guard redraws
    included, over the store's samples) and the device it ran on ("?" before any shard is complete)."""
    import zarr

    records = list(completed_shards(path).values())
    n = zarr.open_group(str(path), mode="r", zarr_format=3).attrs["num_samples"]
    return sum(r["seconds"] for r in records) / max(1, n), records[0].get("device", "?") if records else "?"


def incomplete_shards(path: str | Path) -> list[int]:
    """Indices of shards that are not complete (see `completed_shards`): what a re-run of sampling writes."""
    _, damaged, missing = shard_states(path)
    return sorted([*damaged, *missing])


def require_complete(path: str | Path) -> None:
    """Raise StoreDamaged (naming the store, the shard and the fix) unless every shard of a synthetic store is
    complete with all of its files: a reader is never served a missing file as data. A version read under a lease
    that lapsed, or pruned, is refused saying so."""
    lapsed = LAPSED.get(str(Path(path).resolve()))
    if lapsed:
        raise StoreDamaged(f"{path}: the lease held on it lapsed ({lapsed}), so pruning may have deleted it under "
                           "this reader; open it again under a new hold_version, or read synthetic/latest")
    if not (Path(path) / "zarr.json").exists():
        pruned = Path(path).parent / ".pruned" / Path(path).name
        if pruned.exists():
            raise StoreDamaged(f"{path}: this version was pruned at {pruned.read_text().strip()} "
                               "(sample.keep_versions keeps only the newest); read synthetic/latest, or hold a lease "
                               "(hold_version) on a version while you read it")
        raise InputMissing(f"{path}: no synthetic store here; run the sample stage first")
    _, damaged, missing = shard_states(path)
    if damaged:
        i, why = next(iter(damaged.items()))
        more = f" (and {len(damaged) - 1} more shards)" if len(damaged) > 1 else ""
        raise StoreDamaged(f"{path}: shard {i} is damaged: {why}{more}; re-run the sample stage to rewrite it, or "
                           "read another version")
    if missing:
        raise StoreDamaged(f"{path}: shards {missing[:10]} are incomplete (a sampling run did not finish); re-run "
                           "the sample stage to finish them")


def sweep_store(path: str | Path) -> list[Path]:
    """Remove what crashed writers left in a synthetic store: staged records, half-written shard files (see
    `files.sweep_leftovers`) and the lock files of shards tensorstore was writing (`shards.sweep_locks`); run
    before sampling resumes a version."""
    path = Path(path)
    removed = sweep_leftovers(path / ".staging")
    for array in (p for p in path.iterdir() if (p / "zarr.json").exists() and p.name != "shards"):
        for folder, _, _ in os.walk(array):
            removed += sweep_leftovers(folder)
        removed += sweep_locks(array)  # a shard tensorstore was writing when its process was killed
    return removed


def write_shard(path: str | Path, index: int, images: np.ndarray, labels: np.ndarray, seeds: np.ndarray,
                info: dict[str, Any] | None = None, masks: np.ndarray | None = None,
                mask_source: np.ndarray | None = None, extras: dict[str, np.ndarray] | None = None,
                direct: bool = True, durable: bool = True) -> None:
    """Write one shard's samples, flush them to disk, then publish its completion record (with each file's size)
    by an atomic rename. Each array's shard is written by tensorstore (`shards.write_rows`: one file, renamed into
    place); `direct=False` writes through zarr-python instead (the writer benchmark's comparison). `durable=False`
    skips the flushes (fsync): faster, but a power cut can leave a record over data that never reached the disk
    (benchmarks/RESULTS.md, writer options)."""
    sync_file, sync_dir = (fsync_tree, fsync_dir) if durable else (_no_sync, _no_sync)
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
    files = {}
    for name, rows in arrays.items():
        if direct:
            write_rows(path / name, start, rows)
        else:
            zarr.open_array(str(path / name), mode="r+", zarr_format=3)[start:stop] = rows
        target = shard_file(path / name, index)
        if target.exists():
            sync_file(target)  # the data on disk before the record that says it is there
            sync_dir(target.parent)  # and the rename that put it there
            files[target.relative_to(path).as_posix()] = target.stat().st_size
        else:  # all fill value: zarr stores no file
            files[target.relative_to(path).as_posix()] = 0
    record = _record_dir(path, index)
    tmp = temporary_name(path / ".staging" / record.name)  # outside shards/: never read as data
    tmp.mkdir(parents=True)  # a Zarr v3 group's zarr.json, as zarr.create_group writes it (without its ~4 ms)
    (tmp / "zarr.json").write_text(json.dumps({"attributes": {"start": start, "stop": stop, **(info or {}),
                                                              "files": files},
                                               "zarr_format": 3, "node_type": "group"}, indent=2,
                                              default=lambda v: v.item()))  # numpy scalars
    sync_file(tmp)
    if record.exists():
        recorded = json.loads((record / "zarr.json").read_text())["attributes"].get("files", {})
        if _file_problem(path, recorded) is None:  # a racing duplicate finished first: same seeds, same content
            shutil.rmtree(tmp)
            _remove_if_empty(tmp.parent)
            return
        shutil.rmtree(record)  # a damaged shard, rewritten: its old record goes
    _commit_record(tmp, record, sync_dir)


def _no_sync(path: Path) -> None:
    return None


def _commit_record(staged: Path, record: Path, sync_dir: Callable[[Path], None] = fsync_dir) -> None:
    """Publish a staged completion record by an atomic rename into `shards/` (the moment a shard is complete)."""
    record.parent.mkdir(exist_ok=True)
    os.replace(staged, record)
    sync_dir(record.parent)
    _remove_if_empty(staged.parent)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # left while another writer stages its record
        pass


def load_synthetic(path: str | Path) -> dict[str, np.ndarray]:
    """All samples of a complete synthetic store: `images`, `labels` and, when the store has them, `masks`;
    refuses a store with unfinished or damaged shards."""
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
