"""Evaluation in bounded memory: peak RSS and time of the evaluate stage against the number of synthetic samples.

    .venv/bin/python benchmarks/eval_memory.py            # 2D demo set: 1x, 10x, 50x the demo's 120 synthetic images
    .venv/bin/python benchmarks/eval_memory.py --3d       # and 3D stores of 0.5 and 5 GB in a 2 GB memory cgroup
    .venv/bin/python benchmarks/eval_memory.py --sizes --test-split 1 4 16 --train-split 1 4 16   # real splits

Each point runs `motfm_core.evaluation.evaluate.evaluate_run` (downstream arms, quality metrics, memorisation audit)
in a fresh child process; its peak RSS is the child's `ru_maxrss`. The synthetic stores are written directly (the
demo's sample shape and shard layout; real training images plus noise, masks copied): memory and time depend on
how many samples there are and their size, not on the network that drew them. Each 2D size runs twice: with the
default `eval.memory_mb` (an arm's synthetic images up to that size are loaded, larger ones read per batch) and
with `eval.memory_mb=0` (every synthetic image read from the store per batch).
The 3D points write stores of 64^3 volumes, the largest larger than the limit of a cgroup-v1 memory group (root),
and run the evaluation inside that group (again with both `eval.memory_mb` values): the large one completes only
if the evaluation never holds the store in memory, and the peak RSS of the sizes side by side is the 3D curve.
`--test-split` and `--train-split` scale a real split instead (issue #37): the bundled slices at 128 px, the split
grown to 512 images at 1x (32 MiB; each slice repeated with seeded noise as a new subject, so the paired
statistics still resample subjects) and to the multiples given; the other splits and the synthetic store fixed.
Each point runs with the real splits streamed from the store (`store.open_split`, what the evaluation does with a
split over `eval.memory_mb`) and held whole (`load_split`, what it did with every split), whatever their size, so
the two curves come from the same code otherwise.
Writes benchmarks/results/<date>-<machine>-eval-memory.json and appends rows to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import add_row
from sampling_throughput import machine_name

from motfm_core.config import DataConfig, EvalConfig
from motfm_core.data import create_synthetic_store, ingest, load_split, write_shard

DEMO_SYNTHETIC = 120  # the demo preset's synthetic count (40 per class, 3 classes)
CGROUP = Path("/sys/fs/cgroup/memory")


def write_store(real_path: Path, out: Path, n: int, shard_size: int, seed: int = 0) -> Path:
    """A complete synthetic store of `n` samples: real training images (cycled) plus Gaussian noise (sigma 0.05),
    their labels and masks, written shard by shard (never all in memory)."""
    train = load_split(real_path, "train")
    rng = np.random.default_rng(seed)
    shape = train["images"].shape[1:]
    create_synthetic_store(out, n, shape, shard_size, {"run_key": f"eval-memory-{n}", "solver": "written",
                                                       "nfe": 0, "guidance": 0.0},
                           with_masks="masks" in train)
    for s in range((n + shard_size - 1) // shard_size):
        idx = np.arange(s * shard_size, min(n, (s + 1) * shard_size)) % len(train["labels"])
        images = np.clip(train["images"][idx] + rng.normal(0, 0.05, (len(idx), *shape)), 0, 1)
        masks = train["masks"][idx] if "masks" in train else None
        write_shard(out, s, images, train["labels"][idx], np.arange(s * shard_size, s * shard_size + len(idx)),
                    masks=masks, mask_source=None if masks is None else idx)
    return out


def child(args: argparse.Namespace) -> None:
    """Run one evaluation and print its peak RSS and seconds as one JSON line."""
    from motfm_core.evaluation import evaluate
    from motfm_core.evaluation.evaluate import evaluate_run

    # the real splits loaded whole whatever their size (as before issue #37), or always read from the store
    forced = load_split if args.held_test else evaluate.open_split
    evaluate.real_split = lambda path, split, memory_mb, say=None: forced(path, split)

    cfg = EvalConfig(**json.loads(args.child))
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    evaluate_run(args.real, args.synthetic, cfg, args.run_dir)
    print(json.dumps({"seconds": time.perf_counter() - t0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(real: Path, synthetic: Path, cfg: EvalConfig, run_dir: Path, cgroup: Path | None = None,
              held_test: bool = False) -> dict:
    """Evaluate in a fresh process (inside `cgroup` when given); its JSON line, or the error it died of."""
    cmd = [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(cfg)), "--real", str(real),
           "--synthetic", str(synthetic), "--run-dir", str(run_dir), *(["--held-test"] if held_test else [])]
    if cgroup is not None:  # the child joins the group before it starts: every byte it maps is charged there
        cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:] or ''}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_2d(work: Path, sizes: list[int], cfg: EvalConfig) -> list[dict]:
    real = ingest(DataConfig(), work / "real.zarr")
    rows = []
    for mult in sizes:
        n = mult * DEMO_SYNTHETIC
        syn = write_store(real, work / f"syn-{n}.zarr", n, shard_size=40)
        for memory_mb in (cfg.memory_mb, 0):
            run = run_child(real, syn, dataclasses.replace(cfg, memory_mb=memory_mb), work / f"run-{n}-{memory_mb}")
            rows.append({"dims": 2, "multiple": mult, "samples": n, "store_mb": store_bytes(syn) / 2**20,
                         "memory_mb": memory_mb, **run})
            print(rows[-1], flush=True)
        shutil.rmtree(syn)
    return rows


def bench_3d(work: Path, limit_gb: float, store_gbs: list[float], cfg: EvalConfig) -> list[dict]:
    """One 3D store of 64^3 volumes per size in `store_gbs` (uncompressed GB), each evaluated with the default
    `eval.memory_mb` and with 0, inside a cgroup-v1 memory group limited to `limit_gb`."""
    if not (CGROUP / "cgroup.procs").exists() or os.geteuid() != 0:
        print("3D points skipped: need root and the cgroup-v1 memory controller at /sys/fs/cgroup/memory")
        return []
    dcfg = DataConfig(source="phantom:12", image_size=64, spatial_dims=3, depth=64)
    real = ingest(dcfg, work / "real3d.zarr")
    rows = []
    for store_gb in store_gbs:
        n = int(store_gb * 2**30 / (64**3 * 5))  # float32 image + uint8 mask per sample
        syn = write_store(real, work / f"syn3d-{n}.zarr", n, shard_size=16)
        for memory_mb in (cfg.memory_mb, 0):
            group = CGROUP / f"motfm-eval-{os.getpid()}"
            group.mkdir()
            try:
                (group / "memory.limit_in_bytes").write_text(str(int(limit_gb * 2**30)))
                (group / "memory.memsw.limit_in_bytes").exists() and (group / "memory.memsw.limit_in_bytes").write_text(
                    str(int(limit_gb * 2**30)))  # no swap either, where the kernel accounts it
                run = run_child(real, syn, dataclasses.replace(cfg, memory_mb=memory_mb),
                                work / f"run-3d-{n}-{memory_mb}", cgroup=group)
                peak = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20  # page cache included
                fails = int((group / "memory.failcnt").read_text())
            finally:
                group.rmdir()
            rows.append({"dims": 3, "samples": n, "sample_shape": [1, 64, 64, 64], "store_mb": store_bytes(syn) / 2**20,
                         "uncompressed_mb": n * 64**3 * 5 / 2**20,
                         "cgroup_limit_mb": limit_gb * 1024, "cgroup_peak_mb": peak, "cgroup_limit_hits": fails,
                         "memory_mb": memory_mb, **run})
            print(rows[-1], flush=True)
        shutil.rmtree(syn)
    return rows


SPLIT_BASE = 512  # a scaled split at 1x (--test-split, --train-split): 32 MiB of 128 px images


def scaled_split_store(base: Path, out: Path, name: str, images: int, seed: int = 0) -> Path:
    """`base` (a real store) with its split `name` replaced by `images` images: that split's slices cycled, each
    copy plus Gaussian noise (sigma 0.02) and a subject of its own; the other splits as they are. Written a block at
    a time."""
    from motfm_core.data import write_dataset
    from motfm_core.data.rows import rows_per_batch
    from motfm_core.data.store import Blocks, open_store

    root = open_store(base)
    split = root["split"][:]
    code = {"train": 0, "val": 1, "test": 2}[name]
    keep, test = np.nonzero(split != code)[0], np.nonzero(split == code)[0]
    src = np.concatenate([keep, test[np.arange(images) % len(test)]])
    copy = np.concatenate([np.zeros(len(keep), np.int64), np.arange(images) // len(test)])
    groups = root["group"][:]
    group = groups[src] + copy * (int(groups.max()) + 1)  # each copy of a subject is a subject of its own
    rng = np.random.default_rng(seed)
    step = rows_per_batch(root["images"])

    def read():
        for start in range(0, len(src), step):
            rows = src[start:start + step]
            x = root["images"].get_orthogonal_selection((rows,))
            noisy = copy[start:start + step] > 0
            x[noisy] = np.clip(x[noisy] + rng.normal(0, 0.02, x[noisy].shape), 0, 1)
            yield x, root["masks"].get_orthogonal_selection((rows,))

    standard = {"images", "masks", "labels", "split", "group"}
    extra = {k: root[k][:][src] for k in root.array_keys() if k not in standard}
    attrs = {k: v for k, v in root.attrs.items() if k not in ("fingerprint", "num_samples", "created")}
    names = list(attrs.get("group_names") or range(int(groups.max()) + 1))
    attrs["group_names"] = [f"{n}-copy{c}" if c else str(n) for c in range(int(copy.max()) + 1) for n in names]
    return write_dataset(out, Blocks((len(src), *root["images"].shape[1:]), (len(src), *root["masks"].shape[1:]),
                                     read), root["labels"][:][src], split[src], group, attrs, extra=extra)


def bench_split(work: Path, name: str, multiples: list[int], cfg: EvalConfig) -> list[dict]:
    """Peak RSS of the evaluation as the real split `name` grows (`scaled_split_store`), the real splits streamed
    and held."""
    base = work / "real128.zarr"
    if not base.exists():
        ingest(DataConfig(image_size=128), base)
    syn = work / "syn128.zarr"
    if not syn.exists():
        write_store(base, syn, 4 * DEMO_SYNTHETIC, shard_size=60)
    rows = []
    for mult in multiples:
        real = scaled_split_store(base, work / f"real-{name}{mult}.zarr", name, mult * SPLIT_BASE)
        for held in (False, True):
            run = run_child(real, syn, cfg, work / f"run-{name}{mult}-{held}", held_test=held)
            rows.append({"dims": 2, "split": name, "multiple": mult, "split_images": mult * SPLIT_BASE,
                         "split_mb": mult * SPLIT_BASE * 128 * 128 * 5 / 2**20,
                         "real_splits": "held" if held else "streamed", "store_mb": store_bytes(real) / 2**20,
                         "memory_mb": cfg.memory_mb, **run})
            print(rows[-1], flush=True)
        for p in real.parent.glob(f"{real.name}*"):  # the link and its build
            p.unlink() if p.is_symlink() else shutil.rmtree(p)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[1, 10, 50], help="multiples of the demo's 120")
    p.add_argument("--3d", dest="three_d", action="store_true", help="also the 3D stores, in a memory cgroup")
    p.add_argument("--limit-gb", type=float, default=2.0, help="3D: the memory cgroup's limit")
    p.add_argument("--store-gb", type=float, nargs="+", default=[0.5, 5.0],
                   help="3D: the synthetic stores' sizes (uncompressed GB), one point each")
    p.add_argument("--test-split", type=int, nargs="*", default=[],
                   help="multiples of a 512-image real test split at 128 px (streamed and held, each)")
    p.add_argument("--train-split", type=int, nargs="*", default=[],
                   help="multiples of a 512-image real train split at 128 px (streamed and held, each)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--real", help=argparse.SUPPRESS)
    p.add_argument("--synthetic", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--held-test", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    # the demo's downstream recipe at one seed (memory does not depend on the seed count), no NFE curve (it samples
    # fresh images, a fixed number) and no low-data arm (it needs its own generator)
    cfg = EvalConfig(seeds=(0,), ratios=(1.0,), real_fractions=(), nfe_curve=(), steps=160, seg_steps=100)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="motfm-eval-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = bench_2d(work, args.sizes, cfg) if args.sizes else []
        for name, multiples in (("test", args.test_split), ("train", args.train_split)):
            rows += bench_split(work, name, multiples, cfg) if multiples else []
        if args.three_d:
            rows += bench_3d(work, args.limit_gb, args.store_gb,
                             dataclasses.replace(cfg, steps=20, seg_steps=10, channels=(8, 16, 32), batch_size=4))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    date = dt.date.today().isoformat()
    gbs = "-".join(f"{g:g}" for g in args.store_gb)
    tag = "-".join([*(f"{m}x" for m in args.sizes), *([f"3d-{gbs}gb"] if args.three_d else []),
                    *([f"test-split-{'-'.join(f'{m}x' for m in args.test_split)}"] if args.test_split else []),
                    *([f"train-split-{'-'.join(f'{m}x' for m in args.train_split)}"] if args.train_split else [])])
    name = f"{date}-{machine_name()}-eval-memory-{tag}.json"  # one file per set of points: runs do not overwrite
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps({"date": date, "machine": machine_name(), "command": " ".join(sys.argv[1:]),
                               "eval_config": dataclasses.asdict(cfg), "rows": rows}, indent=2))
    cols = ["date", "machine", "dims", "synthetic samples (x demo)", "store MB", "eval.memory_mb", "peak RSS MB",
            "seconds", "command", "json"]
    for r in (r for r in rows if "split" in r):
        add_row("Evaluation memory against the real splits (`benchmarks/eval_memory.py`, issue #37)",
                ["date", "machine", "split scaled", "its images (x)", "its MB", "real splits", "peak RSS MB",
                 "seconds", "command", "json"],
                [date, machine_name(), r["split"], f"{r['split_images']} ({r['multiple']}x)", f"{r['split_mb']:.0f}",
                 r["real_splits"], r.get("error") or f"{r['peak_rss_mb']:.0f}", f"{r.get('seconds', float('nan')):.0f}",
                 f"`benchmarks/eval_memory.py {' '.join(sys.argv[1:])}`", f"results/{name}"])
    for r in (r for r in rows if "split" not in r):
        add_row("Evaluation memory (`benchmarks/eval_memory.py`)", cols, [
            date, machine_name(), f"{r['dims']}D",
            f"{r['samples']}" + (f" ({r['multiple']}x)" if "multiple" in r else ""),
            f"{r['store_mb']:.0f}", str(r["memory_mb"]),
            r.get("error") or (f"{r['peak_rss_mb']:.0f}" + (f" (cgroup limit {r['cgroup_limit_mb']:.0f}, peak "
                                                           f"{r['cgroup_peak_mb']:.0f})" if r["dims"] == 3 else "")),
            f"{r.get('seconds', float('nan')):.0f}", f"`benchmarks/eval_memory.py {' '.join(sys.argv[1:])}`",
            f"results/{name}"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
