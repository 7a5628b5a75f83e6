"""The command line as a new user meets it: first run on an empty Prefect home, one-line errors, --set precedence."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.arguments import parse_cli
from flows.synth_and_eval import build_config

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--dataset", "phantom:12", "--image-size", "16", "--train-steps", "8", "--nfe", "2",
             "--samples-per-class", "3", "--seeds", "0",
             "--set", 'model.channels=[16,16]', "--set", "model.attention_levels=[false,false]",
             "--set", "model.num_head_channels=8", "--set", "train.batch_size=8", "--set", "train.warmup_steps=2",
             "--set", "sample.shard_size=3", "--set", "eval.steps=3", "--set", "eval.channels=[8,16]",
             "--set", "eval.real_fractions=[]", "--set", "eval.ratios=[1.0]", "--set", "eval.seg_steps=2",
             "--set", "eval.seg_channels=[8,16]", "--set", "eval.nfe_curve=[1]", "--set", "eval.nfe_curve_samples=2"]


def _run(args, home, **kw):
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "flows.synth_and_eval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, **kw)


def _errors(err: str) -> list[str]:
    """The CLI's own error lines in `err` (Prefect may print its server shutdown after them)."""
    return [line for line in err.splitlines() if line.startswith("motfm: error:")]


def test_set_wins_over_named_defaults_and_a_contradiction_is_refused(capsys):
    a, overrides = parse_cli(["--set", "sample.nfe=3", "--set", "sample.samples_per_class=7",
                              "--set", "eval.seeds=[4]"])
    cfg = build_config("brain-mri", 48, None, "euler", 10, 80, [0, 1, 2], overrides)  # the flow's own defaults
    assert (cfg.sample.nfe, cfg.sample.samples_per_class, cfg.eval.seeds) == (3, 7, (4,))
    _, overrides = parse_cli(["--preset", "demo", "--train-steps", "100"])  # explicit beats the preset
    assert overrides["train"]["steps"] == 100 and overrides["train"]["batch_size"] == 16
    with pytest.raises(SystemExit) as e:
        parse_cli(["--nfe", "5", "--set", "sample.nfe=0"])
    assert e.value.code == 2 and "--set sample.nfe=0 contradicts --nfe 5" in capsys.readouterr().err


