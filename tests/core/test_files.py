"""A run folder held by one process at a time: a second holder is refused naming the first, and the kernel frees
the hold when the holder dies, kill -9 included (nothing to clean up, no pid or host name to trust)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

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
