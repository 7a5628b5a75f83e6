"""The GPU check, ready to run in one go (a lent H200 comes with ~15 minutes): every CUDA path, measured, one JSON.

    .venv/bin/python benchmarks/gpu_check.py              # on a GPU machine (budgeted at <= 8 minutes on one H200)
    .venv/bin/python benchmarks/gpu_check.py --cpu        # the dry run CI exercises: tiny sizes on the CPU

Steps; each is timed and lands in the JSON, and a failing step is recorded (its error) without stopping the rest:
1. environment: torch and CUDA versions, GPU names and count, bf16 support;
2. train: the demo network (48 px, the bundled brain-mri set, mask-conditioned as in the demo) for `--steps`
   steps, bf16 autocast on CUDA: seconds per step, peak GPU memory;
3. bound: one network evaluation at the sampling batch; images/s at NFE 10 if nothing but the network ran;
4. sample: the whole sampling path (Dask, one worker per GPU, sharded Zarr store), without and with
   `torch.compile`: images/s and their share of the bound, peak GPU memory per worker;
5. bf16 vs fp32: the same seeds and masks sampled under bf16 autocast and in fp32; the check passes when the mean
   absolute difference is < 0.01 and the largest < 0.25 (images in [0, 1]; bf16 keeps 8 bits of mantissa, and
   10 Euler steps compound it: a tolerance stated here, not derived);
6. 3D at the paper's size: the same network in 3D (no attention levels; MONAI's mid block attends over its 24^3
   bottleneck voxels, through SDPA) on 96^3
   phantom volumes, `--steps-3d` steps at batch 2, then samples: seconds per step and per sample, peak memory;
7. data-parallel training: the step-2 training again with `train.devices` = every GPU (NCCL), its seconds per
   step and the largest relative difference of its loss curve from step 2's one-device run (the same global batch;
   equal up to float rounding). With one GPU: recorded as skipped. The dry run skips it too: its two gloo
   processes cost CI ~15 s and tests/core/test_training.py trains (and resumes) over two gloo ranks already;
8. writer: that machine's disk: a raw sequential write, then `write_shard` at the sampling step's shard size
   (zstd) and at 1024-image uncompressed shards, of 8192 demo-size images, flushed: images/s against the sampling
   step's, i.e. whether the sampler would wait on the writer there (benchmarks/writer_options.py measured here);
9. sizes: the size-aware networks at the sizes users bring, 2D 256^2 (small and medium, batch 8) and 3D 128^3
   (small, batch 2): the memory plan for the GPU (motfm_core.model.memory), then two training steps under bf16 autocast:
   seconds per step, peak GPU memory against the planned (the CUDA overhead in the plan is an assumption until this
   measures it; the plan traces float32, so it should come out above the measured bf16 peak).
`--cpu` runs the same code on tiny sizes (16 px, 16^3 volumes, a few steps, one worker; on a CPU-only machine
bf16 autocast runs on the CPU for step 5; no compile: inductor on a 2-core CPU takes minutes) so that CI proves
the script runs; its numbers measure nothing.
Writes benchmarks/results/<date>-<machine>-gpu-check.json (`--out` elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sampling_throughput import forward_seconds_per_image, machine_name

from motfm_core.config import DataConfig, ModelConfig, SampleConfig, TrainConfig
from motfm_core.data import ingest
from motfm_core.model.distributed import dask_client, default_workers, sample_shards
from motfm_core.model.sampling import Sampler, prepare_version
from motfm_core.model.training import train_flow_matching

TOLERANCE = {"mean_abs": 0.01, "max_abs": 0.25}


def sizes(cpu: bool) -> dict[str, Any]:
    """What each step runs at: the real check, or the CPU dry run's tiny version of it."""
    if cpu:
        return {"data": DataConfig(source="phantom:12", image_size=16), "steps": 4, "batch": 8,
                "samples_per_class": 4, "shard_size": 4, "compile": [False],
                "data_3d": DataConfig(source="phantom:6", image_size=16, spatial_dims=3, depth=16),
                "steps_3d": 2, "samples_3d": 2, "channels_3d": (8, 16, 16),
                "sized": [((2, 32, 32, 2), "small"), ((3, 16, 16, 1), "small")]}
    return {"data": DataConfig(source="brain-mri", image_size=48), "steps": 300, "batch": 32,
            "samples_per_class": 512, "shard_size": 128, "compile": [False, True],
            "data_3d": DataConfig(source="phantom:6", image_size=96, spatial_dims=3, depth=96),
            "steps_3d": 30, "samples_3d": 4, "channels_3d": (32, 64, 64),
            "sized": [((2, 256, 256, 8), "small"), ((2, 256, 256, 8), "medium"), ((3, 128, 128, 2), "small")]}


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def step(result: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run one step; its figures (with its seconds) or its error go into `result[name]`, printed as they come."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        out = {**fn(), "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - the check goes on; the JSON says what failed and where
        out = {"error": f"{type(e).__name__}: {e}", "where": traceback.format_exc().splitlines()[-3:],
               "seconds": time.perf_counter() - t0}
    result[name] = out
    print(f"{name}: {json.dumps(out, default=str)}", flush=True)
    return None if "error" in out else out


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()), "cpu_count": os.cpu_count()}


