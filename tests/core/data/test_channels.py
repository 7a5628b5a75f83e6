"""Several sequences per sample: image_* columns or a 4-D NIfTI become one C-channel sample, on one grid; the
reference set (four sequences, 0/1/2/4 label maps, mixed orientations and spacings) ingests whole; a missing
sequence or sequences of different fields of view are refused by subject."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import zarr

from motfm_core.config import DataConfig
from motfm_core.data.ingest import ingest
from motfm_core.data.readers import read_folder
from motfm_core.data.reference_set import SEQUENCES, write_reference_set


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Ten subjects of the reference set at 4 mm (files of 60 x 60 x 39, or 67 x 67 x 13 at 3.6 x 3.6 x 12 mm)."""
    return write_reference_set(tmp_path_factory.mktemp("ref") / "set", subjects=10, seed=0, voxel=4.0)


def test_the_reference_set_looks_like_the_data_users_bring(reference):
    raw = read_folder(reference)
    assert raw.channel_names == list(SEQUENCES) and raw.class_names == ["hgg", "lgg"]
    assert all(img.shape[0] == 4 for img in raw.images)
    assert set(raw.orientations) == {"RAS", "LPS", "LAS"}
    assert {tuple(np.round(s, 1)) for s in raw.spacings} == {(4.0, 4.0, 4.0), (3.6, 3.6, 12.0)}
    values = set().union(*(np.unique(m).tolist() for m in raw.masks if m is not None))
    assert values == {0, 1, 2, 4}
    first = nib.load(reference / "sub-000" / "sub-000_t1.nii.gz")
    assert first.get_data_dtype() == np.int16


def test_four_sequences_ingest_as_four_channels_with_the_label_map(reference, tmp_path):
    store = ingest(DataConfig(source=str(reference), spatial_dims=3, image_size=32, depth=32), tmp_path / "d.zarr")
    root = zarr.open_group(str(store), mode="r")
    assert root["images"].shape == (10, 4, 32, 32, 32)
    assert root.attrs["channel_names"] == list(SEQUENCES)
    assert root["intensity"].shape == (10, 4, 2)
    masks = np.asarray(root["masks"][:])
    assert set(np.unique(masks)) == {0, 1, 2, 3}  # 0/1/2/4 read as classes, in order
    notes = " ".join(root.attrs["notes"])
    assert "mask values read as classes: 0 -> 0, 1 -> 1, 2 -> 2, 4 -> 3" in notes
    assert "reoriented to RAS" in notes and "3.6 x 3.6 x 12 mm" in notes
    # each channel normalised on its own: every one spans [0, 1] inside the head
    images = np.asarray(root["images"][:])
    assert np.allclose(images.max(axis=(0, 2, 3, 4)), 1.0)


def test_a_4d_nifti_is_one_sample_of_its_sequences(tmp_path):
    rows = ["filename,label,subject"]
    for i in range(3):
        vol = np.zeros((12, 12, 8, 3), np.float32)
        vol[3:9, 3:9, 2:6] = np.array([1.0, 2.0, 3.0]) * (i + 1)
        nib.save(nib.Nifti1Image(vol, np.diag([-1.0, 1.0, 1.0, 1.0])), tmp_path / f"v{i}.nii.gz")
        rows.append(f"v{i}.nii.gz,{'ab'[i % 2]},p{i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    raw = read_folder(tmp_path)
    assert raw.channel_names == ["channel0", "channel1", "channel2"] and raw.images[0].shape == (3, 12, 12, 8)
    assert raw.orientations[0] == "LAS" and raw.images[1][2].max() == 6.0


def _two_sequences(tmp_path, second_affine: np.ndarray, second_shape=(16, 16, 8)):
    rows = ["subject,label,image_t1,image_t2"]
    for i in range(3):
        vol = np.zeros((16, 16, 8), np.float32)
        vol[4:12, 4:12, 2:6] = 1.0 + i
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / f"t1_{i}.nii.gz")
        other = np.ones(second_shape if i == 1 else (16, 16, 8), np.float32)
        nib.save(nib.Nifti1Image(other, second_affine if i == 1 else np.eye(4)), tmp_path / f"t2_{i}.nii.gz")
        rows.append(f"p{i},{'ab'[i % 2]},t1_{i}.nii.gz,t2_{i}.nii.gz")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")


def test_sequences_on_another_grid_of_the_same_view_are_resampled(tmp_path):
    """A t2 at 2 mm over the same 16 x 16 x 8 mm view is resampled onto the t1's 1 mm grid."""
    half = np.diag([2.0, 2.0, 2.0, 1.0])
    half[:3, 3] = 0.5  # the centre of its first voxel covers the first two 1 mm voxels
    _two_sequences(tmp_path, half, second_shape=(8, 8, 4))
    raw = read_folder(tmp_path)
    assert raw.images[1].shape == (2, 16, 16, 8)


def test_sequences_of_another_field_of_view_are_refused_by_subject(tmp_path):
    moved = np.eye(4)
    moved[:3, 3] = (40.0, 0.0, 0.0)  # the same shape, 40 mm to the side
    _two_sequences(tmp_path, moved)
    with pytest.raises(ValueError, match=r"subject p1: sequence t2 covers another field of view than t1"):
        read_folder(tmp_path)


def test_a_subject_missing_a_sequence_is_refused_by_subject(tmp_path):
    _two_sequences(tmp_path, np.eye(4))
    csv = tmp_path / "labels.csv"
    csv.write_text(csv.read_text().replace("t2_2.nii.gz", ""))
    with pytest.raises(ValueError, match=r"no image_t2 file for \['p2'\]"):
        read_folder(tmp_path)
