"""A folder ingested a row at a time: the same store as the in-memory path, resumed after a kill or an injected
failure (writing only the rows left), a changed labels.csv refused, a Dask worker lost mid-row, a bad file in a
parallel ingest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from motfm_core.config import DataConfig
from motfm_core.data import parts
from motfm_core.data.ingest import ingest, load_source
from motfm_core.data.parts import parts_dir
from motfm_core.data.store import open_store
from motfm_core.errors import BadInput

ROOT = Path(__file__).resolve().parents[3]


class Injected(Exception):
    """A failure planted between two rows."""


def _folder(path: Path, n: int, side: int = 24) -> Path:
    """`n` subjects of two classes: a NIfTI volume with a bright block, its 0/2 label map."""
    path.mkdir(parents=True, exist_ok=True)
    rows = ["filename,label,subject,mask"]
    for i in range(n):
        rng = np.random.default_rng(i)
        vol = rng.random((side, side, side // 2), dtype=np.float32) * 0.2
        c = rng.integers(side // 3, 2 * side // 3, 3)
        vol[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, 2:side // 2 - 2] += 1.0 + (i % 2)
        aff = np.diag([1.0, 1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(vol, aff), path / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(((vol > 0.9) * 2).astype(np.uint8), aff), path / f"m{i}.nii.gz")
        rows.append(f"v{i}.nii.gz,{'ab'[i % 2]},s{i},m{i}.nii.gz")
    (path / "labels.csv").write_text("\n".join(rows) + "\n")
    return path


def _cfg(src: Path, **kw) -> DataConfig:
    return DataConfig(**{"source": str(src), "spatial_dims": 3, "image_size": 16, "depth": 8, "workers": 1, **kw})


def _same_store(a: Path, b: Path) -> None:
    ra, rb = open_store(a), open_store(b)
    assert ra.attrs["fingerprint"] == rb.attrs["fingerprint"]
    assert sorted(ra.array_keys()) == sorted(rb.array_keys())
    for name in ra.array_keys():
        np.testing.assert_array_equal(ra[name][:], rb[name][:])
        assert ra[name].attrs["chunk_bytes"] == rb[name].attrs["chunk_bytes"]


def _no_leftovers(root: Path) -> None:
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name], "a temporary file was left behind"


@pytest.mark.parametrize("dims", [3, 2])
def test_a_folder_streams_into_the_store_the_in_memory_path_builds(tmp_path, dims, monkeypatch):
    """The parts path and the whole-set path (`load_source`) give the same arrays and notes, 3D and sliced 2D; every
    image chunk is the one the row's worker encoded, linked in (a volume in 2D: one per slice kept)."""
    from motfm_core.data import store as store_module

    src = _folder(tmp_path / "src", 12)
    cfg = _cfg(src, spatial_dims=dims, image_size=16 if dims == 3 else 24)
    linked, link = [], os.link
    monkeypatch.setattr(store_module.os, "link", lambda a, b: (linked.append(b), link(a, b)))
    store = ingest(cfg, tmp_path / "out" / "dataset.zarr")
    arrays, attrs = load_source(cfg)
    root = open_store(store)
    chunks = [b for b in linked if "/images/c/" in str(b)]  # (zarr links its own metadata files in place)
    assert len(chunks) == len(arrays["images"]) == root["images"].shape[0]
    np.testing.assert_array_equal(root["images"][:], arrays["images"])
    np.testing.assert_array_equal(root["masks"][:], arrays["masks"])
    np.testing.assert_array_equal(root["split"][:], arrays["split"])
    np.testing.assert_array_equal(root["intensity"][:], arrays["intensity"])
    assert root.attrs["notes"] == attrs["notes"] and root.attrs["mask_values"] == [0, 2]
    assert not parts_dir(store).exists()  # the parts go once the store holds every row
    _no_leftovers(tmp_path)


def test_an_interrupted_ingest_resumes_at_the_rows_left_and_a_changed_labels_csv_is_refused(tmp_path, monkeypatch):
    """A failure injected after 5 of 12 rows keeps their parts; the re-run prepares the other 7 alone (counted) and
    writes the store an uninterrupted ingest writes. An edited labels.csv is refused, naming the line and the fix."""
    src = _folder(tmp_path / "src", 12)
    whole = ingest(_cfg(src), tmp_path / "whole" / "dataset.zarr")
    store = tmp_path / "run" / "dataset.zarr"
    real, calls, failed = parts.prepare_row, [], []

    def fails_at_six(listing, row, cfg, where):
        calls.append(row.index)
        if len(calls) == 6 and not failed:
            failed.append(row.index)
            raise Injected  # any failure between two rows
        return real(listing, row, cfg, where)

    monkeypatch.setattr(parts, "prepare_row", fails_at_six)
    with pytest.raises(Injected):
        ingest(_cfg(src), store)
    assert len(list(parts_dir(store).glob("row-*.npz"))) == 5 and not store.exists()

    csv = src / "labels.csv"
    text = csv.read_text()
    csv.write_text(text.replace("v3.nii.gz,b,s3", "v3.nii.gz,a,s3"))
    with pytest.raises(BadInput, match=r"labels.csv: changed since the interrupted ingest .*line 5: .*restore it to "
                                       r"resume, or delete .*dataset.zarr.parts to ingest from the start"):
        ingest(_cfg(src), store)
    csv.write_text(text)

    calls.clear()
    said: list[str] = []
    ingest(_cfg(src), store, progress=said.append)
    assert sorted(calls) == list(range(5, 12))
    assert any("resuming: 5 of 12 rows already prepared" in s for s in said)
    _same_store(store, whole)
    assert not parts_dir(store).exists()
    _no_leftovers(tmp_path)

    # killed after the store was published, before its parts were removed: the next run removes them
    parts_dir(store).mkdir()
    (parts_dir(store) / "row-000000.npz").write_bytes(b"left over")
    ingest(_cfg(src), store)
    assert not parts_dir(store).exists()


