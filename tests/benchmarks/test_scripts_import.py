"""Every benchmark script imports: a module they use that moves (flows.presets did) breaks them at once, not on
the day someone runs an hour-long measurement."""

import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_benchmark_script_imports(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)) or name == "results_table", f"benchmarks/{name}.py has no main()"


def test_the_ingest_benchmark_reads_the_steady_rate_from_the_progress_lines(tmp_path):
    """Seconds per row between the first and the last progress line: the cluster's start and the store's write
    after the last row are not the workers' rate."""
    from benchmarks.ingest_scale import steady_seconds_per_row

    log = tmp_path / "ingest.log"
    log.write_text("starting\ningest: 8/80 rows prepared on Dask tcp://127.0.0.1:1 (2 worker(s)) (6.5s)\n"
                   "ingest: 44/80 rows prepared on Dask tcp://127.0.0.1:1 (2 worker(s)) (18.5s)\n"
                   "ingest: 80/80 rows prepared on Dask tcp://127.0.0.1:1 (2 worker(s)) (30.5s)\nwritten\n")
    assert steady_seconds_per_row(log) == pytest.approx(24.0 / 72)
    log.write_text("ingest: 3/3 rows prepared here (2.0s)\n")  # one line: no rate
    assert steady_seconds_per_row(log) is None
    assert steady_seconds_per_row(tmp_path / "missing.log") is None
