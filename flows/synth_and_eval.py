"""The main DAG: ingest -> train -> sample (Zarr shards over Dask) -> publish -> evaluate -> report.

Run locally (Prefect's embedded mode, no server): `python -m flows.synth_and_eval --run-name demo`.
As a deployment: `prefect deployment run synth-and-eval/synth-and-eval` (see prefect.yaml).
Every stage is idempotent: re-running with the same parameters reuses finished stages and shards.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.cli import USER_ERRORS, prefect_ready, quiet_console, quiet_libraries
from flows.presets import PRESETS
from motfm_core.config import (
    MODEL_SIZES,
    SOLVER_CHOICES,
    EnhanceConfig,
    EnhanceTask,
    MaskConditioning,
    ModelSize,
    PipelineConfig,
    SampleConfig,
    Solver,
    from_dict,
)
from motfm_core.data.ingest import check_source
from motfm_core.distributed import check_scheduler, run_cluster
from motfm_core.plan import plan_run
from motfm_core.utils import write_json_atomic
from tasks.enhance import enhance_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.plan import plan_task
from tasks.report import report_task
from tasks.sample import plan_sampling_task, publish_task, sample_shards_task
from tasks.train import train_autoencoder_task, train_masks_task, train_task


def build_config(dataset: str, image_size: int, train_steps: int | None, solver: str, nfe: int,
                 samples_per_class: int, seeds: list[int], overrides: dict[str, dict[str, Any]] | None,
                 model_size: str = "small", mask_conditioning: str = "auto") -> PipelineConfig:
    """Named parameters, then `overrides` per section, which win where both set a value; validates (types
    included) before any work."""
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size must be one of {sorted(MODEL_SIZES)}, got {model_size!r}")
    named: dict[str, dict[str, Any]] = {
        "model": {"size": model_size, "mask_conditioning": mask_conditioning},
        "data": {"source": dataset, "image_size": image_size},
        "sample": {"solver": solver, "nfe": nfe, "samples_per_class": samples_per_class},
        "eval": {"seeds": list(seeds)}, "train": {} if train_steps is None else {"steps": train_steps}}
    for section, values in (overrides or {}).items():
        if section != "enhance":
            named.setdefault(section, {}).update(values)
    cfg = PipelineConfig.from_overrides(named)
    check_scheduler(cfg.sample.scheduler)  # before any work: a scheduler the worker does not allow
    return cfg


def enhance_configs(enhance: Sequence[str], overrides: dict[str, dict[str, Any]]) -> list[EnhanceConfig]:
    """One EnhanceConfig per chosen enhancement task, with `overrides["enhance"]`; enhance settings without a task
    to apply them to are refused, not dropped."""
    settings = dict(overrides.get("enhance") or {})
    if settings and not enhance:
        raise ValueError(f"enhance settings {sorted(settings)} (overrides['enhance'], --set enhance.*) but no "
                         "enhancement task is chosen; add --enhance denoise and/or superres (the flow's `enhance` "
                         "parameter), or drop them")
    return [from_dict(EnhanceConfig, {**settings, "task": name}, "enhance") for name in enhance]


def train_generators(cfg: PipelineConfig, data_path: str, run_dir: Path
                     ) -> dict[float, tuple[str, str | None, Path]]:
    """The generators a run needs: {real fraction: (image checkpoint, mask generator or None, output folder)} for
    the full train split (1.0) and, leak-free, for each low-data fraction's own subset (`low-data/real-<f>/`)."""
    out = {}
    for f in (1.0, *cfg.eval.real_fractions):
        where = run_dir if f == 1.0 else run_dir / "low-data" / f"real-{f:g}"
        train = cfg.train if f == 1.0 else replace(cfg.train, real_fraction=f, subset_seed=cfg.eval.subset_seed)
        # the mask generator first: it checks the mask source before any training
        masks = train_masks_task(data_path, cfg.model, train, cfg.sample.mask_source, str(where))
        autoencoder = None  # a latent generator's autoencoder sees only the generator's own share of the data
        if cfg.model.space == "latent":
            autoencoder = train_autoencoder_task(data_path, cfg.autoencoder, train, str(where))
        checkpoint = train_task(data_path, cfg.model, train, str(where), autoencoder,
                                cfg.autoencoder if autoencoder else None)
        out[f] = (checkpoint, masks, where)
    return out