def test_a_part_whose_encoded_images_were_lost_is_prepared_again_on_resume(tmp_path, monkeypatch):
    """A row's images live in the chunk files its worker encoded, which the part names with their sizes: a chunk
    lost after the part was written is not trusted, and the resume prepares that row again; the store is the one
    an uninterrupted ingest writes."""
    src = _folder(tmp_path / "src", 10)
    whole = ingest(_cfg(src), tmp_path / "whole" / "dataset.zarr")
    store = tmp_path / "run" / "dataset.zarr"

    def stops(*args, **kwargs):
        raise Injected  # every row prepared, the store not yet written

    monkeypatch.setattr(parts, "_from_parts", stops)
    with pytest.raises(Injected):
        ingest(_cfg(src), store)
    monkeypatch.undo()
    [encoded] = parts_dir(store).glob("row-000003-*.zarr")
    [chunk] = [f for f in (encoded / "c").rglob("*") if f.is_file()]
    chunk.unlink()
    calls, real = [], parts.prepare_row
    monkeypatch.setattr(parts, "prepare_row",
                        lambda listing, row, *a: (calls.append(row.index), real(listing, row, *a))[1])
    said: list[str] = []
    ingest(_cfg(src), store, progress=said.append)
    assert calls == [3] and any("resuming: 9 of 10 rows already prepared" in s for s in said)
    _same_store(store, whole)
    _no_leftovers(tmp_path)


def test_a_changed_file_is_prepared_again_on_resume(tmp_path, monkeypatch):
    """A part whose file was replaced after it was prepared is not trusted: the resume prepares that row again."""
    src = _folder(tmp_path / "src", 10)
    store = tmp_path / "run" / "dataset.zarr"
    real = parts.prepare_row
    monkeypatch.setattr(parts, "prepare_row", lambda li, row, cfg, w: (_ for _ in ()).throw(Injected())
                        if row.index == 4 else real(li, row, cfg, w))
    with pytest.raises(Injected):
        ingest(_cfg(src), store)
    monkeypatch.setattr(parts, "prepare_row", real)
    os.utime(src / "v1.nii.gz", ns=(time.time_ns(), time.time_ns() + 10**9))
    said: list[str] = []
    ingest(_cfg(src), store, progress=said.append)
    assert any("resuming: 3 of 10 rows already prepared" in s for s in said)


KILLED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from motfm_core.config import DataConfig
    from motfm_core.data import parts
    from motfm_core.data.ingest import ingest

    real = parts.prepare_row
    def slow(*a):
        out = real(*a)
        time.sleep(0.3)
        return out
    parts.prepare_row = slow
    if __name__ == "__main__":
        ingest(DataConfig(source=sys.argv[1], spatial_dims=3, image_size=16, depth=8, workers=1), Path(sys.argv[2]))
