"""Flow matching vs diffusion on the same UNet, data, optimizer steps, batch and seed: quality vs NFE.

    .venv/bin/python benchmarks/fm_vs_diffusion.py            # full CPU run (bundled brain MRI, 48 px)
    .venv/bin/python benchmarks/fm_vs_diffusion.py --quick    # a few minutes (32 px, short training)

Trains flow matching with independent and minibatch-OT coupling and a DDPM (epsilon) model; samples each
with the same per-sample noise seeds at NFE in {1, 2, 4, 10, 20, 50} (Euler and Heun for the flow models,
plus adaptive dopri5; DDIM for the diffusion model, and DDPM with all 1000 steps); scores every setting with
in-domain FID/KID/precision/recall against the real test split (beside the real train-vs-test baseline),
wall time per image and memory. Writes benchmarks/results/<date>-<machine>.{json,png} and appends a row to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import add_row

from motfm_core.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from motfm_core.data import ingest, load_split
from motfm_core.evaluation.quality import FeatureExtractor, fid, kid, precision_recall, swd
from motfm_core.model.sampling import generate, sample_plan
from motfm_core.model.training import load_checkpoint, train_flow_matching

NFES = (1, 2, 4, 10, 20, 50)
SECTION = "Flow matching vs diffusion (`benchmarks/fm_vs_diffusion.py`)"


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu{torch.get_num_threads()}-{platform.machine()}"


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark (Linux: KiB)


def swd_fields(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """Patch SWD: the finest Laplacian level (detail; what the targets use) and the mean over levels."""
    s = swd(real, fake)
    return {"swd_fine": s["level0"], "swd": s["mean"]}


def settings(kind: str) -> list[tuple[str, int]]:
    """(solver, solver steps) pairs whose NFE lies in NFES, plus the adaptive / full-chain ones."""
    if kind == "ddpm":
        return [("ddim", n) for n in NFES] + [("ddpm", 1000)]
    out = [("euler", n) for n in NFES] + [("heun", n // 2) for n in NFES if n >= 2 and n % 2 == 0]
    return out + [("dopri5", 1)]


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    work = Path(args.work)
    data = ingest(DataConfig(image_size=args.image_size), work / "dataset.zarr")
    k = 3
    base = dict(image_size=args.image_size, num_classes=k, channels=tuple(args.channels),
                attention_levels=(False,) * (len(args.channels) - 1) + (True,))
    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, warmup_steps=min(100, args.steps // 10),
                        checkpoint_every=max(1, args.steps // 5), seed=0)
    models = {
        "fm-independent": (ModelConfig(**base), train),
        "fm-ot": (ModelConfig(**base), dataclasses.replace(train, coupling="ot")),
        "ddpm": (ModelConfig(**base, prediction="epsilon"), train),
    }
    extractor = FeatureExtractor.train(data, EvalConfig(steps=300), device=device)
    real_images = {s: load_split(data, s)["images"] for s in ("train", "test")}
    real = {s: extractor(x) for s, x in real_images.items()}
    result = {"date": dt.date.today().isoformat(), "machine": machine_name(device), "device": str(device),
              "command": " ".join(["benchmarks/fm_vs_diffusion.py", *sys.argv[1:]]), "args": vars(args),
              "dataset": {"train": len(real["train"]), "test": len(real["test"]), "size": args.image_size},
              "baseline_train_vs_test": {"fid": fid(real["test"], real["train"]),
                                         "kid": kid(real["test"], real["train"]),
                                         **precision_recall(real["test"], real["train"]),
                                         **swd_fields(real_images["test"], real_images["train"])},
              "models": {}, "rows": []}
    grids: dict[str, np.ndarray] = {}
    for name, (mcfg, tcfg) in models.items():
        ckpt = train_flow_matching(data, mcfg, tcfg, work / name, device=device,
                                   progress=lambda m, n=name: print(f"[{n}] {m}", flush=True))
        model, meta = load_checkpoint(ckpt, device)
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")
        result["models"][name] = {"train_seconds": saved.get("train_seconds"), "steps": saved["step"],
                                  "final_loss": float(np.mean(saved["losses"][-50:]))}
        for solver, steps in settings("ddpm" if name == "ddpm" else "fm"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            cfg = SampleConfig(samples_per_class=args.samples_per_class, solver=solver, nfe=steps,
                               batch_size=args.sample_batch, seed=7)
            labels, seeds = sample_plan(k, cfg)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            images, nfe = generate(model, labels, seeds, cfg, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            feats = extractor(images)
            row = {"model": name, "solver": solver, "nfe": nfe, "seconds_per_image": seconds / len(labels),
                   "fid": fid(real["test"], feats), "kid": kid(real["test"], feats),
                   **precision_recall(real["test"], feats), **swd_fields(real_images["test"], images),
                   "memory_mb": memory_mb(device)}
            result["rows"].append(row)
            if (solver, nfe) in (("euler", 1), ("euler", 10), ("euler", 50), ("dopri5", nfe), ("ddim", 10),
                                 ("ddim", 50), ("ddpm", 1000)):
                grids[f"{name} {solver} NFE {nfe}"] = images[:8]  # labels interleave: every class appears
            print(f"[{name}] {solver:>6} NFE {nfe:4d}: FID {row['fid']:.3f} KID {row['kid']:.4f} "
                  f"SWD fine {row['swd_fine']:.0f} mean {row['swd']:.0f} "
                  f"P {row['precision']:.2f} R {row['recall']:.2f} {row['seconds_per_image'] * 1e3:.1f} ms/img",
                  flush=True)
    result["targets"] = targets(result["rows"])
    result["_grids"] = grids
    return result


def targets(rows: list[dict]) -> dict:
    """The issue's three claims, each judged on FID (semantic features) and on fine-level SWD (detail)."""
    def get(model, solver, nfe):
        return next((r for r in rows if r["model"] == model and r["solver"] == solver and r["nfe"] == nfe), None)

    ddpm, ddim50 = get("ddpm", "ddpm", 1000), get("ddpm", "ddim", 50)
    out = {}
    for metric in ("fid", "swd_fine"):
        for m in ("fm-independent", "fm-ot"):
            r10 = get(m, "euler", 10)
            out[f"{m} euler-10 {metric} <= DDPM-1000"] = {"holds": r10[metric] <= ddpm[metric], "fm": r10[metric],
                                                          "ddpm1000": ddpm[metric]}
            best12 = min(r[metric] for r in rows if r["model"] == m and r["nfe"] <= 2)
            out[f"{m} best 1-2 NFE {metric} <= DDIM-50"] = {"holds": best12 <= ddim50[metric], "fm": best12,
                                                            "ddim50": ddim50[metric]}
            ok = [r["nfe"] for r in rows if r["model"] == m and r[metric] <= ddpm[metric]]
            out[f"{m} >= 20x fewer NFE than DDPM-1000 at equal {metric}"] = {
                "holds": bool(ok) and 1000 / min(ok) >= 20, "min_nfe_matching_ddpm": min(ok) if ok else None}
    return out


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    keys = dict.fromkeys((r["model"], r["solver"]) for r in result["rows"])
    panels = ((axes[0], "fid", "in-domain FID"), (axes[1], "swd_fine", "fine-level patch SWD x1e3"))
    for row_axes, metric, label in panels:
        for model, solver in keys:
            rs = sorted((r for r in result["rows"] if r["model"] == model and r["solver"] == solver),
                        key=lambda r: r["nfe"])
            style = "o-" if len(rs) > 1 else "*"
            for ax, x in zip(row_axes, ("nfe", "seconds_per_image")):
                ax.plot([r[x] for r in rs], [r[metric] for r in rs], style, label=f"{model} {solver}", ms=8)
        for ax, xl in zip(row_axes, ("network evaluations (NFE)", "seconds per image")):
            ax.axhline(result["baseline_train_vs_test"][metric], color="grey", ls="--", label="real train vs test")
            ax.set_xscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel(f"{label} vs real test (lower is better)")
    axes[0][1].legend(fontsize=7)
    fig.suptitle(f"{result['machine']}, {result['date']}: flow matching vs DDPM/DDIM, same UNet and budget")
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def sample_grid(grids: dict[str, np.ndarray], png: Path) -> None:
    """One row of samples per setting (same noise seeds in every row), to look at, not only to score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(grids), 8, figsize=(8 * 1.1, len(grids) * 1.25), squeeze=False)
    for r, (title, imgs) in enumerate(grids.items()):
        for c in range(8):
            axes[r, c].axis("off")
            if c < len(imgs):
                axes[r, c].imshow(imgs[c, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(png, dpi=70)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32 px, 300 steps, 16 samples per class")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    p.add_argument("--samples-per-class", type=int, default=32)
    p.add_argument("--sample-batch", type=int, default=96)
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is present")
    p.add_argument("--work", default=str(ROOT / "outputs" / "benchmark"))
    args = p.parse_args()
    if args.quick:
        args.image_size, args.steps, args.samples_per_class = 32, 300, 16
        args.work = args.work + "-quick"
    result = run(args)
    grids = result.pop("_grids")
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date']}-{result['machine']}{'-quick' if args.quick else ''}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float))
    plot(result, out_dir / f"{stem}.png")
    sample_grid(grids, out_dir / f"{stem}-samples.png")
    held = ", ".join(f"{k}: {'holds' if v['holds'] else 'does not hold'}" for k, v in result["targets"].items())
    best = {m: min((r for r in result["rows"] if r["model"] == m), key=lambda r: r["swd_fine"])
            for m in result["models"]}
    summary = "; ".join(f"{m} best fine SWD {r['swd_fine']:.0f} (FID {r['fid']:.2f}; {r['solver']}, NFE {r['nfe']}, "
                        f"{r['seconds_per_image'] * 1e3:.0f} ms/img)" for m, r in best.items())
    base = result["baseline_train_vs_test"]
    add_row(SECTION, ["date", "machine", "command", "figures", "targets", "file"],
            [result["date"], result["machine"], f"`{result['command']}`",
             f"{summary}; real train-vs-test fine SWD {base['swd_fine']:.0f}, FID {base['fid']:.2f}", held,
             f"[{stem}.json](results/{stem}.json)"])
    print(f"wrote {out_dir / stem}.json, .png, -samples.png and a row in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
