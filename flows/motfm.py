"""The `motfm` command: `motfm run` (the synth-and-eval DAG, every option with `motfm run --help`), `motfm config`
(every key with its type, default, choices and meaning; `--preset P` with a preset's values, `--markdown` for
docs/parameters.md), `motfm inspect PATH` (what a store holds), `motfm regenerate` (a new synthetic version from a
finished run), `motfm export RUN --to nifti|nnunet DIR` (a run's images as NIfTI or an nnU-Net raw dataset) and
`motfm schedule RUN --cron C` (regenerate a run on a schedule, on a Prefect server). Prefect
and torch are imported only by the subcommands that run something, so `motfm --help`, `config` and `inspect` answer
at once."""

from __future__ import annotations

import argparse
import sys

from motfm_core.errors import BadInput, InputMissing

__all__ = ["main"]

COMMANDS = {
    "run": "run the synth-and-eval DAG locally (Prefect's embedded mode); `motfm run --help` lists every option",
    "config": "every config key with its type, default, choices and meaning (--preset P: that preset's values)",
    "inspect": "what a run, a dataset or a synthetic store holds: versions and their reports, shards, provenance",
    "regenerate": "sample a new synthetic version from a finished run and re-evaluate (`motfm regenerate --help`)",
    "export": "a run's synthetic (and real) images as NIfTI, or an nnU-Net raw dataset (`motfm export --help`)",
    "schedule": "regenerate a finished run on a cron schedule, on a Prefect server (`motfm schedule --help`)",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="motfm", description="Synthetic medical images by flow matching, produced and "
                                "proven by one Prefect DAG.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=name in ("config", "inspect", "export", "schedule"))
    config = sub.choices["config"]
    config.add_argument("--preset", default=None, help="show this preset's values as the defaults")
    config.add_argument("--markdown", action="store_true", help="markdown tables (docs/parameters.md)")
    sub.choices["inspect"].add_argument("path", help="a run folder (outputs/<run-name>), a dataset.zarr, a "
                                      "synthetic/vNNNN.zarr or a synthetic/ folder")
    out = sub.choices["export"]
    out.add_argument("run", help="a run folder (outputs/<run-name>): its dataset.zarr and synthetic/ versions")
    out.add_argument("--to", required=True, choices=("nifti", "nnunet"), dest="fmt",
                        help="nifti: one file per channel and a labels.csv `motfm run` reads; nnunet: a raw dataset")
    out.add_argument("out", help="the folder to write into (nifti: created; nnunet: Dataset<ID>_<name> inside)")
    out.add_argument("--version", default="latest", help="the synthetic version (vNNNN, default the latest)")
    out.add_argument("--real", action="store_true", help="nifti: also the real train, val and test splits")
    out.add_argument("--dataset-id", type=int, default=None, help="nnunet: the dataset id, 1..999 (required)")
    out.add_argument("--synthetic-ratio", type=float, default=1.0,
                        help="nnunet: synthetic cases per real training case (0: the real train split alone)")
    sch = sub.choices["schedule"]
    sch.add_argument("run", help="the finished run's folder (outputs/<run-name>)")
    sch.add_argument("--cron", required=True, help="when, as five cron fields: '0 3 * * 1' is Mondays 03:00")
    sch.add_argument("--timezone", default="UTC", help="the cron's IANA time zone (default UTC)")
    sch.add_argument("--paused", action="store_true", help="create or keep the schedule, paused")
    if argv and argv[0] in ("run", "regenerate"):  # their own parsers take the rest, --help included
        from flows.cli import default_prefect_home

        default_prefect_home()  # (schedule talks to a server: it reads the user's own Prefect profile)
        sys.argv = [f"motfm {argv[0]}", *argv[1:]]
        if {"-h", "--help"} & set(argv[1:]):  # the help (then exit) without importing Prefect
            from flows.arguments import parse_cli, parse_regenerate

            (parse_cli if argv[0] == "run" else parse_regenerate)(argv[1:])
        elif argv[0] == "run":
            from flows.run import main as run

            run(argv[1:])
        else:
            from flows.regenerate import main as regenerate

            regenerate(argv[1:])
        return
    a = p.parse_args(argv)
    from flows.cli import one_line_failures

    with one_line_failures():
        if a.command == "config":
            print(config_reference(a.preset, a.markdown), end="")
        elif a.command == "export":
            print(export_run(a))
        elif a.command == "schedule":
            from flows.cli import quiet_libraries
            from flows.schedule import schedule_run

            quiet_libraries()
            print(schedule_run(a.run, a.cron, a.timezone, a.paused))
        else:
            from motfm_core.data.describe import describe

            print(describe(a.path))


def export_run(a: argparse.Namespace) -> str:
    """`motfm export`: the run folder's store and synthetic version written as asked; returns what was written."""
    from pathlib import Path

    from motfm_core.data.export import export_nifti, export_nnunet

    run = Path(a.run)
    data = run / "dataset.zarr"
    version = run / "synthetic" / (a.version if a.version == "latest" or a.version.endswith(".zarr")
                                   else f"{a.version}.zarr")
    if not data.exists() or not version.exists():
        raise InputMissing(f"{run}: not a finished run folder (needs dataset.zarr and synthetic/{version.name}); "
                           "give outputs/<run-name> of a run that reached sampling")
    if a.fmt == "nifti":
        return f"motfm: exported to {export_nifti(data, version, a.out, real=a.real)}"
    if a.dataset_id is None:
        raise BadInput("--to nnunet needs --dataset-id N (1..999), the id nnU-Net's commands take")
    out = export_nnunet(data, version, a.out, a.dataset_id, run.resolve().name, a.synthetic_ratio)
    return f"motfm: exported to {out} (nnU-Net raw dataset)"


def config_reference(preset: str | None = None, markdown: bool = False) -> str:
    """The parameter reference (with `preset`'s values as defaults), as text or markdown."""
    from flows.presets import PRESETS
    from motfm_core.config.reference import parameters, render_markdown, render_text

    if preset is not None and preset not in PRESETS:
        raise BadInput(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    rows = parameters(PRESETS.get(preset or "full"))
    return render_markdown(rows) if markdown else render_text(rows)


if __name__ == "__main__":
    main()
