"""Training from the store: peak memory and speed of a generator's training at 1x and 16x the training set, held in
memory (the path a set that fits takes) against read from the store a batch at a time.

    .venv/bin/python benchmarks/train_scale.py [--work outputs/train-scale]

Stores of random images (2D 128^2: 1,000 and 16,000; 3D 64^3: 100 and 1,600; what is in them does not change memory
or speed) are written once, a block at a time. Each case trains a small network (2D channels 16/32/64, batch 8,
60 steps; 3D 16/32/32, batch 2, 15 steps) in a fresh process; `stream` cases set train.memory_gb to the step's
planned need plus 10 MB, so the set cannot be held and is read from the store. Peak memory is the largest sum of
PSS over the process and its children (the DataLoader's workers, where there are any); speed is the steady seconds
per step (the first step excluded). Identical 2D runs differ by several percent, as much as held and read differ, so
the 2D 1x pair runs REPEATS times, held and read in turn (`<case>#<k>`), and the comparison takes their medians.
Each case's figures are kept in `<work>/cases/<case>.json` (a re-run resumes). Writes
benchmarks/results/<date>-<machine>-train-scale.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ingest_scale import watched  # noqa: E402
from results_table import keep_case, save_results  # noqa: E402

# small networks of three levels: MONAI's mid block attends at the deepest, 32^2 or 16^3 tokens here
SETS = {"2d": ((1, 128, 128), 1000, {"channels": (16, 32, 64), "attention_levels": (False, False, False)}, 8),
        "3d": ((1, 64, 64, 64), 100, {"channels": (16, 32, 32), "attention_levels": (False, False, False)}, 2)}
STEPS = {"2d": 60, "3d": 15}  # a 2D step is short: 15 of them varied +-20% between identical runs
REPEATS = 3  # runs of the 2D 1x pair (held, then read from the store), in turn


def store(work: Path, dims: str, scale: int) -> Path:
    """A store of `scale` x the set's size of random images, all in the train split."""
    from motfm_core.data.store import Blocks, write_dataset

    shape, base, _, _ = SETS[dims]
    path = work / "stores" / f"{dims}-x{scale}.zarr"
    if (path / "zarr.json").exists():
        return path
    n, step = base * scale, 250 if dims == "2d" else 25

    def blocks():
        rng = np.random.default_rng(0)
        for i in range(0, n, step):
            yield rng.random((min(step, n - i), *shape), dtype=np.float32), None

    write_dataset(path, Blocks((n, *shape), None, blocks), np.arange(n) % 2, np.zeros(n, np.uint8),
                  np.arange(n, dtype=np.int32), {"source": "random", "class_names": ["a", "b"]})
    return path


def child(data: str, dims: str, how: str, out: str) -> None:
    """The child: train and print the checkpoint's figures."""
    import torch

    from motfm_core.config import ModelConfig, TrainConfig
    from motfm_core.model.memory import plan_training
    from motfm_core.model.training import train_flow_matching

    shape, _, net, batch = SETS[dims]
    model = ModelConfig(image_size=shape[1], spatial_dims=len(shape) - 1, depth=shape[-1], num_classes=2,
                        gradient_checkpointing="off", norm_num_groups=8, num_head_channels=32, num_res_blocks=1, **net)
    cfg = TrainConfig(steps=STEPS[dims], batch_size=batch, warmup_steps=2, checkpoint_every=STEPS[dims])
    if how == "stream":
        cfg = TrainConfig(**{**cfg.__dict__, "memory_gb": plan_training(model, cfg, "cpu").step_gb + 0.01})
    said: list[str] = []
    final = train_flow_matching(data, model, cfg, out, device="cpu", progress=said.append)
    last = [s for s in said if "s/step" in s][-1]
    print(json.dumps({"s_per_step": float(last.split(" s/step")[0].split(", ")[-1]),
                      "streamed": any("a batch at a time" in s for s in said),
                      "train_seconds": torch.load(final, weights_only=True)["train_seconds"]}))


def case(work: Path, name: str) -> dict:
    kept = work / "cases" / f"{name}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    dims, scale, how = name.split("#")[0].split("-")
    data = store(work, dims, int(scale[1:]))
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "runs" / name, ignore_errors=True)  # a finished run would be reused, not timed
    got = watched([sys.executable, __file__, "--child", str(data), dims, how, str(work / "runs" / name)], log)
    got.update(json.loads(log.read_text().strip().splitlines()[-1]))
    got.update({"case": name, "set_gb": sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 1e9})
    return keep_case(kept, got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "train-scale")
    parser.add_argument("--child", nargs=4, metavar=("DATA", "DIMS", "HOW", "OUT"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    names = [f"{d}-{s}-{h}" for d in SETS for s, h in (("x1", "held"), ("x1", "stream"), ("x16", "stream"))]
    names += [f"2d-x1-{h}#{k}" for k in range(2, REPEATS + 1) for h in ("held", "stream")]
    results = [case(args.work, n) for n in names]
    out = save_results("train-scale", results)
    print(out)
    held, read = ([r["s_per_step"] for r in results if r["case"].split("#")[0] == f"2d-x1-{h}"]
                  for h in ("held", "stream"))
    print(f"2D 1x, median of {len(held)}: held {np.median(held):.3f} s/step {held}, read from the store "
          f"{np.median(read):.3f} {read}: {np.median(read) / np.median(held) - 1:+.1%}")


if __name__ == "__main__":
    main()
