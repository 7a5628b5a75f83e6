"""Large-scale sampling: images/s over Dask at 1 and 2 workers, the forward-pass bound, Zarr write vs raw disk.

    .venv/bin/python benchmarks/sampling_throughput.py                 # CPU: demo-size model (48 px), NFE 10
    .venv/bin/python benchmarks/sampling_throughput.py --checkpoint outputs/demo/checkpoints/model.pt

Measures, on one machine and one run:
1. the forward-pass bound: NFE x the time of one network evaluation per image (batch `--batch`);
2. end-to-end sampling images/s through `motfm_core.model.distributed` (LocalCluster, warm workers, shards written to
   a sharded Zarr v3 store) at 1 and 2 single-threaded workers (scaling efficiency = rate(2) / (2 x rate(1))),
   and 1 worker using every core; on a GPU machine, one worker per GPU;
3. Zarr write throughput (the synthetic store's layout, per codec) against a raw sequential write of the same
   bytes (`dd`-style, both flushed to disk), and the share of sampling time spent writing.
Writes benchmarks/results/<date>-<machine>-sampling.json and appends a row to benchmarks/RESULTS.md.
Timing on weights from a 1-step training run is the same as on trained weights (same network, same NFE).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
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

from motfm_core.config import DataConfig, ModelConfig, SampleConfig, TrainConfig
from motfm_core.data import create_synthetic_store, ingest, write_shard
from motfm_core.device import default_device
from motfm_core.model.distributed import dask_client, sample_shards
from motfm_core.model.nets import guided_velocity
from motfm_core.model.sampling import prepare_version
from motfm_core.model.training import load_checkpoint, train_flow_matching


def machine_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "-") + f"x{torch.cuda.device_count()}"
    return f"cpu{os.cpu_count()}-{os.uname().machine}"


def timing_checkpoint(work: Path, image_size: int) -> Path:
    """A checkpoint of the demo network (weights after 1 step: timing does not depend on them)."""
    data = ingest(DataConfig(source="phantom:12", image_size=image_size), work / "phantom.zarr")
    return train_flow_matching(data, ModelConfig(image_size=image_size, num_classes=3),
                               TrainConfig(steps=1, warmup_steps=1, checkpoint_every=1), work / "ckpt")


def forward_seconds_per_image(checkpoint: Path, batch: int, repeats: int = 10, warmup: int = 3) -> float:
    """Seconds per image of one network evaluation at `batch` (after a warm-up), in this process (2D or 3D; a
    mask-conditioned network gets an all-background mask)."""
    device = default_device()
    model, _ = load_checkpoint(checkpoint, device)
    m = model.cfg
    x = torch.randn(batch, *m.sample_shape, device=device)
    mask = (torch.zeros(batch, 1, *m.sample_shape[1:], dtype=torch.long, device=device)
            if m.mask_conditioning != "none" else None)  # a mask-conditioned network: any mask costs the same
    v = guided_velocity(model, torch.arange(batch, device=device) % m.num_classes, mask=mask)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for i in range(repeats + warmup):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            v(x, torch.full((batch,), 0.5, device=device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch


def sampling_rate(checkpoint: Path, cfg: SampleConfig, workers: int, threads: int, work: Path) -> dict:
    """Images/s of the whole path (Dask tasks, generation, Zarr writes) with warm workers."""
    with dask_client(workers=workers, threads_per_worker=threads) as client:
        warm = dataclasses.replace(cfg, samples_per_class=workers * cfg.shard_size // 3 + 1, seed=cfg.seed + 1)
        store, todo = prepare_version(checkpoint, warm, work / f"warm-{workers}x{threads}")
        sample_shards(checkpoint, store, todo, warm, client)  # loads the model on every worker
        store, todo = prepare_version(checkpoint, cfg, work / f"run-{workers}x{threads}")
        t0 = time.perf_counter()
        results = sample_shards(checkpoint, store, todo, cfg, client)
        wall = time.perf_counter() - t0
    n = sum(r.count for r in results)
    gen = sum((r.seconds or 0.0) for r in results)
    return {"workers": workers, "threads_per_worker": threads, "images": n, "wall_s": wall,
            "images_per_s": n / wall, "generation_share": gen / (wall * workers)}


def _flushed_write(fn) -> float:
    os.sync()
    t0 = time.perf_counter()
    fn()
    os.sync()
    return time.perf_counter() - t0


def recreate_images(path: Path, **options) -> None:
    """Replace a fresh synthetic store's `images` array by one of the same shape, chunks and shards with other
    `create_array` options (dtype, compressors): the store's layout with another encoding."""
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    old = root["images"]
    shape, chunks, shards = old.shape, old.chunks, old.shards
    del root["images"]
    root.create_array("images", shape=shape, chunks=chunks, shards=shards, fill_value=np.nan,
                      **{"dtype": "float32", **options})


