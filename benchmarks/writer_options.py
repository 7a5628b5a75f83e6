"""Writer options for the synthetic store, side by side in one run, against raw sequential disk bandwidth.

    .venv/bin/python benchmarks/writer_options.py                           # 65536 images of 48 px (the demo's size)
    .venv/bin/python benchmarks/writer_options.py --dims 3 --image-size 128 # 96 volumes of 128^3
    .venv/bin/python benchmarks/writer_options.py --from-store outputs/demo/synthetic/latest  # the demo's samples

Each option writes the same float32 images (smooth random fields: real samples compress like them more than like
white noise) into the synthetic store's layout (shards sized by bytes as the sampler sizes them, `sample.shard_mb`,
unless an option says otherwise; chunks near 128 KiB),
flushed to disk (os.sync) inside the timing, `--repeats` times in turn (the median counts: one write here varied
2x between runs); each written array is read back with zarr-python (the reader every
supported reader builds on) and compared. Options: `write_shard` as the sampler calls it (data, labels, seeds and
the completion record; shards written by tensorstore, `motfm_core/data/shards.py`), at the default layout, with the
images uncompressed, at a quarter and four times the shard bytes, at the old default of 32 images a shard, and with
zarr's default zstd level (0) instead of level 1; the same through zarr-python's codec pipeline (`direct=False`);
without its flushes to disk (fsync of each shard's data before its record, and of each rename); and, like for like,
with the shard encoder the project had until d0cc6ee (read from git) in place of tensorstore.
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

from motfm_core.config import ModelConfig, SampleConfig
from motfm_core.data import create_synthetic_store, write_shard
from motfm_core.data.synthetic import shard_images
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


def smooth_images(n: int, size: int, dims: int = 2, seed: int = 0) -> np.ndarray:
    """(n, 1, size, size[, size]) float32 in [0, 1]: white noise blurred by a box filter, then scaled."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, *[size] * dims), dtype=np.float32)
    k = max(1, size // 16)
    for axis in range(2, 2 + dims):
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


ENCODER_COMMIT = "d0cc6ee"  # the last commit whose data/shards.py encoded shards itself (before tensorstore)


@contextlib.contextmanager
def through_old_encoder(commit: str = ENCODER_COMMIT):
    """`write_shard` with each whole shard encoded by `commit`'s data/shards.py (the project's own encoder, read
    from git), the rest through zarr-python as that commit did: the like-for-like comparison with tensorstore."""
    import importlib.util
    import subprocess

    import zarr

    from motfm_core.data import synthetic

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:motfm_core/data/shards.py"],
                            capture_output=True, text=True, check=True).stdout
    module_path = Path(tempfile.mkdtemp(prefix="motfm-encoder-")) / "old_shards.py"
    module_path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_shards", module_path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)

    def write(array_dir, start: int, values: np.ndarray) -> None:
        n = json.loads((Path(array_dir) / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][0]
        if not (len(values) == n and start % n == 0 and old.write_whole_shard(array_dir, start // n, values)):
            zarr.open_array(str(array_dir), mode="r+", zarr_format=3)[start:start + len(values)] = values

    saved = synthetic.write_rows
    synthetic.write_rows = write
    try:
        yield
    finally:
        synthetic.write_rows = saved
        shutil.rmtree(module_path.parent, ignore_errors=True)


def write_old_encoder(path: Path, images: np.ndarray, shard: int, **encoding) -> None:
    with through_old_encoder():
        write_store(path, images, shard, **encoding)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=0, help="0 = 65536 images in 2D, 96 volumes in 3D")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--shard-mb", type=float, default=SampleConfig.shard_mb, help="the layout compared against")
    p.add_argument("--from-store", default=None, help="write this synthetic store's images (repeated to --images) "
                   "instead of smooth random fields, e.g. outputs/demo/synthetic/latest")
    p.add_argument("--repeats", type=int, default=3, help="writes per option (and of the raw file); the median counts")
    a = p.parse_args()
    import zarr
    from zarr.codecs import ZstdCodec

    a.images = a.images or (65536 if a.dims == 2 else 96)  # writes of seconds: shorter ones varied 2x
    if a.from_store:  # real samples (a synthetic version's images), repeated to the count
        import zarr as _zarr

        held = _zarr.open_group(a.from_store, mode="r")["images"][:]
        images = np.ascontiguousarray(held[np.arange(a.images) % len(held)], dtype=np.float32)
        a.image_size, a.dims = held.shape[2], held.ndim - 2
    else:
        images = smooth_images(a.images, a.image_size, a.dims)
    mb = images.nbytes / 2**20
    per_image = images[0].nbytes
    default = shard_images(per_image, len(images), a.shard_mb)
    # a quarter and four times the bytes, without the rule's cap of len / 8 (the default here may sit at that cap)
    small, large = (min(len(images), shard_images(per_image, 2**40, a.shard_mb * f)) for f in (0.25, 4))
    work = Path(tempfile.mkdtemp(prefix="motfm-writer-"))
    raw_path = work / "raw.bin"

    def raw_write() -> float:
        seconds = _flushed_write(lambda: raw_path.write_bytes(images.tobytes()))
        raw_path.unlink()
        return seconds

    def layout(shard: int) -> str:
        return f"{shard} a shard ({shard * per_image / 2**20:.1f} MiB)"

    old = min(32, len(images))  # the layout before shards were sized by bytes: 32 images a shard
    options = {f"write_shard, default: {layout(default)}": lambda path: write_store(path, images, default),
               "write_shard, default, uncompressed": lambda path: write_store(path, images, default,
                                                                                 compressors=None),
               **{f"write_shard, {layout(n)}": lambda path, n=n: write_store(path, images, n)
                  for n in sorted({small, large} - {default})},
               f"write_shard, the old default: {layout(old)}": lambda path: write_store(path, images, old),
               "write_shard through zarr-python, default": lambda path: write_store(path, images, default,
                                                                                     direct=False),
               "write_shard, default, no fsync": lambda path: write_unsynced(path, images, default),
               # zarr's default zstd level (0, i.e. zstd's 3): what the images were stored with before level 1
               "write_shard, default, zstd level 0": lambda path: write_store(path, images, default,
                                                                              compressors=ZstdCodec(level=0)),
               # like for like (issue #37): the same arrays, layout, records and flushes; only the shard writer differs
               f"write_shard, default, {ENCODER_COMMIT}'s own encoder": lambda path: write_old_encoder(
                   path, images, default),
               f"write_shard, default, uncompressed, {ENCODER_COMMIT}'s own encoder": lambda path: write_old_encoder(
                   path, images, default, compressors=None)}
    # 3D: a 128^3 run samples latents and decodes them, so one network's FLOPs would not say its rate; not estimated
    producer = h200_images_per_s(a.image_size) if a.dims == 2 else {"images_per_s": float("nan")}
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
    size = (f"{a.image_size}px" if a.dims == 2 else f"{a.image_size}cube") + ("-samples" if a.from_store else "")
    name = f"{date}-{machine_name()}-writer-{size}-{dt.datetime.now():%H%M}.json"  # runs never overwrite
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps({"date": date, "machine": machine_name(), "args": vars(a), "megabytes": mb,
                               "raw_mb_s": raw_mb_s, "raw_seconds": seconds["raw"], "h200_estimate": producer,
                               "rows": rows}, indent=2))
    for r in rows:
        add_row("Writer options (`benchmarks/writer_options.py`)",
                ["date", "machine", "images", "option", "MB/s", "% of raw", "images/s",
                 "est. H200 images/s", "max abs error", "command", "json"],
                [date, machine_name(), f"{a.images} x {size}", r["option"], f"{r['mb_s']:.0f}",
                 f"{100 * r['vs_raw']:.0f}% of {raw_mb_s:.0f}", f"{r['images_per_s']:.0f}",
                 f"{producer['images_per_s']:.0f}" if a.dims == 2 else "not estimated", f"{r['max_abs_error']:.1e}",
                 f"`benchmarks/writer_options.py {' '.join(sys.argv[1:])}`", f"results/{name}"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
