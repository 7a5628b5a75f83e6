"""How a command ends when something fails: bad input, a full disk or memory, a system error, a bug, Ctrl-C; each
one line on stderr and its exit code, the traceback of a bug kept in a file."""

import ast
import errno
from pathlib import Path

import pytest

from flows.cli import failure_line, one_line_failures
from motfm_core.errors import BadInput, InputMissing

ROOT = Path(__file__).resolve().parents[2]


def _ended(capsys, error: BaseException, run_dir: Path | None = None) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as end, one_line_failures(run_dir=run_dir):
        raise error
    return int(end.value.code), capsys.readouterr().err.strip().splitlines()


def test_bad_input_is_one_line_with_exit_code_2(capsys, tmp_path):
    code, lines = _ended(capsys, BadInput("data.image_size=7: must be a multiple of 8; use 8"), tmp_path)
    assert (code, lines) == (2, ["motfm: error: data.image_size=7: must be a multiple of 8; use 8"])
    code, lines = _ended(capsys, InputMissing("labels.csv: missing"), tmp_path)
    assert code == 2 and lines == ["motfm: error: labels.csv: missing"]
    assert not (tmp_path / "logs").exists()  # the user's mistake needs no traceback


def test_an_internal_key_error_is_called_a_bug_and_its_traceback_kept(capsys, tmp_path):
    """An internal KeyError once printed as the user's error `motfm: error: 'fingerprint'`."""
    def stage():
        return {}["fingerprint"]

    with pytest.raises(SystemExit) as end, one_line_failures(run_dir=tmp_path):
        stage()
    lines = capsys.readouterr().err.strip().splitlines()
    assert end.value.code == 1 and len(lines) == 1
    assert lines[0].startswith("motfm: internal error (a bug in motfm, not in your input): KeyError: 'fingerprint'")
    saved = next((tmp_path / "logs").glob("error-*.txt"))
    assert str(saved) in lines[0]
    assert "in stage" in saved.read_text() and "KeyError: 'fingerprint'" in saved.read_text()


def test_a_third_party_value_error_is_a_bug_not_the_users(capsys, tmp_path):
    code, lines = _ended(capsys, ValueError("operands could not be broadcast together"), tmp_path)
    assert code == 1 and lines[0].startswith("motfm: internal error")


def test_full_disk_memory_and_system_errors(capsys, tmp_path):
    code, lines = _ended(capsys, OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")), tmp_path)
    assert code == 2 and len(lines) == 1 and "out of disk space" in lines[0] and "resumes" in lines[0]
    code, lines = _ended(capsys, MemoryError(), tmp_path)
    assert code == 2 and len(lines) == 1 and "out of memory" in lines[0] and "batch" in lines[0]
    code, lines = _ended(capsys, OSError(errno.EIO, "Input/output error", "/mnt/nfs/x"), tmp_path)
    assert code == 1 and len(lines) == 1 and "Input/output error" in lines[0] and "traceback is in" in lines[0]


def test_ctrl_c_is_one_line_saying_the_run_resumes(capsys):
    code, lines = _ended(capsys, KeyboardInterrupt())
    assert code == 130 and lines == ["motfm: interrupted; run the same command again and it resumes where it "
                                     "stopped (finished stages and shards are kept)"]


def test_debug_lets_the_exception_through():
    with pytest.raises(KeyError), one_line_failures(debug=True):
        raise KeyError("x")


def test_the_traceback_goes_to_a_temporary_folder_when_the_run_folder_cannot_be_written(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the run folder should be: its logs/ cannot be made
    line, code = failure_line(RuntimeError("boom"), blocked)
    assert code == 1 and "RuntimeError: boom" in line and str(blocked) not in line.split("traceback is in ")[1]


# raise sites of ValueError that are a caller's programming error (the project's own code passing wrong shapes),
# never a user's input: everything else the project raises for bad input is BadInput
INTERNAL = {("motfm_core/model/paths.py", "sample"), ("motfm_core/model/nets.py", "__init__"),
            ("motfm_core/model/nets.py", "forward"), ("motfm_core/data/rows.py", "__init__"),
            ("motfm_core/data/synthetic.py", "shard_bounds"), ("motfm_core/data/synthetic.py", "write_shard"),
            ("motfm_core/data/store.py", "write_dataset"), ("motfm_core/data/store.py", "_write_build"),
            ("motfm_core/data/geometry.py", "fit_volume"),
            ("motfm_core/model/solvers.py", "_grid"), ("motfm_core/evaluation/statistics.py", "paired_interval")}


def test_the_project_raises_bad_input_as_bad_input():
    """A ValueError, FileNotFoundError or KeyError raised by the project's own code is BadInput (or InputMissing),
    except the few programming errors listed above: the CLI tells the user's mistakes from its own bugs by type."""
    found = set()
    for path in sorted([*ROOT.glob("motfm_core/**/*.py"), *ROOT.glob("flows/*.py"), *ROOT.glob("tasks/*.py")]):
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                        getattr(node.exc.func, "id", None) in ("ValueError", "FileNotFoundError", "KeyError",
                                                               "NotADirectoryError", "TypeError"):
                    found.add((rel, fn.name))
    assert found <= INTERNAL, f"raise BadInput/InputMissing for the user's input: {sorted(found - INTERNAL)}"


def test_a_run_still_starting_is_not_marked_crashed(tmp_path):
    """A flow run shown as running that has not yet taken its folder's hold (the hold file is an earlier run's)
    was marked crashed by a second start in that window."""
    import os
    import time

    from flows.cli import START_GRACE_S, run_gone
    from motfm_core.files import hold_folder

    folder = tmp_path / "run"
    with hold_folder(folder):
        assert not run_gone(folder, time.time() - 5)  # held: alive
    earlier = time.time() - 3600
    os.utime(folder / ".motfm-hold", (earlier, earlier))  # an earlier run's hold
    assert not run_gone(folder, time.time() - 5)  # this run is still starting
    assert run_gone(folder, time.time() - START_GRACE_S - 1)  # never took its hold: gone
    with hold_folder(folder):
        started = time.time() - 1
    assert run_gone(folder, started)  # took its hold, then ended without releasing its state
