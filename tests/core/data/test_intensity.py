"""Intensity by modality: CT keeps its Hounsfield units (a fixed window, stored per sample, so images map back), MR
and photos keep their per-image percentiles, and values that cannot be HU are refused as CT."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from motfm_core.config import DataConfig
from motfm_core.data.ingest import prepare
from motfm_core.data.readers import read_folder
from tests.core.data.test_readers import _slice


def ct_series(folder, hu: np.ndarray, spacing=(0.8, 0.8), thickness=2.0) -> None:
    """A CT series of `hu` (H, W, slices) in Hounsfield units: stored as uint16 with intercept -1024, one file per
    slice, positioned along +z."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    for k in range(hu.shape[-1]):
        _slice(folder / f"IM{k:03d}", hu[..., k].astype(np.float64), thickness * k, uid, k + 1, slope=1.0,
               intercept=-1024.0, spacing=spacing, modality="CT")


def phantom_hu(seed: int, shape=(20, 20, 6)) -> np.ndarray:
    """Air around a soft-tissue body with a bone rod: integer HU from -1000 to ~1200."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, np.int32)
    h, w = shape[:2]
    hu[3:h - 3, 4:w - 4] = 40 + rng.integers(-20, 20, (h - 6, w - 8, shape[2]))
    hu[h // 2 - 1:h // 2 + 2, w // 2 - 1:w // 2 + 2] = 900 + 100 * seed
    return hu


@pytest.fixture
def ct_folder(tmp_path):
    rows = ["filename,label,subject"]
    for i in range(3):
        ct_series(tmp_path / f"ct{i}", phantom_hu(i))
        rows.append(f"ct{i},{'ab'[i % 2]},p{i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_ct_is_stored_in_its_hu_window_and_maps_back_to_hu(ct_folder):
    raw = read_folder(ct_folder)
    assert raw.modalities == ["CT"] * 3
    cfg = DataConfig(source=str(ct_folder), image_size=16)  # 2D: slices, resized in-plane
    out = prepare(raw, cfg)
    np.testing.assert_array_equal(out["intensity"], np.tile([[-1000.0, 1000.0]], (len(out["images"]), 1, 1)))
    assert set(out["modes"]) == {"ct"}
    # on a grid that needs no resampling (1 mm in, 1 mm out, the target the volume's shape), the stored values
    # written back as lo + x (hi - lo) are the file's HU within the window, to within one HU
    iso = ct_folder / "iso"
    rows = ["filename,label,subject"]
    for i in range(3):
        ct_series(iso / f"s{i}", phantom_hu(i, (16, 16, 8)), spacing=(1.0, 1.0), thickness=1.0)
        rows.append(f"s{i},{'ab'[i % 2]},p{i}")
    (iso / "labels.csv").write_text("\n".join(rows) + "\n")
    one = read_folder(iso)
    vol = prepare(one, DataConfig(source=str(iso), spatial_dims=3, image_size=16, depth=8, fit="crop", spacing_mm=1.0))
    lo, hi = vol["intensity"][0, 0]
    back = lo + vol["images"][0, 0] * (hi - lo)
    np.testing.assert_allclose(back, np.clip(one.images[0][0], -1000, 1000), atol=1.0)


def test_mr_keeps_percentiles_and_ct_is_refused_on_values_that_are_not_hu(ct_folder, tmp_path):
    import nibabel as nib

    mr = tmp_path / "mr"
    mr.mkdir()
    rows = ["filename,label,subject"]
    for i in range(3):
        vol = np.random.default_rng(i).random((12, 12, 8)).astype(np.float32) * 800  # MR: 0..800, no air below 0
        nib.save(nib.Nifti1Image(vol, np.eye(4)), mr / f"v{i}.nii.gz")
        rows.append(f"v{i}.nii.gz,{'ab'[i % 2]},p{i}")
    (mr / "labels.csv").write_text("\n".join(rows) + "\n")
    raw = read_folder(mr)
    out = prepare(raw, DataConfig(source=str(mr), spatial_dims=3, image_size=8, depth=8))
    assert set(out["modes"]) == {"percentile"} and out["intensity"].shape == (3, 1, 2)
    assert np.all(out["intensity"][:, 0, 0] < out["intensity"][:, 0, 1])
    with pytest.raises(ValueError, match=r"v0.nii.gz: data.intensity='ct' but its values .* cannot be Hounsfield"):
        prepare(raw, DataConfig(source=str(mr), spatial_dims=3, image_size=8, depth=8, intensity="ct"))


def test_a_ct_window_must_be_low_to_high():
    with pytest.raises(ValueError, match="data.ct_window must be"):
        DataConfig(ct_window=(500.0, -500.0)).validate()
