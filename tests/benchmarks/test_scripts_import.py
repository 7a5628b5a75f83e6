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