""")


def test_an_ingest_killed_at_half_writes_only_the_other_half(tmp_path):
    """kill -9 of the ingesting process after 6 of 12 parts: the re-run prepares the 6 left and the store equals an
    uninterrupted one; no temporary file is left."""
    src = _folder(tmp_path / "src", 12)
    store = tmp_path / "run" / "dataset.zarr"
    script = tmp_path / "ingest.py"
    script.write_text(KILLED)
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(store)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while len(list(parts_dir(store).glob("row-*.npz"))) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(parts_dir(store).glob("row-*.npz")))
    assert 6 <= done < 12 and not store.exists()
    said: list[str] = []
    ingest(_cfg(src), store, progress=said.append)
    assert any(f"resuming: {done} of 12 rows already prepared" in s and f"preparing {12 - done}" in s for s in said)
    _same_store(store, ingest(_cfg(src), tmp_path / "whole" / "dataset.zarr"))
    _no_leftovers(tmp_path)


def test_a_dask_worker_killed_mid_ingest_is_replaced_and_the_store_is_whole(tmp_path):
    """SIGKILL of a worker of the cluster the ingest fans out over: its row runs again on a worker (the nanny starts
    a new one) and the store equals one ingested in a single process."""
    from distributed import Client, LocalCluster

    src = _folder(tmp_path / "src", 16, side=64)
    whole = ingest(_cfg(src, image_size=32, depth=16), tmp_path / "whole" / "dataset.zarr")
    store = tmp_path / "run" / "dataset.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        before = set(client.run(os.getpid).values())
        errors: list[BaseException] = []

        def run() -> None:
            try:
                ingest(_cfg(src, image_size=32, depth=16, workers=2), store, scheduler=cluster.scheduler_address)
            except BaseException as exc:  # noqa: BLE001 (handed to the test's thread)
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.time() + 120
        while not list(parts_dir(store).glob("row-*.npz")) and time.time() < deadline:
            time.sleep(0.01)
        os.kill(sorted(before)[0], signal.SIGKILL)
        thread.join(180)
        assert not errors, errors
        assert set(client.run(os.getpid).values()) != before  # a worker was replaced
    _same_store(store, whole)
    _no_leftovers(tmp_path)


def test_a_bad_file_in_a_parallel_ingest_stops_it_in_one_line_and_keeps_the_rows_written(tmp_path, shared_dask_cluster):
    """A file that cannot be read, among 12 on Dask workers: one line naming it, the rows prepared kept; once it is
    fixed the resume prepares the rest."""
    src = _folder(tmp_path / "src", 12)
    good = (src / "v9.nii.gz").read_bytes()
    (src / "v9.nii.gz").write_bytes(b"not a nifti")
    store = tmp_path / "run" / "dataset.zarr"
    with pytest.raises(BadInput, match=r"v9.nii.gz: cannot read NIfTI") as e:
        ingest(_cfg(src, workers=0), store, scheduler=shared_dask_cluster)
    assert "\n" not in str(e.value) and not store.exists()
    (src / "v9.nii.gz").write_bytes(good)
    said: list[str] = []
    ingest(_cfg(src, workers=0), store, progress=said.append, scheduler=shared_dask_cluster)
    assert open_store(store).attrs["num_samples"] == 12
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("where", ["part", "images"])
def test_a_full_disk_mid_ingest_leaves_whole_parts_and_no_store(tmp_path, monkeypatch, where):
    """ENOSPC while the third row's part, or its encoded images, are written: the error is a full disk (never
    retried, one line in the CLI), the two parts before it are whole, nothing half-written is left, no store claims
    a row; the resume finishes."""
    import errno

    from motfm_core.files import is_out_of_disk

    src = _folder(tmp_path / "src", 10)
    store = tmp_path / "run" / "dataset.zarr"
    real_savez, real_images, count = np.savez, parts.images_array, []
    full = OSError(errno.ENOSPC, "No space left on device")

    def fills_part(f, **arrays):
        count.append(1)
        if len(count) == 3:
            f.write(b"\0" * 100)  # part of the bytes reached the disk before it filled
            raise full
        return real_savez(f, **arrays)

    def fills_images(path, shape):
        count.append(1)
        if len(count) == 3:
            Path(path).mkdir()
            (Path(path) / "zarr.json").write_bytes(b"\0" * 100)
            raise full
        return real_images(path, shape)

    if where == "part":
        monkeypatch.setattr(parts.np, "savez", fills_part)
    else:
        monkeypatch.setattr(parts, "images_array", fills_images)
    with pytest.raises(OSError) as e:
        ingest(_cfg(src), store)
    assert is_out_of_disk(e.value) and not store.exists()
    assert len(list(parts_dir(store).glob("row-*.npz"))) == 2
    _no_leftovers(tmp_path)
    monkeypatch.undo()
    said: list[str] = []
    ingest(_cfg(src), store, progress=said.append)
    assert any("resuming: 2 of 10 rows already prepared" in s for s in said)
    assert open_store(store).attrs["num_samples"] == 10


def test_two_ingests_of_one_folder_into_one_store_at_once_both_end_with_the_whole_store(tmp_path):
    """Two runs at once: two processes ingest the same folder into the same store (each slowed between rows). They
    take turns: the second waits for the first (at once, the first removed the row parts the second was reading)
    and reuses its store. Both succeed, only one prepares the rows, the store equals an uninterrupted ingest's,
    and no temporary file is left."""
    src = _folder(tmp_path / "src", 12)
    store = tmp_path / "run" / "dataset.zarr"
    script = tmp_path / "ingest.py"
    script.write_text(KILLED.replace("Path(sys.argv[2]))", "Path(sys.argv[2]), progress=print)"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(src), str(store)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    said = [o[0] for o in outs]
    assert sum("rows prepared here" in out for out in said) == 1 and sum("reusing it" in out for out in said) == 1, said
    _same_store(store, ingest(_cfg(src), tmp_path / "whole" / "dataset.zarr"))
    _no_leftovers(tmp_path)
    assert not (tmp_path / "run" / "dataset.zarr.lock").exists()  # the last holder removed it
