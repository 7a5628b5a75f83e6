"""The command line of the synth-and-eval DAG (`motfm run`, `python -m flows.synth_and_eval`): its arguments, with
their choices and defaults read from the config types, and how a preset, the named arguments and `--set` values
merge. Imports neither Prefect nor torch, so `--help` answers at once."""

from __future__ import annotations

import argparse
import json
from typing import Any, get_args

from flows.presets import PRESETS
from motfm_core.config import (
    MODEL_SIZES,
    SOLVER_CHOICES,
    DataConfig,
    EnhanceTask,
    EvalConfig,
    MaskConditioning,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)

__all__ = ["FLOW_MASK_CONDITIONING", "NAMED_KEYS", "parse_cli", "parse_regenerate", "PRESET_NETWORK"]

# The one default of the flow that is not its config field's: a run conditions on masks when the dataset has
# them, while a ModelConfig built in code (a test, a notebook) stays unconditioned unless asked.
FLOW_MASK_CONDITIONING: MaskConditioning = "auto"

# named CLI arguments and the config key each sets: given explicitly, they win over a preset; a --set of the same
# key with another value is refused as ambiguous
NAMED_KEYS = {"dataset": "data.source", "image_size": "data.image_size", "model_size": "model.size",
              "mask_conditioning": "model.mask_conditioning", "train_steps": "train.steps", "solver": "sample.solver",
              "nfe": "sample.nfe", "samples_per_class": "sample.samples_per_class", "seeds": "eval.seeds"}
# a preset's own network: an explicit model size (--model-size, --set model.size) replaces it rather than being
# ignored, since the preset's channels would otherwise win over the size
PRESET_NETWORK = ("channels", "attention_levels", "num_head_channels")


def parse_cli(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, dict[str, Any]]]:
    """Arguments and the merged overrides: preset, then explicit named arguments, then --set values."""
    p = argparse.ArgumentParser(
        prog="motfm run", description="Run the synth-and-eval DAG locally (Prefect's embedded mode). Every config key, "
        "with its default and meaning: motfm config.")
    p.add_argument("--run-name", default="demo", help="the run's folder under --output-root (default demo)")
    p.add_argument("--output-root", default="outputs", help="where run folders go (default outputs)")
    p.add_argument("--dataset", help="brain-mri (bundled), a MedMNIST .npz, or a folder with labels.csv "
                   f"(default {DataConfig.source})")
    p.add_argument("--image-size", type=int, help="side in pixels, a multiple of 8 in [8, 512] (default "
                   f"{DataConfig.image_size})")
    p.add_argument("--model-size", choices=sorted(MODEL_SIZES), help="network width; the levels and attention "
                   f"follow the image size (default {ModelConfig.size})")
    p.add_argument("--mask-conditioning", choices=get_args(MaskConditioning), help="condition on segmentation "
                   f"masks; auto: when the dataset has them (default {FLOW_MASK_CONDITIONING})")
    p.add_argument("--train-steps", type=int, help=f"generator training steps (default {TrainConfig.steps})")
    p.add_argument("--solver", choices=SOLVER_CHOICES, help=f"ODE solver (default {SampleConfig.solver})")
    p.add_argument("--nfe", type=int, help=f"network evaluations per sample (default {SampleConfig.nfe})")
    p.add_argument("--samples-per-class", type=int, help="synthetic images per class (default "
                   f"{SampleConfig.samples_per_class})")
    p.add_argument("--seeds", type=int, nargs="+", help="downstream training seeds (default "
                   f"{' '.join(map(str, EvalConfig.seeds))})")
    p.add_argument("--enhance", nargs="*", default=[], choices=get_args(EnhanceTask),
                   help="also train and score image-enhancement flows on the real data")
    p.add_argument("--preset", default="full", choices=sorted(PRESETS),
                   help="a named budget (default full; demo: the short budget of make demo); explicit arguments win "
                   "over it; its values: motfm config --preset NAME")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                   help="override any config value, e.g. --set train.lr=1e-3 --set model.channels=[32,64,64]")
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one error line")
    p.add_argument("--verbose", action="store_true", help="show Prefect's and Dask's start-up logs too")
    a = p.parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {k: dict(v) for k, v in PRESETS[a.preset].items()}
    explicit = {}
    for arg, key in NAMED_KEYS.items():
        value = getattr(a, arg)
        if value is not None:
            section, name = key.split(".")
            overrides.setdefault(section, {})[name] = value
            explicit[key] = (arg, value)
    for item in a.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name or not value:
            p.error(f"--set {item!r}: use SECTION.KEY=VALUE, e.g. train.steps=100")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if key in explicit and explicit[key][1] != parsed:
            arg, given = explicit[key]
            p.error(f"--set {key}={value} contradicts --{arg.replace('_', '-')} {given}; give one of them")
        overrides.setdefault(section, {})[name] = parsed
        explicit.setdefault(key, ("set", parsed))
    if "data.source" in explicit and explicit["data.source"][1] != "brain-mri" and "data.voxel_mm" not in explicit:
        overrides.get("data", {}).pop("voxel_mm", None)  # a preset's bundled-brain grid: your data has its own
    if "model.size" in explicit:
        set_by_user = {k.split(".", 1)[1] for k, (arg, _) in explicit.items()
                       if arg == "set" and k.startswith("model.")}
        for name in PRESET_NETWORK:
            if name not in set_by_user:
                overrides.get("model", {}).pop(name, None)
    return a, overrides


def parse_regenerate(argv: list[str] | None = None) -> argparse.Namespace:
    """`motfm regenerate`'s arguments (no Prefect import, so `--help` answers at once)."""
    p = argparse.ArgumentParser(prog="motfm regenerate", description="Sample a new synthetic version from a finished "
                                "run's checkpoint and re-evaluate it; unset options keep the run's own settings.")
    p.add_argument("--run-name", default="demo", help="the finished run's folder under --output-root (default demo)")
    p.add_argument("--output-root", default="outputs", help="where run folders go (default outputs)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: from the start time, new for "
                   "every regeneration)")
    p.add_argument("--samples-per-class", type=int, default=None, help="synthetic images per class (default: the "
                   "run's)")
    p.add_argument("--nfe", type=int, default=None, help="network evaluations per sample (default: the run's)")
    p.add_argument("--solver", default=None, choices=SOLVER_CHOICES, help="ODE solver (default: the run's)")
    p.add_argument("--verbose", action="store_true", help="Dask's and Prefect's own start-up logs too")
    p.add_argument("--debug", action="store_true", help="full tracebacks and Prefect's failure reports")
    return p.parse_args(argv)
