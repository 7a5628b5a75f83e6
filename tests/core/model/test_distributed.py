"""Sampling over Dask: exactly-once output after a worker of an external cluster (started with the `dask` CLI, as a
user would) is killed; two runs on one cluster; bad parameters. A whole run killed mid-sampling (client and
workers) and resumed with only its missing shards is tested through a deployment, as a user meets it
(tests/deployments/test_local_server.py: the killed worker's flow run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from motfm_core.config import SampleConfig
from motfm_core.data import incomplete_shards, shard_complete
from motfm_core.model.distributed import SCHEDULER_ENV, dask_client
from motfm_core.model.sampling import generate, prepare_version, sample_plan
from motfm_core.model.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]
# 16 shards of 3 images at NFE 20: long enough (several seconds) to be interrupted part-way. The copy guard is off:
# these tests compare the store with the planned seeds; the guard's own determinism is tested in test_masks.py
CFG = dict(samples_per_class=16, shard_size=3, nfe=20, batch_size=3, reject_copies=False)

RUNNER = textwrap.dedent("""
    import json, os, sys
    from motfm_core.config import SampleConfig
    from motfm_core.model.distributed import SCHEDULER_ENV, dask_client, sample_shards
    from motfm_core.model.sampling import prepare_version
    ckpt, root, pids, cfg = sys.argv[1], sys.argv[2], sys.argv[3], SampleConfig(**json.loads(sys.argv[4]))
    store, todo = prepare_version(ckpt, cfg, root)
    # $MOTFM_DASK_SCHEDULER: the external cluster; else a local one of two workers
    with dask_client(os.environ.get(SCHEDULER_ENV), workers=2, threads_per_worker=1) as client:
        open(pids + ".tmp", "w").write(json.dumps(list(client.run(os.getpid).values())))
        os.replace(pids + ".tmp", pids)
        done = sample_shards(ckpt, store, todo, cfg, client)
        address = client.scheduler.address
    print(json.dumps({"store": str(store), "written": [r.shard for r in done if not r.skipped],
                      "scheduler": address}))
