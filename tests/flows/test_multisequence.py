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
