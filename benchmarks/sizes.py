"""Networks at the sizes users bring: what each model size builds, its planned and measured peak memory, and CPU
seconds per training step, for 2D 64/128/256/512 px and 3D 64^3/96^3/128^3.

    .venv/bin/python benchmarks/sizes.py                      # every case (hours on 2 cores; resumable)
    .venv/bin/python benchmarks/sizes.py --cases 2d-256 --sizes medium
    .venv/bin/python benchmarks/sizes.py --old                # today's three-level networks, for comparison

Each case runs in a fresh process: the memory plan (motfm_core.model.memory, the traced peak of a training step times
the CPU overhead) and then two real training steps (the first warms up and creates AdamW's state); measured peak =
peak RSS during them above the RSS before the model was built, the figure the plan estimates. Cases whose plan exceeds
this machine's free memory are listed as not run. `--old` builds the network every model size had before the
sizing rule (three levels, attention at the last one) with the token limit lifted. The GPU column is an ESTIMATE:
the traced FLOPs of a step at 40% of an H200's dense bf16 FLOP/s. Each finished case is appended to
results/<date>-<machine>-sizes.json at once, and a re-run skips the cases there (--fresh: start over). Rows go to
RESULTS.md when every case asked for is done.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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

CASES = {"2d-64": (2, 64, 64, 2), "2d-128": (2, 128, 128, 2), "2d-256": (2, 256, 256, 2), "2d-512": (2, 512, 512, 1),
         "3d-64": (3, 64, 64, 1), "3d-96": (3, 96, 96, 1), "3d-128": (3, 128, 128, 1)}  # dims, side, depth, batch
SIZES = ("small", "medium", "large")
# the networks before the sizing rule: three levels at every image size, attention at the last one; and the 3D demo's
OLD = {"small": ((32, 64, 64), True), "medium": ((64, 128, 128), True), "large": ((128, 256, 256), True),
       "demo-3d": ((16, 32, 32), False)}


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 2 ** 20  # kB -> GB
    raise KeyError(key)


def model_config(spec: tuple[int, int, int, int], size: str, old: bool):
    """(ModelConfig, TrainConfig) of a case: spec = (spatial dims, side, depth, batch)."""
    from motfm_core.config import ModelConfig, TrainConfig

    dims, side, depth, batch = spec
    extra: dict = {}
    if old:
        channels, attention = OLD[size]
        extra = dict(channels=channels, attention_levels=(False, False, attention), max_attention_tokens=10 ** 9,
                     num_head_channels=min(32, channels[-1] // 2))
        size = "small"
    cfg = ModelConfig(spatial_dims=dims, image_size=side, depth=depth, size=size, num_classes=3, **extra)
    return cfg, TrainConfig(batch_size=batch)


def measure(case: str, spec: tuple[int, int, int, int], size: str, old: bool, steps: int,
            max_tflop: float = 0.0) -> dict:
    """This process: plan, then `steps` + 1 real training steps (none when the plan's FLOPs are over `max_tflop`)."""
    import torch

    from motfm_core.model.memory import GB, MemoryPlanError, plan_training, trace_training
    from motfm_core.model.nets import build_model
    from motfm_core.model.step import train_step

    cfg, train = model_config(spec, size, old)
    row = {"case": case, "size": size, "old": old, "channels": list(cfg.channels),
           "attention": [i for i, a in enumerate(cfg.attention_levels) if a], "batch": train.batch_size}
    t0 = time.perf_counter()
    try:
        plan = plan_training(cfg, train)
    except MemoryPlanError as e:
        return {**row, "not_run": f"refused by the plan: {e}"}
    row.update(plan_s=time.perf_counter() - t0, params=plan.params, planned_gb=plan.step_gb,
               checkpointing=plan.gradient_checkpointing, tflop_per_step=plan.tflop_per_step,
               est_h200_s_per_step=plan.tflop_per_step * 1e12 / (ASSUMED_MFU * H200_BF16_FLOPS),
               budget_gb=plan.budget_gb)
    trace = trace_training(cfg, train, "cpu", plan.gradient_checkpointing)
    if max_tflop and plan.tflop_per_step > max_tflop:
        return {**row, "not_run": f"not measured: {plan.tflop_per_step:.0f} TFLOP per step (--max-tflop {max_tflop:g})"}
    cfg.gradient_checkpointing = "on" if plan.gradient_checkpointing else "off"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(train.batch_size, *cfg.sample_shape) * 2 - 1
    y = torch.zeros(train.batch_size, dtype=torch.long)
    before = _status("VmRSS")
    model = build_model(cfg)
    ema = build_model(cfg).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr)
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        train_step(model, ema, opt, x, y, None, train, g, step)
        times.append(time.perf_counter() - t0)
    measured = _status("VmHWM") - before
    return {**row, "measured_gb": measured, "error": plan.step_gb / measured - 1, "s_per_step": sum(times[1:]) / steps,
            "first_step_s": times[0], "traced_small_gb": trace.small / GB, "traced_large_gb": trace.large / GB}


