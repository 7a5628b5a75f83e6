"""A reference set like the data users bring, written from the bundled brains, seeded: for tests and benchmarks at
users' geometry and scale, since no registry package ships a multi-subject medical dataset.

Every subject is one of the bundled brains (MNI152, and Colin27 where mricron-data is installed) under its own small
random affine (scale, rotation, shift), with a lesion of varying size and place, in four MR sequences of different
contrasts (t1, t1ce, t2, flair, from the T1 and the tissue map) and a BraTS-style label map: 1 necrotic core, 2 edema,
4 enhancing rim. Two classes: `hgg` (an enhancing rim around a necrotic core) and `lgg` (no enhancement). Files are
int16 `.nii.gz` of 240 x 240 x 155 at 1 mm (or 0.9 x 0.9 x 3 mm over the same field of view), stored in mixed
orientations (RAS, LPS, LAS): each voxel is sampled from the brain at its own world position, so the files differ in
geometry only, as a team's scans do.

    python -m motfm_core.data.reference_set OUT --subjects 24 --seed 0
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["GEOMETRIES", "SEQUENCES", "write_reference_set"]

SEQUENCES = ("t1", "t1ce", "t2", "flair")
# (axis codes, spacing mm) the subjects cycle through
GEOMETRIES = (("RAS", (1.0, 1.0, 1.0)), ("LPS", (1.0, 1.0, 1.0)), ("LAS", (1.0, 1.0, 1.0)),
              ("RAS", (0.9, 0.9, 3.0)), ("LPS", (0.9, 0.9, 3.0)))
# tissue (0 background, 1 CSF, 2 GM, 3 WM) -> intensity per sequence; lesion labels override (1, 2, 4)
CONTRAST = {"t2": (0.0, 1.0, 0.6, 0.35), "flair": (0.0, 0.15, 0.55, 0.45)}
LESION = {"t1": {1: 0.25, 2: 0.55, 4: 0.5}, "t1ce": {1: 0.25, 2: 0.55, 4: 1.0}, "t2": {1: 0.9, 2: 0.85, 4: 0.7},
          "flair": {1: 0.5, 2: 0.95, 4: 0.8}}


@dataclass(frozen=True)
class Subject:
    """One subject's draw: which brain, its affine from subject space to the brain's world, its lesion, class and
    the geometry its files are stored in."""

    brain: str
    warp: np.ndarray  # 4 x 4: subject world mm -> brain world mm
    centre: np.ndarray  # lesion centre, subject world mm
    radius: float  # core radius, mm
    edema: float  # edema radius, mm
    label: str
    orientation: str
    spacing: tuple[float, ...]


def _draw(i: int, rng: np.random.Generator, brains: dict, voxel: float) -> Subject:
    names = sorted(brains)
    brain = names[i % len(names)]
    t1, tissue, affine = brains[brain]
    angle = np.deg2rad(rng.uniform(-6, 6))
    c, s = np.cos(angle), np.sin(angle)
    warp = np.eye(4)
    warp[:3, :3] = np.diag(rng.uniform(0.94, 1.06, 3)) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    warp[:3, 3] = rng.uniform(-4, 4, 3)
    white = np.argwhere(tissue == 3)
    centre_voxel = white[rng.integers(len(white))]
    centre_brain = (affine @ np.append(centre_voxel, 1.0))[:3]
    centre = np.linalg.solve(warp, np.append(centre_brain, 1.0))[:3]
    radius = float(rng.uniform(6, 16))
    orientation, spacing = GEOMETRIES[i % len(GEOMETRIES)]
    return Subject(brain, warp, centre, radius, radius * float(rng.uniform(1.5, 2.2)), ("hgg", "lgg")[i % 2],
                   orientation, tuple(s * voxel for s in spacing))


def _grid_affine(orientation: str, spacing: tuple[float, ...], shape: tuple[int, ...]) -> np.ndarray:
    """voxel -> world mm of a grid of `shape` at `spacing` stored in `orientation`, centred on the world origin."""
    signs = {"R": 1.0, "L": -1.0, "A": 1.0, "P": -1.0, "S": 1.0, "I": -1.0}
    affine = np.eye(4)
    for axis, code in enumerate(orientation):
        affine[axis, axis] = signs[code] * spacing[axis]
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return affine


def _sample(subject: Subject, brains: dict, affine: np.ndarray, shape: tuple[int, ...], thick: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1, tissue, label) on the file's grid: each voxel read from the brain at its world position (a thick
    slice as the mean of three points across it)."""
    from scipy import ndimage

    t1, tissue, brain_affine = brains[subject.brain]
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    offsets = (-1 / 3, 0.0, 1 / 3) if thick else (0.0,)
    to_brain = np.linalg.inv(brain_affine) @ subject.warp
    values, labels, world_mid = [], None, None
    for dz in offsets:
        pts = ijk.copy()
        pts[2] += dz
        world = affine @ np.vstack([pts, np.ones(pts.shape[1])])
        vox = (to_brain @ world)[:3]
        values.append(ndimage.map_coordinates(t1, vox, order=1, mode="constant", cval=0.0))
        if dz == 0.0:
            labels = ndimage.map_coordinates(tissue, vox, order=0, mode="constant", cval=0)
            world_mid = world[:3]
    assert labels is not None and world_mid is not None
    distance = np.linalg.norm(world_mid - subject.centre[:, None], axis=0)
    lesion = np.zeros(distance.shape, np.uint8)
    inside = labels > 0
    lesion[(distance < subject.edema) & inside] = 2
    lesion[(distance < subject.radius) & inside] = 1
    if subject.label == "hgg":
        lesion[(distance < subject.radius) & (distance >= 0.65 * subject.radius) & inside] = 4
    return (np.mean(values, axis=0).reshape(shape), labels.reshape(shape).astype(np.uint8), lesion.reshape(shape))