""")


def _start(ckpt, root: Path, pids: Path, scheduler: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(SCHEDULER_ENV, None)
    if scheduler:
        env[SCHEDULER_ENV] = scheduler
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(ckpt), str(root), str(pids), json.dumps(CFG)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _wait_for(predicate, timeout=180.0, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"runner exited early: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def _completed(root: Path) -> list[int]:
    stores = sorted(root.glob("v*.zarr"))
    if not stores or not (stores[0] / "zarr.json").exists():
        return []
    return [i for i in range(16) if shard_complete(stores[0], i)]


def _assert_exact(store: Path, ckpt) -> None:
    """Every planned sample exactly once, in place, equal to a direct single-process generation."""
    cfg = SampleConfig(**CFG)
    assert incomplete_shards(store) == []
    root = zarr.open_group(str(store), mode="r")
    labels, seeds = sample_plan(3, cfg)
    assert np.array_equal(root["seed"][:], seeds) and np.array_equal(root["labels"][:], labels)
    images = root["images"][:]
    assert images.shape == (48, 1, 16, 16) and np.isfinite(images).all()  # unwritten samples would be NaN
    model, _ = load_checkpoint(ckpt)
    direct, _ = generate(model, labels[:6], seeds[:6], cfg)
    np.testing.assert_allclose(images[:6], direct, atol=1e-4)


def _dask_cli(*args: str, log: Path) -> subprocess.Popen:
    """A `dask` CLI process in a session of its own (so a kill takes it whole), output to `log`."""
    return subprocess.Popen([str(Path(sys.executable).parent / "dask"), *args], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def test_a_killed_worker_of_an_external_cluster_loses_nothing(tiny_checkpoint, tmp_path):
    """`dask scheduler` and two `dask worker` processes on loopback; sampling reaches them through
    $MOTFM_DASK_SCHEDULER; one worker is killed mid-run: every shard once, equal to direct sampling."""
    info = tmp_path / "scheduler.json"
    scheduler = _dask_cli("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                          str(info), log=tmp_path / "scheduler.log")
    workers = []
    try:
        _wait_for(lambda: info.exists() and info.stat().st_size > 0, timeout=60, proc=scheduler)
        address = json.loads(info.read_text())["address"]
        workers = [_dask_cli("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{i}",
                             log=tmp_path / f"worker{i}.log") for i in range(2)]
        proc = _start(tiny_checkpoint, tmp_path, tmp_path / "pids.json", scheduler=address)
        try:
            _wait_for(lambda: len(_completed(tmp_path)) >= 2, proc=proc)
            os.killpg(workers[0].pid, signal.SIGKILL)  # one worker, mid-run, as a lost machine
            assert len(_completed(tmp_path)) < 16, "the run finished before the kill: make the shards slower"
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 0, err[-3000:]
        assert workers[0].wait(timeout=10) == -signal.SIGKILL and workers[1].poll() is None
        result = json.loads(out.strip().splitlines()[-1])
        assert result["scheduler"] == address  # the external cluster did the work, not a local fallback
        _assert_exact(Path(result["store"]), tiny_checkpoint)
    finally:
        for p in (*workers, scheduler):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
    assert all(p.poll() is not None for p in (*workers, scheduler))  # everything stopped


def test_execution_settings_do_not_make_a_new_version(tiny_checkpoint, tmp_path):
    a, _ = prepare_version(tiny_checkpoint, SampleConfig(**CFG), tmp_path)
    b, _ = prepare_version(tiny_checkpoint, SampleConfig(**CFG, workers=4, compile=True, keep_versions=2), tmp_path)
    c, _ = prepare_version(tiny_checkpoint, SampleConfig(**{**CFG, "nfe": 3}), tmp_path)
    assert a == b and c != a


def test_shards_sized_by_bytes_are_the_same_version_as_that_size_given(tiny_checkpoint, tmp_path):
    """sample.shard_size 0 sizes shards by sample.shard_mb; the version's key holds the layout that gives, so the
    same shards asked for by count are the same version, and another layout another one."""
    auto = {**CFG, "shard_size": 0}
    a, _ = prepare_version(tiny_checkpoint, SampleConfig(**auto), tmp_path)
    size = zarr.open_group(str(a), mode="r").attrs["shard_size"]
    assert size == 6  # 48 samples (16 a class): at least 8 shards, whatever shard_mb allows
    b, _ = prepare_version(tiny_checkpoint, SampleConfig(**{**CFG, "shard_size": size}), tmp_path)
    c, _ = prepare_version(tiny_checkpoint, SampleConfig(**auto, shard_mb=0.001), tmp_path)  # 1 KiB: one a shard
    assert a == b and c != a and zarr.open_group(str(c), mode="r").attrs["shard_size"] == 1


def test_shard_sizes_follow_bytes():
    from motfm_core.data.synthetic import shard_images

    assert shard_images(48 * 48 * 4, 100_000, 16) == 1820  # 16 MiB of 48 px images: a multiple of 14 a chunk
    assert shard_images(128 ** 3 * 4, 1000, 16) == 2  # 128^3 volumes: 8 MiB each
    assert shard_images(256 ** 3 * 4, 1000, 16) == 1  # a sample larger than a shard: one a shard
    assert shard_images(48 * 48 * 4, 120, 16) == 14  # the demo's 120: 8 shards or more (15, down to a chunk's 14)
    assert shard_images(48 * 48 * 4, 5, 16) == 1


def test_another_compression_is_applied_as_a_new_version_not_ignored(tiny_checkpoint, tmp_path):
    """A version keeps the codecs it was created with: resuming it with sample.compression changed would write the
    old codec silently, so the encoding is part of the version's key."""
    a, _ = prepare_version(tiny_checkpoint, SampleConfig(**CFG), tmp_path)
    b, _ = prepare_version(tiny_checkpoint, SampleConfig(**CFG, compression="none"), tmp_path)
    assert a != b
    assert zarr.open_array(str(a / "images")).compressors and not zarr.open_array(str(b / "images")).compressors


