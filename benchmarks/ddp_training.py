"""Data-parallel training: one process against `train.devices` processes at the same global batch.

    .venv/bin/python benchmarks/ddp_training.py                  # demo recipe on the bundled brains, 1 vs 2 ranks
    .venv/bin/python benchmarks/ddp_training.py --steps 200 --devices 1 2 4

Trains the demo generator (bundled brain-MRI set at 48 px, small UNet, batch 16, the demo preset's recipe) once per
device count from the same seed, then compares every run with the one-process run: the largest relative difference
of the per-step loss, the largest absolute difference of the EMA weights, and seconds per step. On a CPU the ranks
share the machine's cores over gloo (this measures the semantics and the communication cost, not a speed-up); on a
machine with GPUs each rank takes one GPU over NCCL. Writes benchmarks/results/<date>-<machine>-ddp.json and
appends rows to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import add_row
from sampling_throughput import machine_name

from motfm_core.config import DataConfig, ModelConfig, TrainConfig
from motfm_core.data import ingest
from motfm_core.model.training import train_flow_matching


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="motfm-ddp-"))
    data = ingest(DataConfig(source="brain-mri", image_size=48), work / "dataset.zarr")
    model = ModelConfig(image_size=48, num_classes=3)
    recipe = TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=20, checkpoint_every=args.steps)
    runs = {}
    for devices in args.devices:
        ckpt = train_flow_matching(data, model, replace(recipe, devices=devices), work / f"devices-{devices}",
                                   progress=print)
        runs[devices] = torch.load(ckpt, weights_only=True)
    base = runs[args.devices[0]]
    rows = []
    for devices, run in runs.items():
        losses, ref = np.array(run["losses"]), np.array(base["losses"])
        rows.append({"devices": devices, "world_size": run["world_size"], "device": run["device"],
                     "seconds_per_step": run["train_seconds"] / args.steps,
                     "max_rel_loss_diff": float(np.max(np.abs(losses - ref) / np.abs(ref))),
                     "max_abs_ema_diff": max(float((run["ema"][k] - v).abs().max()) for k, v in base["ema"].items()),
                     "final_loss_mean_last10": float(losses[-10:].mean())})
        print(json.dumps(rows[-1]), flush=True)
    date = dt.date.today().isoformat()
    name = f"{date}-{machine_name()}-ddp.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(
        {"date": date, "machine": machine_name(), "gpus": torch.cuda.device_count(), "args": vars(args),
         "recipe": "demo generator: brain-mri 48 px, small UNet, batch 16, warmup 20", "rows": rows,
         "losses": {d: r["losses"] for d, r in runs.items()}}, indent=2))
    for r in rows:
        add_row("Data-parallel training (`benchmarks/ddp_training.py`)",
                ["date", "machine", "GPUs", "devices (ranks)", "s/step", "max rel. loss diff vs 1 process",
                 "max abs EMA weight diff", "command", "json"],
                [date, machine_name(), str(torch.cuda.device_count()), str(r["devices"]),
                 f"{r['seconds_per_step']:.2f}", f"{r['max_rel_loss_diff']:.1e}", f"{r['max_abs_ema_diff']:.1e}",
                 f"`benchmarks/ddp_training.py {' '.join(sys.argv[1:])}`", f"results/{name}"])
    print(f"wrote results/{name}")


if __name__ == "__main__":
    main()
