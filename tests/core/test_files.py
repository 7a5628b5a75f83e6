"""A run folder held by one process at a time: a second holder is refused naming the first, and the kernel frees
the hold when the holder dies, kill -9 included (nothing to clean up, no pid or host name to trust)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from motfm_core.files import FolderBusy, folder_holder, hold_folder

HOLDER = textwrap.dedent("""
    import sys, time
    from motfm_core.files import hold_folder
    with hold_folder(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_held_folder_is_refused_naming_its_holder_and_freed_when_the_holder_is_killed(tmp_path):
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert f"pid {proc.pid}" in (folder_holder(folder) or "")
        with pytest.raises(FolderBusy, match=rf"{folder}: in use by another run \(pid {proc.pid} on "):
            with hold_folder(folder):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while folder_holder(folder) is not None and time.time() < deadline:
        time.sleep(0.05)
    assert folder_holder(folder) is None  # the kernel released it with the process
    with hold_folder(folder) as held:
        assert held == folder and f"pid {os.getpid()}" in (folder / ".motfm-hold").read_text()


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    with hold_folder(tmp_path / "run"):
        with pytest.raises(FolderBusy):
            with hold_folder(tmp_path / "run"):
                pass
    with hold_folder(tmp_path / "run"):  # released at the end of the block
        pass


def _in_own_pid_namespace(code: str) -> subprocess.Popen | None:
    """`code` run by a process in a pid namespace of its own (as in a container sharing this host name and file
    system), or None where namespaces cannot be made here (not root, no unshare)."""
    import shutil

    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    return subprocess.Popen(["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", code],
                            stdout=subprocess.PIPE, text=True)


def test_a_live_writer_in_another_pid_namespace_keeps_its_files(tmp_path, monkeypatch):
    """A writer in another container with the same host name: its pid means nothing here. Judged by pid and host
    name, the sweep found that pid gone (another process's pid, or none) and deleted the live writer's files."""
    import motfm_core.files as files

    writer = _in_own_pid_namespace(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from motfm_core.files import temporary_name
        tmp = temporary_name(Path({str(tmp_path)!r}) / "shard")
        tmp.mkdir()
        print(tmp, flush=True)
        time.sleep(60)
    """))
    if writer is None:
        pytest.skip("no pid namespaces here (unshare needs root)")
    try:
        staged = Path(writer.stdout.readline().strip())
        assert staged.exists()
        monkeypatch.setattr(files, "_pid_alive", lambda pid: False)  # its pid is not visible from here
        assert files.sweep_leftovers(tmp_path) == [] and staged.exists()
        assert files.sweep_leftovers(tmp_path, older_than=-1) == [staged]  # the age rule still applies
    finally:
        writer.kill()
        writer.wait()


def test_a_leftover_of_another_scope_waits_for_the_age_rule(tmp_path, monkeypatch):
    """The same rule without namespaces (where unshare cannot run): a name written under another boot or pid
    namespace, whose pid is gone here, is kept until it is old."""
    import socket

    import motfm_core.files as files

    foreign = tmp_path / f".x.json.tmp-0badc0de-4242-{'0' * 8}@{socket.gethostname()}"
    foreign.write_text("{}")
    assert files._process_scope() != "0" * 8
    monkeypatch.setattr(files, "_pid_alive", lambda pid: False)
    assert files.sweep_leftovers(tmp_path) == [] and foreign.exists()
    assert files.sweep_leftovers(tmp_path, older_than=-1) == [foreign]


def test_a_dead_writer_of_this_namespace_is_swept_at_once_and_a_live_one_kept(tmp_path):
    from motfm_core.files import sweep_leftovers, temporary_name

    dead = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from motfm_core.files import temporary_name
        temporary_name(Path({str(tmp_path)!r}) / "x.json").write_text("{{}}")
    """)])
    dead.wait()
    mine = temporary_name(tmp_path / "y.json")
    mine.write_text("{}")
    crashed = [p for p in tmp_path.iterdir() if p != mine]
    assert len(crashed) == 1
    assert sweep_leftovers(tmp_path) == crashed and mine.exists()


def test_held_in_turn_lets_one_holder_in_at_a_time_and_leaves_no_file(tmp_path):
    """Four holders at once (flock conflicts between separate opens, threads included): never two inside together,
    the waiters say whom they wait for, and the last one out removes the lock file (each holder removes it before
    letting go; a waiter left holding the removed file takes the path afresh)."""
    import threading

    from motfm_core.files import held_in_turn

    lock, inside, overlaps, said = tmp_path / "x.lock", [], [], []

    def hold(i: int) -> None:
        with held_in_turn(lock, "work", said.append):
            inside.append(i)
            if len(inside) > 1:
                overlaps.append(list(inside))
            time.sleep(0.05)
            inside.remove(i)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and not lock.exists()
    # (a holder that has just opened the file may not have written its pid yet: "another process" then)
    assert said and all(s.startswith("work: waiting for ") and str(lock) in s for s in said)
