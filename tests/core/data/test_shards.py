import json

import numpy as np
import pytest
import zarr

from motfm_core.data import create_synthetic_store, write_shard
from motfm_core.data.shards import encode_shard, write_whole_shard


def _files(array_dir):
    return {p.relative_to(array_dir): p.read_bytes() for p in array_dir.rglob("*")
            if p.is_file() and p.name != "zarr.json"}


@pytest.mark.parametrize("shape,compress", [((1, 48, 48), True), ((1, 16, 16, 8), True), ((1, 48, 48), False)])
def test_whole_shards_are_the_bytes_zarr_python_writes(tmp_path, shape, compress):
    """Every array of a synthetic store, written by write_shard's direct encoder and by zarr-python, gives the same
    files byte for byte: float32 images (NaN fill, zstd or uncompressed, several chunks per shard), int64 labels
    and seeds, uint8 masks with all-zero chunks (left out of the index, as zarr-python leaves them) and an all-fill
    array (no file)."""
    rng = np.random.default_rng(0)
    ours, theirs = (create_synthetic_store(tmp_path / name, 64, shape, 32, {"run_key": "k"}, with_masks=True,
                                           compress=compress) for name in ("ours.zarr", "zarr.zarr"))
    images = rng.random((64, *shape), dtype=np.float32)
    masks = (rng.random((64, *shape)) > 0.5).astype(np.uint8)
    masks[:20] = 0  # whole chunks of fill value
    labels, seeds = rng.integers(0, 3, 64), np.arange(64) * 7
    for i in range(2):
        rows = slice(32 * i, 32 * (i + 1))
        for path, direct in ((ours, True), (theirs, False)):
            write_shard(path, i, images[rows], labels[rows], seeds[rows], masks=masks[rows],
                        mask_source=np.full(32, -1), direct=direct)
    for name in ("images", "masks", "labels", "seed", "mask_source"):
        assert _files(ours / name) == _files(theirs / name), name
    assert not _files(ours / "mask_source")  # all fill value: no shard file, as zarr-python does
    root = zarr.open_group(str(ours), mode="r")
    assert root["images"].chunks[0] < 32  # several chunks per shard were encoded
    assert bool(root["images"].compressors) == compress
    assert np.array_equal(root["images"][:], images) and np.array_equal(root["masks"][:], masks)
    assert not list(ours.rglob("*.tmp-*"))  # written under a temporary name, then renamed


def test_layouts_the_encoder_does_not_know_go_through_zarr_python(tmp_path):
    """A partial last shard, other codecs and a non-whole shard are refused by the encoder (None / False) and
    written by zarr-python instead, so write_shard still stores them correctly."""
    path = create_synthetic_store(tmp_path / "s.zarr", 10, (1, 8, 8), 4, {"run_key": "k"})
    meta = zarr.open_array(str(path / "images")).metadata.to_dict()
    assert encode_shard(meta, np.zeros((3, 1, 8, 8), np.float32)) is None  # not the shard's full extent
    zarr.create_array(str(tmp_path / "b.zarr"), shape=(8, 4), chunks=(2, 4), shards=(4, 4), dtype="f4",
                      compressors=zarr.codecs.BloscCodec())  # blosc: a codec the encoder leaves to zarr-python
    assert not write_whole_shard(tmp_path / "b.zarr", 0, np.ones((4, 4), np.float32))
    assert not (tmp_path / "b.zarr" / "c").exists()
    write_shard(path, 2, np.full((2, 1, 8, 8), 0.25), np.array([1, 2]), np.array([8, 9]))  # partial: zarr-python
    write_shard(path, 0, np.full((4, 1, 8, 8), 0.5), np.zeros(4), np.arange(4))  # whole: encoded here
    images = zarr.open_group(str(path), mode="r")["images"][:]
    assert (images[:4] == 0.5).all() and np.isnan(images[4:8]).all() and (images[8:] == 0.25).all()


