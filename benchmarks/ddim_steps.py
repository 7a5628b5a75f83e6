"""Does the DDPM baseline's DDIM get better with more steps? (issue #35 item 3)

    .venv/bin/python benchmarks/ddim_steps.py            # bundled brains at 32 px, DDPM at 600 and 2400 steps
    .venv/bin/python benchmarks/ddim_steps.py --quick    # a smoke test (16 px, 40 steps)

In the 3D comparison DDIM-50 scored worse than DDIM-10 on in-domain FID (36 vs 21), and in the 2D one slightly
worse (10.6 vs 9.9), while fine SWD fell with the steps both times. Two suspects, measured here on the same
weights and noise: the step spacing of MONAI's DDIMScheduler, whose steps are linspace(999, 0, n) while each step
moves the sample 1000 // n back (`sample.ddim_spacing=linspace`), against `trailing` spacing, where each step lands
on the next evaluated one; and the training budget (an under-trained epsilon model). Each DDPM is sampled at DDIM
NFE 5 / 10 / 20 / 50 / 100 with both spacings and scored with in-domain FID and fine SWD against the real test
split. Training resumes from its checkpoints when the command is run again (same --work folder). Writes
benchmarks/results/<date>-<machine>-ddim-steps.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fm_vs_diffusion import machine_name, swd_fields

from motfm_core.config import DataConfig, EvalConfig, ModelConfig, SampleConfig, TrainConfig
from motfm_core.data import ingest, load_split
from motfm_core.evaluation.quality import FeatureExtractor, fid
from motfm_core.model.sampling import generate, sample_plan
from motfm_core.model.training import load_checkpoint, train_flow_matching

NFES = (5, 10, 20, 50, 100)
SPACINGS = ("linspace", "trailing")


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work)
    data = ingest(DataConfig(image_size=args.image_size), work / "dataset.zarr")
    extractor = FeatureExtractor.train(data, EvalConfig(steps=args.feature_steps), device=device)
    real_images = {s: load_split(data, s)["images"] for s in ("train", "test")}
    real = {s: extractor(x) for s, x in real_images.items()}
    out: dict = {"date": dt.date.today().isoformat(), "machine": machine_name(device),
                 "command": " ".join(["benchmarks/ddim_steps.py", *sys.argv[1:]]), "args": vars(args),
                 "baseline_train_vs_test": {"fid": fid(real["test"], real["train"]),
                                            **swd_fields(real_images["test"], real_images["train"])},
                 "budgets": {}, "rows": []}
    model_cfg = ModelConfig(image_size=args.image_size, num_classes=3, channels=tuple(args.channels),
                            attention_levels=(False,) * (len(args.channels) - 1) + (True,), prediction="epsilon",
                            num_head_channels=min(32, args.channels[-1]))
    for steps in args.steps:
        train = TrainConfig(steps=steps, batch_size=args.batch_size, warmup_steps=min(100, steps // 10),
                            checkpoint_every=max(1, steps // 4), seed=0)
        t0 = time.time()
        ckpt = train_flow_matching(data, model_cfg, train, work / f"ddpm-{steps}", device=device,
                                   progress=lambda m, s=steps: print(f"[ddpm {s}] {m}", flush=True))
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")
        out["budgets"][str(steps)] = {"final_loss": float(np.mean(saved["losses"][-50:])),
                                      "train_seconds": saved.get("train_seconds"), "wall_seconds": time.time() - t0}
        model, _ = load_checkpoint(ckpt, device)
        for spacing in SPACINGS:
            for nfe in NFES:
                cfg = SampleConfig(samples_per_class=args.samples_per_class, solver="ddim", nfe=nfe,
                                   ddim_spacing=spacing, batch_size=64, seed=7)
                labels, seeds = sample_plan(3, cfg)
                images, _ = generate(model, labels, seeds, cfg, device)
                row = {"train_steps": steps, "spacing": spacing, "nfe": nfe,
                       "fid": fid(real["test"], extractor(images)), **swd_fields(real_images["test"], images)}
                out["rows"].append(row)
                print(f"[ddpm {steps}] DDIM {spacing:>8} NFE {nfe:3d}: FID {row['fid']:.2f} fine SWD "
                      f"{row['swd_fine']:.0f}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke test: 16 px, 40 training steps")
    p.add_argument("--steps", type=int, nargs="+", default=[600, 2400], help="DDPM training budgets")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="UNet widths per level")
    p.add_argument("--batch-size", type=int, default=32, help="training batch")
    p.add_argument("--samples-per-class", type=int, default=32, help="DDIM samples per class and setting")
    p.add_argument("--feature-steps", type=int, default=300, help="steps of the in-domain FID classifier")
    p.add_argument("--work", default=str(ROOT / "outputs" / "bench-ddim-steps"), help="checkpoints (resumable)")
    a = p.parse_args()
    if a.quick:
        a.steps, a.image_size, a.channels, a.samples_per_class, a.feature_steps = [40], 16, [16, 16], 4, 20
        a.work = str(Path(a.work).with_name(Path(a.work).name + "-quick"))
    result = run(a)
    name = f"{result['date']}-{result['machine']}-ddim-steps{'-quick' if a.quick else ''}.json"
    path = ROOT / "benchmarks" / "results" / name
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
