"""Versions of the synthetic dataset: distinct versions for concurrent runs, `latest` only forward, pruning that
never deletes a version in use."""

import json
import threading
import time

import numpy as np

from motfm_core.data import create_synthetic_store, hold_version, publish_latest, write_shard
from motfm_core.data.versions import create_version, live_leases, versions


def _version(root, key):
    def create(path):
        time.sleep(0.05)  # a real creation takes a while: long enough for another run to pick the same number
        return create_synthetic_store(path, 4, (1, 8, 8), 4, {"run_key": key})

    path = create_version(root, key, create)
    write_shard(path, 0, np.zeros((4, 1, 8, 8)), np.zeros(4), np.arange(4))
    return path


def test_concurrent_runs_get_distinct_versions_and_latest_ends_on_the_newest(tmp_path):
    root, out, errors = tmp_path / "synthetic", {}, []
    start = threading.Barrier(4)

    def run(key):
        start.wait()
        try:
            out[key] = _version(root, key)
            publish_latest(out[key])
        except Exception as e:  # noqa: BLE001 (collected for the assertion below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(out.values())) == 4 and len(versions(root)) == 4
    assert (root / "latest").resolve() == versions(root)[-1]


def test_latest_never_moves_back_to_an_older_version(tmp_path):
    root = tmp_path / "synthetic"
    v1, v2 = _version(root, "a"), _version(root, "b")
    publish_latest(v2)
    publish_latest(v1)  # a slower run finishing its older version afterwards
    assert (root / "latest").resolve() == v2


def test_pruning_waits_for_leases_and_for_the_grace_period(tmp_path):
    root = tmp_path / "synthetic"
    v1, v2, v3 = (_version(root, k) for k in "abc")
    publish_latest(v2, keep=1, grace=3600)
    assert v1.exists() and (root / ".retired" / "v0001.zarr").exists()  # retired, not deleted, within the grace
    with hold_version(v1):
        publish_latest(v3, keep=1, grace=0)
        assert v1.exists() and v2.exists() is False  # held: kept; v2 was not held and is past its grace
    publish_latest(v3, keep=1, grace=0)
    assert not v1.exists() and versions(root) == [v3]


def test_a_lease_is_renewed_while_held_and_expires_when_its_holder_is_gone(tmp_path):
    root = tmp_path / "synthetic"
    v1 = _version(root, "a")
    with hold_version(v1, seconds=0.3):
        time.sleep(0.5)  # past its first expiry: renewed meanwhile
        assert live_leases(v1)
    assert not live_leases(v1)
    stale = root / ".leases" / "v0001.zarr.dead-1@elsewhere.json"
    stale.write_text(json.dumps({"expires": time.time() - 1}))
    assert not live_leases(v1)


def test_a_lease_whose_renewals_fail_is_retried_and_a_lapse_fails_the_next_read_loudly(tmp_path, monkeypatch,
                                                                                         caplog):
    """One failed renewal (a stale NFS handle) ended the renewal thread silently; the lease expired while held and
    prune_versions(keep=1, grace=0) deleted the version under its reader. Now failures are retried and logged, and
    a lease that lapses anyway makes every read of the version fail, saying so."""
    import pytest

    from motfm_core.data import versions as versions_module
    from motfm_core.data.synthetic import StoreDamaged, open_synthetic

    root = tmp_path / "synthetic"
    old = _version(root, "old")
    real_atomic = versions_module.atomic_path
    failing = {"on": False, "calls": 0}

    def flaky(path):
        if failing["on"] and str(path).endswith(".json"):
            failing["calls"] += 1
            raise OSError(116, "Stale file handle (injected)")
        return real_atomic(path)

    monkeypatch.setattr(versions_module, "RENEW_RETRIES", (0.01, 0.01))
    monkeypatch.setattr(versions_module, "atomic_path", flaky)
    with caplog.at_level("ERROR", logger="motfm_core.data.versions"):
        with hold_version(old, seconds=0.3) as held:
            failing["on"] = True
            time.sleep(0.8)  # renewals every 0.1 s fail: the 0.3 s lease lapses
            assert failing["calls"] >= 3  # retried, not given up after one failure
            publish_latest(_version(root, "new"), keep=1, grace=0.0)  # the lapsed lease no longer protects it
            with pytest.raises(StoreDamaged, match=r"the lease held on it lapsed \(renewals failed"):
                open_synthetic(held)
    assert "renewal failed" in caplog.text and "lapsed" in caplog.text
    with pytest.raises(StoreDamaged, match=r"v0001.zarr: this version was pruned at .*\(sample.keep_versions"):
        open_synthetic(old)  # a later reader is told which version went, and why (it used to be KeyError: 'images')


def test_expired_leases_of_dead_readers_are_swept(tmp_path):
    from motfm_core.data.versions import sweep_leases

    root = tmp_path / "synthetic"
    v = _version(root, "a")
    (root / ".leases").mkdir(exist_ok=True)
    dead = root / ".leases" / f"{v.name}.deadbeef-1@host.json"
    dead.write_text(json.dumps({"expires": time.time() - 3600, "pid": 1, "host": "host"}))
    with hold_version(v):
        assert sweep_leases(root) == [dead] and len(live_leases(v)) == 1  # a live lease stays


def test_a_version_number_taken_elsewhere_is_never_built_twice(tmp_path):
    """Numbers are taken by an exclusive mkdir (atomic on NFS, where another machine's flock may not be seen): a
    number another run took (even one that crashed before building it) is skipped."""
    root = tmp_path / "synthetic"
    (root / ".numbers").mkdir(parents=True)
    (root / ".numbers" / "v0001").mkdir()  # another machine's run took v0001 and has not built it yet
    first = _version(root, "a")
    assert first.name == "v0002.zarr"
    assert _version(root, "b").name == "v0003.zarr" and _version(root, "a") == first  # resumed, not renumbered
