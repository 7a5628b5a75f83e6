"""How freed buffers go back to the operating system: streaming readers stay within their memory bound only when
large blocks are served by mmap (glibc), so that freeing one returns it at once."""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["mmap_large_buffers", "trim_freed"]

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def mmap_large_buffers(threshold: int = 16 * 2**20) -> bool:
    """Serve every allocation of `threshold` bytes or more by its own mmap (glibc), so that freeing it returns the
    memory to the system at once. glibc's default raises this threshold to the size of each large block freed
    (up to 32 MiB), after which blocks of decoded chunks and read batches, allocated in the reader threads' heaps,
    stay mapped and a streaming pass over a large store grows without bound (measured in benchmarks/RESULTS.md,
    "Evaluation memory"). Process-wide and permanent; False (nothing changed, and a warning logged: the memory bound of
    streaming readers does not hold) where the C library is not glibc."""
    try:
        # the running process's own C library: find_library would spawn ldconfig/gcc subprocesses
        libc = ctypes.CDLL(None)
        applied = sys.platform.startswith("linux") and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    except (OSError, AttributeError):  # no mallopt: not glibc (musl has none that takes this parameter, macOS none)
        applied = False
    if not applied:
        log.warning("mmap_large_buffers: cannot set the C library's mmap threshold here (not glibc); freed read "
                    "buffers may stay mapped, so streaming a large store can hold more memory than planned")
    return bool(applied)


def trim_freed() -> bool:
    """Give the memory freed so far back to the system (glibc's malloc_trim): after a unit of work that allocated and
    freed large arrays (an ingested row), what its threads' heaps kept would otherwise add up over the rows. One call
    per unit costs little; fixing the mmap threshold instead (`mmap_large_buffers`) made every large temporary array
    fault its pages afresh (an ingest row 50% slower, RESULTS.md "Ingest at scale"). False where not glibc."""
    try:
        return sys.platform.startswith("linux") and ctypes.CDLL(None).malloc_trim(0) == 1
    except (OSError, AttributeError):
        return False

