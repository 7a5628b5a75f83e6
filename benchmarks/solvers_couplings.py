"""Every solver and coupling on the bundled data: NFE, time per image, quality, trajectory straightness.

    .venv/bin/python benchmarks/solvers_couplings.py     # after benchmarks/fm_vs_diffusion.py (reuses its models)

Reuses the flow-matching checkpoints that fm_vs_diffusion.py trained (independent, minibatch OT) and trains
the Sinkhorn-coupling model with the same recipe; samples each with euler/midpoint/heun/rk4 at NFE 4 and 20
(steps = NFE / evaluations per step) and dopri5; reports FID, fine SWD, ms/image and the rectified-flow
straightness of its trajectories. Writes benchmarks/results/<date>-<machine>-solvers.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fm_vs_diffusion import ROOT, machine_name, swd_fields
from results_table import add_row

from motfm_core.config import EvalConfig, SampleConfig, TrainConfig
from motfm_core.data import load_split
from motfm_core.device import default_device
from motfm_core.evaluation.metrics import straightness
from motfm_core.evaluation.quality import FeatureExtractor, fid
from motfm_core.model.nets import guided_velocity
from motfm_core.model.sampling import generate, initial_noise, sample_plan
from motfm_core.model.training import load_checkpoint, train_flow_matching

PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "outputs" / "benchmark"))
    p.add_argument("--samples-per-class", type=int, default=32)
    a = p.parse_args()
    device = default_device()
    work = Path(a.work)
    data = work / "dataset.zarr"
    if not (work / "fm-independent" / "model.pt").exists():
        raise SystemExit(f"{work}: run benchmarks/fm_vs_diffusion.py first (it trains the models reused here)")
    base_model, _ = load_checkpoint(work / "fm-independent" / "model.pt")
    saved = torch.load(work / "fm-independent" / "model.pt", weights_only=True)["train_config"]
    base_train = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    train_flow_matching(data, base_model.cfg, dataclasses.replace(base_train, coupling="sinkhorn"),
                        work / "fm-sinkhorn", device=device, progress=lambda m: print(f"[fm-sinkhorn] {m}", flush=True))
    extractor = FeatureExtractor.train(data, EvalConfig(steps=300), device=device)
    test = load_split(data, "test")["images"]
    test_feats = extractor(test)
    rows = []
    for name in ("fm-independent", "fm-ot", "fm-sinkhorn"):
        model, _ = load_checkpoint(work / name / "model.pt", device)
        cfg0 = SampleConfig(samples_per_class=a.samples_per_class, seed=7)
        labels, seeds = sample_plan(3, cfg0)
        x0 = initial_noise(seeds, (1, model.cfg.image_size, model.cfg.image_size)).to(device)
        s = straightness(guided_velocity(model, torch.as_tensor(labels, device=device)), x0, steps=50)
        for solver, nfe in [(m, n) for n in (4, 20) for m in PER_STEP] + [("dopri5", 0)]:
            steps = max(1, nfe // PER_STEP.get(solver, 1))
            cfg = dataclasses.replace(cfg0, solver=solver, nfe=steps, batch_size=96)
            t0 = time.perf_counter()
            images, spent = generate(model, labels, seeds, cfg, device)
            sec = (time.perf_counter() - t0) / len(labels)
            row = {"model": name, "solver": solver, "nfe": spent, "seconds_per_image": sec,
                   "fid": fid(test_feats, extractor(images)), **swd_fields(test, images), "straightness": s}
            rows.append(row)
            print(f"[{name}] {solver:>8} NFE {spent:4d}: FID {row['fid']:.3f} fine SWD {row['swd_fine']:.0f} "
                  f"{sec * 1e3:.1f} ms/img; straightness {s:.4f}", flush=True)
    out = ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{machine_name(device)}-solvers.json"
    result = {"command": "benchmarks/solvers_couplings.py " + " ".join(sys.argv[1:]), "machine": machine_name(device),
              "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    record(result, out)
    print(f"wrote {out}")


def record(result: dict, out: Path) -> None:
    """One RESULTS.md row per coupling: straightness and every solver's NFE / FID / fine SWD / ms per image."""
    for name in dict.fromkeys(r["model"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["model"] == name]
        cells = "; ".join(f"{r['solver']} {r['nfe']}: {r['fid']:.2f} / {r['swd_fine']:.0f} / "
                          f"{r['seconds_per_image'] * 1e3:.0f}" for r in rows)
        add_row("Solvers and couplings (`benchmarks/solvers_couplings.py`)",
                ["date", "machine", "model", "straightness", "solver NFE: FID / fine SWD / ms per image", "file"],
                [out.name[:10], result["machine"], name, f"{rows[0]['straightness']:.4f}", cells,
                 f"[{out.name}](results/{out.name})"])


if __name__ == "__main__":
    main()