def fit(rows: list[dict]) -> tuple[float, float]:
    """Least-squares (a, b) of measured = a x small + b x large over the measured rows: model.memory's OVERHEAD."""
    import numpy as np

    done = [r for r in rows if "measured_gb" in r and "traced_small_gb" in r]
    a = np.array([[r["traced_small_gb"], r["traced_large_gb"]] for r in done])
    (small, large), *_ = np.linalg.lstsq(a, np.array([r["measured_gb"] for r in done]), rcond=None)
    for r in done:
        model = small * r["traced_small_gb"] + large * r["traced_large_gb"]
        print(f"{r['case']:8s} {r['size']:7s} measured {r['measured_gb']:.3f} GB, fitted {model:.3f} "
              f"({100 * (model / r['measured_gb'] - 1):+.0f}%), planned {r['planned_gb']:.3f} "
              f"({100 * r['error']:+.0f}%)")
    print(f"fit over {len(done)} cases: small x {small:.3f}, large x {large:.3f}")
    return float(small), float(large)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(OLD),
                   help="model sizes (with --old also demo-3d: the 3D demo's 16/32/32 network without attention)")
    p.add_argument("--max-tflop", type=float, default=0.0,
                   help="plan but do not run cases whose training step is over this many TFLOP (0: run all)")
    p.add_argument("--old", action="store_true", help="today's three-level networks instead of the sized ones")
    p.add_argument("--steps", type=int, default=1, help="timed training steps after the warm-up step")
    p.add_argument("--fresh", action="store_true", help="ignore the cases already in today's results file")
    p.add_argument("--fit", metavar="JSON", help="fit the CPU overhead factors to a results file's rows and exit")
    p.add_argument("--one", nargs=6, default=None, metavar=("DIMS", "SIDE", "DEPTH", "BATCH", "SIZE", "LABEL"),
                   help="measure one case in this process and print its JSON (what each case's subprocess runs)")
    args = p.parse_args()
    if args.one:
        dims, side, depth, batch, size, label = args.one
        spec = (int(dims), int(side), int(depth), int(batch))
        print(json.dumps(measure(label, spec, size, args.old, args.steps, args.max_tflop)))
        return
    if args.fit:
        fit(json.loads(Path(args.fit).read_text())["rows"])
        return
    date, machine = dt.date.today().isoformat(), machine_name()
    out = ROOT / "benchmarks" / "results" / f"{date}-{machine}-sizes.json"
    done = [] if args.fresh or not out.exists() else json.loads(out.read_text())["rows"]
    have = {(r["case"], r["size"], r["old"]) for r in done}
    for case in args.cases:
        for size in args.sizes:
            if (case, size, args.old) in have:
                continue
            res = subprocess.run([sys.executable, __file__, "--one", *map(str, CASES[case]), size, case,
                                  "--steps", str(args.steps), "--max-tflop", str(args.max_tflop)]
                                 + (["--old"] if args.old else []), capture_output=True, text=True)
            if res.returncode != 0:
                row = {"case": case, "size": size, "old": args.old,
                       "not_run": f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"}
            else:
                row = json.loads(res.stdout.strip().splitlines()[-1])
            done.append(row)
            out.write_text(json.dumps({"date": date, "machine": machine, "assumptions": {
                "h200_bf16_flops": H200_BF16_FLOPS, "mfu": ASSUMED_MFU}, "rows": done}, indent=2))
            print(json.dumps(row), flush=True)
    command = "`benchmarks/sizes.py " + " ".join(sys.argv[1:]) + "`"
    for r in done:
        if (r["case"] in args.cases and r["size"] in args.sizes and r["old"] == args.old):
            add_row("Networks at the sizes users bring (`benchmarks/sizes.py`)",
                    ["date", "machine", "case", "model size", "network", "channels", "attention at level",
                     "batch", "params", "planned GB", "measured GB", "plan error", "CPU s/step",
                     "est. H200 s/step", "command", "json"],
                    [date, machine, r["case"], r["size"], "before the sizing rule" if r["old"] else "sized",
                     "/".join(map(str, r.get("channels", []))), ",".join(map(str, r.get("attention", []))) or "-",
                     str(r.get("batch", "")), f"{r['params'] / 1e6:.1f}M" if "params" in r else "-",
                     f"{r['planned_gb']:.2f}" + (" (checkpointing)" if r.get("checkpointing") else "")
                     if "planned_gb" in r else "-",
                     f"{r['measured_gb']:.2f}" if "measured_gb" in r else r.get("not_run", "")[:160],
                     f"{100 * r['error']:+.0f}%" if "error" in r else "-",
                     f"{r['s_per_step']:.1f}" if "s_per_step" in r else "-",
                     f"{r['est_h200_s_per_step']:.4f} (estimate)" if "est_h200_s_per_step" in r else "-",
                     command, f"results/{out.name}"])
    print(f"wrote results/{out.name}")


if __name__ == "__main__":
    main()
