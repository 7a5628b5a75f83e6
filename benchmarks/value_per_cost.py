"""Downstream value per second of sampling, judged by paired statistics (issue #35 item 2).

    .venv/bin/python benchmarks/value_per_cost.py              # the bench budget, 10 seeds (~46 min on 2 CPU cores)
    .venv/bin/python benchmarks/value_per_cost.py --quick      # a smoke test of every phase (minutes)
    .venv/bin/python benchmarks/value_per_cost.py --retime     # measure the seconds per image again (run it alone)

At the budget where a gain is measurable here, the bench preset's leak-free low-data share: a flow-matching
generator and the same-backbone DDPM (epsilon prediction, the same network and recipe) are trained on one
class-stratified 25% of the bundled brains' train split and nothing else. Each is sampled into a synthetic store of
the same size by every arm:
- flow matching, Euler at NFE 1, 2, 4, 10, 30;
- flow matching, MONAI's `RFlowScheduler` at its default settings and 30 steps (`sample.solver=rflow`), the
  sampler of MONAI's and MAISI's rectified-flow models, on the same weights: the reference arm;
- the DDPM, DDIM at 10 and 50 steps (trailing spacing) and the full 1,000-step DDPM chain (`--ddpm-steps`).
Per arm: seconds per image (a fixed batch drawn alone, after a warm-up; the store's own sampling time, copy guard
included, is recorded beside it), FID and fine SWD of its store against the real test split, and the downstream
accuracy and Dice gains of `real 25% + synthetic` over `real 25%` (the same real images, the same seeds) with the
two-level paired bootstrap (seeds x test subjects, `motfm_core.evaluation.statistics`), and each arm's paired
difference to the reference arm with its equivalence verdict (two one-sided tests at `eval.equivalence_margin`).

Every phase resumes: the generators from their checkpoints, the stores shard by shard, the downstream models per
(arm, seed) from their saved outputs (keyed by the stores and eval settings), the timings from
timing-<checkpoints' key>.json (`--retime` measures them again: run that when
nothing else runs, the seconds are only as clean as the machine is idle). Writes
benchmarks/results/<date>-<machine>-value-per-cost.{json,png} and the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fm_vs_diffusion import machine_name, swd_fields
from results_table import add_row

from flows.presets import PRESETS
from flows.synth_and_eval import build_config
from motfm_core.config import DataConfig, PipelineConfig
from motfm_core.config.choices import Solver
from motfm_core.data import ingest
from motfm_core.data.store import load_splits, open_store
from motfm_core.data.synthetic import completed_shards, load_synthetic, sampling_seconds
from motfm_core.evaluation.downstream import Arm, low_data_stores, train_arm
from motfm_core.evaluation.quality import FeatureExtractor, fid
from motfm_core.evaluation.statistics import compare_arms, paired_interval
from motfm_core.files import file_sha256, write_json_atomic
from motfm_core.model.sampling import Sampler, prepare_version, sample_shard
from motfm_core.model.training import train_flow_matching
from motfm_core.typed import config_hash

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Way:
    """One way of sampling: a generator (`flow` or `ddpm`), its solver and its number of steps."""

    name: str
    family: str
    solver: str
    nfe: int

    @property
    def slug(self) -> str:
        return self.name.lower().replace(" ", "-")


REFERENCE = "MONAI RFlow 30"


def ways(ddpm_steps: int) -> list[Way]:
    out = [Way(f"Euler {n}", "flow", "euler", n) for n in (1, 2, 4, 10, 30)]
    out += [Way(REFERENCE, "flow", "rflow", 30), Way("DDIM 10", "ddpm", "ddim", 10), Way("DDIM 50", "ddpm", "ddim", 50)]
    if ddpm_steps:  # the DDPM's own chain: all 1000 steps (`ddpm`), or a DDIM chain as long as the budget allows
        full = ddpm_steps == 1000
        out.append(Way(f"{'DDPM' if full else 'DDIM'} {ddpm_steps}", "ddpm", "ddpm" if full else "ddim", ddpm_steps))
    return out


def bench_config(args: argparse.Namespace) -> PipelineConfig:
    """The bench preset (what `--preset bench` runs), with this benchmark's seeds; --quick shrinks every budget."""
    overrides: dict[str, dict[str, Any]] = {s: dict(v) for s, v in PRESETS["bench"].items()}
    overrides["eval"].update(seeds=list(range(args.seeds)))
    if args.quick:
        overrides["data"] = {"image_size": 32}
        overrides["train"].update(steps=30, warmup_steps=5, checkpoint_every=10)
        overrides["eval"].update(steps=20, seg_steps=10)
    return build_config(dataset=args.dataset, overrides=overrides)


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def train_generators(cfg: PipelineConfig, data: Path, work: Path, fraction: float) -> dict[str, Path]:
    """Flow matching and the DDPM, both on the same real share only (leak-free), the same network and recipe."""
    train = replace(cfg.train, real_fraction=fraction, subset_seed=cfg.eval.subset_seed)
    return {"flow": train_flow_matching(data, cfg.model, train, work / "flow", progress=say),
            "ddpm": train_flow_matching(data, replace(cfg.model, prediction="epsilon"), train, work / "ddpm",
                                        progress=say)}


