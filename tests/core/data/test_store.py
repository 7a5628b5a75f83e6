from pathlib import Path

import numpy as np
import pytest
import zarr

from motfm_core.data import (
    create_synthetic_store,
    incomplete_shards,
    load_split,
    open_store,
    shard_complete,
    write_dataset,
    write_shard,
)
from motfm_core.data.store import Blocks, builds, fingerprint_arrays, images_array


def _arrays(n=10, dims=2):
    rng = np.random.RandomState(0)
    shape = (n, 1, 8, 8) if dims == 2 else (n, 1, 8, 8, 4)
    return (rng.rand(*shape).astype(np.float32), rng.randint(0, 3, n), np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2]),
            np.arange(n) // 2)


@pytest.mark.parametrize("dims", [2, 3])
def test_dataset_round_trip(tmp_path, dims):
    images, labels, split, group = _arrays(dims=dims)
    masks = (images > 0.5).astype(np.uint8)
    path = write_dataset(tmp_path / "d.zarr", images, labels, split, group, {"class_names": ["a", "b", "c"]}, masks)
    root = open_store(path)
    assert root.attrs["schema_version"] == 1
    # hashed a block at a time beside the write: what the whole arrays hash to
    assert root.attrs["fingerprint"] == fingerprint_arrays(images, labels.astype(np.int64), split.astype(np.uint8))
    assert root["images"].chunks == (1, *images.shape[1:])  # one sample per chunk
    test = load_split(path, "test")
    assert np.array_equal(test["images"], images[split == 2])
    assert np.array_equal(test["labels"], labels[split == 2])
    assert np.array_equal(test["masks"], masks[split == 2])