def _sequence(name: str, t1: np.ndarray, tissue: np.ndarray, lesion: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
    """One sequence's intensities (int16, 0..~1200): T1 as it is, the others from the tissue map, lesions by
    label, a smooth bias field and Rician-like noise inside the head."""
    from scipy import ndimage

    scale = float(np.percentile(t1[t1 > 0], 99)) if (t1 > 0).any() else 1.0
    if name in ("t1", "t1ce"):
        x = t1 / scale
    else:
        x = np.asarray(CONTRAST[name], np.float32)[tissue]
        x = ndimage.gaussian_filter(x, 0.7)
    for value, level in LESION[name].items():
        x = np.where(lesion == value, level, x)
    bias = ndimage.zoom(rng.uniform(0.9, 1.1, (3, 3, 3)), np.array(x.shape) / 3, order=1)[
        tuple(slice(0, s) for s in x.shape)]
    head = tissue > 0
    x = np.where(head, x * bias + rng.normal(0, 0.02, x.shape), 0.0)
    return np.clip(np.rint(x * 1000), 0, 32767).astype(np.int16)


FOV_MM = (240.0, 240.0, 155.0)  # BraTS's grid: 240 x 240 x 155 voxels of 1 mm


def write_reference_set(out: str | Path, subjects: int = 24, seed: int = 0, voxel: float = 1.0) -> Path:
    """Write `subjects` subjects into `out` (four sequences and a label map each, plus labels.csv with columns
    subject,label,image_t1,image_t1ce,image_t2,image_flair,mask); returns `out`. Every file covers FOV_MM; `voxel`
    scales every spacing (1: 240 x 240 x 155 at 1 mm, as users bring; tests use coarser, smaller files)."""
    import nibabel as nib

    from motfm_core.data.brain import volumes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    brains = volumes()
    rng = np.random.default_rng(seed)
    rows = ["subject,label," + ",".join(f"image_{s}" for s in SEQUENCES) + ",mask"]
    for i in range(subjects):
        subject = _draw(i, rng, brains, voxel)
        grid = tuple(int(round(n / s)) for n, s in zip(FOV_MM, subject.spacing))
        affine = _grid_affine(subject.orientation, subject.spacing, grid)
        t1, tissue, lesion = _sample(subject, brains, affine, grid, thick=subject.spacing[2] > 2 * subject.spacing[0])
        sid = f"sub-{i:03d}"
        files = []
        for name in SEQUENCES:
            data = _sequence(name, t1, tissue, lesion, rng)
            files.append(f"{sid}/{sid}_{name}.nii.gz")
            (out / sid).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), out / files[-1])
        nib.save(nib.Nifti1Image(lesion, affine), out / sid / f"{sid}_seg.nii.gz")
        rows.append(f"{sid},{subject.label}," + ",".join(files) + f",{sid}/{sid}_seg.nii.gz")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (created)")
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voxel", type=float, default=1.0, help="scales every spacing (1: 240 x 240 x 155 at 1 mm)")
    args = parser.parse_args(argv)
    print(write_reference_set(args.out, args.subjects, args.seed, args.voxel))


if __name__ == "__main__":
    main()