@pytest.mark.parametrize("layout", [
    {"chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}}},  # chunks at "0.0", not "c/0/0"
    {"chunk_key_encoding": {"name": "v2"}},
    {"chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}}},
    {"fill_value": "0x7fc00000"},  # a fill value given as its bit pattern
    {"fill_value": [1.0, 2.0]},  # not a number at all (a complex value's form)
    {"data_type": "complex64"},
])
def test_layouts_the_project_does_not_create_are_left_to_zarr_python(tmp_path, layout):
    """The encoder answers None (zarr-python writes) for every layout other than the project's: other chunk-key
    encodings, fill values that are not plain numbers, other data types."""
    path = create_synthetic_store(tmp_path / "s.zarr", 8, (1, 8, 8), 4, {"run_key": "k"})
    meta = json.loads((path / "images" / "zarr.json").read_text())  # as write_whole_shard reads it
    values = np.ones((4, 1, 8, 8), np.float32)
    assert encode_shard(meta, values)  # the project's own layout: encoded here
    assert encode_shard({**meta, **layout}, values) is None


def test_v2_chunk_keys_round_trip_through_write_shard(tmp_path):
    """An array with v2 chunk keys ("." separated): written where zarr reads it, never as fill value."""
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(8, 4), chunks=(2, 4), shards=(4, 4), dtype="f4",
                              chunk_key_encoding={"name": "v2", "separator": "."}, fill_value=np.nan)
    assert not write_whole_shard(tmp_path / "a.zarr", 1, np.ones((4, 4), np.float32))
    array[4:8] = np.ones((4, 4), np.float32)
    assert (zarr.open_array(str(tmp_path / "a.zarr"))[4:] == 1).all()


def test_a_shard_that_does_not_read_back_stops_the_encoder_for_the_process(tmp_path, monkeypatch, caplog):
    """A zarr upgrade that reads our bytes differently is caught on the first shard: that shard is rewritten
    through zarr-python (the store reads right), a warning says why, and the encoder is not used again."""
    from motfm_core.data import shards

    monkeypatch.setattr(shards, "_verified", set())
    monkeypatch.setattr(shards, "_disabled", [])
    real_encode = shards.encode_shard
    calls = []

    def drifted(meta, values):  # what a changed format would look like: other values decoded
        calls.append(1)
        return real_encode(meta, values + 1 if values.dtype.kind == "f" else values)

    monkeypatch.setattr(shards, "encode_shard", drifted)
    path = create_synthetic_store(tmp_path / "s.zarr", 8, (1, 8, 8), 4, {"run_key": "k"})
    with caplog.at_level("WARNING", logger="motfm_core.data.shards"):
        write_shard(path, 0, np.full((4, 1, 8, 8), 0.5), np.zeros(4), np.arange(4))
    assert "writing through zarr-python" in caplog.text and "differs" in caplog.text
    used = len(calls)
    write_shard(path, 1, np.full((4, 1, 8, 8), 0.25), np.ones(4), np.arange(4, 8))
    assert len(calls) == used  # stopped for the rest of the process
    images = zarr.open_group(str(path), mode="r")["images"][:]
    assert (images[:4] == 0.5).all() and (images[4:] == 0.25).all()


def test_a_failed_shard_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from motfm_core.data import shards

    path = create_synthetic_store(tmp_path / "s.zarr", 8, (1, 8, 8), 4, {"run_key": "k"})

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_whole_shard(path / "images", 0, np.ones((4, 1, 8, 8), np.float32))
    assert not [p for p in (path / "images").rglob("*") if ".tmp-" in p.name]


def test_values_stored_in_a_narrower_dtype_read_back_as_equal(tmp_path, monkeypatch, caplog):
    """float32 samples in a float16 array: the read-back compares with what the array can hold, so rounding is not
    taken for a changed format (it stopped the encoder in the writer benchmark's float16 option)."""
    from motfm_core.data import shards

    monkeypatch.setattr(shards, "_verified", set())
    monkeypatch.setattr(shards, "_disabled", [])
    zarr.create_array(str(tmp_path / "h.zarr"), shape=(8, 4), chunks=(2, 4), shards=(4, 4), dtype="f2",
                      fill_value=np.nan)
    values = np.random.default_rng(0).random((4, 4), dtype=np.float32)
    with caplog.at_level("WARNING", logger="motfm_core.data.shards"):
        assert write_whole_shard(tmp_path / "h.zarr", 0, values)
    assert not shards._disabled and not caplog.text
    assert np.array_equal(zarr.open_array(str(tmp_path / "h.zarr"))[:4], values.astype(np.float16))