def test_rewrite_keeps_previous_store_and_rejects_nan(tmp_path):
    images, labels, split, group = _arrays()
    path = write_dataset(tmp_path / "d.zarr", images, labels, split, group, {"class_names": ["a"]})
    first = open_store(path).attrs["fingerprint"]
    bad = images.copy()
    bad[3, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_dataset(path, bad, labels, split, group, {})
    assert open_store(path).attrs["fingerprint"] == first  # untouched by the failed write
    write_dataset(path, images * 0.5, labels, split, group, {"class_names": ["a"]})
    olds = [b for b in builds(path) if b.resolve() != path.resolve()]
    assert len(olds) == 1 and open_store(olds[0]).attrs["fingerprint"] == first
    assert not list(tmp_path.glob("*.tmp-*"))


def test_missing_store_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the ingest"):
        open_store(tmp_path / "nothing.zarr")


def test_sharded_synthetic_store(tmp_path):
    path = create_synthetic_store(tmp_path / "s.zarr", 10, (1, 8, 8), 4, {"run_key": "k"})
    root = zarr.open_group(str(path), mode="r")
    assert root["images"].shards == (4, 1, 8, 8) and root["images"].chunks == (4, 1, 8, 8)  # tiny samples: 1 chunk
    assert incomplete_shards(path) == [0, 1, 2]
    write_shard(path, 2, np.ones((2, 1, 8, 8)), np.array([1, 2]), np.array([8, 9]))
    assert shard_complete(path, 2) and incomplete_shards(path) == [0, 1]
    assert np.isnan(zarr.open_group(str(path))["images"][0]).all()  # unwritten samples stay NaN
    with pytest.raises(ValueError, match="needs 4 samples"):
        write_shard(path, 0, np.ones((3, 1, 8, 8)), np.zeros(3), np.zeros(3))
    assert not shard_complete(path, 0)
    # the same plan reopens; a different plan is refused rather than mixed in
    assert create_synthetic_store(path, 10, (1, 8, 8), 4, {"run_key": "k"}) == path
    with pytest.raises(ValueError, match="different plan"):
        create_synthetic_store(path, 12, (1, 8, 8), 4, {"run_key": "k"})
    with pytest.raises(ValueError, match="outside a dataset"):
        write_shard(path, 3, np.ones((1, 1, 8, 8)), np.zeros(1), np.zeros(1))


def test_versions_are_never_overwritten_and_latest_moves_atomically(tmp_path):
    from motfm_core.data import publish_latest, version_for

    root = tmp_path / "synthetic"
    v1 = create_synthetic_store(version_for(root, "a"), 4, (1, 8, 8), 4, {"run_key": "a"})
    assert v1.name == "v0001.zarr" and version_for(root, "a") == v1  # same key: resume/reuse
    with pytest.raises(ValueError, match="incomplete"):
        publish_latest(v1)
    write_shard(v1, 0, np.ones((4, 1, 8, 8)), np.zeros(4), np.arange(4))
    latest = publish_latest(v1)
    assert latest.resolve() == v1.resolve()
    v2 = create_synthetic_store(version_for(root, "b"), 4, (1, 8, 8), 4, {"run_key": "b"})
    assert v2.name == "v0002.zarr" and latest.resolve() == v1.resolve()  # not moved before v2 is complete
    write_shard(v2, 0, np.zeros((4, 1, 8, 8)), np.zeros(4), np.arange(4))
    publish_latest(v2)
    assert latest.resolve() == v2.resolve() and v1.exists()
    assert zarr.open_group(str(latest), mode="r")["images"][0].max() == 0
    v3 = create_synthetic_store(version_for(root, "c"), 4, (1, 8, 8), 4, {"run_key": "c"})
    write_shard(v3, 0, np.zeros((4, 1, 8, 8)), np.zeros(4), np.arange(4))
    publish_latest(v3, keep=2, grace=0)
    assert not v1.exists() and v2.exists() and latest.resolve() == v3.resolve()
    assert version_for(root, "a").name == "v0004.zarr"  # a pruned version's key starts a new version
    assert version_for(root, "b") == v2  # an older version with the same key is reused, never rewritten


def test_chunking_keeps_chunks_near_128k_and_divides_the_shard():
    from motfm_core.data.synthetic import samples_per_chunk

    assert samples_per_chunk(4 * 48 * 48, 32) == 8  # 72 KiB chunks for the demo's 48 px float32 images
    assert samples_per_chunk(4 * 48 * 48, 30) == 10  # a divisor of the shard size
    assert samples_per_chunk(4 * 128 * 128, 32) == 2
    assert samples_per_chunk(4 * 64 * 64 * 64, 32) == 1  # 3D volumes: one sample per chunk
    assert samples_per_chunk(4 * 48 * 48, 7) == 7


def test_a_writer_crash_between_data_and_record_is_refused_by_every_reader(tmp_path, monkeypatch):
    """Crash after the shard's samples are written and its record staged, before the rename that publishes it:
    the staged record must not live in shards/, and every reader must refuse the store."""
    from motfm_core.data import completed_shards, incomplete_shards, publish_latest
    from motfm_core.data import synthetic as store_mod
    from motfm_core.data.datasets import ZarrImageDataset, as_dask
    from motfm_core.data.synthetic import load_synthetic, open_synthetic

    path = create_synthetic_store(tmp_path / "v0001.zarr", 8, (1, 16, 16), 4, {"run_key": "r"})
    write_shard(path, 0, np.full((4, 1, 16, 16), 0.5), np.zeros(4), np.arange(4))

    def crash(*args):
        raise OSError("killed")

    monkeypatch.setattr(store_mod, "_commit_record", crash)
    with pytest.raises(OSError, match="killed"):
        write_shard(path, 1, np.full((4, 1, 16, 16), 0.5), np.ones(4), np.arange(4, 8))
    monkeypatch.undo()
    staged = list((path / ".staging").iterdir())
    assert len(staged) == 1 and not any(".tmp" in p.name for p in (path / "shards").iterdir())
    assert incomplete_shards(path) == [1] and sorted(completed_shards(path)) == [0]
    for read in (lambda: ZarrImageDataset(path), lambda: load_synthetic(path), lambda: open_synthetic(path),
                 lambda: as_dask(path), lambda: publish_latest(path)):
        with pytest.raises(ValueError, match=r"shards \[1\] are incomplete"):
            read()
    write_shard(path, 1, np.full((4, 1, 16, 16), 0.5), np.ones(4), np.arange(4, 8))  # the re-run finishes it
    assert len(ZarrImageDataset(path)) == 8


def test_rows_gather_from_memory_and_from_the_store_alike(tmp_path):
    """take_rows reads any indices (unsorted, repeated) from a Zarr array as numpy would; Rows stacks chosen rows
    of an in-memory array and of a store array without loading the store."""
    from motfm_core.data import open_synthetic, shard_bounds, take_rows
    from motfm_core.data.datasets import Rows

    images = np.random.RandomState(0).rand(10, 1, 8, 8).astype(np.float32)
    path = create_synthetic_store(tmp_path / "s.zarr", 10, (1, 8, 8), 4, {"run_key": "k"})
    for s in range(3):
        lo, hi = shard_bounds(s, 10, 4)
        write_shard(path, s, images[lo:hi], np.arange(lo, hi), np.arange(lo, hi))
    lazy = open_synthetic(path)
    assert isinstance(lazy["images"], zarr.Array) and lazy["labels"].tolist() == list(range(10))
    for idx in (np.array([7, 2, 2, 9, 0]), np.arange(3, 9), np.random.RandomState(2).randint(0, 10, 40)):
        np.testing.assert_array_equal(take_rows(lazy["images"], idx), images[idx])
    assert take_rows(lazy["images"], np.array([], dtype=int)).shape == (0, 1, 8, 8)
    real = np.random.RandomState(1).rand(5, 1, 8, 8).astype(np.float32)
    rows = Rows((real, np.array([4, 1])), (lazy["images"], np.array([3, 8, 5])))
    stacked = np.concatenate([real[[4, 1]], images[[3, 8, 5]]])
    assert rows.shape == (5, 1, 8, 8) and len(rows) == 5
    pick = np.array([4, 0, 2, 2, 3, 1])
    np.testing.assert_array_equal(rows[pick], stacked[pick])
    with pytest.raises(ValueError, match="sample shapes"):
        Rows((real, None), (np.zeros((2, 1, 4, 4)), None))


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_deleted_or_truncated_shard_file_is_refused_never_read_as_nan(tmp_path, damage):
    """zarr reads a missing shard file as fill value (NaN images, -1 labels): every reader refuses the version
    instead, naming the file; a re-run of the shard repairs it."""
    from motfm_core.data import StoreDamaged, damaged_shards, load_synthetic, open_synthetic
    from motfm_core.data.datasets import ZarrImageDataset

    path = create_synthetic_store(tmp_path / "v0001.zarr", 8, (1, 16, 16), 4, {"run_key": "r"})
    for i in range(2):
        write_shard(path, i, np.full((4, 1, 16, 16), 0.5), np.ones(4), np.arange(4 * i, 4 * i + 4))
    shard = path / "images" / "c" / "1" / "0" / "0" / "0"
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-9])
    assert list(damaged_shards(path)) == [1] and incomplete_shards(path) == [1]
    for read in (lambda: load_synthetic(path), lambda: open_synthetic(path), lambda: ZarrImageDataset(path)):
        with pytest.raises(StoreDamaged, match=r"shard 1 is damaged: images/c/1/0/0/0 (is missing|has \d+ bytes)"):
            read()
    write_shard(path, 1, np.full((4, 1, 16, 16), 0.5), np.ones(4), np.arange(4, 8))  # the sampler's re-run
    assert not damaged_shards(path) and (load_synthetic(path)["images"] == 0.5).all()