def test_bad_cluster_parameters_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)  # (the session's shared cluster names itself there when alive)
    with pytest.raises(ValueError, match="sample.workers"):
        SampleConfig(workers=-1).validate()
    with pytest.raises(ValueError, match="at least one Dask worker"):
        with dask_client(workers=-2):
            pass
    with pytest.raises(OSError):  # nothing listens there: an error, not a silent local fallback
        with dask_client(scheduler="tcp://127.0.0.1:9", workers=1, timeout="2s"):
            pass


def test_two_runs_on_one_cluster_with_the_same_version_name(tiny_checkpoint, tmp_path, shared_dask_cluster):
    """Two runs (or a run and its low-data generator) both write `v0001.zarr` on one shared cluster at the same
    time: each store gets its own shards (Dask keys name the whole path, not the version name)."""
    from concurrent.futures import ThreadPoolExecutor

    from motfm_core.model.distributed import sample_shards

    cfg = SampleConfig(samples_per_class=2, shard_size=2, nfe=2, batch_size=2)
    plans = [prepare_version(tiny_checkpoint, cfg, tmp_path / run) for run in ("a", "b")]
    assert plans[0][0].name == plans[1][0].name == "v0001.zarr"
    with dask_client(shared_dask_cluster) as client, ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda p: sample_shards(tiny_checkpoint, p[0], p[1], cfg, client), plans))
    for (store, todo), results in zip(plans, done):
        assert [r.shard for r in results] == todo and not any(r.skipped for r in results)
        assert incomplete_shards(store) == []


def test_a_run_may_only_name_a_scheduler_its_worker_allows(monkeypatch):
    """sample.scheduler is a flow parameter: a scheduler not named in the worker's environment is refused before
    any work (the run would unpickle what that cluster's workers send back)."""
    from motfm_core.model.distributed import ALLOWED_ENV, check_scheduler, run_cluster

    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    monkeypatch.delenv(ALLOWED_ENV, raising=False)
    check_scheduler("")  # a local cluster: always allowed
    with pytest.raises(ValueError, match=r"sample.scheduler='tcp://evil:8786' is not a Dask scheduler this worker "
                                         r"may use.*MOTFM_DASK_SCHEDULERS_ALLOWED"):
        with run_cluster(SampleConfig(scheduler="tcp://evil:8786")):
            pass
    monkeypatch.setenv(ALLOWED_ENV, "tls://gpu-a:8786,tls://gpu-b:8786")
    check_scheduler("tls://gpu-b:8786")
    monkeypatch.setenv(SCHEDULER_ENV, "tls://own:8786")
    check_scheduler("tls://own:8786")
    with pytest.raises(ValueError, match="not a Dask scheduler"):
        check_scheduler("tcp://evil:8786")


def test_a_version_samples_only_from_the_checkpoint_it_records(tiny_checkpoint, tmp_path):
    """Two runs into one folder: the second replaced model.pt while the first's version was being sampled, and its
    shards came from the replaced file under the first file's sha256. Now a shard loads the bytes the version's
    hash names or refuses in one line."""
    import shutil

    import torch

    from motfm_core.model.sampling import sample_shard

    ckpt = tmp_path / "checkpoints" / "model.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_checkpoint, ckpt)
    cfg = SampleConfig(samples_per_class=2, shard_size=2, nfe=2, batch_size=2, reject_copies=False)
    store, todo = prepare_version(ckpt, cfg, tmp_path / "synthetic")
    assert sample_shard(ckpt, store, todo[0], cfg).count == 2  # the recorded checkpoint samples
    other = torch.load(ckpt, weights_only=True)
    other["ema"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in other["ema"].items()}
    torch.save(other, ckpt)  # another run's training replaced it
    with pytest.raises(ValueError, match=r"model.pt: not the checkpoint this synthetic version records") as e:
        sample_shard(ckpt, store, todo[1], cfg)
    assert "\n" not in str(e.value)