def _newcomer_folder(folder: Path, n: int = 36) -> Path:
    """What a new user brings: PNG slices, binary masks saved as 0/255, labels.csv without a subject column."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.RandomState(0)
    folder.mkdir()
    rows = []
    for i in range(n):
        label = i % 2
        yy, xx = np.mgrid[:32, :32]
        blob = ((yy - 16) ** 2 + (xx - 10 - 12 * label) ** 2) < 30 + 4 * (i % 5)
        image = (60 + 120 * blob + rng.rand(32, 32) * 40).astype(np.uint8)
        Image.fromarray(image).save(folder / f"slice{i:02d}.png")
        Image.fromarray((255 * blob).astype(np.uint8)).save(folder / f"slice{i:02d}_mask.png")
        rows.append({"filename": f"slice{i:02d}.png", "label": ["left", "right"][label],
                     "mask": f"slice{i:02d}_mask.png"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


def test_first_run_of_a_newcomers_own_data_on_an_empty_prefect_home(tmp_path):
    """A fresh PREFECT_HOME (the embedded server must start on the first try: it timed out while its database
    migrated) and a newcomer's own folder: 0/255 PNG masks (they crashed the evaluation: 255 + 1 wrapped to 0
    classes) and no subject column. The run reaches its report, which says how the masks and groups were read."""
    home = tmp_path / "prefect-home"
    folder = _newcomer_folder(tmp_path / "mydata")
    own = [str(folder) if a == "phantom:12" else a for a in TINY_ARGS]
    ok = _run([*own, "--run-name", "t", "--output-root", str(tmp_path / "out"), "--set", "eval.nfe_arms=[1]"], home)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "Prefect database ready" in ok.stdout and (tmp_path / "out" / "t" / "report.md").exists()
    assert json.loads((tmp_path / "out" / "t" / "config.json").read_text())["sample"]["nfe"] == 2
    report = (tmp_path / "out" / "t" / "report.md").read_text()
    assert "mask values read as classes: 0 -> 0, 255 -> 1" in report and "no subject column" in report
    assert "1 foreground classes" in report  # the segmenter ran on two classes
    # downstream value per NFE: the generator sampled again at NFE 1 (its own version), arms beside NFE 2's
    assert "Downstream value per NFE" in report and "| 1 |" in report and "| 2 |" in report
    assert (tmp_path / "out" / "t" / "nfe-arms" / "nfe-1" / "synthetic" / "latest").is_symlink()
    assert "Traceback" not in ok.stdout + ok.stderr and "telemetry" not in (ok.stdout + ok.stderr).lower()
    # `motfm regenerate` of the same run, same home: as quiet (it printed a docket telemetry traceback, telemetry
    # errors and Dask's start-up lines), and its report is the new version's
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    regen = subprocess.run([sys.executable, "-m", "flows.motfm", "regenerate", "--run-name", "t", "--output-root",
                            str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    said = regen.stdout + regen.stderr
    assert regen.returncode == 0, said[-3000:]
    assert "Traceback" not in said and "telemetry" not in said.lower() and "distributed." not in said
    assert (tmp_path / "out" / "t" / "reports" / "v0002" / "report.md").exists()


def test_ctrl_c_is_one_line_saying_the_run_resumes(tmp_path):
    """Ctrl-C printed a 70-line KeyboardInterrupt traceback; now one line, exit code 130, and a rerun resumes."""
    import signal

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    args = [*TINY_ARGS, "--train-steps", "3000", "--run-name", "c", "--output-root", str(tmp_path / "out")]
    run = subprocess.Popen([sys.executable, "-m", "flows.synth_and_eval", *args], cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert run.stdout is not None
    seen = []
    for line in run.stdout:  # interrupted mid-training, as a user at the terminal would
        seen.append(line)
        if "train: step" in line:
            run.send_signal(signal.SIGINT)
            break
    said = "".join(seen) + run.communicate(timeout=120)[0]
    assert run.returncode == 130, said[-3000:]
    assert "Traceback" not in said and said.count("motfm: interrupted;") == 1, said[-3000:]


def test_bad_input_fails_with_one_line_before_prefect_starts(tmp_path, capsys):
    """A bad value or a missing source: exit code 2 and one line, no traceback, nothing written, and before
    Prefect starts (no "Prefect database ready" line). In-process: `main` is what `python -m flows.synth_and_eval`
    runs, and nothing before these checks starts a server or a subprocess."""
    from flows.run import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main([*TINY_ARGS, "--run-name", "t", "--output-root", str(out), "--set", "train.lr=abc"])
    bad = capsys.readouterr()
    assert e.value.code == 2 and "Traceback" not in bad.err + bad.out
    assert "Prefect database ready" not in bad.out  # refused before the server starts
    assert _errors(bad.err) == ["motfm: error: train.lr must be a float, got 'abc' (str); e.g. --set train.lr=0.5"]

    with pytest.raises(SystemExit) as e:
        main(["--dataset", str(tmp_path / "nowhere"), "--run-name", "m", "--output-root", str(out)])
    missing = capsys.readouterr()
    assert e.value.code == 2 and "Traceback" not in missing.err + missing.out
    assert "Prefect database ready" not in missing.out
    assert len(_errors(missing.err)) == 1 and _errors(missing.err)[0].startswith(
        f"motfm: error: {tmp_path / 'nowhere'}: data source not found")
    assert not out.exists()  # nothing written


def test_an_explicit_model_size_replaces_the_presets_network():
    _, overrides = parse_cli(["--preset", "demo-3d", "--model-size", "large"])
    cfg = build_config("brain-mri", 48, None, "euler", 10, 80, [0], overrides)
    assert cfg.model.size == "large" and cfg.model.channels == (128, 256, 256)  # sized for its 32 x 32 x 8 blocks
    _, overrides = parse_cli(["--preset", "demo-3d", "--model-size", "large", "--set", "model.channels=[8,16,16]"])
    assert build_config("brain-mri", 48, None, "euler", 10, 80, [0], overrides).model.channels == (8, 16, 16)
    _, overrides = parse_cli(["--preset", "demo-3d"])  # without it, the preset's own network
    assert build_config("brain-mri", 48, None, "euler", 10, 80, [0], overrides).model.channels == (16, 32, 32)


def test_a_configuration_that_cannot_fit_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    """The 128^3 case that asked for 48 GiB on its first training step and was retried: now refused by the plan."""
    from flows.run import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "phantom:6", "--image-size", "128", "--set", "data.spatial_dims=3",
              "--set", "data.depth=128", "--train-steps", "2", "--run-name", "big", "--output-root", str(out)])
    err = capsys.readouterr()
    assert e.value.code == 2 and "Traceback" not in err.err + err.out and not out.exists()
    assert "Prefect database ready" not in err.out
    (line,) = _errors(err.err)
    assert line.startswith("motfm: error: train: a training step needs about ") and "train.batch_size (now 32" in line


def test_the_clinical_2d_preset_is_the_native_size_network_and_fits():
    from flows.run import check_before_start

    a, overrides = parse_cli(["--preset", "clinical-2d"])
    cfg = build_config("brain-mri", 48, None, "euler", 10, 80, [0, 1, 2], overrides)
    assert cfg.data.image_size == 192 and cfg.model.channels == (32, 64, 64, 128, 128)  # 1 mm, bottleneck 12 x 12
    assert cfg.model.attention_levels == (False,) * 4 + (True,)
    plan = check_before_start(a.enhance, overrides)
    assert "attention at 12x12 (144 tokens)" in plan and "at batch 4" in plan


def test_the_clinical_3d_preset_is_latent_at_128_cubed_and_fits():
    from flows.run import check_before_start

    a, overrides = parse_cli(["--preset", "clinical-3d"])
    cfg = build_config("brain-mri", 48, None, "euler", 10, 80, [0, 1, 2], overrides)
    assert cfg.data.spatial_shape == (128, 128, 128) and cfg.model.space == "latent"
    assert cfg.model.spatial_shape == (32, 32, 32) and cfg.model.in_channels == cfg.autoencoder.latent_channels
    plan = check_before_start(a.enhance, overrides)
    assert "attention at 8x8x8 (512 tokens)" in plan and "autoencoder: 4x per axis to 4 x 32x32x32 latents" in plan
    # your own volumes with the preset: the bundled brains' voxel grid is dropped, not refused
    _, overrides = parse_cli(["--preset", "clinical-3d", "--dataset", "/data/volumes"])
    assert "voxel_mm" not in overrides["data"]


def test_enhance_settings_without_an_enhancement_task_are_refused(tmp_path, capsys):
    """--set enhance.steps=10 without --enhance was dropped without a word."""
    from flows.run import main
    from flows.synth_and_eval import enhance_configs

    with pytest.raises(SystemExit) as e:
        main(["--set", "enhance.steps=10", "--preset", "demo", "--output-root", str(tmp_path / "out")])
    (line,) = _errors(capsys.readouterr().err)
    assert e.value.code == 2 and "enhance settings ['steps']" in line and "--enhance denoise" in line
    assert not (tmp_path / "out").exists()
    (cfg,) = enhance_configs(["denoise"], {"enhance": {"steps": 10}})
    assert cfg.steps == 10 and cfg.task == "denoise"


def test_a_scheduler_the_worker_does_not_allow_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from flows.run import main

    monkeypatch.delenv("MOTFM_DASK_SCHEDULER", raising=False)
    monkeypatch.delenv("MOTFM_DASK_SCHEDULERS_ALLOWED", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["--set", "sample.scheduler=tcp://10.0.0.9:8786", "--preset", "demo",
              "--output-root", str(tmp_path / "out")])
    (line,) = _errors(capsys.readouterr().err)
    assert e.value.code == 2 and "sample.scheduler='tcp://10.0.0.9:8786' is not a Dask scheduler" in line
    assert not (tmp_path / "out").exists()


def test_a_mistake_found_inside_the_flow_is_one_line_and_leaves_no_folder(tmp_path):
    """An error the pre-check cannot see (a class that no split by subject can spread) is found by the ingest
    task inside the flow: stderr holds at most three lines, the last the error, no traceback, no telemetry or
    Dask noise, and no empty run folder stays behind."""
    import pandas as pd

    folder = _newcomer_folder(tmp_path / "mydata", n=24)
    df = pd.read_csv(folder / "labels.csv")
    df.loc[:1, "label"] = "rare"  # two files: no split puts the class in train, val and test
    df.to_csv(folder / "labels.csv", index=False)
    own = [str(folder) if a == "phantom:12" else a for a in TINY_ARGS]
    bad = _run([*own, "--run-name", "t", "--output-root", str(tmp_path / "out")], tmp_path / "prefect-home")
    lines = bad.stderr.strip().splitlines()
    # the error line and the ingest's notes (resized, mask values, no subject column), nothing else
    assert bad.returncode == 2 and len(lines) <= 4 and all(" | WARNING | " in line for line in lines[:-1]), bad.stderr
    assert lines[-1].startswith(f"motfm: error: {folder}: ")  # refused by the ingest task (the class is too rare)
    assert "too small to train and evaluate" in lines[-1] or "has no sample in the" in lines[-1]
    assert "Traceback" not in bad.stderr + bad.stdout and "telemetry" not in bad.stderr + bad.stdout
    assert "distributed" not in bad.stderr
    assert not (tmp_path / "out").exists()


def test_a_second_run_into_a_held_run_folder_is_refused_before_prefect_starts(tmp_path, capsys):
    """Two runs into one run folder trained into the same checkpoints/ and moved each other's dataset aside; now
    the folder is held by the run in it (a lock the kernel drops with the process) and a second one is refused."""
    import signal

    from flows.run import main

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from motfm_core.files import hold_folder
        with hold_folder(sys.argv[1]):
            print("held", flush=True)
            time.sleep(600)
    """), str(tmp_path / "out" / "t")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as e:
            main([*TINY_ARGS, "--run-name", "t", "--output-root", str(tmp_path / "out")])
        err = capsys.readouterr()
        assert e.value.code == 2 and "Prefect database ready" not in err.out
        errors = _errors(err.err)
        assert len(errors) == 1 and errors[0].startswith(
            f"motfm: error: {tmp_path / 'out' / 't'}: in use by another run (pid {holder.pid} on ")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_two_first_runs_at_once_both_find_the_database_migrated(tmp_path):
    """Two runs started at once on a fresh Prefect home both migrated its SQLite database, and one died with
    'duplicate column name: capabilities' (2 of 3 trials); the migration is now taken one at a time."""
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    code = "from flows.cli import prefect_ready\nwith prefect_ready():\n    pass\n"
    runs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(r.wait(timeout=300), r.stdout.read(), r.stderr.read()) for r in runs if r.stdout and r.stderr]
    assert [rc for rc, _, _ in results] == [0, 0, 0], [err[-2000:] for _, _, err in results]
    assert all("Prefect database ready" in out for _, out, _ in results)


