"""3D at the paper's size: seconds per training step and per sample at 96^3 on this machine, peak memory, and an
estimate of a GPU run of the paper's budget.

    .venv/bin/python benchmarks/three_d.py                 # demo-3d and small networks, 96^3, batch 1
    .venv/bin/python benchmarks/three_d.py --side 64 --nets demo-3d

Each network runs in a fresh process (so its peak RSS is its own): `--steps` training steps at batch 1 (flow-matching
loss, AdamW, the training code's own loss function) after one warm-up step, then one velocity evaluation at batch 1;
a sample costs NFE (10) of them. Networks: `demo-3d` (the `make demo-3d` UNet, channels 16/32/32, no attention levels),
`small` (32/64/64 without attention levels; MONAI's mid block still attends over its 24^3 = 13,824 bottleneck
voxels at 96^3) and `seed` (the seed
repository's 3D configuration, configs/config_3D.yaml: channels 32/64/160/480, two residual blocks per level,
attention at the last level, here at 12^3 = 1728 tokens). The GPU figure is an ESTIMATE, not a measurement:
training FLOPs = 3 x the forward FLOPs counted by torch at batch 1, at 40% of an H200's 989 dense bf16 TFLOP/s,
times the paper's budget as the seed repository configures it (100 epochs, batch 1; the number of training volumes
is an assumption: 388, 80% of the 484 of the Medical Segmentation Decathlon's brain task). A narrow network on
96^3 volumes moves many bytes per FLOP, so 40% of peak FLOPs is optimistic for it: read its GPU figure as a lower
bound on the time.
Writes benchmarks/results/<date>-<machine>-3d.json and appends rows to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import add_row
from sampling_throughput import machine_name
from writer_options import ASSUMED_MFU, H200_BF16_FLOPS

PAPER_EPOCHS, ASSUMED_TRAIN_VOLUMES = 100, 388
NETS = {"demo-3d": dict(channels=(16, 32, 32), attention_levels=(False, False, False), num_head_channels=16),
        "small": dict(channels=(32, 64, 64), attention_levels=(False, False, False), num_head_channels=32),
        "seed": dict(channels=(32, 64, 160, 480), attention_levels=(False, False, False, True), num_res_blocks=2,
                     num_head_channels=32)}


def measure(net: str, side: int, steps: int) -> dict:
    """One network in this process: train steps, one forward, FLOPs, peak RSS."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from motfm_core.config import ModelConfig, TrainConfig
    from motfm_core.model.nets import build_model
    from motfm_core.model.training import flow_matching_loss

    cfg = ModelConfig(spatial_dims=3, image_size=side, depth=side, num_classes=3, **NETS[net])
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 1, side, side, side) * 2 - 1, torch.zeros(1, dtype=torch.long)
    times = []
    for _ in range(steps + 1 if steps else 0):  # the first step warms up; --steps 0: forward and FLOPs only
        t0 = time.perf_counter()
        loss = flow_matching_loss(model, x, y, TrainConfig(), g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(x, torch.full((1,), 0.5), y)
        forward = time.perf_counter() - t0
        counter = FlopCounterMode(display=False)
        with counter:
            model(x, torch.full((1,), 0.5), y)
    flops = float(counter.get_total_flops())
    step_gpu = 3 * flops / (ASSUMED_MFU * H200_BF16_FLOPS)
    budget_steps = PAPER_EPOCHS * ASSUMED_TRAIN_VOLUMES
    cpu_step = float(sum(times[1:]) / steps) if steps else None
    return {"net": net, "side": side, "params": sum(p.numel() for p in model.parameters()),
            "train_s_per_step_batch1": cpu_step, "forward_s": forward,
            "sample_s_nfe10": 10 * forward, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "forward_gflops": flops / 1e9, "est_h200_train_s_per_step": step_gpu,
            "est_h200_paper_budget_hours": step_gpu * budget_steps / 3600, "paper_budget_steps": budget_steps,
            "cpu_paper_budget_days": None if cpu_step is None else cpu_step * budget_steps / 86400}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=96)
    p.add_argument("--steps", type=int, default=2, help="timed training steps (0: forward and FLOPs only)")
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one network, print JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.side, args.steps)))
        return
    rows = []
    for net in args.nets:
        out = subprocess.run([sys.executable, __file__, "--one", net, "--side", str(args.side), "--steps",
                              str(args.steps)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{net}: {out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    date = dt.date.today().isoformat()
    name = f"{date}-{machine_name()}-3d.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(
        {"date": date, "machine": machine_name(), "args": vars(args), "assumptions": {
            "h200_bf16_flops": H200_BF16_FLOPS, "mfu": ASSUMED_MFU, "paper_epochs": PAPER_EPOCHS,
            "train_volumes": ASSUMED_TRAIN_VOLUMES, "train_flops": "3 x forward"}, "rows": rows}, indent=2))
    for r in rows:
        add_row("3D at the paper's size (`benchmarks/three_d.py`)",
                ["date", "machine", "network", "volume", "params", "CPU s/train step (batch 1)",
                 "CPU s/sample (NFE 10)", "peak RSS GB", "forward GFLOP", "est. H200 s/step",
                 "est. H200 time, paper budget", "command", "json"],
                [date, machine_name(), r["net"], f"{r['side']}^3", f"{r['params'] / 1e6:.1f}M",
                 "not run" if r["train_s_per_step_batch1"] is None else f"{r['train_s_per_step_batch1']:.1f}",
                 f"{r['sample_s_nfe10']:.1f}", f"{r['peak_rss_gb']:.1f}",
                 f"{r['forward_gflops']:.0f}", f"{r['est_h200_train_s_per_step']:.3f} (estimate)",
                 f"{60 * r['est_h200_paper_budget_hours']:.1f} min (estimate, {r['paper_budget_steps']} steps)",
                 f"`benchmarks/three_d.py {' '.join(sys.argv[1:])}`", f"results/{name}"])
    print(f"wrote results/{name}")


if __name__ == "__main__":
    main()