def train(data: Path, work: Path, steps: int, batch: int, model: ModelConfig, name: str) -> dict[str, Any]:
    cfg = TrainConfig(steps=steps, batch_size=batch, warmup_steps=max(1, steps // 10), checkpoint_every=steps)
    t0 = time.perf_counter()
    ckpt = train_flow_matching(data, model, cfg, work / name)
    seconds = time.perf_counter() - t0
    return {"checkpoint": str(ckpt), "steps": steps, "batch": batch, "s_per_step": seconds / steps,
            "peak_gpu_gb": peak_gb()}


def sample(ckpt: Path, work: Path, cfg: SampleConfig, bound: float | None) -> dict[str, Any]:
    """Images/s through Dask (warm workers: a first version loads the model on each), and peak memory per worker."""
    workers = default_workers()
    with dask_client(workers=workers) as client:
        warm = dataclasses.replace(cfg, samples_per_class=max(1, workers * cfg.shard_size // 3), seed=cfg.seed + 1)
        store, todo = prepare_version(ckpt, warm, work / f"warm-{cfg.compile}")
        sample_shards(ckpt, store, todo, warm, client)
        store, todo = prepare_version(ckpt, cfg, work / f"run-{cfg.compile}")
        t0 = time.perf_counter()
        results = sample_shards(ckpt, store, todo, cfg, client)
        wall = time.perf_counter() - t0
        peaks = client.run(peak_gb)
    n = sum(r.count for r in results)
    rate = n / wall
    return {"workers": workers, "compile": cfg.compile, "images": n, "wall_s": wall, "images_per_s": rate,
            "share_of_bound": None if bound is None else rate / bound, "peak_gpu_gb_per_worker": peaks}


def bf16_vs_fp32(ckpt: Path, cfg: SampleConfig, n: int) -> dict[str, Any]:
    """The same seeds and masks under bf16 autocast and in fp32 (the copy guard off: it could redraw one set only)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images = {}
    for precision in ("bf16", "fp32"):
        c = dataclasses.replace(cfg, precision=precision, reject_copies=False)
        sampler = Sampler(ckpt, c, device)
        positions = np.arange(min(n, len(sampler.labels)))
        images[precision] = sampler.draw(positions, sampler.seeds)[0]
    diff = np.abs(images["bf16"] - images["fp32"])
    ok = bool(diff.mean() < TOLERANCE["mean_abs"] and diff.max() < TOLERANCE["max_abs"])
    return {"images": len(diff), "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
            "tolerance": TOLERANCE, "within_tolerance": ok}


def three_d(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    data = ingest(s["data_3d"], work / "phantom3d.zarr")
    d = s["data_3d"]
    model = ModelConfig(spatial_dims=3, image_size=d.image_size, depth=d.depth, channels=s["channels_3d"],
                        attention_levels=(False, False, False), num_head_channels=min(32, s["channels_3d"][-1]))
    trained = train(data, work, s["steps_3d"], 2, model, "ckpt3d")
    cfg = SampleConfig(samples_per_class=1, batch_size=1, nfe=10, reject_copies=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sampler = Sampler(trained["checkpoint"], cfg, device)
    sampler.draw(np.arange(1), sampler.seeds)  # warm-up
    n = min(s["samples_3d"], len(sampler.labels))
    t0 = time.perf_counter()
    images = sampler.draw(np.arange(n), sampler.seeds)[0]
    per = (time.perf_counter() - t0) / n
    return {"shape": list(images.shape[1:]), "train_s_per_step": trained["s_per_step"], "batch": 2,
            "sample_s_per_image_nfe10": per, "finite": bool(np.isfinite(images).all()), "peak_gpu_gb": peak_gb()}


def data_parallel(data: Path, work: Path, steps: int, batch: int, model: ModelConfig, one: Path,
                  cpu: bool) -> dict[str, Any]:
    """Step 2's training over every GPU, compared with the one-device run `one`."""
    if cpu:
        return {"skipped": "dry run: tests/core/test_training.py trains data-parallel over two gloo ranks"}
    devices = torch.cuda.device_count()
    if devices < 2:
        return {"skipped": f"{devices} GPU: data-parallel training needs two or more", "gpus": devices}
    cfg = TrainConfig(steps=steps, batch_size=batch, warmup_steps=max(1, steps // 10), checkpoint_every=steps,
                      devices=devices)
    t0 = time.perf_counter()
    ckpt = torch.load(train_flow_matching(data, model, cfg, work / "ckpt-ddp"), weights_only=True)
    seconds = time.perf_counter() - t0
    ref = np.array(torch.load(one, weights_only=True)["losses"])
    rel = np.abs(np.array(ckpt["losses"]) - ref) / np.abs(ref)
    return {"devices": devices, "backend": "nccl", "s_per_step": seconds / steps,
            "max_rel_loss_diff_vs_one_device": float(rel.max()), "world_size": ckpt["world_size"]}


def writer(work: Path, images: int, size: int, shard: int, sampled: float | None) -> dict[str, Any]:
    """Raw and store write rates on this machine's disk (see the module docstring, step 8)."""
    from sampling_throughput import _flushed_write
    from writer_options import smooth_images, write_store

    x = smooth_images(images, size)
    raw = work / "raw.bin"
    out: dict[str, Any] = {"images": images, "image_size": size,
                           "raw_mb_s": x.nbytes / 2**20 / _flushed_write(lambda: raw.write_bytes(x.tobytes()))}
    raw.unlink()
    for name, kwargs in ((f"shard_{shard}_zstd", {"shard": shard}),
                         ("shard_1024_uncompressed", {"shard": min(1024, images), "compressors": None})):
        rate = images / _flushed_write(lambda kw=kwargs, n=name: write_store(work / f"{n}.zarr", x, **kw))
        out[name] = {"images_per_s": rate, "share_of_raw": rate * x[0].nbytes / 2**20 / out["raw_mb_s"],
                     "sampler_waits": None if sampled is None else rate < sampled}
    return out


def sized_step(spec: tuple[int, int, int, int], size: str) -> dict[str, Any]:
    """Step 9: the plan of one size-aware network, then two real training steps; peak memory of the steps above what
    was allocated before the model (GPU: torch's allocator; the CPU dry run: peak RSS)."""
    from sizes import _status, model_config

    from motfm_core.model.memory import plan_training
    from motfm_core.model.nets import build_model
    from motfm_core.model.step import train_step

    cfg, train = model_config(spec, size, False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = plan_training(cfg, train, device)
    cfg = dataclasses.replace(cfg, gradient_checkpointing="on" if plan.gradient_checkpointing else "off")
    x = torch.rand(train.batch_size, *cfg.sample_shape, device=device) * 2 - 1
    y = torch.zeros(train.batch_size, dtype=torch.long, device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**30 if cuda else _status("VmRSS")
    model = build_model(cfg).to(device)
    ema = build_model(cfg).to(device).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for k in range(2):
        t0 = time.perf_counter()
        train_step(model, ema, opt, x, y, None, train, gen, k)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if cuda else _status("VmHWM")) - before
    return {"shape": list(cfg.spatial_shape), "size": size, "channels": list(cfg.channels), "batch": train.batch_size,
            "params": plan.params, "planned_gb": plan.step_gb, "measured_gb": peak,
            "plan_error": plan.step_gb / peak - 1,
            "gradient_checkpointing": plan.gradient_checkpointing, "tflop_per_step": plan.tflop_per_step,
            "s_per_step": times[1], "first_step_s": times[0]}


def latent_volume(side: int, batch: int) -> dict[str, Any]:
    """Step 10: latent flow matching at side^3 (the 4x autoencoder's 4 x (side/4)^3 latents, clinical-3d's network):
    two training steps at `batch`, then one volume (10 Euler steps and the decoding), with the device's peak memory."""
    from latent import config

    from motfm_core.model.autoencoder import build_autoencoder
    from motfm_core.model.latents import LatentCodec
    from motfm_core.model.nets import build_model, guided_velocity
    from motfm_core.model.solvers import solve
    from motfm_core.model.step import train_step

    cfg = config(side, batch)
    m = cfg.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"

    def synced() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    model, ema = build_model(m).to(device), build_model(m).to(device).requires_grad_(False)
    opt, gen = torch.optim.AdamW(model.parameters(), lr=1e-3), torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, *m.sample_shape, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    mask = torch.zeros(batch, 1, *m.spatial_shape, dtype=torch.uint8, device=device)
    times = []
    for k in range(2):
        t0 = synced()
        train_step(model, ema, opt, x, y, mask, cfg.train, gen, k)
        times.append(synced() - t0)
    train_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    codec = LatentCodec(build_autoencoder(cfg.autoencoder, 3, 1).to(device).eval(), cfg.autoencoder, 0.0, 1.0)
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        t0 = synced()
        z, _ = solve(guided_velocity(model, y[:1], 1.0, mask[:1]), torch.randn(1, *m.sample_shape, device=device), 10,
                     "euler")
        t1 = synced()
        image = codec.decode(z)
        t2 = synced()
    return {"volume": [side] * 3, "latent": list(m.sample_shape), "batch": batch, "s_per_step": times[1],
            "train_peak_gb": train_peak, "flow_nfe10_s": t1 - t0, "decode_s": t2 - t1,
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "finite": bool(torch.isfinite(image).all()), "image": list(image.shape[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="the dry run: tiny sizes on the CPU, whatever is present")
    p.add_argument("--steps", type=int, default=None, help="2D training steps (default 300; --cpu: 4)")
    p.add_argument("--steps-3d", type=int, default=None, help="3D training steps at 96^3 (default 30; --cpu: 2)")
    p.add_argument("--out", default=None, help="the JSON's path (default benchmarks/results/<date>-<machine>-...)")
    args = p.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device here; run it on a GPU machine, or --cpu for the dry run")
    s = sizes(args.cpu)
    s["steps"] = args.steps or s["steps"]
    s["steps_3d"] = args.steps_3d or s["steps_3d"]
    work = Path(tempfile.mkdtemp(prefix="motfm-gpu-check-"))
    date = dt.date.today().isoformat()
    result: dict[str, Any] = {"date": date, "machine": machine_name(), "mode": "cpu dry run" if args.cpu else "gpu",
                              "command": "benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
                              "sizes": {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
                                        for k, v in s.items()}}
    t0 = time.perf_counter()
    step(result, "environment", environment)
    data = ingest(s["data"], work / "data.zarr")
    model = ModelConfig(image_size=s["data"].image_size, mask_conditioning="auto")
    trained = step(result, "train", lambda: train(data, work, s["steps"], s["batch"], model, "ckpt"))
    if trained:
        step(result, "data_parallel", lambda: data_parallel(data, work, s["steps"], s["batch"], model,
                                                            Path(trained["checkpoint"]), args.cpu))
        ckpt = Path(trained["checkpoint"])
        cfg = SampleConfig(samples_per_class=s["samples_per_class"], shard_size=s["shard_size"], nfe=10,
                           batch_size=s["shard_size"])
        bound = step(result, "bound", lambda: {"forward_s_per_image": (f := forward_seconds_per_image(
            ckpt, s["shard_size"])), "images_per_s_nfe10": 1.0 / (10 * f)})
        rate = bound["images_per_s_nfe10"] if bound else None
        sampled = [step(result, f"sample{'_compiled' if compiled else ''}",
                        lambda c=compiled: sample(ckpt, work, dataclasses.replace(cfg, compile=c), rate))
                   for compiled in s["compile"]]
        step(result, "bf16_vs_fp32", lambda: bf16_vs_fp32(ckpt, cfg, 4 if args.cpu else 64))
        fastest = max((r["images_per_s"] for r in sampled if r), default=None)
        step(result, "writer", lambda: writer(work, 64 if args.cpu else 8192, s["data"].image_size, s["shard_size"],
                                              fastest))
    step(result, "three_d", lambda: three_d(work, s))
    for spec, size in s["sized"]:
        step(result, f"sizes_{spec[0]}d_{spec[1]}_{size}", lambda sp=spec, sz=size: sized_step(sp, sz))
    step(result, "latent_3d", lambda: latent_volume(16 if args.cpu else 128, 2 if args.cpu else 4))
    result["total_seconds"] = time.perf_counter() - t0
    result["failed_steps"] = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{date}-{machine_name()}-gpu-check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out} ({result['total_seconds']:.0f} s; failed steps: {result['failed_steps'] or 'none'})")


if __name__ == "__main__":
    main()
