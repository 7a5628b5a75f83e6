"""`motfm run` (and `python -m flows.synth_and_eval`): the synth-and-eval DAG from the command line. The run's
configuration, data source and memory plan are checked before Prefect starts; a mistake ends as one
`motfm: error:` line (exit 2), the traceback only with --debug."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flows.arguments import parse_cli
from flows.cli import one_line_failures, prefect_ready, quiet_console, quiet_libraries
from flows.synth_and_eval import build_config, enhance_configs, synth_and_eval
from motfm_core.files import FolderBusy, folder_holder
from motfm_core.model.memory import plan_run
from motfm_core.model.preflight import check_run

__all__ = ["check_before_start", "main"]


def check_before_start(enhance: list[str], overrides: dict[str, dict[str, Any]], run_dir: Path | None = None) -> str:
    """The run's configuration (the flow's defaults, which are build_config's, then `overrides`), its data source,
    its memory plan and whether another run holds `run_dir`, checked before Prefect starts: a bad value fails in
    seconds, not after the embedded server's start-up. Returns the plan's lines."""
    holder = None if run_dir is None else folder_holder(run_dir)
    if holder:
        raise FolderBusy(f"{run_dir}: in use by another run ({holder}); wait for it to end, or give this one "
                         "another --run-name")
    cfg = build_config(overrides=overrides)
    for e in enhance_configs(enhance, overrides):
        e.validate()
    check_run(cfg, enhance=bool(enhance))
    return plan_run(cfg)


def main(argv: list[str] | None = None) -> None:
    a, overrides = parse_cli(argv)
    quiet_libraries(a.verbose)
    t0 = time.time()
    run_dir = Path(a.output_root).resolve() / a.run_name
    with one_line_failures(a.debug, run_dir):
        print(f"motfm: {check_before_start(a.enhance, overrides, run_dir)}")
        with prefect_ready():
            quiet_console(a.debug)  # after Prefect's set-up, which installs its terminal handlers
            report = synth_and_eval(run_name=a.run_name, output_root=a.output_root, enhance=a.enhance,
                                    overrides=overrides)
    print(f"\nDone in {time.time() - t0:.0f}s. Outputs in {Path(report).parent}/:")
    print(f"  report     {report}  (and report.json, samples.png, gains.png, training.png, closest_pairs.png)")
    print(f"  real data  {Path(report).parent / 'dataset.zarr'}")
    print(f"  synthetic  {Path(report).parent / 'synthetic' / 'latest'}  (-> the newest complete version)")
    print(f"  model      {Path(report).parent / 'checkpoints' / 'model.pt'}  (training.png: its loss curve)")


if __name__ == "__main__":
    main()
