"""Export in the source's units: a CT dataset's real images write back as NIfTI in Hounsfield units, within one
unit, on their stored grid; an existing target is refused."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from motfm_core.config import DataConfig
from motfm_core.data.export import export_real
from motfm_core.data.ingest import ingest
from motfm_core.data.readers import read_folder
from tests.core.data.test_intensity import ct_series, phantom_hu


def test_a_ct_series_exports_back_in_hounsfield_units(tmp_path):
    src = tmp_path / "ct"
    rows = ["filename,label,subject"]
    for i in range(12):
        ct_series(src / f"s{i}", phantom_hu(i % 3, (16, 16, 8)), spacing=(1.0, 1.0), thickness=1.0)
        rows.append(f"s{i},{'ab'[i % 2]},p{i}")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    # a grid that needs no resampling: what comes back is the series' own HU
    cfg = DataConfig(source=str(src), spatial_dims=3, image_size=16, depth=8, fit="crop", spacing_mm=1.0)
    store = ingest(cfg, tmp_path / "d.zarr")
    out = export_real(store, tmp_path / "nii")
    raw = read_folder(src)
    original = {group: image[0] for group, image in zip(raw.groups, raw.images)}
    back = read_folder(out / "train")
    assert back.images and all(img.dtype == np.float32 for img in back.images)
    for img, subject, path in zip(back.images, back.groups, back.files):
        assert nib.load(path).get_data_dtype() == np.int16  # HU, as integers
        np.testing.assert_allclose(img[0], np.clip(original[subject], -1000, 1000), atol=1.0)
    with pytest.raises(ValueError, match="already exists"):
        export_real(store, tmp_path / "nii")
