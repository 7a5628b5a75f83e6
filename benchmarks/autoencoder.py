"""The latent path's autoencoder on the clinical-3d blocks: trained with given settings, then its reconstruction PSNR
on every fourth real test block (10 of 40), as `LatentCodec` encodes and decodes them when sampling.

    .venv/bin/python benchmarks/autoencoder.py --steps 800                      # the clinical-3d preset's recipe
    .venv/bin/python benchmarks/autoencoder.py --steps 300 --lr 1e-3 --latent-channels 8

The data are the preset's 128^3 blocks at 1 mm (ingested once under --work); each setting trains into its own folder
there (resumable). Prints the training seconds and the PSNR (dB, data range 1) per block and on average.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from motfm_core.config import PipelineConfig
from motfm_core.data.ingest import ingest
from motfm_core.data.store import load_split
from motfm_core.model.autoencoder import load_autoencoder, train_autoencoder
from motfm_core.model.latents import LatentCodec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--work", default="/tmp/motfm-autoencoder-bench")
    a = p.parse_args()
    cfg = PipelineConfig.from_overrides({
        "data": {"spatial_dims": 3, "image_size": 128, "depth": 128, "voxel_mm": 1}, "model": {"space": "latent"},
        "autoencoder": {"steps": a.steps, "lr": a.lr, "patch_size": a.patch, "batch_size": a.batch,
                        "latent_channels": a.latent_channels, "checkpoint_every": 100}})
    work = Path(a.work)
    data = work / "dataset.zarr"
    if not (data / "zarr.json").exists():
        ingest(cfg.data, data)
    t0 = time.time()
    name = f"ae-{a.steps}-{a.lr:g}-{a.patch}-{a.batch}-{a.latent_channels}"
    ckpt = train_autoencoder(data, cfg.autoencoder, work / name, progress=print)
    seconds = time.time() - t0
    model, _ = load_autoencoder(ckpt)
    codec = LatentCodec(model, cfg.autoencoder, 0.0, 1.0)
    test = load_split(data, "test")["images"][::4]
    rec = codec.decode(codec.encode(torch.from_numpy(test))).numpy()
    psnr = 10 * np.log10(1 / ((rec - test) ** 2).reshape(len(test), -1).mean(1))
    print(f"{name}: trained in {seconds:.0f} s; PSNR {psnr.mean():.1f} dB on {len(test)} test blocks "
          f"({' '.join(f'{v:.1f}' for v in psnr)})")


if __name__ == "__main__":
    main()