def sample_config(cfg: PipelineConfig, way: Way, per_class: int):
    """The run's sample settings at this way's solver and steps; shards of 64 images, so the network sees batches
    of 64 (the default layout's at least 8 shards would cut this small store into batches of 15, and the 1,000-step
    chain costs 1,000 passes a batch)."""
    return replace(cfg.sample, solver=cast(Solver, way.solver), nfe=way.nfe, samples_per_class=per_class,
                   shard_size=64)


def sample_stores(cfg: PipelineConfig, ckpts: dict[str, Path], work: Path, per_class: int,
                  todo: list[Way]) -> dict[str, dict[str, Any]]:
    """Each way's synthetic store (resumed shard by shard) and its sampling seconds per image as the store records
    them (the copy guard's redraws included)."""
    out = {}
    for way in todo:
        sc = sample_config(cfg, way, per_class)
        store, shards = prepare_version(ckpts[way.family], sc, work / "arms" / way.slug / "synthetic")
        t0 = time.time()
        for i in shards:
            sample_shard(ckpts[way.family], store, i, sc)
        say(f"sample: {way.name}: {store} ({len(shards)} shard(s) written in {time.time() - t0:.0f} s)")
        out[way.name] = {"store": str(store), "store_seconds_per_image": sampling_seconds(store)[0],
                         "redrawn": int(sum(r.get("rejected", 0) for r in completed_shards(store).values()))}
    return out


def time_ways(cfg: PipelineConfig, ckpts: dict[str, Path], todo: list[Way], images: int, repeats: int,
              path: Path, retime: bool) -> dict[str, dict[str, Any]]:
    """Seconds per image of each way: `images` drawn in one batch (conditioning masks included, no copy guard), the
    median of `repeats` draws after a warm-up draw of the same batch with one step of the same network (the CPU's
    kernels are prepared per shape: a first draw at a new batch size measured several times slower); NFE >= 500
    is drawn once (minutes a draw)."""
    done = {} if retime or not path.exists() else json.loads(path.read_text())
    for way in todo:
        if way.name in done:
            continue
        sc = replace(sample_config(cfg, way, images), batch_size=images)
        sampler = Sampler(ckpts[way.family], sc)
        positions = np.arange(images)
        warm = Sampler(ckpts[way.family], replace(sc, solver="ddim" if way.family == "ddpm" else "euler", nfe=1))
        warm.draw(positions, warm.seeds[positions])
        runs = []
        for _ in range(1 if way.nfe >= 500 else repeats):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            sampler.draw(positions, sampler.seeds[positions])
            runs.append({"seconds": time.perf_counter() - t0, "load_before": load})
        per = float(np.median([r["seconds"] for r in runs])) / images
        done[way.name] = {"seconds_per_image": per, "images": images, "runs": runs,
                          "threads": torch.get_num_threads(), "device": str(sampler.device)}
        say(f"time: {way.name}: {per * 1e3:.1f} ms per image ({images} images, {len(runs)} draw(s), load before "
            f"{runs[0]['load_before']:.2f})")
        write_json_atomic(path, done)
    return done


BASE = "real {:.0%}"


