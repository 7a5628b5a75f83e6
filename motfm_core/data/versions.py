"""Versions of the synthetic dataset under one folder: `v0001.zarr`, `v0002.zarr`, ... and `latest`, a link to the
newest complete one.

- Choosing a version and creating it happen under the folder's lock (`.lock`, an flock), so two runs get distinct
  versions; `latest` moves only forward (a run that finishes an older version after a newer one was published
  leaves it where it is).
- Pruning (`keep` > 0) never deletes a version a reader may be using. A version that falls out of the newest
  `keep` is first *retired* (`.retired/<name>` records when), and deleted by a later publish only when it has been
  retired for `grace` seconds and no lease on it is live. Both, because each covers what the other cannot: a lease
  (`hold_version`, renewed while held, expiring when its process dies) protects the readers that ask for one, the
  sampler resuming a version and the evaluation reading it, for as long as they run; the grace period protects the
  ones that do not know to ask, a user's training job that opened `latest` this morning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import zarr

from motfm_core.data.synthetic import LAPSED, require_complete
from motfm_core.files import atomic_path, fsync_dir, sweep_leftovers, temporary_name

__all__ = ["create_version", "hold_version", "live_leases", "prune_versions", "publish_latest", "sweep_leases",
           "version_for", "versions"]

log = logging.getLogger(__name__)

LEASE_SECONDS = 600.0  # a lease not renewed for this long (its process is gone) no longer protects its version
RENEW_RETRIES = (0.5, 1.0, 2.0, 4.0)  # seconds before each retry of a failed renewal (a stale NFS handle, EIO)


def versions(root: str | Path) -> list[Path]:
    """The versions under `root`, oldest first (only those fully created: a `zarr.json` in place)."""
    return sorted(p for p in Path(root).glob("v[0-9][0-9][0-9][0-9].zarr") if (p / "zarr.json").exists())


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Exclusive hold of `root`'s versions (an flock on `<root>/.lock`, released when the process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def version_for(root: str | Path, run_key: str) -> Path:
    """The version to write for `run_key`: an existing version with that key (to resume or reuse it), else a
    new `v<N+1>.zarr`. A version with another key is never reopened for writing. Call it under the lock
    (`create_version`) when another run may create a version at the same time."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    found = versions(root)
    for version in reversed(found):
        if zarr.open_group(str(version), mode="r", zarr_format=3).attrs.get("run_key") == run_key:
            return version
    number = int(found[-1].name[1:5]) + 1 if found else 1
    return root / f"v{number:04d}.zarr"


def create_version(root: str | Path, run_key: str, create: Callable[[Path], Path]) -> Path:
    """Find or create (with `create(path)`) the version for `run_key` under `root`'s lock: two runs creating at
    once get distinct versions. What crashed writers left under `root` is removed first."""
    root = Path(root)
    with _locked(root):
        sweep_leftovers(root)
        version = version_for(root, run_key)
        return create(version if version.exists() else _reserve(version))


def _reserve(version: Path) -> Path:
    """`version`'s number, or the next free one, taken by an exclusive mkdir of `.numbers/vNNNN` (atomic on NFS,
    where the folder's flock may be local to each machine): two runs never build the same version."""
    numbers = version.parent / ".numbers"
    numbers.mkdir(exist_ok=True)
    number = _number(version)
    while True:
        try:
            os.mkdir(numbers / f"v{number:04d}")
            return version.parent / f"v{number:04d}.zarr"
        except FileExistsError:
            number += 1


def _lease_dir(version: Path) -> Path:
    return version.parent / ".leases"


def live_leases(version: str | Path) -> list[Path]:
    """The unexpired leases on `version` (see `hold_version`)."""
    version = Path(version)
    now, out = time.time(), []
    for lease in _lease_dir(version).glob(f"{version.name}.*.json"):
        try:
            if json.loads(lease.read_text())["expires"] > now:
                out.append(lease)
        except (OSError, ValueError, KeyError):  # being written or removed right now: count it as live
            out.append(lease)
    return out


