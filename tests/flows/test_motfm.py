"""The `motfm` command: lazy sub-commands, the generated parameter reference, and `motfm inspect`."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.motfm import config_reference, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_config_and_inspect_do_not_start_prefect_or_torch():
    """What makes `motfm --help` answer at once: no Prefect, torch or Dask import on these paths."""
    code = ("import sys; from flows.motfm import main, config_reference; config_reference('demo');"
            "from motfm_core.data.describe import describe\n"
            "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('prefect', 'torch', 'distributed', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    assert "--samples-per-class SAMPLES_PER_CLASS" in out.stdout  # `motfm run --help` printed


def test_the_reference_lists_every_key_with_its_default_choices_and_meaning():
    text = config_reference()
    assert 'sample.solver = "euler"' in text and "train.steps = 1200  (int)" in text
    assert 'model.space = "pixel"  (Space; one of "pixel", "latent")' in text
    assert "data.keep_previous = 1  (int)  earlier builds of dataset.zarr" in text  # meaning: its line's comment
    assert "sample.prune_grace_hours = 24.0  (float)  a version pruned away" in text  # meaning: the comment above
    assert "train.steps = 180" in config_reference("demo") and "model.spatial_dims = 3" in config_reference("demo-3d")


def test_every_key_has_a_meaning_and_the_presets_it_quotes_are_right():
    """Half the keys had no meaning text, and sample.samples_per_class said "240 on the demo set" where the demo
    preset gives 40."""
    import re

    from flows.presets import PRESETS
    from motfm_core.config.reference import parameters

    rows = parameters(PRESETS["full"])
    assert [f"{r.section}.{r.name}" for r in rows if not r.meaning.strip()] == []
    quoted = 0
    for r in rows:
        for preset, value in re.findall(r"the ([\w-]+) preset: (\d+)", r.meaning):
            assert PRESETS[preset][r.section][r.name] == int(value), f"{r.section}.{r.name}: {r.meaning}"
            quoted += 1
    assert quoted >= 2


def test_the_generated_parameter_reference_is_not_stale():
    committed = (ROOT / "docs" / "parameters.md").read_text()
    assert committed == config_reference(markdown=True), "regenerate: motfm config --markdown > docs/parameters.md"


def test_an_unknown_preset_or_path_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["config", "--preset", "tiny"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("motfm: error: unknown preset 'tiny'")
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "neither a run folder, a motfm store nor a folder of synthetic versions" in err


def test_inspect_shows_versions_shards_classes_and_provenance(tmp_path, capsys):
    from motfm_core.data import create_synthetic_store, publish_latest, version_for, write_dataset, write_shard

    rng = np.random.RandomState(0)
    write_dataset(tmp_path / "dataset.zarr", rng.rand(10, 1, 8, 8).astype("f4"), np.arange(10) % 2,
                  np.array([0] * 6 + [1] * 2 + [2] * 2), np.arange(10), {"class_names": ["a", "b"], "source": "x"})
    main(["inspect", str(tmp_path / "dataset.zarr")])
    real = capsys.readouterr().out
    assert "real dataset, 10 samples" in real and "train: 6 (a: 3, b: 3)" in real
    root = tmp_path / "synthetic"
    attrs = {"class_names": ["a", "b"], "checkpoint": "model.pt", "checkpoint_sha256": "ab" * 32, "solver": "euler",
             "nfe": 4, "guidance": 1.0, "sample_config": {"seed": 7}}
    v1 = create_synthetic_store(version_for(root, "k1"), 8, (1, 8, 8), 4, {**attrs, "run_key": "k1"})
    for i in range(2):
        write_shard(v1, i, rng.rand(4, 1, 8, 8), np.array([0, 1, 1, 1]), np.arange(4 * i, 4 * i + 4),
                    info={"rejected": 1, "redraws": 2})
    publish_latest(v1)
    v2 = create_synthetic_store(version_for(root, "k2"), 8, (1, 8, 8), 4, {**attrs, "run_key": "k2"})
    write_shard(v2, 0, rng.rand(4, 1, 8, 8), np.zeros(4), np.arange(4))
    main(["inspect", str(root)])
    out = capsys.readouterr().out
    assert "2 synthetic version(s)" in out and "v0001.zarr <- latest: complete, 2/2 shards" in out
    assert "per class: a: 2, b: 6" in out and "solver euler, NFE 4" in out and "seed 7" in out
    assert "2 samples redrawn as near-copies (4 redraws)" in out
    assert "v0002.zarr: INCOMPLETE, 1/2 shards" in out and "missing shards: [1]" in out


def test_one_prefect_home_for_make_and_the_cli(monkeypatch, tmp_path):
    """`motfm run` kept Prefect's state in ~/.prefect while `make demo` used ./.prefect: two homes, two histories.
    The CLI now defaults to ./.prefect beside outputs/, as the Makefile does, and an explicit PREFECT_HOME wins."""
    from flows.cli import default_prefect_home

    makefile = (ROOT / "Makefile").read_text()
    assert "export PREFECT_HOME ?= $(CURDIR)/.prefect" in makefile
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_prefect_home() == str(tmp_path / ".prefect")
    monkeypatch.setenv("PREFECT_HOME", "/somewhere/else")
    assert default_prefect_home() == "/somewhere/else"
    # a user whose own Prefect profile names a server keeps it (their runs go to that server, as before)
    monkeypatch.delenv("PREFECT_HOME")
    own = tmp_path / "user-prefect"
    own.mkdir()
    (own / "profiles.toml").write_text('active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://h:4200/api"\n')
    assert default_prefect_home(own) == str(own) and "PREFECT_HOME" not in os.environ
    (own / "profiles.toml").write_text('active = "local"\n[profiles.local]\n')
    assert default_prefect_home(own) == str(tmp_path / ".prefect")


@pytest.mark.parametrize("command", ["run", "regenerate", "schedule", "export", "inspect", "config"])
def test_every_help_answers_at_once_with_a_line_per_option(command):
    """`motfm regenerate --help` took 34 s (it imported Prefect) and its options had no help text."""
    import re
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "flows.motfm", command, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    seconds = time.perf_counter() - t0
    assert out.returncode == 0 and seconds < 10, (seconds, out.stderr[-500:])  # 2 s here; slack for a busy machine
    options = out.stdout.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", options)[1:]
    assert entries and all(len(e.split()) > 2 for e in entries), [e for e in entries if len(e.split()) <= 2]