def test_a_deleted_chunk_of_the_real_dataset_is_refused(tmp_path):
    images, labels, split, group = _arrays()
    path = write_dataset(tmp_path / "d.zarr", images, labels, split, group, {"class_names": ["a"]})
    (path / "images" / "c" / "3" / "0" / "0" / "0").unlink()  # zarr would read sample 3 as zeros
    with pytest.raises(ValueError, match=r"d.zarr: chunk file images/c/3/0/0/0 is missing; .* ingest again"):
        load_split(path, "train")


def test_reingesting_within_a_second_keeps_one_previous_copy_and_sweeps_crash_leftovers(tmp_path):
    """Rewrites in the same second get distinct names for the store they replace (no 'Directory not empty'),
    only the newest `keep_previous` copies stay, and a crashed writer's temporary folder goes (a live one's stays)."""
    import os
    import socket
    import subprocess

    images, labels, split, group = _arrays()
    dead = subprocess.Popen(["true"])
    dead.wait()
    crashed = tmp_path / f".d.zarr.tmp-0badc0de-{dead.pid}@{socket.gethostname()}"
    running = tmp_path / f".d.zarr.tmp-0000beef-{os.getpid()}@{socket.gethostname()}"
    crashed.mkdir()
    running.mkdir()
    for k in range(4):
        write_dataset(tmp_path / "d.zarr", images * (k + 1) / 4, labels, split, group, {"class_names": ["a"]})
    olds = [b for b in builds(tmp_path / "d.zarr") if b.resolve() != (tmp_path / "d.zarr").resolve()]
    assert len(olds) == 1 and np.allclose(open_store(olds[0])["images"][:], images * 3 / 4)
    assert not crashed.exists() and running.exists()
    write_dataset(tmp_path / "d.zarr", images, labels, split, group, {"class_names": ["a"]}, keep_previous=0)
    assert builds(tmp_path / "d.zarr") == [(tmp_path / "d.zarr").resolve()]