def synthesise(checkpoint: str, sample: SampleConfig, where: Path, mask_checkpoint: str | None,
               scheduler: str) -> str:
    """plan -> sample the shards over Dask at `scheduler` -> publish `<where>/synthetic/latest`; returns the
    version's path (its recorded config is the run's, without the run's cluster address)."""
    store, todo = plan_sampling_task(checkpoint, sample, str(where), mask_checkpoint)
    shards = sample_shards_task(checkpoint, store, todo, replace(sample, scheduler=scheduler))
    get_run_logger().info("sample: %d shard(s) written this run into %s", sum(not s.skipped for s in shards), store)
    # evaluation reads this version itself (leased), not the moving `latest` link
    publish_task(store, sample.keep_versions, sample.prune_grace_hours)
    return store


def write_config(run_dir: Path, c: dict[str, Any]) -> None:
    """`<run_dir>/config.json` (read by regenerate-synthetic), written once a run has succeeded."""
    write_json_atomic(run_dir / "config.json", c)


# Stages run one after another; the fan-out is inside sampling (Dask, one worker per GPU).
@flow(name="synth-and-eval", task_runner=ThreadPoolTaskRunner(max_workers=1))
def synth_and_eval(
    run_name: str = "demo",
    output_root: str = "outputs",
    dataset: str = "brain-mri",
    image_size: int = 48,
    model_size: ModelSize = "small",
    mask_conditioning: MaskConditioning = "auto",
    train_steps: int | None = None,
    solver: Solver = "euler",
    nfe: int = 10,
    samples_per_class: int = 80,  # 240 on the demo set: enough for the x2 ratio arm (114 real)
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (Prefect parameters are copied per run)
    enhance: list[EnhanceTask] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Run the whole DAG into `<output_root>/<run_name>/`; returns the path of report.md.

    `enhance` (e.g. ["denoise", "superres"]) also trains and scores image-enhancement flows on the real
    data; `overrides["enhance"]` sets their EnhanceConfig fields.
    """
    logger = get_run_logger()
    cfg = build_config(dataset, image_size, train_steps, solver, nfe, samples_per_class, seeds, overrides, model_size,
                       mask_conditioning)
    enhance_cfgs = enhance_configs(enhance or [], overrides or {})
    run_dir = Path(output_root).resolve() / run_name
    with kept_only_if_written(run_dir):
        logger.info("synth-and-eval: outputs in %s", run_dir)
        plan_task(cfg)  # refuses what cannot fit before the data is read
        data_path = ingest_task(cfg.data, str(run_dir))
        enhancements = [enhance_task(data_path, e, str(run_dir)) for e in enhance_cfgs]
        generators = train_generators(cfg, data_path, run_dir)
        report = sample_evaluate_report(run_name, cfg, data_path, generators, run_dir, enhancements)
        write_config(run_dir, cfg.to_dict())
    logger.info("synth-and-eval: done; report at %s", report)
    return report


@contextlib.contextmanager
def kept_only_if_written(run_dir: Path) -> Iterator[None]:
    """Create the run folder (and missing parents) for the block; a run that fails before writing anything
    leaves no empty folders behind (they read as runs)."""
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:  # innermost first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def sample_evaluate_report(run_name: str, cfg: PipelineConfig, data_path: str,
                           generators: dict[float, tuple[str, str | None, Path]], run_dir: Path,
                           enhancements: list[str] | None = None) -> str:
    """The stages after training (shared with `regenerate-synthetic`): sample every generator, evaluate the
    arms (low-data arms on their own generators' stores), report; returns the report path."""
    with run_cluster(cfg.sample) as scheduler:  # one Dask cluster for every generator's sampling
        stores = {f: synthesise(ckpt, cfg.sample, where, masks, scheduler)
                  for f, (ckpt, masks, where) in generators.items()}
    low = {f"{f:g}": store for f, store in stores.items() if f != 1.0}
    evaluation = evaluate_task(data_path, stores[1.0], cfg.eval, str(run_dir), low)
    return report_task(run_name, cfg.to_dict(), data_path, generators[1.0][0], stores[1.0], evaluation, str(run_dir),
                       enhancements or [])


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
    p = argparse.ArgumentParser(description="Run the synth-and-eval DAG locally (Prefect embedded mode).")
    p.add_argument("--run-name", default="demo")
    p.add_argument("--output-root", default="outputs")
    p.add_argument("--dataset", help="brain-mri (default), a MedMNIST .npz, or a folder with labels.csv")
    p.add_argument("--image-size", type=int, help="default 48")
    p.add_argument("--model-size", choices=sorted(MODEL_SIZES),
                   help="network width (default small); the levels and attention follow the image size")
    p.add_argument("--mask-conditioning", choices=["auto", "none", "concat", "controlnet"],
                   help="condition on segmentation masks (default auto: when the dataset has them)")
    p.add_argument("--train-steps", type=int)
    p.add_argument("--solver", choices=SOLVER_CHOICES, help="default euler")
    p.add_argument("--nfe", type=int, help="default 10")
    p.add_argument("--samples-per-class", type=int, help="default 80")
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2")
    p.add_argument("--enhance", nargs="*", default=[], choices=["denoise", "superres"],
                   help="also train and score image-enhancement flows on the real data")
    p.add_argument("--preset", default="full", choices=sorted(PRESETS),
                   help="a named budget (demo: fits 15 minutes on a 2-core CPU); explicit arguments win over it")
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


def check_before_start(enhance: list[str], overrides: dict[str, dict[str, Any]]) -> str:
    """The run's configuration (the flow's own defaults, then `overrides`), its data source and its memory plan,
    checked before Prefect starts: a bad value fails in seconds, not after the embedded server's start-up. Returns
    the plan's lines."""
    defaults = {k: p.default for k, p in inspect.signature(synth_and_eval.fn).parameters.items()}
    cfg = build_config(defaults["dataset"], defaults["image_size"], defaults["train_steps"], defaults["solver"],
                       defaults["nfe"], defaults["samples_per_class"], defaults["seeds"], overrides,
                       defaults["model_size"], defaults["mask_conditioning"])
    for e in enhance_configs(enhance, overrides):
        e.validate()
    check_source(cfg.data.source)
    return plan_run(cfg)


def main(argv: list[str] | None = None) -> None:
    a, overrides = parse_cli(argv)
    quiet_libraries(a.verbose)
    t0 = time.time()
    try:
        print(f"motfm: {check_before_start(a.enhance, overrides)}")
        with prefect_ready():
            quiet_console(a.debug)  # after Prefect's set-up, which installs its terminal handlers
            report = synth_and_eval(run_name=a.run_name, output_root=a.output_root, enhance=a.enhance,
                                    overrides=overrides)
    except USER_ERRORS as e:
        if a.debug:
            raise
        print(f"motfm: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"\nDone in {time.time() - t0:.0f}s. Outputs in {Path(report).parent}/:")
    print(f"  report     {report}  (and report.json, samples.png, gains.png, training.png, closest_pairs.png)")
    print(f"  real data  {Path(report).parent / 'dataset.zarr'}")
    print(f"  synthetic  {Path(report).parent / 'synthetic' / 'latest'}  (-> the newest complete version)")
    print(f"  model      {Path(report).parent / 'checkpoints' / 'model.pt'}  (training.png: its loss curve)")


if __name__ == "__main__":
    main()