def test_a_full_disk_ends_the_run_in_one_line_and_is_not_retried(tmp_path):
    """A full disk printed Dask's and Prefect's failure blocks, retried twice after 10 s and 60 s, and ended in an
    85-line traceback; now it is never retried and ends in one line with where, how much is free, and the fix.
    (A process of its own: the ingest's write is replaced by one that finds the disk full.)"""
    code = textwrap.dedent("""
        import errno, sys
        from motfm_core.data import store
        calls = []
        def full(build, *args, **kwargs):
            calls.append(build)
            print(f"write attempt {len(calls)}: {build}", flush=True)
            raise OSError(errno.ENOSPC, "No space left on device", str(build))
        store._write_build = full
        from flows.run import main
        main(sys.argv[1:])
    """)
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-c", code, *TINY_ARGS, "--run-name", "t", "--output-root",
                           str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    attempts = [line for line in done.stdout.splitlines() if line.startswith("write attempt")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(attempts) == 1  # not retried
    errors = _errors(done.stderr)
    build = attempts[0].split(": ", 1)[1]
    assert len(errors) == 1 and errors[0].startswith(f"motfm: error: out of disk space at {build} (")
    assert "MB free there); free space, or use --output-root on a disk with room; the run resumes" in errors[0]


def test_a_killed_run_leaves_no_server_and_is_marked_crashed_at_the_next_start(tmp_path):
    """kill -9 of `motfm run` (as the out-of-memory killer does) left its embedded Prefect server listening,
    parented to PID 1, and its flow run RUNNING for ever; now a watchdog stops the server, and the next start marks
    the run crashed (its run folder is no longer held)."""
    import re
    import select
    import signal
    import socket

    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    args = [*TINY_ARGS, "--train-steps", "400", "--run-name", "k", "--output-root", str(tmp_path / "out")]
    run = subprocess.Popen([sys.executable, "-m", "flows.synth_and_eval", *args], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port, deadline, seen = None, time.time() + 300, ""
    assert run.stdout is not None
    while time.time() < deadline and "train: step" not in seen:  # running, its folder held, mid-training
        if select.select([run.stdout], [], [], 1.0)[0]:
            seen += run.stdout.readline()
        port = port or (re.search(r"Prefect server at http://127\.0\.0\.1:(\d+)", seen) or [None, None])[1]
    assert port and "train: step" in seen, seen[-3000:]
    run.send_signal(signal.SIGKILL)
    run.wait()

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", int(port))) == 0

    deadline = time.time() + 20
    while listening() and time.time() < deadline:
        time.sleep(0.2)
    assert not listening()  # the server went with its parent
    code = "from flows.cli import prefect_ready\nwith prefect_ready():\n    pass\n"
    nxt = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert nxt.returncode == 0, nxt.stderr[-2000:]
    assert "marked 1 run(s) crashed whose process had ended while running" in nxt.stdout
    assert str(tmp_path / "out" / "k") in nxt.stdout