def test_a_shard_written_twice_leaves_no_staging_folder(tmp_path):
    """A racing duplicate (a Dask task re-run after a lost worker) finds the record and stops: its staging folder
    went with it (it stayed, and zarr warned 'Object at .staging is not recognized' on every listing)."""
    path = create_synthetic_store(tmp_path / "v0001.zarr", 4, (1, 8, 8), 4, {"run_key": "r"})
    for _ in range(2):
        write_shard(path, 0, np.full((4, 1, 8, 8), 0.5), np.zeros(4), np.arange(4))
    assert not (path / ".staging").exists()


def test_a_dataset_opened_on_latest_keeps_reading_its_version_when_latest_moves(tmp_path):
    from motfm_core.data import publish_latest, version_for
    from motfm_core.data.datasets import ZarrImageDataset, as_dask

    root = tmp_path / "synthetic"
    v1 = create_synthetic_store(version_for(root, "a"), 4, (1, 8, 8), 4, {"run_key": "a"})
    write_shard(v1, 0, np.full((4, 1, 8, 8), 0.25), np.zeros(4), np.arange(4))
    publish_latest(v1)
    ds, lazy = ZarrImageDataset(root / "latest"), as_dask(root / "latest")
    v2 = create_synthetic_store(version_for(root, "b"), 4, (1, 8, 8), 4, {"run_key": "b"})
    write_shard(v2, 0, np.full((4, 1, 8, 8), 0.75), np.ones(4), np.arange(4))
    publish_latest(v2)  # mid-training
    assert float(ds[3][0].max()) == 0.25 and float(lazy[3].max().compute()) == 0.25