def downstream(cfg: PipelineConfig, data: Path, stores: dict[str, str], fraction: float, work: Path
               ) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]], dict[str, Any]]:
    """Per arm, per seed: the classifier's test probabilities and the segmenter's per-image Dice, each (arm, seed)
    saved as it finishes (a rerun trains only the missing ones)."""
    real = load_splits(data)
    train, test = real["train"], real["test"]
    base = BASE.format(fraction)
    arms: list[tuple[Arm, str | None]] = [(Arm(base, fraction, 0.0, None), None)]
    for name, path in stores.items():
        low_data_stores({fraction: path}, train["labels"], cfg.eval)  # refuses a store not trained on this share
        arms.append((Arm(f"{base}+{name}", fraction, cfg.eval.synthetic_ratio, base, generator=fraction), path))
    k = int(max(train["labels"].max(), test["labels"].max()) + 1)
    mask_classes = int(max(train["masks"].max(), test["masks"].max())) + 1
    probas: dict[str, list[np.ndarray]] = {}
    dice: dict[str, list[np.ndarray]] = {}
    sizes = {}
    # keyed by what the models depend on: another dataset, generator or eval setting never reuses these outputs
    cache = work / "downstream" / config_hash(cfg.eval, *(open_store(p).attrs["run_key"] for p in stores.values()))
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for arm, where in arms:
        src = load_synthetic(where) if where else {"images": train["images"][:0], "labels": train["labels"][:0],
                                                  "masks": train["masks"][:0]}
        for seed in cfg.eval.seeds:
            file = cache / f"{arm.name.replace(' ', '_').replace('%', 'pc').replace('+', '_')}-{seed}.npz"
            if not file.exists():
                proba, scores, used = train_arm(arm, src, train, test, seed, k, mask_classes, cfg.eval,
                                                torch.device("cpu"))
                assert scores is not None
                tmp = file.with_suffix(".tmp.npz")
                np.savez(tmp, proba=proba, dice=scores["dice"], real=used["real"], synthetic=used["synthetic"])
                os.replace(tmp, file)
                say(f"downstream: {arm.name} seed {seed}: accuracy "
                    f"{(proba.argmax(1) == test['labels']).mean():.3f}, Dice {np.nanmean(scores['dice']):.3f} "
                    f"({time.time() - t0:.0f} s)")
            saved = np.load(file)
            probas.setdefault(arm.name, []).append(saved["proba"])
            dice.setdefault(arm.name, []).append(saved["dice"])
            sizes[arm.name] = {"real": int(saved["real"]), "synthetic": int(saved["synthetic"])}
    return probas, dice, {"sizes": sizes, "test": test}


def quality(cfg: PipelineConfig, data: Path, stores: dict[str, str]) -> dict[str, dict[str, float]]:
    """FID (in-domain features, trained here) and fine SWD of each store against the real test split; the real
    train split's own against test is the baseline."""
    real = load_splits(data)
    extractor = FeatureExtractor.train(data, cfg.eval)
    test_images = real["test"]["images"]
    test_features = extractor(test_images)
    out = {"real train (baseline)": {"fid": fid(test_features, extractor(real["train"]["images"])),
                                     **swd_fields(test_images, real["train"]["images"])}}
    for name, path in stores.items():
        images = load_synthetic(path)["images"]
        out[name] = {"fid": fid(test_features, extractor(images)), **swd_fields(test_images, images)}
        say(f"quality: {name}: FID {out[name]['fid']:.3f}, fine SWD {out[name]['swd_fine']:.0f}")
    return out


def interval(r: dict[str, Any]) -> dict[str, float]:
    return {k: float(r[k]) for k in ("mean", "ci95_low", "ci95_high", "ci90_low", "ci90_high")}


