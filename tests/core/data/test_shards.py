import errno
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from motfm_core.data import create_synthetic_store, write_shard
from motfm_core.data.shards import LOCK_SUFFIX, shard_file, sweep_locks, write_rows
from motfm_core.data.synthetic import sweep_store


@pytest.mark.parametrize("shape,compress", [((1, 48, 48), True), ((1, 16, 16, 8), True), ((1, 48, 48), False)])
def test_tensorstore_shards_read_back_in_zarr_python_as_zarr_python_writes_them(tmp_path, shape, compress):
    """Every array of a synthetic store written by write_shard (tensorstore) and by zarr-python holds the same
    values read back through zarr-python: float32 images (NaN fill, zstd or uncompressed, several chunks per shard),
    int64 labels and seeds, uint8 masks with all-zero chunks, an all-fill array (no file), and a partial last shard."""
    rng = np.random.default_rng(0)
    ours, theirs = (create_synthetic_store(tmp_path / name, 70, shape, 32, {"run_key": "k"}, with_masks=True,
                                           compress=compress) for name in ("ours.zarr", "zarr.zarr"))
    images = rng.random((70, *shape), dtype=np.float32)
    masks = (rng.random((70, *shape)) > 0.5).astype(np.uint8)
    masks[:20] = 0  # whole chunks of fill value
    labels, seeds = rng.integers(0, 3, 70), np.arange(70) * 7
    for i, rows in enumerate((slice(0, 32), slice(32, 64), slice(64, 70))):  # the last one partial
        n = rows.stop - rows.start
        for path, direct in ((ours, True), (theirs, False)):
            write_shard(path, i, images[rows], labels[rows], seeds[rows], masks=masks[rows],
                        mask_source=np.full(n, -1), direct=direct)
    a, b = zarr.open_group(str(ours), mode="r"), zarr.open_group(str(theirs), mode="r")
    for name in ("images", "masks", "labels", "seed", "mask_source"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    assert np.array_equal(a["images"][:], images) and np.array_equal(a["masks"][:], masks)
    assert not shard_file(ours / "mask_source", 0).exists()  # all fill value: no shard file, as zarr-python does
    assert a["images"].chunks[0] < 32 and bool(a["images"].compressors) == compress
    stored = sum(f.stat().st_size for f in (ours / "images").rglob("*") if f.is_file() and f.name != "zarr.json")
    assert (stored < images.nbytes) == compress  # the codecs zarr.json names are the ones used
    assert not [p for p in ours.rglob("*") if ".tmp-" in p.name or p.name.endswith(LOCK_SUFFIX)]


def test_an_array_created_again_at_the_same_path_is_opened_afresh(tmp_path):
    """tensorstore handles are cached per process; an array recreated with other codecs (the writer benchmark does
    this) must be written with its new ones, not the cached handle's."""
    path = create_synthetic_store(tmp_path / "s.zarr", 8, (1, 8, 8), 4, {"run_key": "k"})
    write_rows(path / "images", 0, np.full((4, 1, 8, 8), 0.5, np.float32))
    root = zarr.open_group(str(path), mode="r+")
    del root["images"]
    root.create_array("images", shape=(8, 1, 8, 8), chunks=(4, 1, 8, 8), shards=(4, 1, 8, 8), dtype="float16",
                      fill_value=np.nan, compressors=None)
    write_rows(path / "images", 4, np.full((4, 1, 8, 8), 0.25, np.float32))
    back = zarr.open_group(str(path), mode="r")["images"]
    assert back.dtype == np.float16 and np.isnan(back[:4]).all() and (back[4:] == 0.25).all()
    assert shard_file(path / "images", 1).stat().st_size >= 4 * 64 * 2  # float16, uncompressed: the new codecs


def test_a_full_disk_is_an_os_error_and_leaves_no_half_shard(tmp_path):
    """On a 1 MiB tmpfs, a shard too large to fit raises OSError(ENOSPC) naming the array (not tensorstore's
    ValueError, which the flow would take for bad input), and no shard or lock file is left behind."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        path = create_synthetic_store(disk / "s.zarr", 64, (1, 64, 64), 64, {"run_key": "k"}, compress=False)
        with pytest.raises(OSError) as caught:
            write_rows(path / "images", 0, np.ones((64, 1, 64, 64), np.float32))
        assert caught.value.errno == errno.ENOSPC and str(path / "images") in str(caught.value)
        assert not [p for p in (path / "images").rglob("*") if p.is_file() and p.name != "zarr.json"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_the_sweep_removes_a_killed_writers_lock_file_and_keeps_a_live_ones(tmp_path):
    """A writer killed mid-shard leaves tensorstore's lock file (half the shard's bytes); the sweep before a resume
    removes it, unless a live writer holds its lock (a process of another run still writing)."""
    path = create_synthetic_store(tmp_path / "s.zarr", 8, (1, 8, 8), 4, {"run_key": "k"})
    stale = shard_file(path / "images", 0).with_name("0" + LOCK_SUFFIX)
    live = shard_file(path / "images", 1).with_name("1" + LOCK_SUFFIX)
    for lock in (stale, live):
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_bytes(b"half a shard")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(live)!r}, os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True)\n"
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sweep_store(path) == [stale]
        assert live.exists() and not stale.exists()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10
    while live.exists() and time.time() < deadline:  # the lock goes with its process
        sweep_locks(path)
    assert not live.exists()
    write_shard(path, 0, np.full((4, 1, 8, 8), 0.5), np.zeros(4), np.arange(4))  # and the shard is written whole
    assert (zarr.open_group(str(path), mode="r")["images"][:4] == 0.5).all()
