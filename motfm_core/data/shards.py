"""Writing one whole Zarr v3 shard as one file, encoded here instead of by zarr-python's codec pipeline.

Why: zarr-python's async codec pipeline spends Python time per chunk and reads each array's metadata per write,
which made it the sampler's bottleneck; encoded here the writer is several times faster, and still faster at the
large shards the writer benchmark advises (benchmarks/writer_options.py; the figures are in RESULTS.md).
A shard the sampler writes is always whole, and its layout is the one
`create_synthetic_store` makes: the sharding codec with chunks along the first axis only, inner codecs `bytes`
(little-endian) and optionally `zstd`, index `bytes` + `crc32c` at the end. For that layout the shard file is the
chunks' encoded bytes in order, then the (offset, length) index and its CRC32C, the format the Zarr v3 sharding
specification defines. `encode_shard` writes exactly the bytes zarr-python would (tested byte for byte), so every
Zarr v3 reader reads it; any other layout (another chunk-key encoding, a fill value that is not a number, other
codecs) returns None and the caller writes through zarr-python. The file is written under a temporary name and
renamed (removed on error): a reader never sees half a shard.

A zarr upgrade could change what zarr-python writes; so each process reads its first encoded shard of every array
back through zarr-python and, if the values differ, rewrites it through zarr-python and stops encoding for the rest
of the process, logging why.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd

from motfm_core.files import temporary_name

__all__ = ["chunk_key", "encode_shard", "shard_file", "write_whole_shard"]

log = logging.getLogger(__name__)

_EMPTY = np.uint64(2**64 - 1)  # the index entry of a chunk not stored (all fill value)
_FLOAT_WORDS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_verified: set[str] = set()  # arrays whose first encoded shard read back equal in this process
_disabled: list[str] = []  # why encoding stopped in this process (a read-back differed), if it did


def _fill(meta: dict[str, Any], dtype: np.dtype) -> Any | None:
    """The array's fill value as a scalar of `dtype`; None for a fill value written as anything but a number or
    one of JSON's float words (a hex bit pattern, a complex or structured value)."""
    value = meta.get("fill_value")
    if isinstance(value, str):
        if value not in _FLOAT_WORDS or dtype.kind != "f":
            return None
        value = _FLOAT_WORDS[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or dtype.kind not in "fiu":
        return None
    return dtype.type(value)


def _is_fill(chunk: np.ndarray, fill: Any) -> bool:
    """Whether zarr-python would leave this chunk out (write_empty_chunks=False): all fill value, NaN equal to NaN,
    a float 0 fill compared bit for bit (-0.0 is data)."""
    if chunk.dtype.kind == "f" and fill == 0:
        return not chunk.view(f"u{chunk.dtype.itemsize}").any()
    return bool(np.array_equal(chunk, np.broadcast_to(fill, chunk.shape), equal_nan=chunk.dtype.kind == "f"))


def _compressors(codecs: list[dict[str, Any]]) -> tuple[Zstd, ...] | None:
    """The compressors after the sharding codec's inner `bytes` codec (little-endian): () or (zstd,); None for any
    other chain."""
    first = codecs[0] if codecs else {}
    if first.get("name") != "bytes" or first.get("configuration", {}).get("endian", "little") != "little":
        return None
    if len(codecs) == 1:
        return ()
    if len(codecs) == 2 and codecs[1]["name"] == "zstd":
        c = codecs[1].get("configuration", {})
        return (Zstd(level=c.get("level", 0), checksum=c.get("checksum", False)),)
    return None


def encode_shard(meta: dict[str, Any], values: np.ndarray) -> bytes | None:
    """The bytes of one whole shard of the array whose zarr.json is `meta`, holding `values` (the shard's full
    extent); None when the array's layout is not the one this encoder knows (see the module docstring) or the
    values do not fill a whole shard."""
    if len(meta.get("codecs", [])) != 1 or meta["codecs"][0]["name"] != "sharding_indexed":
        return None
    cfg = meta["codecs"][0]["configuration"]
    shard_shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    chunk_shape = tuple(cfg["chunk_shape"])
    compressors = _compressors(cfg["codecs"])
    index_codecs = [c["name"] for c in cfg["index_codecs"]]
    if (compressors is None or index_codecs != ["bytes", "crc32c"] or cfg.get("index_location", "end") != "end"
            or cfg["index_codecs"][0].get("configuration", {}).get("endian", "little") != "little"
            or chunk_shape[1:] != shard_shape[1:] or shard_shape[0] % chunk_shape[0]
            or tuple(values.shape) != shard_shape):
        return None
    if not isinstance(meta.get("data_type"), str) or chunk_key(meta, (0,)) != "c/0":
        return None
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    fill = _fill(meta, dtype)
    if fill is None:
        return None
    data = np.ascontiguousarray(values, dtype=dtype)
    per = chunk_shape[0]
    n = shard_shape[0] // per
    index = np.full((n, 2), _EMPTY, dtype="<u8")
    parts, offset = [], 0
    for k in range(n):  # chunk k holds rows [k * per, (k + 1) * per): contiguous bytes of the shard's values
        chunk = data[k * per:(k + 1) * per]
        if _is_fill(chunk, fill):
            continue
        raw = chunk.data.cast("B")  # the chunk's bytes, not copied (a C-contiguous run of rows)
        encoded = compressors[0].encode(raw) if compressors else raw
        index[k] = offset, len(encoded)
        parts.append(encoded)
        offset += len(encoded)
    if not parts:
        return b""  # nothing but fill value: zarr-python stores no file
    index_bytes = index.tobytes()
    return b"".join([*parts, index_bytes, np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()])


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


def _reads_back(array_dir: Path, meta: dict[str, Any], shard: int, values: np.ndarray) -> bool:
    """Whether zarr-python reads shard `shard` of the array as `values` (NaN equal to NaN)."""
    n = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    back = zarr.open_array(str(array_dir), mode="r", zarr_format=3)[shard * n:(shard + 1) * n]
    stored = np.asarray(values, dtype=back.dtype)  # what the array holds: float32 values stored as float16 round
    return bool(np.array_equal(back, stored, equal_nan=back.dtype.kind == "f"))


def write_whole_shard(array_dir: str | Path, shard: int, values: np.ndarray) -> bool:
    """Write shard `shard` (along the first axis) of the Zarr v3 array at `array_dir` from `values`, its full
    extent, as one file (temporary name, then rename). False, writing nothing, when the layout is not one
    `encode_shard` knows or encoding was stopped in this process; the caller then writes through zarr-python."""
    if _disabled:
        return False
    array_dir = Path(array_dir)
    meta = json.loads((array_dir / "zarr.json").read_text())
    encoded = encode_shard(meta, values)
    if encoded is None:
        return False
    target = shard_file(array_dir, shard)
    if not encoded:  # all fill value: no file, as zarr-python leaves it
        target.unlink(missing_ok=True)
        return True
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        with open(tmp, "wb") as f:
            f.write(encoded)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    key = str(array_dir.resolve())
    if key not in _verified:
        if not _reads_back(array_dir, meta, shard, values):
            _disabled.append(f"{array_dir} shard {shard} read back through zarr-python {zarr.__version__} differs "
                             "from what was encoded")
            log.warning("shards: %s; writing through zarr-python from now on in this process", _disabled[0])
            return False  # the caller rewrites this shard through zarr-python
        _verified.add(key)
    return True
