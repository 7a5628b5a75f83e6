"""A team's own multi-sequence 3D data through the whole DAG: four sequences in mixed orientations and spacings, a
0/1/2/4 label map; the generator, the synthetic store, the quality metrics (per channel), the segmenter and the
figures all see four channels."""

from __future__ import annotations

import json

import pytest
import zarr

from motfm_core.data.reference_set import SEQUENCES, write_reference_set
from tests.flows.test_cli import TINY_ARGS, _run

THREE_D = ["--set", "data.spatial_dims=3", "--set", "data.depth=16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run of the CLI on 12 subjects of the reference set at 8 mm (files of 30 x 30 x 19 voxels)."""
    tmp = tmp_path_factory.mktemp("multiseq")
    data = write_reference_set(tmp / "data", subjects=12, seed=1, voxel=8.0)
    args = [str(data) if a == "phantom:12" else a for a in TINY_ARGS]
    done = _run([*args, *THREE_D, "--run-name", "ms", "--output-root", str(tmp / "out")], tmp / "prefect")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "out" / "ms"


def test_four_sequences_reach_the_report_with_per_channel_quality_and_a_segmenter(run):
    report = (run / "report.md").read_text()
    assert f"channels {list(SEQUENCES)}" in report
    assert "Fine SWD of each channel alone" in report and all(f"{s} " in report for s in SEQUENCES)
    assert "3 foreground classes" in report  # the 0/1/2/4 label map: three lesion classes
    assert "mask values read as classes: 0 -> 0, 1 -> 1, 2 -> 2, 4 -> 3" in report
    quality = json.loads((run / "report.json").read_text())["evaluation"]["quality"]
    assert set(quality["synthetic_vs_test"]["swd_channels"]) == set(SEQUENCES)


def test_the_synthetic_store_holds_four_named_channels(run):
    root = zarr.open_group(str(run / "synthetic" / "latest"), mode="r")
    assert root["images"].shape[1:] == (4, 16, 16, 16)
    assert root.attrs["channel_names"] == list(SEQUENCES)
    assert (run / "samples.png").stat().st_size > 0


def test_the_run_exports_as_an_nnunet_dataset_that_passes_nnunets_own_check(run, tmp_path):
    import nibabel as nib
    import numpy as np
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from flows.motfm import main

    main(["export", str(run), "--to", "nnunet", str(tmp_path), "--dataset-id", "42", "--synthetic-ratio", "0.5"])
    folder = tmp_path / "Dataset042_ms"
    verify_dataset_integrity(str(folder), 1)  # nnU-Net's own check: raises on any inconsistency
    spec = json.loads((folder / "dataset.json").read_text())
    root = zarr.open_group(str(run / "dataset.zarr"), mode="r")
    train = np.nonzero(np.asarray(root["split"][:]) == 0)[0]
    assert spec["channel_names"] == {str(i): s for i, s in enumerate(SEQUENCES)}
    assert spec["labels"] == {"background": 0, "label_1": 1, "label_2": 2, "label_4": 3}
    assert spec["numTraining"] == len(train) + round(0.5 * len(train))
    real_cases = {int(p.name[len("real_"):-len(".nii.gz")]) for p in (folder / "labelsTr").glob("real_*")}
    assert real_cases == set(train.tolist())  # never a validation or test case
    affine = np.asarray(root["affine"][:])
    for i in train[:3]:  # every affine reads back with the stored spacing, in RAS
        nii = nib.load(folder / "imagesTr" / f"real_{i:05d}_0003.nii.gz")
        assert nib.aff2axcodes(nii.affine) == ("R", "A", "S")
        np.testing.assert_allclose(nii.header.get_zooms(), np.linalg.norm(affine[i][:3, :3], axis=0), rtol=1e-5)
    with pytest.raises(SystemExit) as e:  # the id is taken: refused, nothing overwritten
        main(["export", str(run), "--to", "nnunet", str(tmp_path), "--dataset-id", "42"])
    assert e.value.code == 2


def test_the_nifti_export_reads_back_as_a_dataset(run, tmp_path):
    from flows.motfm import main
    from motfm_core.data.readers import read_folder

    main(["export", str(run), "--to", "nifti", str(tmp_path / "nii"), "--real"])
    synthetic = read_folder(tmp_path / "nii" / "synthetic")
    assert synthetic.channel_names == list(SEQUENCES) and synthetic.images[0].shape == (4, 16, 16, 16)
    assert set(synthetic.orientations) == {"RAS"} and len(synthetic.images) == 6  # 3 per class
    for split in ("train", "val", "test"):
        assert len(read_folder(tmp_path / "nii" / "real" / split).images) > 0
