"""Conventions every module shares, each in one place: the device a run uses, the model-space intensity scale,
files published whole (a temporary name, then a rename), content hashes of files, and how large freed buffers
go back to the operating system."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_path", "default_device", "figure_dpi", "file_sha256", "mmap_large_buffers", "save_atomic",
           "resumable", "to_image_space", "to_model_space", "write_json_atomic"]

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device` when given, else the first CUDA device when there is one, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def figure_dpi(image_px: int, cell_inches: float, least: int = 80) -> int:
    """Resolution of a figure of images drawn in cells `cell_inches` wide: enough that each is drawn at least at its
    own pixel size (a 192 px slice in a 1.1 inch cell needs 175 dpi), never under `least`."""
    return max(least, math.ceil(image_px / cell_inches))


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] stored intensities -> [-1, 1], the scale every network here (generator and downstream) sees."""
    return images * 2.0 - 1.0


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space -> [0, 1] stored intensities, clipped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Build a file, folder or link under the yielded temporary sibling name; on success it replaces `path` in
    one rename (a reader sees the old object or the whole new one, never half of it), on failure it is removed.
    A folder can only replace a missing `path` (or an empty folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON at `path`, published whole."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))
    return Path(path)


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save published whole: a reader never sees half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def resumable(path: str | Path, key: str, device: str | torch.device) -> dict[str, Any] | None:
    """The training state saved at `path` when it belongs to the run `key` (same data and config), else None: an
    interrupted stage resumes from it, a changed one starts afresh."""
    if not Path(path).exists():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    return state if state.get("run_key") == key else None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mmap_large_buffers(threshold: int = 16 * 2**20) -> bool:
    """Serve every allocation of `threshold` bytes or more by its own mmap (glibc), so that freeing it returns the
    memory to the system at once. glibc's default raises this threshold to the size of each large block freed
    (up to 32 MiB), after which blocks of decoded chunks and read batches, allocated in the reader threads' heaps,
    stay mapped: streaming a 4096-volume 3D store through the evaluation grew its RSS from 0.9 GB to 2.5 GB
    (killed in a 2 GB cgroup); with a fixed 16 MiB threshold it stays near 1 GB at the same speed (4 MiB: 0.84 GB,
    17% slower). Process-wide and permanent; False (nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        return bool(name) and ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    except (OSError, AttributeError):
        return False
