"""Files published whole and durably: built under a temporary sibling name, flushed (fsync), then renamed over the
target, so a reader sees the old object or the whole new one; the leftovers of crashed writers are swept by name.
Content hashes of files live here too, as every stage keys its outputs on them."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from motfm_core.errors import BadInput

__all__ = ["atomic_path", "disk_full_line", "file_sha256", "folder_holder", "FolderBusy", "fsync_dir", "fsync_tree",
           "HOLD_FILE", "hold_folder", "held_in_turn", "is_out_of_disk", "sweep_leftovers", "system_error",
           "temporary_name", "write_json_atomic"]


@functools.cache
def _process_scope() -> str:
    """Where this process's pid means something: this boot of this kernel and this pid namespace, as 8 hex digits.
    Containers that share a host name (and a file system) but not a pid namespace, or a machine after a reboot,
    have other scopes, so their pids are never looked up here."""
    parts = []
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(source).read_text().strip() if "boot_id" in source else str(os.stat(source).st_ino))
        except OSError:
            parts.append("?")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:8]


def temporary_name(path: str | Path) -> Path:
    """A hidden sibling of `path` for building it: `.<name>.tmp-<random>-<pid>-<scope>@<host>` (scope: the boot and
    pid namespace the pid belongs to), so that a later run can tell the leftovers of a crashed writer
    (`sweep_leftovers`) from those of one still running."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}-{os.getpid()}-{_process_scope()}"
                          f"@{socket.gethostname()}")


_LEFTOVER = re.compile(r"^\..+\.tmp-[0-9a-f]{8}(?:-(\d+)(?:-([0-9a-f]{8}))?@(.+))?$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _writer_gone(pid: str | None, scope: str | None, host: str | None) -> bool:
    """Whether the writer named in a temporary name has ended, as far as this process can know: only a pid of this
    process's own scope (same boot, same pid namespace, same host name) can be looked up. Names written before the
    scope was recorded are judged by host name alone, as they were."""
    if pid is None or host != socket.gethostname():
        return False
    if scope is not None and scope != _process_scope():
        return False  # another container's (or boot's) pid: its number means nothing here
    return not _pid_alive(int(pid))


def sweep_leftovers(folder: str | Path, older_than: float = 24 * 3600) -> list[Path]:
    """Remove what crashed writers left in `folder` (not below it): temporary names (`temporary_name`) of a
    process of this machine's boot and pid namespace that is gone, or of any other when older than `older_than`
    seconds (another host's or container's processes cannot be asked). A writer that is still running keeps its
    files. Returns what was removed."""
    folder = Path(folder)
    removed = []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _LEFTOVER.match(p.name)
        if not m:
            continue
        try:
            stale = time.time() - p.lstat().st_mtime > older_than
        except FileNotFoundError:
            continue
        if stale or _writer_gone(*m.groups()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (a rename into it, a new file) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file under `path` (or `path` itself, a file), then its folders: its data on disk before a
    rename publishes it."""
    path = Path(path)
    if path.is_symlink():
        return
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Build a file, folder or link under the yielded temporary sibling name; on success its data is flushed to
    disk (fsync), it replaces `path` in one rename (a reader sees the old object or the whole new one, never half
    of it) and the rename itself is made durable; on failure it is removed. A folder can only replace a missing
    `path` (or an empty folder)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_tree(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
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


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def system_error(exc: BaseException) -> bool:
    """An OSError the operating system raised (it has an errno: a network file system's EIO, a missing file),
    which a retry or the user's path fixes: passed on as it is, not turned into a bad-file ValueError. Decoders'
    own OSErrors (PIL's "image file is truncated") carry no errno."""
    return isinstance(exc, OSError) and exc.errno is not None


HOLD_FILE = ".motfm-hold"  # the lock a run holds on its folder; its text names the holder


class FolderBusy(BadInput):
    """A folder another process holds (`hold_folder`): bad timing, not a failure to retry."""


def _try_lock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _say_holder(fd: int) -> None:
    """Write who holds a lock file (pid, host, since when) into it, for whoever finds it held."""
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())


def folder_holder(folder: str | Path) -> str | None:
    """Who holds `folder` (`hold_folder`'s text: pid, host, since when), or None when nobody does."""
    lock = Path(folder) / HOLD_FILE
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd):
            return None
        return lock.read_text().strip() or "another process"
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_folder(folder: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold `folder` for the block: an exclusive flock on `<folder>/.motfm-hold`, which the kernel releases when this
    process ends however it ends (kill -9 included), so a holder's death never leaves the folder held. A folder
    already held is refused (FolderBusy) naming the holder. flock is local to one machine on some network file
    systems: docs/operations.md says what a shared folder must provide."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / HOLD_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            holder = (folder / HOLD_FILE).read_text().strip() or "another process"
            raise FolderBusy(f"{folder}: in use by another {what} ({holder}); wait for it to end, or give this one "
                             "another --run-name")
        _say_holder(fd)
        yield folder
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a process opening it)


@contextlib.contextmanager
def held_in_turn(lock: str | Path, what: str, say: Callable[[str], None]) -> Iterator[Path]:
    """Hold the file `lock` (an exclusive flock, released when this process ends however it ends) for the block,
    waiting for the process that holds it first, and saying so once (naming it): two processes doing the same work
    into the same place take turns, and the second finds the first one's result. The holder removes the file before
    it lets go, so nothing is left behind; a waiter that then holds a removed file opens the path again."""
    import fcntl

    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            if not waited:
                # read through our own descriptor: the holder may remove the path meanwhile, or not have written yet
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
                say(f"{what}: waiting for {holder} (it holds {lock})")
                waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the holder before removed this file as it let go
    try:
        _say_holder(fd)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # while still held: a waiter finds its file gone and takes a fresh one
        os.close(fd)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, disk quota exceeded


def is_out_of_disk(error: BaseException | None) -> bool:
    """Whether `error` (or what it was raised from) is a full disk or quota: never transient, a retry writes the
    same bytes into the same full disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def disk_full_line(error: BaseException, fallback: str | Path = ".") -> str:
    """The one line a full disk ends a run with: where, how much is free there, and the fix."""
    where = Path(getattr(error, "filename", None) or fallback)
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2 ** 20
    return (f"out of disk space at {where} ({free:.0f} MB free there); free space, or use --output-root on a disk "
            "with room; the run resumes where it stopped")