def statistics(probas, dice, test, todo: list[Way], base: str, margin: float) -> dict[str, dict[str, Any]]:
    """Per arm: its accuracy and Dice gains over the real share alone, and its paired difference to the reference
    arm with the equivalence verdict; `margin_shown`: the smallest margin its 90% interval would show equivalence
    at (for reading a verdict of 'inconclusive')."""
    y, groups = test["labels"], test["group"]
    ref = f"{base}+{REFERENCE}"
    out = {}
    for way in todo:
        arm = f"{base}+{way.name}"
        row: dict[str, Any] = {
            "accuracy_gain": interval(paired_interval(probas[base], probas[arm], groups, "accuracy", y)),
            "dice_gain": interval(paired_interval(dice[base], dice[arm], groups, "dice"))}
        if arm != ref:
            for metric, scores in (("accuracy", probas), ("dice", dice)):
                c = compare_arms(arm, ref, metric, scores, groups, margin, y if metric == "accuracy" else None)
                row[f"{metric}_vs_reference"] = {
                    **c.to_json(), "different": c.different, "equivalent": c.equivalent, "says": c.says(),
                    "margin_shown": max(abs(c.ci90_low), abs(c.ci90_high))}
        out[way.name] = row
    return out


def cheapest_equivalent(rows: dict[str, dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any] | None:
    """The cheapest arm whose accuracy and Dice differences to the reference are both equivalent, and its speed-up."""
    ok = [n for n, r in rows.items() if n != REFERENCE and r["accuracy_vs_reference"]["equivalent"]
          and r["dice_vs_reference"]["equivalent"]]
    if not ok:
        return None
    best = min(ok, key=lambda n: seconds[n])
    return {"arm": best, "speedup_vs_reference": seconds[REFERENCE] / seconds[best]}


def figure(rows, seconds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "accuracy_gain", "accuracy gain"), (axes[1], "dice_gain", "Dice gain")):
        for name, r in rows.items():
            g = r[key]
            colour = "tab:red" if name.startswith(("DDIM", "DDPM")) else "tab:green" if name == REFERENCE \
                else "tab:blue"
            ax.errorbar(seconds[name], g["mean"], yerr=[[g["mean"] - g["ci95_low"]], [g["ci95_high"] - g["mean"]]],
                        fmt="o", color=colour, capsize=3)
            below = name == REFERENCE  # it sits on Euler 30: its label goes under the point
            ax.annotate(name, (seconds[name], g["mean"]), textcoords="offset points", xytext=(4, -10 if below else 4),
                        fontsize=7)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("sampling seconds per image (log)")
        ax.set_ylabel(f"{label} over the real share alone (95% CI)")
    axes[0].set_title("blue: flow matching, Euler; green: MONAI RFlow 30; red: DDPM", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SECTION = "Value per second of sampling (`benchmarks/value_per_cost.py`, issue #35 item 2)"
COLUMNS = ["date", "machine", "arm", "NFE", "ms / image (alone)", "ms / image (store, guard incl.)", "FID",
           "fine SWD", "accuracy gain (95% CI)", "Dice gain (95% CI)", "accuracy minus the reference (90% CI)",
           "Dice minus the reference (90% CI)", "json"]


def cell(g: dict[str, float], ci: str = "ci95") -> str:
    return f"{g['mean']:+.3f} ({g[ci + '_low']:+.3f}..{g[ci + '_high']:+.3f})"


def verdict(c: dict[str, Any] | None) -> str:
    if c is None:
        return "the reference"
    if c["different"]:
        return f"{cell(c, 'ci90')}: different (95% CI excludes 0)"
    what = "equivalent" if c["equivalent"] else "inconclusive"
    return f"{cell(c, 'ci90')}: {what} at +-{c['margin']:g} (equivalent at +-{c['margin_shown']:.3f})"


def write_table(result: dict[str, Any], json_name: str) -> None:
    """One RESULTS.md row per arm."""
    for name, a in result["arms"].items():
        q = result["quality"][name]
        add_row(SECTION, COLUMNS, [
            result["date"], result["machine"], name, str(a["nfe"]), f"{a['seconds_per_image'] * 1e3:.1f}",
            f"{a['store_seconds_per_image'] * 1e3:.1f}", f"{q['fid']:.3f}", f"{q['swd_fine']:.0f}",
            cell(a["accuracy_gain"]), cell(a["dice_gain"]), verdict(a.get("accuracy_vs_reference")),
            verdict(a.get("dice_vs_reference")), f"[{json_name}](results/{json_name})"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "outputs" / "value-per-cost"))
    p.add_argument("--dataset", default=DataConfig.source,
                   help="the data source, as the flow's --dataset takes it (a folder of your own: its test split's "
                        "subjects decide how narrow the intervals can be)")
    p.add_argument("--fraction", type=float, default=0.25, help="the real share the generators train on")
    p.add_argument("--seeds", type=int, default=10, help="downstream seeds (0 .. n-1)")
    p.add_argument("--ddpm-steps", type=int, default=1000, help="the DDPM chain's steps (0: leave it out)")
    p.add_argument("--time-images", type=int, default=32, help="images per timed draw")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--phase", choices=["train", "sample", "time", "all"], default="all",
                   help="stop after this phase (each resumes when run again)")
    p.add_argument("--retime", action="store_true", help="measure the seconds per image again")
    p.add_argument("--quick", action="store_true", help="smoke test: 32 px, 30 training steps, 2 seeds")
    p.add_argument("--figure-from", metavar="JSON", help="only draw the figure of a result JSON again (beside it)")
    args = p.parse_args()
    if args.figure_from:
        result = json.loads(Path(args.figure_from).read_text())
        figure(result["arms"], {n: a["seconds_per_image"] for n, a in result["arms"].items()},
               Path(args.figure_from).with_suffix(".png"))
        return
    if args.quick:
        args.seeds, args.time_images, args.repeats = min(args.seeds, 2), 4, 1
        args.ddpm_steps = min(args.ddpm_steps, 100)
        args.work = args.work + "-quick"
    cfg = bench_config(args)
    work = Path(args.work)
    todo = ways(args.ddpm_steps)
    t0 = time.time()
    data = ingest(cfg.data, work / "dataset.zarr", progress=say)
    ckpts = train_generators(cfg, data, work, args.fraction)
    if args.phase == "train":
        return
    real = load_splits(data)
    classes = int(real["train"]["labels"].max()) + 1
    # the low-data arm adds synthetic_ratio x the full train split's count of synthetic images (`plan_arms`)
    per_class = math.ceil(cfg.eval.synthetic_ratio * len(real["train"]["labels"]) / classes)
    stores = sample_stores(cfg, ckpts, work, per_class, todo)
    if args.phase == "sample":
        return
    timed = work / f"timing-{config_hash(*(file_sha256(c) for c in ckpts.values()), args.time_images)}.json"
    timing = time_ways(cfg, ckpts, todo, args.time_images, args.repeats, timed, args.retime)
    if args.phase == "time":
        return
    seconds = {n: t["seconds_per_image"] for n, t in timing.items()}
    probas, dice, extra = downstream(cfg, data, {n: s["store"] for n, s in stores.items()}, args.fraction, work)
    base = BASE.format(args.fraction)
    rows = statistics(probas, dice, extra["test"], todo, base, cfg.eval.equivalence_margin)
    scores = quality(cfg, data, {n: s["store"] for n, s in stores.items()})
    machine = machine_name(torch.device("cpu"))
    date = dt.date.today().isoformat()
    stem = f"{date}-{machine}-value-per-cost"
    result = {
        "date": date, "machine": machine, "command": " ".join(["benchmarks/value_per_cost.py", *sys.argv[1:]]),
        "args": vars(args), "reference": REFERENCE, "baseline_arm": base,
        "equivalence_margin": cfg.eval.equivalence_margin, "seeds": list(cfg.eval.seeds),
        "test": {"images": int(len(extra["test"]["labels"])),
                 "subjects": int(len(np.unique(extra["test"]["group"])))},
        "train_steps": cfg.train.steps, "sizes": extra["sizes"], "quality": scores,
        "arms": {w.name: {"family": w.family, "solver": w.solver, "nfe": w.nfe, **timing[w.name], **stores[w.name],
                          **rows[w.name]} for w in todo},
        "cheapest_equivalent": cheapest_equivalent(rows, seconds), "wall_seconds": time.time() - t0}
    where = work if args.quick else RESULTS  # a smoke test's numbers are not results
    where.mkdir(parents=True, exist_ok=True)
    write_json_atomic(where / f"{stem}.json", result)
    figure(rows, seconds, where / f"{stem}.png")
    if not args.quick:
        write_table(result, f"{stem}.json")
    say(f"wrote {where / stem}.json and .png")


if __name__ == "__main__":
    main()
