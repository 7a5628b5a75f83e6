"""Volumes read as the field reads them: the same anatomy stored flipped or at another spacing becomes the same
stored block, an anisotropic volume is not squashed, the stored grid's affine is kept, and affines that cannot
place voxels (or a label map on another grid) are refused by name."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import zarr

from benchmarks.geometry import write_variants
from motfm_core.config import DataConfig
from motfm_core.data.brain import volumes
from motfm_core.data.geometry import fit_volume, spacing_of
from motfm_core.data.ingest import ingest
from motfm_core.data.preprocess import normalise
from motfm_core.data.readers import read_nifti

TARGET = (48, 48, 48)


def _fitted(path) -> np.ndarray:
    """A NIfTI file as the ingest stores it at `fit="fov"`: read (RAS), fitted, then normalised."""
    image = read_nifti(path)
    return normalise(fit_volume(image.pixels[None], None, image.affine, TARGET, "fov")[0])


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """The bundled MNI152 T1 brain as written by three sites: RAS at 1 mm, flipped to LPS (the affine saying so),
    and with 3 mm slices (each the mean of three 1 mm slices, as a thick acquisition integrates them)."""
    t1, _, aff = volumes()["mni152"]
    out = tmp_path_factory.mktemp("brain")
    write_variants(t1, aff, out)  # the benchmark's own three files
    return out


def test_the_same_anatomy_stored_flipped_is_the_same_block(brain):
    assert read_nifti(brain / "lps.nii.gz").orientation == "LPS"
    assert np.abs(_fitted(brain / "ras.nii.gz") - _fitted(brain / "lps.nii.gz")).mean() <= 1e-4


def test_the_same_anatomy_at_3_mm_slices_is_nearly_the_same_block(brain):
    ras, thick = _fitted(brain / "ras.nii.gz"), _fitted(brain / "z3.nii.gz")
    assert np.abs(ras - thick).mean() <= 0.01  # the old voxel-cube resize gave 0.038 at 64^3


def test_fov_keeps_the_aspect_in_millimetres_and_records_the_grid():
    """A 20 x 20 x 5-voxel box at 1 x 1 x 4 mm is a 20 mm cube: stored as a cube, not squashed along its coarse
    axis, at one isotropic spacing, its affine mapping stored voxels to the same millimetres."""
    vol = np.zeros((40, 40, 12), np.float32)
    vol[10:30, 10:30, 4:9] = 1.0
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    x, _, grid = fit_volume(vol[None], None, affine, (32, 32, 32), "fov")
    inside = np.argwhere(x[0] > 0.5)
    extent = inside.max(0) - inside.min(0) + 1
    assert extent.max() - extent.min() <= 1 and extent.min() >= 30  # a cube filling the view
    assert np.allclose(spacing_of(grid), spacing_of(grid)[0], rtol=0.05)  # one spacing for every axis
    centre_mm = (grid @ np.array([*(inside.min(0) + inside.max(0)) / 2, 1.0]))[:3]
    np.testing.assert_allclose(centre_mm, (affine @ np.array([19.5, 19.5, 6.0, 1.0]))[:3], atol=1.0)


@pytest.mark.parametrize("fit", ["fov", "crop"])
def test_the_smoothing_is_monais_to_float_rounding(fit):
    """`fit_volume` smooths with scipy what MONAI's Resize(anti_aliasing=True) (fov) or GaussianSmooth (crop, before
    Spacing) smooths with a conv3d: the same kernel and padding, so the stored volume differs by float rounding only."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import GaussianSmooth, Resize, ResizeWithPadOrCrop, Spacing, SpatialCrop

    rng = np.random.default_rng(0)
    vol = np.zeros((2, 70, 64, 30), np.float32)
    vol[:, 3:67, 5:60, 2:28] = rng.random((2, 64, 55, 26), dtype=np.float32)  # 1 x 1 x 2.5 mm: 64 x 55 x 65 mm
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    x, _, grid = fit_volume(vol, None, affine, (32, 32, 32), fit, spacing_mm=2.0)
    t = MetaTensor(torch.from_numpy(vol), affine=torch.as_tensor(affine))
    if fit == "fov":  # the crop, the size and the resize as MONAI would do them with its own anti-aliasing
        t = SpatialCrop(roi_start=(3, 5, 2), roi_end=(67, 60, 28))(t)
        extent = np.array([64, 55, 26]) * (1.0, 1.0, 2.5)
        size = tuple(int(min(32, round(e / max(extent / 32)))) for e in extent)  # one spacing, the largest that fits
        t = Resize(size, mode="trilinear", anti_aliasing=True)(t)
    else:
        t = SpatialCrop(roi_start=(2, 0, 1), roi_end=(68, 64, 29))(t)  # the target's extent around the centre, + 1
        t = Spacing(pixdim=(2.0, 2.0, 2.0), mode="trilinear")(GaussianSmooth(sigma=(0.5, 0.5, 0.0))(t))
    want = ResizeWithPadOrCrop((32, 32, 32))(t)
    np.testing.assert_allclose(x, want.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(grid, np.asarray(want.affine), atol=1e-9)


def test_crop_resamples_to_a_fixed_spacing_around_the_foreground():
    vol = np.zeros((60, 60, 20), np.float32)
    vol[5:25, 30:50, 8:12] = 1.0
    mask = (vol > 0).astype(np.uint8)[None]
    x, m, grid = fit_volume(vol[None], mask, np.diag([1.0, 1.0, 3.0, 1.0]), (16, 16, 16), "crop", spacing_mm=2.0)
    assert x.shape == (1, 16, 16, 16) and m is not None and m.dtype == np.uint8
    np.testing.assert_allclose(spacing_of(grid), (2.0, 2.0, 2.0), atol=0.05)
    assert set(np.unique(m)) == {0, 1} and (m[0] == 1).sum() == pytest.approx((x[0] > 0.5).sum(), rel=0.15)


def _folder(tmp_path, files: dict[str, tuple[np.ndarray, np.ndarray]], masks: bool = False):
    rows = ["filename,label,subject" + (",mask" if masks else "")]
    for i, (name, (vol, aff)) in enumerate(files.items()):
        nib.save(nib.Nifti1Image(vol, aff), tmp_path / name)
        extra = ""
        if masks:
            nib.save(nib.Nifti1Image((vol > 0.5).astype(np.uint8), aff), tmp_path / f"m_{name}")
            extra = f",m_{name}"
        rows.append(f"{name},{'ab'[i % 2]},s{i}{extra}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")


def _blob(seed: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vol = np.zeros((24, 24, 12), np.float32)
    c = rng.integers(8, 16, 3)
    vol[c[0] - 5:c[0] + 5, c[1] - 4:c[1] + 6, 3:9] = 1.0 + rng.random()
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    if flip:
        vol, aff = np.ascontiguousarray(vol[::-1]), aff @ np.array([[-1, 0, 0, 23], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                     [0, 0, 0, 1.0]])
    return vol, aff


def test_a_3d_folder_ingests_in_millimetres_with_its_notes_and_affines(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _folder(src, {f"v{i}.nii.gz": _blob(i, flip=i % 3 == 0) for i in range(12)}, masks=True)
    store = ingest(DataConfig(source=str(src), spatial_dims=3, image_size=16, depth=16), tmp_path / "d.zarr")
    root = zarr.open_group(str(store), mode="r")
    affine = np.asarray(root["affine"][:])
    assert affine.shape == (12, 4, 4) and np.isfinite(affine).all()
    assert all(nib.aff2axcodes(a) == ("R", "A", "S") for a in affine)
    notes = " ".join(root.attrs["notes"])
    assert "4 of 12 volumes reoriented to RAS (4 from LAS)" in notes
    assert "12 volumes resampled from 1 x 1 x 2 mm (12)" in notes and "isotropic (fov" in notes
    assert root.attrs["source_orientation"]["v0.nii.gz"] == "LAS"
    masks = np.asarray(root["masks"][:])
    assert set(np.unique(masks)) <= {0, 1} and masks.any()


@pytest.mark.parametrize("case, fix", [
    ("zero", "affine is singular"),
    ("shear", "affine is sheared"),
    ("grid", "label map on another grid"),
])
def test_affines_that_cannot_place_voxels_are_refused_by_name(tmp_path, case, fix):
    src = tmp_path / "src"
    src.mkdir()
    files = {f"v{i}.nii.gz": _blob(i) for i in range(12)}  # enough subjects for both classes in every split
    vol, aff = files["v2.nii.gz"]
    if case == "shear":
        sheared = aff.copy()
        sheared[0, 1] = 0.3
        files["v2.nii.gz"] = (vol, sheared)
    _folder(src, files, masks=True)
    if case == "zero":  # a header whose pixdim holds a 0 (no sform or qform): nibabel places it by pixdim alone
        bad = nib.Nifti1Image(vol, None)
        bad.header.set_zooms((1.0, 0.0, 2.0))
        nib.save(bad, src / "v2.nii.gz")
    if case == "grid":  # the label map written at another spacing than its image
        nib.save(nib.Nifti1Image((vol > 0.5).astype(np.uint8), np.diag([1.0, 1.0, 3.0, 1.0])), src / "m_v2.nii.gz")
    with pytest.raises(ValueError, match=fix) as e:
        ingest(DataConfig(source=str(src), spatial_dims=3, image_size=16, depth=16, workers=1), tmp_path / "d.zarr")
    assert "v2.nii.gz" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "d.zarr").exists()


def test_fit_settings_are_refused_where_they_cannot_apply():
    with pytest.raises(ValueError, match="data.spacing_mm > 0"):
        DataConfig(spatial_dims=3, fit="crop").validate()
    with pytest.raises(ValueError, match="in 3D runs"):
        DataConfig(fit="fov").validate()
