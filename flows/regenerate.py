"""Scheduled regeneration: a new synthetic dataset version from a run's latest checkpoint, then evaluation.

`prefect.yaml` deploys it as `regenerate-synthetic` with a cron schedule. Each run samples with a fresh seed
(the flow run's scheduled time, so a retried run resumes the same version), writes `synthetic/v<N+1>.zarr`,
moves `synthetic/latest` to it when complete (the low-data generators' stores too) and re-runs the evaluation and
report. The train stages are keyed on data + config, so every generator is reused and retrains only when
`overrides` change its data, model or training config; `retrain=True` also allows training when the run has no
checkpoint yet.

    python -m flows.regenerate --run-name demo            # after `make demo`
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.synth_and_eval import sample_evaluate_report, train_generators
from motfm_core.config import PipelineConfig, Solver
from motfm_core.errors import BadInput, InputMissing
from motfm_core.files import hold_folder

__all__ = ["main", "regenerate_synthetic", "regeneration_seed"]

def regeneration_seed() -> int:
    """The flow run's scheduled start time in seconds: new for every scheduled run, stable across retries."""
    start = flow_run.scheduled_start_time or datetime.now(timezone.utc)
    return int(start.timestamp()) % 2**31


def regeneration_config(saved: dict[str, Any], overrides: dict[str, dict[str, Any]] | None,
                        named: dict[str, Any], default_seed: Callable[[], int]) -> dict[str, Any]:
    """The run's saved config with `overrides` per section and the named sampling parameters (`named`, None =
    unset) on top. A named parameter and the same key in `overrides["sample"]` with another value are refused;
    the seed is the named one, else the override's, else `default_seed()` (the schedule's)."""
    c = copy.deepcopy(saved)
    for section, values in (overrides or {}).items():
        c.setdefault(section, {}).update(values)
    given = dict((overrides or {}).get("sample") or {})
    for key, value in named.items():
        if value is not None and key in given and given[key] != value:
            raise BadInput(f"{key}={value!r} contradicts overrides['sample']['{key}']={given[key]!r}; give one "
                           "of them")
    c["sample"].update({k: v for k, v in named.items() if v is not None})
    if "seed" not in given and named.get("seed") is None:
        c["sample"]["seed"] = default_seed()
    return c


@contextlib.contextmanager
def said_in_the_run_log(logger: Any, what: str) -> Iterator[None]:
    """A refusal raised in the block is logged to the flow run first, and the log sent before the run turns Failed:
    `prefect deployment run ... --watch` shows the run's logs until its final state, so the reason reaches the
    terminal that started it (it was in the worker's log only)."""
    from prefect.logging.handlers import APILogHandler

    try:
        yield
    except BadInput as e:
        logger.error("%s: %s", what, e)
        APILogHandler().flush()
        raise


def _regeneration_config(run_dir: Path, output_root: str, overrides: dict[str, dict[str, Any]] | None,
                         retrain: bool, named: dict[str, Any]) -> PipelineConfig:
    """The regeneration's config from the finished run's own, checked before any work."""
    saved = run_dir / "config.json"
    if not saved.exists():
        raise InputMissing(f"{saved}: no run to regenerate from; run synth-and-eval with run_name="
                           f"{run_dir.name!r} and output_root={output_root!r} first (a schedule for your own run: "
                           "motfm schedule outputs/<run-name> --cron ...)")
    c = regeneration_config(json.loads(saved.read_text()), overrides, named, regeneration_seed)
    cfg = PipelineConfig.from_overrides(c)  # validates every value before any work
    checkpoint = run_dir / "checkpoints" / "model.pt"
    if not retrain and not checkpoint.exists():
        raise InputMissing(f"{checkpoint}: no trained model; run synth-and-eval first or pass retrain=True")
    return cfg


@flow(name="regenerate-synthetic", task_runner=ThreadPoolTaskRunner(max_workers=1))
def regenerate_synthetic(
    run_name: str = "synth-and-eval",
    output_root: str = "outputs",
    seed: int | None = None,
    samples_per_class: int | None = None,
    solver: Solver | None = None,
    nfe: int | None = None,
    retrain: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Sample a new version into `<output_root>/<run_name>/synthetic/` from that run's checkpoint and
    re-evaluate; unset parameters keep the run's own configuration. Returns the report path."""
    logger = get_run_logger()
    run_dir = Path(output_root).resolve() / run_name
    with said_in_the_run_log(logger, "regenerate-synthetic cannot start"):
        cfg = _regeneration_config(run_dir, output_root, overrides, retrain,
                                   {"seed": seed, "samples_per_class": samples_per_class, "solver": solver,
                                    "nfe": nfe})
    data_path = run_dir / "dataset.zarr"
    with hold_folder(run_dir):  # one run at a time in a run folder
        # the train stages are keyed: unchanged generators (the low-data ones too) are reused, not retrained
        generators = train_generators(cfg, str(data_path), run_dir)
        logger.info("regenerate-synthetic: %s, sampling seed %d", run_dir, cfg.sample.seed)
        report = sample_evaluate_report(run_name, cfg, str(data_path), generators, run_dir)
    logger.info("regenerate-synthetic: done; report at %s", report)
    return report


def main(argv: list[str] | None = None) -> None:
    from flows.arguments import parse_regenerate
    from flows.cli import one_line_failures, prefect_ready, quiet_console, quiet_libraries

    a = parse_regenerate(argv)
    quiet_libraries(a.verbose)
    with one_line_failures(a.debug, Path(a.output_root).resolve() / a.run_name):
        with prefect_ready():
            quiet_console(a.debug)
            report = regenerate_synthetic(run_name=a.run_name, output_root=a.output_root, seed=a.seed,
                                          samples_per_class=a.samples_per_class, solver=a.solver, nfe=a.nfe)
    print(f"report: {report}\nsynthetic: {Path(report).parent / 'synthetic' / 'latest'}")


if __name__ == "__main__":
    main()
