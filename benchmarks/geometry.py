"""Geometry: does the same anatomy, stored as sites store it, become the same training image?

    .venv/bin/python benchmarks/geometry.py          # the bundled brains at 64^3, the issue's measure

Each bundled brain (MNI152, and Colin27 where mricron-data is installed) is written three ways: RAS at 1 mm, flipped
to LPS with the affine saying so, and with 3 mm slices (each the mean of three 1 mm slices, as a thick acquisition
integrates them). Every file is read and prepared as the ingest does (`readers.read_folder`, `ingest.prepare`) at
`data.fit=fov` and, for comparison, the way ingest read volumes before (the file's array as stored, normalised,
zero-padded to a cube in voxels and resized: `data.fit=resize` without reorientation). Reported: the mean absolute
difference of each variant's stored block to the 1 mm RAS one, on images in [0, 1], and the seconds per volume.
Writes benchmarks/results/<date>-<machine>-geometry.json and a row per brain in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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

from motfm_core.config import DataConfig
from motfm_core.data.brain import volumes
from motfm_core.data.ingest import prepare
from motfm_core.data.preprocess import normalise, resize
from motfm_core.data.readers import read_folder

VARIANTS = ("ras", "lps", "z3")


def write_variants(t1: np.ndarray, affine: np.ndarray, out: Path) -> None:
    """`t1` written as RAS at its own spacing, flipped to LPS (the affine saying so) and with 3x thicker slices."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(t1, affine), out / "ras.nii.gz")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(t1.shape[:2]) - 1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(t1[::-1, ::-1]), affine @ flip), out / "lps.nii.gz")
    n = t1.shape[2] // 3 * 3
    thick = t1[:, :, :n].reshape(*t1.shape[:2], n // 3, 3).mean(-1)
    a3 = affine.copy()
    a3[:3, 2] *= 3
    a3[:3, 3] += affine[:3, 2]  # the centre of its first three slices
    nib.save(nib.Nifti1Image(thick.astype(np.float32), a3), out / "z3.nii.gz")
    (out / "labels.csv").write_text("filename,label\n" + "".join(f"{v}.nii.gz,a\n" for v in VARIANTS))


def before(path: Path, target: tuple[int, ...]) -> np.ndarray:
    """How ingest read a volume before: the stored array, normalised, padded to a cube in voxels, resized."""
    import nibabel as nib

    arr = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    return resize(normalise(arr)[None], target)


def measure(name: str, t1: np.ndarray, affine: np.ndarray, side: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_variants(t1, affine, folder)
        raw = read_folder(folder)
        t0 = time.perf_counter()
        now = prepare(raw, DataConfig(source=str(folder), spatial_dims=3, image_size=side, depth=side))
        seconds = (time.perf_counter() - t0) / len(VARIANTS)
        old = [before(folder / f"{v}.nii.gz", (side,) * 3) for v in VARIANTS]
    images = now["images"]
    return {"brain": name, "side": side, "seconds_per_volume": seconds,
            "stored_spacing_mm": [float(np.linalg.norm(a[:3, 0])) for a in now["affine"]],
            "fov": {v: float(np.abs(images[i] - images[0]).mean()) for i, v in enumerate(VARIANTS[1:], 1)},
            "before": {v: float(np.abs(old[i] - old[0]).mean()) for i, v in enumerate(VARIANTS[1:], 1)},
            "mean_intensity": float(images[0].mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=64, help="the stored cube's side (voxels)")
    parser.add_argument("--no-table", action="store_true", help="do not add rows to RESULTS.md")
    args = parser.parse_args(argv)
    rows = [measure(name, t1, aff, args.side) for name, (t1, _, aff) in volumes().items()]
    date, machine = dt.date.today().isoformat(), machine_name()
    out = ROOT / "benchmarks" / "results" / f"{date}-{machine}-geometry.json"
    out.write_text(json.dumps({"date": date, "machine": machine, "rows": rows}, indent=2))
    for r in rows:
        print(json.dumps(r))
        if not args.no_table:
            add_row("Geometry (`benchmarks/geometry.py`)",
                    ["date", "machine", "command", "brain", "stored block", "flipped (LPS) vs RAS: before -> fov",
                     "3 mm slices vs 1 mm: before -> fov", "stored spacing", "s per volume", "targets", "json"],
                    [date, machine, f"`benchmarks/geometry.py --side {args.side}`", r["brain"], f"{args.side}^3",
                     f"{r['before']['lps']:.4f} -> {r['fov']['lps']:.2e}",
                     f"{r['before']['z3']:.4f} -> {r['fov']['z3']:.4f}",
                     f"{min(r['stored_spacing_mm']):.2f}-{max(r['stored_spacing_mm']):.2f} mm",
                     f"{r['seconds_per_volume']:.2f}",
                     f"flipped <= 1e-4: {'holds' if r['fov']['lps'] <= 1e-4 else 'misses'}, 3 mm <= 0.01: "
                     f"{'holds' if r['fov']['z3'] <= 0.01 else 'misses'}",
                     f"[{out.name}](results/{out.name})"])


if __name__ == "__main__":
    main()
