"""Report task: gather every stage's outputs into report.json/report.md and Prefect artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import zarr
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from motfm_core import code_version
from motfm_core.data import completed_shards, open_store
from motfm_core.report import write_report


def _gather(run_name: str, config: dict, data_path: str, checkpoint: str, synthetic_path: str,
            evaluation_path: str, enhancement_paths: list[str]) -> dict:
    data = open_store(data_path)
    split = data["split"][:]
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    syn = zarr.open_group(synthetic_path, mode="r", zarr_format=3)
    shard_info = list(completed_shards(synthetic_path).values())
    seconds = sum(s["seconds"] for s in shard_info)
    return {
        "run_name": run_name, "code_version": code_version(), "config": config,
        "dataset": {"path": data_path, "source": data.attrs["source"], "fingerprint": data.attrs["fingerprint"],
                    "class_names": data.attrs["class_names"], "sample_shape": list(data["images"].shape[1:]),
                    "sizes": {n: int((split == c).sum()) for n, c in (("train", 0), ("val", 1), ("test", 2))}},
        "training": {"checkpoint": checkpoint, "steps": ckpt["step"], "final_loss": float(np.mean(ckpt["losses"][-50:])),
                     "loss_curve": [float(np.mean(ckpt["losses"][i:i + 50])) for i in range(0, len(ckpt["losses"]), 50)],
                     "seconds": ckpt.get("train_seconds", float("nan")), "device": ckpt["device"]},
        "sampling": {"store": synthetic_path, "num_samples": syn.attrs["num_samples"], "solver": syn.attrs["solver"],
                     "nfe": syn.attrs["nfe"], "guidance": syn.attrs["guidance"],
                     "mask_source": syn.attrs.get("mask_source"),
                     "copy_guard": syn.attrs.get("copy_threshold") is not None,
                     "seconds_per_image": seconds / max(1, syn.attrs["num_samples"]),
                     "device": shard_info[0].get("device", "?") if shard_info else "?",
                     "checkpoint_sha256": syn.attrs["checkpoint_sha256"]},
        "evaluation": json.loads(Path(evaluation_path).read_text()),
        "enhancement": [json.loads(Path(p).read_text()) for p in enhancement_paths],
    }


@task(name="report")
def report_task(run_name: str, config: dict, data_path: str, checkpoint: str, synthetic_path: str,
                evaluation_path: str, run_dir: str, enhancement_paths: list[str] | None = None) -> str:
    """Write the report files and publish them as markdown and table artifacts; returns report.md's path."""
    report = _gather(run_name, config, data_path, checkpoint, synthetic_path, evaluation_path,
                     enhancement_paths or [])
    files = write_report(run_dir, report, data_path, synthetic_path)
    md = Path(files["markdown"]).read_text()
    create_markdown_artifact(markdown=md, key="synth-and-eval-report", description=f"motfm report {run_name}")
    rows = [{"arm": arm, **{m: f"{s['mean']:.3f} ± {s['std']:.3f}" for m, s in stats.items()}}
            for arm, stats in report["evaluation"]["summary"].items()]
    rows.append({"arm": "gain (real+synthetic - real)",
                 **{m: f"{s['mean']:+.3f} ± {s['std']:.3f}" for m, s in report["evaluation"]["gain"].items()}})
    create_table_artifact(table=rows, key="augmentation-gain", description="test-set metrics, mean ± std over seeds")
    get_run_logger().info("report: %s", files["markdown"])
    return files["markdown"]
