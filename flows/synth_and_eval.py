"""The main DAG: ingest -> train -> sample (Zarr shards over Dask) -> publish -> evaluate -> report.

Run locally (Prefect's embedded mode, no server): `python -m flows.synth_and_eval --run-name demo`.
As a deployment: `prefect deployment run synth-and-eval/synth-and-eval` (see prefect.yaml).
Every stage is idempotent: re-running with the same parameters reuses finished stages and shards.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from motfm_core.config import MODEL_SIZES, PipelineConfig, from_dict
from motfm_core.enhance import EnhanceConfig
from tasks.enhance import enhance_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.report import report_task
from tasks.sample import plan_sampling_task, publish_task, sample_shards_task
from tasks.train import train_task


def build_config(dataset: str, image_size: int, train_steps: int | None, solver: str, nfe: int,
                 samples_per_class: int, seeds: list[int], overrides: dict[str, dict[str, Any]] | None,
                 model_size: str = "small", mask_conditioning: str = "auto") -> PipelineConfig:
    """Named parameters first, then `overrides` per section; validates everything before heavy work."""
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size must be one of {sorted(MODEL_SIZES)}, got {model_size!r}")
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (overrides or {}).items() if k != "enhance"}
    merged.setdefault("model", {}).setdefault("channels", MODEL_SIZES[model_size])
    merged["model"].setdefault("mask_conditioning", mask_conditioning)
    merged.setdefault("data", {}).update({"source": dataset, "image_size": image_size})
    merged.setdefault("sample", {}).update({"solver": solver, "nfe": nfe, "samples_per_class": samples_per_class})
    merged.setdefault("eval", {}).update({"seeds": list(seeds)})
    if train_steps is not None:
        merged.setdefault("train", {})["steps"] = train_steps
    return PipelineConfig.from_overrides(merged)


# Stages run one after another; the fan-out is inside sampling (Dask, one worker per GPU).
@flow(name="synth-and-eval", task_runner=ThreadPoolTaskRunner(max_workers=1))
def synth_and_eval(
    run_name: str = "demo",
    output_root: str = "outputs",
    dataset: str = "brain-mri",
    image_size: int = 48,
    model_size: str = "small",
    mask_conditioning: str = "auto",
    train_steps: int | None = None,
    solver: str = "euler",
    nfe: int = 10,
    samples_per_class: int = 80,  # 240 on the demo set: enough for the x2 ratio arm (114 real)
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (Prefect parameters are copied per run)
    enhance: list[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Run the whole DAG into `<output_root>/<run_name>/`; returns the path of report.md.

    `enhance` (e.g. ["denoise", "superres"]) also trains and scores image-enhancement flows on the real
    data; `overrides["enhance"]` sets their EnhanceConfig fields.
    """
    logger = get_run_logger()
    cfg = build_config(dataset, image_size, train_steps, solver, nfe, samples_per_class, seeds, overrides, model_size,
                       mask_conditioning)
    c = cfg.to_dict()
    enhance_cfgs = [asdict(from_dict(EnhanceConfig, {**(overrides or {}).get("enhance", {}), "task": name}, "enhance"))
                    for name in (enhance or [])]
    run_dir = Path(output_root).resolve() / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(c, indent=2))
    tmp.replace(run_dir / "config.json")  # regenerate-synthetic reads it
    logger.info("synth-and-eval: outputs in %s", run_dir)

    data_path = ingest_task(c["data"], str(run_dir))
    enhancements = [enhance_task(data_path, e, str(run_dir)) for e in enhance_cfgs]
    checkpoint = train_task(data_path, c["model"], c["train"], str(run_dir))
    report = sample_evaluate_report(run_name, c, data_path, checkpoint, run_dir, enhancements)
    logger.info("synth-and-eval: done; report at %s", report)
    return report


def sample_evaluate_report(run_name: str, c: dict[str, Any], data_path: str, checkpoint: str, run_dir: Path,
                           enhancements: list[str] | None = None) -> str:
    """The stages after training (shared with `regenerate-synthetic`); returns the report path."""
    store, todo = plan_sampling_task(checkpoint, c["sample"], str(run_dir))
    shards = sample_shards_task(checkpoint, store, todo, c["sample"])
    get_run_logger().info("sample: %d shard(s) written this run", sum(not s["skipped"] for s in shards))
    publish_task(store, c["sample"])  # evaluation reads this version itself, not the moving `latest` link
    evaluation = evaluate_task(data_path, store, c["eval"], str(run_dir))
    return report_task(run_name, c, data_path, checkpoint, store, evaluation, str(run_dir), enhancements or [])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run the synth-and-eval DAG locally (Prefect embedded mode).")
    p.add_argument("--run-name", default="demo")
    p.add_argument("--output-root", default="outputs")
    p.add_argument("--dataset", default="brain-mri", help="brain-mri, a MedMNIST .npz, or a folder with labels.csv")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--model-size", default="small", choices=sorted(MODEL_SIZES))
    p.add_argument("--mask-conditioning", default="auto", choices=["auto", "none", "concat", "controlnet"],
                   help="condition on segmentation masks (auto: when the dataset has them)")
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--solver", default="euler")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--samples-per-class", type=int, default=80)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--enhance", nargs="*", default=[], choices=["denoise", "superres"],
                   help="also train and score image-enhancement flows on the real data")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                   help="override any config value, e.g. --set train.lr=1e-3 --set model.channels=[32,64,64]")
    a = p.parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {}
    for item in a.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name or not value:
            p.error(f"--set {item!r}: use SECTION.KEY=VALUE, e.g. train.steps=100")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        overrides.setdefault(section, {})[name] = parsed
    t0 = time.time()
    report = synth_and_eval(run_name=a.run_name, output_root=a.output_root, dataset=a.dataset,
                            image_size=a.image_size, model_size=a.model_size,
                            mask_conditioning=a.mask_conditioning, train_steps=a.train_steps, solver=a.solver, nfe=a.nfe,
                            samples_per_class=a.samples_per_class, seeds=a.seeds, enhance=a.enhance,
                            overrides=overrides)
    print(f"\nDone in {time.time() - t0:.0f}s. Outputs in {Path(report).parent}/:")
    print(f"  report     {report}  (and report.json, samples.png, gains.png, closest_pairs.png)")
    print(f"  real data  {Path(report).parent / 'dataset.zarr'}")
    print(f"  synthetic  {Path(report).parent / 'synthetic' / 'latest'}  (-> the newest complete version)")
    print(f"  model      {Path(report).parent / 'checkpoints' / 'model.pt'}")


if __name__ == "__main__":
    main()
