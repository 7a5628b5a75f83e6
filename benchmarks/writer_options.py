"""Writer options for the synthetic store, side by side in one run, against raw sequential disk bandwidth.

    .venv/bin/python benchmarks/writer_options.py                 # 8192 images of 48 px (the demo's shape)
    .venv/bin/python benchmarks/writer_options.py --image-size 256 --images 2048

Each option writes the same float32 images (smooth random fields: real samples compress like them more than like
white noise) into the synthetic store's layout (one Zarr shard per `--shard-size` samples, chunks near 128 KiB),
flushed to disk (os.sync) inside the timing, `--repeats` times in turn (the median counts: one write here varied
2x between runs); each written array is read back with zarr-python (the reader every
supported reader builds on) and compared. Options: `write_shard` as the sampler calls it (data, labels, seeds and
the completion record; whole shards encoded by `motfm_core/data/shards.py`); the same through zarr-python's codec
pipeline (`direct=False`, the writer before), and with the Rust `zarrs` codec pipeline (if installed); tensorstore
writing the images array zarr-python created (if installed); 4x and 32x larger shards; images stored uncompressed
(no zstd), also at 32x shards; float16 storage (with its largest error); the sampler's writer without its flushes
to disk (fsync of each shard's data before its record, and of each rename), and zarr-python at 32x shards.
Also an estimate of an H200's sampling rate for this network (forward FLOPs counted by torch at batch 1, x NFE 10,
at 40% of the H200's 989 dense bf16 TFLOP/s: an assumption, stated) against each writer's images/s.
Writes benchmarks/results/<date>-<machine>-writer-<size>px-<HHMM>.json and appends rows to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import add_row
from sampling_throughput import _flushed_write, machine_name, recreate_images

from motfm_core.config import ModelConfig
from motfm_core.data import create_synthetic_store, write_shard
from motfm_core.model.nets import build_model

H200_BF16_FLOPS = 989e12  # dense bf16, NVIDIA's H200 SXM figure
ASSUMED_MFU = 0.4


def h200_images_per_s(image_size: int, nfe: int = 10) -> dict[str, float]:
    """Estimated sampling images/s of the demo network on one H200 (see module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(ModelConfig(image_size=image_size)).eval()
    x = torch.randn(1, 1, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long))
    flops = float(counter.get_total_flops())
    return {"forward_flops_per_image": flops, "images_per_s": ASSUMED_MFU * H200_BF16_FLOPS / (flops * nfe)}


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 1, size, size) float32 in [0, 1]: white noise blurred by a box filter, then scaled."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, size, size), dtype=np.float32)
    k = max(1, size // 16)
    for axis in (2, 3):
        x = sum(np.roll(x, s, axis=axis) for s in range(-k, k + 1)) / (2 * k + 1)
    x -= x.min()
    return (x / x.max()).astype(np.float32)


def write_store(path: Path, images: np.ndarray, shard: int, direct: bool = True, **encoding) -> None:
    """The synthetic store's layout through `write_shard`; `encoding` (e.g. dtype, compressors) recreates `images`."""
    labels, seeds = np.arange(len(images)) % 3, np.arange(len(images))
    create_synthetic_store(path, len(images), images.shape[1:], shard, {"run_key": path.name})
    if encoding:
        recreate_images(path, **encoding)
    for i, start in enumerate(range(0, len(images), shard)):
        write_shard(path, i, images[start:start + shard], labels[start:start + shard], seeds[start:start + shard],
                    direct=direct)


@contextlib.contextmanager
def without_fsync():
    """The writer as it was before shard data and records were flushed to disk one by one (for the comparison)."""
    from motfm_core import files
    from motfm_core.data import synthetic

    saved = [(m, name, getattr(m, name)) for m in (files, synthetic) for name in ("fsync_tree", "fsync_dir")]
    for m, name, _ in saved:
        setattr(m, name, lambda *args: None)
    try:
        yield
    finally:
        for m, name, f in saved:
            setattr(m, name, f)


def write_unsynced(path: Path, images: np.ndarray, shard: int, **encoding) -> None:
    with without_fsync():
        write_store(path, images, shard, **encoding)


def write_tensorstore(path: Path, images: np.ndarray, shard: int) -> None:
    import tensorstore as ts

    create_synthetic_store(path, len(images), images.shape[1:], shard, {"run_key": path.name})
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "images")}}).result()
    for start in range(0, len(images), shard):
        arr[start:start + shard].write(images[start:start + shard]).result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="writes per option (and of the raw file); the median counts")
    a = p.parse_args()
    import zarr

    images = smooth_images(a.images, a.image_size)
    mb = images.nbytes / 2**20
    work = Path(tempfile.mkdtemp(prefix="motfm-writer-"))
    raw_path = work / "raw.bin"

    def raw_write() -> float:
        seconds = _flushed_write(lambda: raw_path.write_bytes(images.tobytes()))
        raw_path.unlink()
        return seconds

    options = {"write_shard (whole shards encoded directly)": lambda path: write_store(path, images, a.shard_size),
               "write_shard through zarr-python": lambda path: write_store(path, images, a.shard_size, direct=False),
               f"write_shard, shard {4 * a.shard_size}": lambda path: write_store(path, images, 4 * a.shard_size),
               f"write_shard, shard {32 * a.shard_size}": lambda path: write_store(path, images, 32 * a.shard_size),
               "write_shard, uncompressed": lambda path: write_store(path, images, a.shard_size, compressors=None),
               f"write_shard, shard {32 * a.shard_size}, uncompressed": lambda path: write_store(
                   path, images, 32 * a.shard_size, compressors=None),
               "write_shard, float16 storage": lambda path: write_store(path, images, a.shard_size, dtype="float16"),
               # what the flush to disk costs: shard data before its record, each rename (issue #25)
               "write_shard, no fsync": lambda path: write_unsynced(path, images, a.shard_size),
               f"write_shard, shard {32 * a.shard_size}, uncompressed, no fsync": lambda path: write_unsynced(
                   path, images, 32 * a.shard_size, compressors=None),
               # the encoder against zarr-python at the advised layout too
               f"write_shard through zarr-python, shard {32 * a.shard_size}": lambda path: write_store(
                   path, images, 32 * a.shard_size, direct=False),
               f"write_shard through zarr-python, shard {32 * a.shard_size}, uncompressed": lambda path: write_store(
                   path, images, 32 * a.shard_size, direct=False, compressors=None)}
    try:
        import zarrs  # noqa: F401

        def with_zarrs(path: Path) -> None:
            with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
                write_store(path, images, a.shard_size, direct=False)

        options["zarrs codec pipeline"] = with_zarrs
    except ImportError:
        print("zarrs not installed: skipped")
    try:
        import tensorstore  # noqa: F401

        options["tensorstore (images only)"] = lambda path: write_tensorstore(path, images, a.shard_size)
    except ImportError:
        print("tensorstore not installed: skipped")
    producer = h200_images_per_s(a.image_size)
    rows: list[dict] = []
    seconds: dict[str, list[float]] = {name: [] for name in ["raw", *options]}
    for rep in range(a.repeats):  # round robin: a drift in the disk's state reaches every option alike
        seconds["raw"].append(raw_write())
        for k, (name, write) in enumerate(options.items()):
            path = work / f"{k}.zarr"
            seconds[name].append(_flushed_write(lambda write=write, path=path: write(path)))
            if rep == a.repeats - 1:  # the last round: read back, size, median
                back = zarr.open_group(str(path), mode="r")["images"][:]
                sec = float(np.median(seconds[name]))
                rows.append({"option": name, "seconds": seconds[name], "mb_s": mb / sec,
                             "images_per_s": len(images) / sec,
                             "max_abs_error": float(np.abs(back.astype(np.float32) - images).max()),
                             "stored_mb": sum(f.stat().st_size for f in (path / "images").rglob("*")
                                              if f.is_file()) / 2**20})
            shutil.rmtree(path)
    raw_mb_s = mb / float(np.median(seconds["raw"]))
    for row in rows:
        row.update(vs_raw=row["mb_s"] / raw_mb_s, keeps_up_with_h200=row["images_per_s"] >= producer["images_per_s"])
        print(json.dumps(row), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    date = dt.date.today().isoformat()
    name = f"{date}-{machine_name()}-writer-{a.image_size}px-{dt.datetime.now():%H%M}.json"  # runs never overwrite
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps({"date": date, "machine": machine_name(), "args": vars(a), "megabytes": mb,
                               "raw_mb_s": raw_mb_s, "raw_seconds": seconds["raw"], "h200_estimate": producer,
                               "rows": rows}, indent=2))
    for r in rows:
        add_row("Writer options (`benchmarks/writer_options.py`)",
                ["date", "machine", "images", "option", "MB/s", "% of raw", "images/s",
                 "est. H200 images/s", "max abs error", "command", "json"],
                [date, machine_name(), f"{a.images} x {a.image_size}px", r["option"], f"{r['mb_s']:.0f}",
                 f"{100 * r['vs_raw']:.0f}% of {raw_mb_s:.0f}", f"{r['images_per_s']:.0f}",
                 f"{producer['images_per_s']:.0f}", f"{r['max_abs_error']:.1e}",
                 f"`benchmarks/writer_options.py {' '.join(sys.argv[1:])}`", f"results/{name}"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
