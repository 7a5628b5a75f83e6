"""Peer ratio: our sampler against MONAI's rectified-flow loop and the seed repository's Euler loop, same weights.

    .venv/bin/python benchmarks/peer_ratio.py                       # demo-size network (48 px), NFE 10 and 1
    .venv/bin/python benchmarks/peer_ratio.py --checkpoint outputs/demo/checkpoints/model.pt

Three loops draw the same images (same labels, seeds, initial noise, guidance and velocity function):
1. ours: `motfm_core.model.sampling.generate` (solver "euler"), the path every sampling shard takes;
2. MONAI: `RFlowScheduler` (continuous timesteps, 1000 training steps) with its documented inference loop:
   `set_timesteps(nfe)`, then `step(v, t, x, next_t)`; MONAI's time runs from 1000 (noise) to 0 (data), ours from 0
   to 1, so the network is called at t = 1 - t_monai / 1000;
3. the seed repository's loop as its paper describes it: x <- x + dt * v(x, t) on an even grid of NFE steps.
The maths is the same Euler scheme in all three, so the images must agree to float precision; the ratio of
images/s measures what each loop adds around the network. Weights: `--checkpoint`, else the demo network after one
training step (timing does not depend on the weights; agreement is checked on whichever weights are used).
Writes benchmarks/results/<date>-<machine>-peer-ratio.json and appends rows to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import add_row
from sampling_throughput import machine_name, timing_checkpoint

from motfm_core.config import SampleConfig
from motfm_core.device import default_device
from motfm_core.model.nets import guided_velocity
from motfm_core.model.sampling import generate, initial_noise
from motfm_core.model.training import load_checkpoint
from motfm_core.scale import to_image_space


@torch.inference_mode()
def monai_loop(model, labels: np.ndarray, seeds: np.ndarray, nfe: int, guidance: float, batch: int,
               device: torch.device) -> np.ndarray:
    """MONAI's RFlowScheduler inference loop around our velocity function."""
    from monai.networks.schedulers import RFlowScheduler

    scheduler = RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=False)
    scheduler.set_timesteps(num_inference_steps=nfe, device=device)
    nexts = torch.cat([scheduler.timesteps[1:], torch.zeros(1, dtype=scheduler.timesteps.dtype, device=device)])
    out = []
    for i in range(0, len(labels), batch):
        x = initial_noise(seeds[i:i + batch], model.cfg.sample_shape).to(device)
        v = guided_velocity(model, torch.as_tensor(labels[i:i + batch], device=device).long(), guidance)
        for t, t_next in zip(scheduler.timesteps, nexts):
            ours = torch.full((x.shape[0],), 1.0 - float(t) / 1000.0, device=device)
            x, _ = scheduler.step(v(x, ours), t, x, t_next)
        out.append(to_image_space(x.float()).cpu().numpy())
    return np.concatenate(out)


@torch.inference_mode()
def seed_loop(model, labels: np.ndarray, seeds: np.ndarray, nfe: int, guidance: float, batch: int,
              device: torch.device) -> np.ndarray:
    """The seed repository's Euler loop, from its description: an even grid from noise (0) to data (1)."""
    grid = torch.linspace(0.0, 1.0, nfe + 1)
    out = []
    for i in range(0, len(labels), batch):
        x = initial_noise(seeds[i:i + batch], model.cfg.sample_shape).to(device)
        v = guided_velocity(model, torch.as_tensor(labels[i:i + batch], device=device).long(), guidance)
        for t0, t1 in zip(grid[:-1], grid[1:]):
            x = x + (t1 - t0).item() * v(x, torch.full((x.shape[0],), t0.item(), device=device))
        out.append(to_image_space(x.float()).cpu().numpy())
    return np.concatenate(out)


def timed(repeats: int, fn, *args) -> tuple[np.ndarray, float]:
    """The output of `fn(*args)` and its best wall time over `repeats` runs (after one warm-up run)."""
    out = fn(*args)
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 1])
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = default_device()
    checkpoint = args.checkpoint or timing_checkpoint(Path(tempfile.mkdtemp(prefix="motfm-peer-")), 48)
    model, _ = load_checkpoint(checkpoint, device)
    if model.cfg.mask_conditioning != "none":
        raise SystemExit(f"{checkpoint}: a mask-conditioned model; the peer loops here take class conditioning only")
    labels = np.arange(args.images) % model.cfg.num_classes
    seeds = np.arange(args.images) + 1000
    rows = []
    for nfe in args.nfe:
        cfg = SampleConfig(solver="euler", nfe=nfe, batch_size=args.batch, guidance=args.guidance)
        ours, t_ours = timed(args.repeats, lambda *a: generate(*a)[0], model, labels, seeds, cfg, device)
        loops = {"monai-rflow": monai_loop, "seed-euler": seed_loop}
        for name, loop in loops.items():
            theirs, t = timed(args.repeats, loop, model, labels, seeds, nfe, args.guidance, args.batch, device)
            row = {"nfe": nfe, "peer": name, "ours_images_per_s": args.images / t_ours,
                   "peer_images_per_s": args.images / t, "ratio": t / t_ours,
                   "max_abs_diff": float(np.abs(ours - theirs).max())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    date = dt.date.today().isoformat()
    name = f"{date}-{machine_name()}-peer-ratio.json"
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps({"date": date, "machine": machine_name(), "device": str(device),
                               "checkpoint": str(checkpoint) if args.checkpoint else "demo network, 1 step",
                               "args": vars(args), "rows": rows}, indent=2))
    for r in rows:
        add_row("Peer ratio: our sampler vs MONAI RFlowScheduler and the seed Euler loop (`benchmarks/peer_ratio.py`)",
                ["date", "machine", "NFE", "peer", "ours img/s", "peer img/s", "ours / peer speed",
                 "max abs diff (images in [0, 1])", "command", "json"],
                [date, machine_name(), str(r["nfe"]), r["peer"], f"{r['ours_images_per_s']:.1f}",
                 f"{r['peer_images_per_s']:.1f}", f"{r['ratio']:.2f}x", f"{r['max_abs_diff']:.1e}",
                 f"`benchmarks/peer_ratio.py {' '.join(sys.argv[1:])}`", f"results/{name}"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