def write_throughput(images: np.ndarray, shard_size: int, work: Path) -> dict:
    """MB/s of writing `images` as a sharded synthetic store, per codec, and of a raw sequential write."""
    from zarr.codecs import BloscCodec, ZstdCodec

    mb = images.nbytes / 2**20
    raw_path = work / "raw.bin"

    def raw():
        with open(raw_path, "wb") as f:
            f.write(images.tobytes())

    out = {"megabytes": mb, "raw_mb_s": mb / _flushed_write(raw)}
    raw_path.unlink()
    labels, seeds = np.arange(len(images)) % 3, np.arange(len(images))
    codecs = {"none": None, "zstd-0 (default)": "default", "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5,
                                                                                            shuffle="bitshuffle")],
              "zstd-3": [ZstdCodec(level=3)]}
    for name, codec in codecs.items():
        path = work / f"w-{name.split()[0]}.zarr"
        create_synthetic_store(path, len(images), images.shape[1:], shard_size, {"run_key": name})
        if codec != "default":
            recreate_images(path, compressors=codec if codec else None)

        def write(path=path):
            for i, start in enumerate(range(0, len(images), shard_size)):
                sl = slice(start, start + shard_size)
                write_shard(path, i, images[sl], labels[sl], seeds[sl])

        seconds = _flushed_write(write)
        stored = sum(f.stat().st_size for f in (path / "images").rglob("*") if f.is_file()) / 2**20
        out[name] = {"mb_s": mb / seconds, "vs_raw": mb / seconds / out["raw_mb_s"], "ratio": mb / stored}
        shutil.rmtree(path)
    # per-shard costs (metadata, completion record) are fixed: larger shards amortise them
    big = 256
    path = work / "w-big.zarr"
    create_synthetic_store(path, len(images), images.shape[1:], big, {"run_key": "big"})
    seconds = _flushed_write(lambda: [write_shard(path, i, images[s:s + big], labels[s:s + big], seeds[s:s + big])
                                      for i, s in enumerate(range(0, len(images), big))])
    out[f"zstd-0, shard {big}"] = {"mb_s": mb / seconds, "vs_raw": mb / seconds / out["raw_mb_s"],
                                   "ratio": float("nan")}
    shutil.rmtree(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a model.pt to time (default: the demo network, untrained)")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--samples-per-class", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--write-images", type=int, default=8192, help="images written in the Zarr-vs-raw test")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="motfm-bench-", dir=ROOT / "outputs" if (ROOT / "outputs").exists() else None))
    try:
        ckpt = Path(a.checkpoint) if a.checkpoint else timing_checkpoint(work, a.image_size)
        cfg = SampleConfig(samples_per_class=a.samples_per_class, shard_size=a.shard_size, nfe=a.nfe,
                           batch_size=a.batch)
        fwd = forward_seconds_per_image(ckpt, a.batch)
        result = {"date": dt.date.today().isoformat(), "machine": machine_name(), "checkpoint": str(ckpt),
                  "command": "benchmarks/sampling_throughput.py " + " ".join(sys.argv[1:]),
                  "nfe": a.nfe, "batch": a.batch, "forward_s_per_image": fwd,
                  "bound_images_per_s": 1.0 / (a.nfe * fwd), "runs": []}
        print(f"forward {fwd * 1e3:.2f} ms/image at batch {a.batch}; bound {result['bound_images_per_s']:.1f} "
              f"images/s at NFE {a.nfe}", flush=True)
        cores = os.cpu_count() or 1
        layouts = ([(n, 1) for n in (1, 2)] + [(1, cores)] if not torch.cuda.is_available()
                   else [(n, 1) for n in sorted({1, torch.cuda.device_count()})])
        for workers, threads in layouts:
            run = sampling_rate(ckpt, cfg, workers, threads, work)
            result["runs"].append(run)
            print(f"{workers} worker(s) x {threads} thread(s): {run['images_per_s']:.2f} images/s "
                  f"({run['images']} images in {run['wall_s']:.1f}s)", flush=True)
        r1, r2 = result["runs"][0], result["runs"][1] if len(result["runs"]) > 1 else None
        if r2 and r2["workers"] == 2:
            result["scaling_efficiency_1_to_2"] = r2["images_per_s"] / (2 * r1["images_per_s"])
        best = max(result["runs"], key=lambda r: r["images_per_s"])
        result["vs_bound"] = result["bound_images_per_s"] / best["images_per_s"]  # target <= 2
        rng = np.random.default_rng(0)
        images = np.clip(rng.normal(0.3, 0.2, (a.write_images, 1, a.image_size, a.image_size)), 0, 1)
        images = images.astype(np.float32)  # real samples are smoother; this is the hard case for codecs
        result["write"] = write_throughput(images, a.shard_size, work)
        default = result["write"]["zstd-0 (default)"]
        result["write_share_of_sampling"] = best["images_per_s"] * (images[0].nbytes / 2**20) / default["mb_s"]
        for name, w in result["write"].items():
            if isinstance(w, dict):
                print(f"zarr write {name}: {w['mb_s']:.0f} MB/s ({100 * w['vs_raw']:.0f}% of raw "
                      f"{result['write']['raw_mb_s']:.0f} MB/s), compression x{w['ratio']:.2f}", flush=True)
        out = ROOT / "benchmarks" / "results" / f"{result['date']}-{result['machine']}-sampling.json"
        out.write_text(json.dumps(result, indent=2))
        runs = "; ".join(f"{r['workers']}x{r['threads_per_worker']}: {r['images_per_s']:.2f}"
                         for r in result["runs"])
        eff = result.get("scaling_efficiency_1_to_2")
        add_row("Sampling throughput (`benchmarks/sampling_throughput.py`)",
                ["date", "machine", "command", "NFE", "bound img/s", "workers x threads: img/s", "best / bound",
                 "1->2 efficiency", "Zarr write vs raw disk", "write share of sampling", "file"],
                [result["date"], result["machine"], f"`{result['command'].strip()}`", str(a.nfe),
                 f"{result['bound_images_per_s']:.2f}", runs, f"{1 / result['vs_bound']:.2f}",
                 f"{eff:.2f}" if eff else "n/a",
                 f"{default['mb_s']:.0f} / {result['write']['raw_mb_s']:.0f} MB/s ({100 * default['vs_raw']:.0f}%); "
                 f"shard 256: {result['write']['zstd-0, shard 256']['mb_s']:.0f} MB/s",
                 f"{100 * result['write_share_of_sampling']:.2f}%", f"[{out.name}](results/{out.name})"])
        print(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
