"""Writing rows of a synthetic store's arrays with tensorstore, and where Zarr keeps a shard.

Why tensorstore: compared like for like (the same arrays, layout, codecs, completion records and flushes), it wrote
the default layout faster than the shard encoder this module held before, 2D and 3D alike, since it compresses a
shard's chunks on several threads (benchmarks/RESULTS.md, writer options). It writes the Zarr v3 sharding
format the arrays' zarr.json describe, so zarr-python and every other Zarr v3 reader read the stores (tested).

Each array is opened once per process, with tensorstore's own fsync off: `synthetic.write_shard` flushes every
shard file itself, before the completion record that says it is there. A handle is keyed by the array's zarr.json
(inode, size, mtime), so an array created again at the same path is opened afresh.

tensorstore writes a shard into the lock file `<key>.__lock`, holding a POSIX record lock on it, and renames it into
place: a reader never sees half a shard. A writer killed mid-write leaves its lock file; `sweep_locks` removes
those no live writer holds. A disk that fills is reported as tensorstore's ValueError; `write_rows` raises it as the
OSError (ENOSPC) it is, so it is told apart from bad input and never retried.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LOCK_SUFFIX", "chunk_key", "shard_file", "sweep_locks", "write_rows"]

LOCK_SUFFIX = ".__lock"  # tensorstore's file driver: the file a write goes to before its rename
_OS_ERROR = re.compile(r"os_error_code='(\d+)'")
_MOST_OPEN = 32  # handles kept per process (a sampler writes a handful of arrays of one or two stores)
_opened: dict[tuple[str, int, int, int], Any] = {}


def chunk_key(meta: dict[str, Any], coords: tuple[int, ...]) -> str:
    """The key of the chunk (here: the shard) at `coords`, as zarr-python names it."""
    encoding = meta.get("chunk_key_encoding", {"name": "default"})
    if encoding["name"] == "v2":
        return encoding.get("configuration", {}).get("separator", ".").join(map(str, coords)) or "0"
    return encoding.get("configuration", {}).get("separator", "/").join(["c", *map(str, coords)])


def shard_file(array_dir: str | Path, shard: int) -> Path:
    """The file holding shard `shard` (along the first axis) of the Zarr v3 array at `array_dir`."""
    array_dir = Path(array_dir)
    meta = json.loads((array_dir / "zarr.json").read_text())
    ndim = len(meta["shape"])
    return array_dir / chunk_key(meta, (shard, *[0] * (ndim - 1)))


def _open(array_dir: Path) -> Any:
    """The array at `array_dir` opened with tensorstore (cached per process; see the module docstring)."""
    import tensorstore as ts

    st = (array_dir / "zarr.json").stat()
    key = (str(array_dir.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _opened:
        while len(_opened) >= _MOST_OPEN:
            _opened.pop(next(iter(_opened)))
        _opened[key] = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": key[0]}},
                               open=True, context=ts.Context({"file_io_sync": False})).result()
    return _opened[key]


def write_rows(array_dir: str | Path, start: int, values: np.ndarray) -> None:
    """Write `values` into rows [start, start + len(values)) of the Zarr v3 array at `array_dir`. Whole shards are
    written as one file each; a shard partly covered is read, merged and written back. A full disk raises
    OSError(ENOSPC) naming the file."""
    array = _open(Path(array_dir))
    values = np.asarray(values, dtype=array.dtype.numpy_dtype)
    try:
        array[start:start + len(values)].write(values).result()
    except ValueError as e:
        code = _OS_ERROR.search(str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), f"{os.strerror(int(code.group(1)))} ({e})", str(array_dir)) from None


def _held(lock: Path) -> bool:
    """Whether a live writer holds tensorstore's record lock on `lock` (False for a file already gone)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (closing drops the lock taken here)
    return False


def sweep_locks(folder: str | Path) -> list[Path]:
    """Remove tensorstore's lock files under `folder` that no live writer holds: what a writer killed mid-shard
    left (half a shard's bytes, never read as data). Returns what was removed."""
    removed = []
    for root, _, names in os.walk(folder):
        for name in names:
            lock = Path(root) / name
            if name.endswith(LOCK_SUFFIX) and not _held(lock):
                lock.unlink(missing_ok=True)
                removed.append(lock)
    return removed
