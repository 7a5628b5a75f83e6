"""The main DAG: ingest -> train -> sample (Zarr shards over Dask) -> publish -> evaluate -> report.

Run locally (Prefect's embedded mode, no server): `python -m flows.synth_and_eval --run-name demo`.
As a deployment: `prefect deployment run synth-and-eval/synth-and-eval` (see prefect.yaml).
Every stage is idempotent: re-running with the same parameters reuses finished stages and shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.arguments import FLOW_MASK_CONDITIONING
from motfm_core.config import (
    MODEL_SIZES,
    DataConfig,
    EnhanceConfig,
    EnhanceTask,
    EvalConfig,
    MaskConditioning,
    ModelConfig,
    ModelSize,
    PipelineConfig,
    SampleConfig,
    Solver,
    from_dict,
)
from motfm_core.errors import BadInput
from motfm_core.files import HOLD_FILE, hold_folder, write_json_atomic
from motfm_core.model.distributed import check_scheduler, run_cluster
from tasks.enhance import enhance_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.plan import plan_task
from tasks.report import report_task
from tasks.sample import nfe_curve_task, plan_sampling_task, publish_task, sample_shards_task
from tasks.train import train_autoencoder_task, train_masks_task, train_task


def build_config(dataset: str = DataConfig.source, image_size: int = DataConfig.image_size,
                 train_steps: int | None = None, solver: str = SampleConfig.solver, nfe: int = SampleConfig.nfe,
                 samples_per_class: int = SampleConfig.samples_per_class, seeds: Sequence[int] = EvalConfig.seeds,
                 overrides: dict[str, dict[str, Any]] | None = None, model_size: str = ModelConfig.size,
                 mask_conditioning: str = FLOW_MASK_CONDITIONING) -> PipelineConfig:
    """Named parameters (the flow's, with its defaults), then `overrides` per section, which win where both set a
    value; validates (types included) before any work."""
    if model_size not in MODEL_SIZES:
        raise BadInput(f"model_size must be one of {sorted(MODEL_SIZES)}, got {model_size!r}")
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
        raise BadInput(f"enhance settings {sorted(settings)} (overrides['enhance'], --set enhance.*) but no "
                       "enhancement task is chosen; add --enhance denoise and/or superres (the flow's `enhance` "
                       "parameter), or drop them")
    return [from_dict(EnhanceConfig, {**settings, "task": name}, "enhance") for name in enhance]


@dataclass(frozen=True)
class Generators:
    """What a run trained: {real fraction: (image checkpoint, mask generator or None, output folder)} for the full
    train split (1.0) and each low-data share, and the same-backbone DDPM baseline's checkpoint (eval.ddpm_arms)."""

    by_fraction: dict[float, tuple[str, str | None, Path]]
    ddpm: str | None = None


def train_generators(cfg: PipelineConfig, data_path: str, run_dir: Path) -> Generators:
    """The generators a run needs: for the full train split and, leak-free, for each low-data fraction's own subset
    (`low-data/real-<f>/`); with eval.ddpm_arms also the DDPM baseline (`baseline-ddpm/`: the same network and
    train settings with epsilon prediction, on the full train split)."""
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
    ddpm = None
    if cfg.eval.ddpm_arms:
        ddpm = train_task(data_path, replace(cfg.model, prediction="epsilon"), cfg.train,
                          str(run_dir / "baseline-ddpm"))
    return Generators(out, ddpm)


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
    dataset: str = DataConfig.source,
    image_size: int = DataConfig.image_size,
    model_size: ModelSize = ModelConfig.size,
    mask_conditioning: MaskConditioning = FLOW_MASK_CONDITIONING,
    train_steps: int | None = None,
    solver: Solver = SampleConfig.solver,
    nfe: int = SampleConfig.nfe,
    samples_per_class: int = SampleConfig.samples_per_class,
    seeds: list[int] = list(EvalConfig.seeds),  # noqa: B006, B008 (Prefect copies parameters per run)
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
    with kept_only_if_written(run_dir), hold_folder(run_dir):  # one run at a time in a run folder
        logger.info("synth-and-eval: outputs in %s", run_dir)
        plan_task(cfg)  # refuses what cannot fit before the data is read
        data_path = ingest_task(cfg.data, str(run_dir), cfg.sample.scheduler)
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
        if made and [p.name for p in run_dir.iterdir()] == [HOLD_FILE]:  # only the run's own hold: nothing written
            (run_dir / HOLD_FILE).unlink()
        for folder in made:  # innermost first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def sample_evaluate_report(run_name: str, cfg: PipelineConfig, data_path: str, generators: Generators,
                           run_dir: Path, enhancements: list[str] | None = None) -> str:
    """The stages after training (shared with `regenerate-synthetic`): sample every generator, evaluate the
    arms (low-data arms on their own generators' stores), report; returns the report path."""
    ckpt, masks, where = generators.by_fraction[1.0]
    with run_cluster(cfg.sample) as scheduler:  # one Dask cluster for every generator's sampling
        stores = {f: synthesise(c, cfg.sample, w, m, scheduler) for f, (c, m, w) in generators.by_fraction.items()}
        # downstream value per NFE: the all-data generator sampled again at each other NFE, a version of its own
        # (under nfe-arms/nfe-<n>/synthetic/, so `synthetic/latest` stays the main one)
        by_nfe = {f"{n}": synthesise(ckpt, replace(cfg.sample, nfe=n), where / "nfe-arms" / f"nfe-{n}", masks,
                                     scheduler)
                  for n in sorted(set(cfg.eval.nfe_arms) - {cfg.sample.nfe})}
        # the DDPM baseline at each DDIM NFE, with the same conditioning masks' source and copy guard
        ddpm = {f"{n}": synthesise(generators.ddpm, replace(cfg.sample, solver="ddim", nfe=n),
                                   run_dir / "baseline-ddpm" / f"nfe-{n}", masks, scheduler)
                for n in cfg.eval.ddpm_arms if generators.ddpm}
    # the quality-vs-NFE curve's fresh samples (a few per class at each NFE, timed)
    curve = (nfe_curve_task(stores[1.0], list(cfg.eval.nfe_curve), cfg.eval.nfe_curve_samples, str(where))
             if cfg.eval.nfe_curve else None)
    low = {f"{f:g}": store for f, store in stores.items() if f != 1.0}
    evaluation = evaluate_task(data_path, stores[1.0], cfg.eval, str(run_dir), low, by_nfe, curve, ddpm)
    return report_task(run_name, cfg.to_dict(), data_path, ckpt, stores[1.0], evaluation, str(run_dir),
                       enhancements or [])


if __name__ == "__main__":  # `python -m flows.synth_and_eval`: the `motfm run` command line (flows/run.py). Named,
    # not imported: flows.run imports this module, and as __main__ this file is not that module, so no circle runs
    import runpy

    runpy.run_module("flows.run", run_name="__main__", alter_sys=True)
