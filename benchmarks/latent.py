"""3D in latent space: seconds and peak memory of a latent flow-matching training step and of one sampled volume
(NFE 10 + decoding, and decoding alone) at 96^3, 128^3 and 256^3, beside the pixel-space rows of sizes.py/three_d.py.

    .venv/bin/python benchmarks/latent.py                  # 96, 128 and 256 at the default autoencoder and model
    .venv/bin/python benchmarks/latent.py --sides 128 --batch 4

Each case runs in a fresh process (its peak RSS is its own): the size-aware `small` velocity UNet on the 4x
autoencoder's 4 x (side/4)^3 latents, mask-conditioned as the clinical-3d preset is (4 tissue classes), `--steps`
training steps after one warm-up (the training code's own `train_step`); then, in another fresh process, one volume:
10 Euler steps in latent space and the decoding of the result (`LatentCodec.decode`, whole when it fits the plan),
timed apart. Weights are random: the cost does not depend on them. The GPU column is an ESTIMATE (the plan's FLOPs at
40% of an H200's dense bf16 peak), not a measurement. Writes benchmarks/results/<date>-<machine>-latent.json and
appends rows to benchmarks/RESULTS.md.
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


def config(side: int, batch: int):
    from motfm_core.config import PipelineConfig

    return PipelineConfig.from_overrides({
        "data": {"spatial_dims": 3, "image_size": side, "depth": side},
        "model": {"space": "latent", "mask_conditioning": "concat", "mask_classes": 4, "num_classes": 2},
        "train": {"batch_size": batch}})


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def train_case(side: int, batch: int, steps: int) -> dict:
    import torch

    from motfm_core.model.memory import trace_training
    from motfm_core.model.nets import build_model
    from motfm_core.model.step import train_step

    cfg = config(side, batch)
    m = cfg.model
    model, ema = build_model(m), build_model(m).requires_grad_(False)
    opt, g = torch.optim.AdamW(model.parameters(), lr=1e-3), torch.Generator().manual_seed(0)
    x = torch.randn(batch, *m.sample_shape)
    y = torch.zeros(batch, dtype=torch.long)
    mask = torch.randint(0, 4, (batch, 1, *m.spatial_shape), dtype=torch.uint8)
    train_step(model, ema, opt, x, y, mask, cfg.train, g, 0)
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(model, ema, opt, x, y, mask, cfg.train, g, i + 1)
    per = (time.perf_counter() - t0) / steps
    flops = trace_training(m, cfg.train).flops
    return {"latent": list(m.sample_shape), "channels": list(m.channels), "s_per_step": per, "peak_rss_gb": rss_gb(),
            "tflop_per_step": flops / 1e12, "h200_s_estimate": flops / (ASSUMED_MFU * H200_BF16_FLOPS)}


def sample_case(side: int) -> dict:
    import torch

    from motfm_core.model.autoencoder import build_autoencoder
    from motfm_core.model.latents import LatentCodec
    from motfm_core.model.nets import build_model, guided_velocity
    from motfm_core.model.solvers import solve

    cfg = config(side, 1)
    model = build_model(cfg.model).eval()
    codec = LatentCodec(build_autoencoder(cfg.autoencoder, 3, 1).eval(), cfg.autoencoder, 0.0, 1.0)
    y = torch.zeros(1, dtype=torch.long)
    mask = torch.randint(0, 4, (1, 1, *cfg.model.spatial_shape), dtype=torch.uint8)
    with torch.inference_mode():
        t0 = time.perf_counter()
        z, nfe = solve(guided_velocity(model, y, 1.0, mask), torch.randn(1, *cfg.model.sample_shape), 10, "euler")
        flow = time.perf_counter() - t0
        t0 = time.perf_counter()
        image = codec.decode(z)
        decode = time.perf_counter() - t0
    window = codec.window(tuple(cfg.model.spatial_shape))
    return {"nfe": nfe, "flow_s": flow, "decode_s": decode, "volume_s": flow + decode, "peak_rss_gb": rss_gb(),
            "image": list(image.shape[1:]), "decoded": "whole" if window is None else f"windows {window}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sides", type=int, nargs="+", default=[96, 128, 256])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--one", nargs=3, metavar=("KIND", "SIDE", "BATCH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        kind, side, batch = a.one[0], int(a.one[1]), int(a.one[2])
        print(json.dumps(train_case(side, batch, a.steps) if kind == "train" else sample_case(side)))
        return
    date, machine, rows = dt.date.today().isoformat(), machine_name(), []
    for side in a.sides:
        row = {"side": side, "batch": a.batch}
        for kind in ("train", "sample"):
            out = subprocess.run([sys.executable, __file__, "--steps", str(a.steps), "--one", kind, str(side),
                                  str(a.batch)], capture_output=True, text=True, check=True)
            row[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        t, s = row["train"], row["sample"]
        print(f"{side}^3: latent {'x'.join(map(str, t['latent']))}, step {t['s_per_step']:.2f} s at batch {a.batch}, "
              f"{t['peak_rss_gb']:.2f} GB; volume {s['volume_s']:.1f} s (flow {s['flow_s']:.1f}, decode "
              f"{s['decode_s']:.1f}, {s['decoded']}), {s['peak_rss_gb']:.2f} GB", flush=True)
        add_row("3D in latent space",
                ["date", "machine", "volume", "latent", "batch", "s/step", "step peak RSS GB", "H200 s/step (estimate)",
                 "s per volume (flow NFE 10 + decode)", "decode s", "sampling peak RSS GB", "command"],
                [date, machine, f"{side}^3", "x".join(map(str, t["latent"])), str(a.batch), f"{t['s_per_step']:.2f}",
                 f"{t['peak_rss_gb']:.2f}", f"{t['h200_s_estimate']:.4f}",
                 f"{s['volume_s']:.1f} ({s['flow_s']:.1f} + {s['decode_s']:.1f}, {s['decoded']})",
                 f"{s['decode_s']:.1f}", f"{s['peak_rss_gb']:.2f}", "`benchmarks/latent.py`"])
    out = ROOT / "benchmarks" / "results" / f"{date}-{machine}-latent.json"
    out.write_text(json.dumps({"date": date, "machine": machine, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
