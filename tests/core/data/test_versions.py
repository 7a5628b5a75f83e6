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