def test_the_dataset_reader_refuses_a_real_store_with_a_missing_chunk(tmp_path):
    from motfm_core.data.datasets import ZarrImageDataset

    images, labels, split, group = _arrays()
    path = write_dataset(tmp_path / "d.zarr", images, labels, split, group, {"class_names": ["a"]})
    (path / "images" / "c" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(ValueError, match="chunk file images/c/0/0/0/0 is missing"):
        ZarrImageDataset(path, split="train")


def test_shard_data_reaches_the_disk_before_its_record(tmp_path, monkeypatch):
    """fsync order: every data file of the shard and the folder its rename went into, then the staged record, then
    the rename into shards/ and its folder; sample.fsync=false (durable=False) skips them all."""
    from motfm_core.data import synthetic

    events = []
    monkeypatch.setattr(synthetic, "fsync_tree", lambda p: events.append(("sync", p.relative_to(path).parts[0])))
    monkeypatch.setattr(synthetic, "fsync_dir", lambda p: events.append(("sync dir", p.name)))
    real_replace = synthetic.os.replace
    monkeypatch.setattr(synthetic.os, "replace", lambda a, b: (events.append(("rename", Path(b).name)),
                                                                real_replace(a, b)))
    path = create_synthetic_store(tmp_path / "v0001.zarr", 4, (1, 8, 8), 4, {"run_key": "r"})
    events.clear()
    write_shard(path, 0, np.full((4, 1, 8, 8), 0.5), np.zeros(4), np.arange(4))
    ordered = [e for e in events if e[0] != "rename" or e[1] == "00000"]  # not the shard files' own renames
    data = [("sync", "images"), ("sync", "labels"), ("sync", "seed")]
    shard_dirs = {"images": "0", "labels": "c", "seed": "c"}  # each shard file's folder: images/c/0/0/0, labels/c
    assert ordered == [e for d in data for e in (d, ("sync dir", shard_dirs[d[1]]))] + [
        ("sync", ".staging"), ("rename", "00000"), ("sync dir", "shards")]
    events.clear()
    write_shard(path, 0, np.full((4, 1, 8, 8), 0.5), np.zeros(4), np.arange(4), durable=False)
    assert all(kind == "rename" for kind, _ in events)


@pytest.mark.parametrize("step", ["_write_build", "_publish", "_prune"])
def test_a_reingest_that_fails_at_any_step_leaves_the_old_or_the_new_store(tmp_path, monkeypatch, step):
    """The store is a link to a build: a failure while the new build is written, while the link is replaced or
    while old builds are pruned leaves `d.zarr` readable, holding the old data or the new, never neither (it moved
    the old store aside before renaming the new one in, and a second run found no store)."""
    from motfm_core.data import store as store_module

    images, labels, split, group = _arrays()
    path = write_dataset(tmp_path / "d.zarr", images, labels, split, group, {"class_names": ["a"]})
    old = open_store(path).attrs["fingerprint"]
    real = getattr(store_module, step)

    def fails_after(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(5, "Input/output error (injected)")

    monkeypatch.setattr(store_module, step, fails_after)
    with pytest.raises(OSError, match="injected"):
        write_dataset(path, images * 0.5, labels, split, group, {"class_names": ["a"]})
    now = open_store(path).attrs["fingerprint"]
    assert now == old if step == "_write_build" else now != old  # the link moved in one step, or not at all
    assert np.allclose(open_store(path)["images"][:], images * (1.0 if now == old else 0.5))
    monkeypatch.setattr(store_module, step, real)
    write_dataset(path, images * 0.25, labels, split, group, {"class_names": ["a"]})  # the next run recovers
    assert np.allclose(open_store(path)["images"][:], images * 0.25) and len(builds(path)) == 2
    assert not list(tmp_path.glob(".*tmp-*"))


def test_a_reader_keeps_the_build_it_opened_when_a_reingest_moves_the_link(tmp_path):
    images, labels, split, group = _arrays()
    path = write_dataset(tmp_path / "d.zarr", images, labels, split, group, {"class_names": ["a"]})
    reader = open_store(path)
    write_dataset(path, images * 0.5, labels, split, group, {"class_names": ["a"]})
    assert np.allclose(reader["images"][:], images)  # not a mix of two builds
    assert np.allclose(open_store(path)["images"][:], images * 0.5)


def test_a_store_of_the_layout_before_links_is_moved_aside_and_kept(tmp_path):
    images, labels, split, group = _arrays()
    path = write_dataset(tmp_path / "d.zarr", images, labels, split, group, {"class_names": ["a"]})
    legacy = path.resolve()
    path.unlink()
    legacy.rename(path)  # a dataset.zarr folder, as runs before this change wrote it
    write_dataset(path, images * 0.5, labels, split, group, {"class_names": ["a"]})
    assert path.is_symlink() and np.allclose(open_store(path)["images"][:], images * 0.5)
    kept = [b for b in builds(path) if b.name.startswith("d.zarr.old-")]
    assert len(kept) == 1 and np.allclose(open_store(kept[0])["images"][:], images)


def test_rows_encoded_by_an_ingest_worker_are_linked_into_the_store_not_encoded_again(tmp_path):
    """`Blocks.encoded`: a row's chunk already encoded as the store encodes it is linked in (the source stays whole
    for a resumed ingest); a block with any row not so encoded (its chunk lost, or another encoding) is encoded
    again, whole. Either way the store is the one a plain write gives."""
    images, labels, split, group = _arrays(dims=3)
    plain = write_dataset(tmp_path / "plain.zarr", images, labels, split, group, {"class_names": ["a"]})
    for i in range(len(images)):
        images_array(tmp_path / f"row{i}.zarr", images[i:i + 1].shape)[:] = images[i:i + 1]
    (tmp_path / "row7.zarr" / "c" / "0" / "0" / "0" / "0" / "0").unlink()  # lost: rows 5..9 are encoded again
    blocks = Blocks(images.shape, None, lambda: ((images[i:i + 5], None) for i in (0, 5)),
                    lambda i: (tmp_path / f"row{i}.zarr", 0))
    linked = write_dataset(tmp_path / "linked.zarr", blocks, labels, split, group, {"class_names": ["a"]})
    assert open_store(linked).attrs["fingerprint"] == open_store(plain).attrs["fingerprint"]
    np.testing.assert_array_equal(open_store(linked)["images"][:], images)

    def chunk(store, i):
        return store.resolve() / "images" / "c" / str(i) / "0" / "0" / "0" / "0"

    source = [tmp_path / f"row{i}.zarr" / "c" / "0" / "0" / "0" / "0" / "0" for i in range(len(images))]
    assert all(chunk(linked, i).samefile(source[i]) for i in range(5))  # linked, and the sources kept
    assert not any(chunk(linked, i).samefile(source[i]) for i in (5, 6, 8, 9))
    other = zarr.create_array(str(tmp_path / "other.zarr"), shape=images[:1].shape, dtype=np.float32,
                              chunks=images[:1].shape, compressors=None)  # another encoding: never linked
    other[:] = images[:1]
    blocks = Blocks(images.shape, None, lambda: ((images[i:i + 5], None) for i in (0, 5)),
                    lambda i: (tmp_path / "other.zarr", 0) if i == 0 else (tmp_path / f"row{i}.zarr", 0))
    again = write_dataset(tmp_path / "again.zarr", blocks, labels, split, group, {"class_names": ["a"]})
    assert open_store(again).attrs["fingerprint"] == open_store(plain).attrs["fingerprint"]
    assert not chunk(again, 1).samefile(source[1])  # its block was encoded, whole