@contextlib.contextmanager
def hold_version(version: str | Path, seconds: float = LEASE_SECONDS) -> Iterator[Path]:
    """Hold a lease on a synthetic version while reading or writing it: pruning does not delete it meanwhile.
    The lease is renewed every `seconds` / 3 by a background thread and expires `seconds` after its process
    stops renewing it (a crashed reader does not hold a version for ever). Yields the version's path, resolved
    (hold `latest` and you hold the version it points to now)."""
    version = Path(version).resolve()
    folder = _lease_dir(version)
    folder.mkdir(exist_ok=True)
    lease = folder / f"{version.name}.{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}.json"
    stop = threading.Event()

    def renew() -> None:
        with atomic_path(lease) as tmp:
            tmp.write_text(json.dumps({"expires": time.time() + seconds, "pid": os.getpid(),
                                       "host": socket.gethostname()}))

    renewed = [time.time()]

    def renew_or_retry() -> None:
        """Renew, retrying a failure; a lease that could not be renewed before it expired is a lapse: recorded, so
        every read of the version fails loudly from then on, and logged (never a silent end of the thread)."""
        for wait in (0.0, *RENEW_RETRIES):
            if wait and stop.wait(min(wait, seconds / 3)):
                return
            try:
                renew()
                renewed[0] = time.time()
                return
            except OSError as e:
                error = e
        log.error("lease on %s: renewal failed (%s); retrying", version, error)
        if time.time() - renewed[0] >= seconds:
            LAPSED[str(version)] = f"renewals failed for {time.time() - renewed[0]:.0f} s: {error}"
            log.error("lease on %s lapsed: %s", version, LAPSED[str(version)])

    def keep_renewing() -> None:
        while not stop.wait(seconds / 3):
            renew_or_retry()

    renew()
    thread = threading.Thread(target=keep_renewing, name=f"lease-{version.name}", daemon=True)
    thread.start()
    try:
        yield version
    finally:
        stop.set()
        thread.join()
        lease.unlink(missing_ok=True)
        LAPSED.pop(str(version), None)  # the next hold starts a fresh lease


def _retired_since(version: Path) -> float:
    """When `version` was retired (first found outside the newest `keep`), marking it now if it was not."""
    mark = version.parent / ".retired" / version.name
    try:
        return float(mark.read_text())
    except (FileNotFoundError, ValueError):
        mark.parent.mkdir(exist_ok=True)
        now = time.time()
        mark.write_text(repr(now))  # the clock, not the file's mtime (file systems round it, even ahead)
        return now


def prune_versions(root: str | Path, keep: int, grace: float = 24 * 3600.0) -> list[Path]:
    """Retire the versions outside the newest `keep` (never the one `latest` points to), and delete those retired
    for at least `grace` seconds that hold no live lease; returns what was deleted. Call under the lock."""
    root = Path(root)
    latest = (root / "latest").resolve() if (root / "latest").is_symlink() else None
    deleted = []
    for old in versions(root)[:-keep] if keep > 0 else []:
        if old.resolve() == latest:
            continue
        since = _retired_since(old)
        if time.time() - since < grace or live_leases(old):
            continue
        doomed = temporary_name(old)  # out of the versions' names first: a crash mid-delete leaves no half version
        os.replace(old, doomed)
        fsync_dir(root)
        shutil.rmtree(doomed, ignore_errors=True)
        (root / ".retired" / old.name).unlink(missing_ok=True)
        (root / ".pruned").mkdir(exist_ok=True)  # so a late reader is told which version went, and why
        (root / ".pruned" / old.name).write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        deleted.append(old)
    sweep_leases(root)
    return deleted


def sweep_leases(root: str | Path, older_than: float = LEASE_SECONDS) -> list[Path]:
    """Remove lease files expired for more than `older_than` seconds (their holders died without removing them);
    returns what was removed."""
    now, removed = time.time(), []
    for lease in (Path(root) / ".leases").glob("*.json"):
        try:
            expires = float(json.loads(lease.read_text())["expires"])
        except (OSError, ValueError, KeyError):
            continue  # being written or removed right now
        if now - expires > older_than:
            lease.unlink(missing_ok=True)
            removed.append(lease)
    return removed


def _number(version: Path) -> int:
    return int(version.name[1:5])


def publish_latest(version: str | Path, keep: int = 0, grace: float = 24 * 3600.0) -> Path:
    """Point `<root>/latest` at a complete version (atomic link swap, under the lock), unless it already points at
    a newer one; then prune to the newest `keep` versions (0 = keep all; see `prune_versions`). Returns the
    `latest` path."""
    version = Path(version)
    require_complete(version)
    root = version.parent
    latest = root / "latest"
    with _locked(root):
        current = latest.resolve() if latest.is_symlink() else None
        if current is None or not current.exists() or _number(current) <= _number(version):
            with atomic_path(latest) as tmp:
                os.symlink(version.name, tmp)
        prune_versions(root, keep, grace)
    return latest
