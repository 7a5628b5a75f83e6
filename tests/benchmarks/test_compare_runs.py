"""benchmarks/compare_runs.py tells two identical runs from two that differ by one weight, one pixel or one number."""

import json

import numpy as np
import torch
import zarr

from benchmarks.compare_runs import main


def _run(root, weight=0.0, pixel=0.0, gain=0.1, seconds=1.0):
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"ema": {"w": torch.tensor([1.0, weight])}}, root / "checkpoints" / "model.pt")
    group = zarr.open_group(str(root / "synthetic" / "v0001.zarr"), mode="w", zarr_format=3)
    group.create_array("images", data=np.array([[0.5, pixel]], np.float32))
    (root / "report.json").write_text(json.dumps({"gain": gain, "train_seconds": seconds, "arms": [1, 2]}))
    return root


def test_identical_runs_pass_and_any_difference_fails(tmp_path, capsys):
    base = _run(tmp_path / "a")
    assert main([str(base), str(_run(tmp_path / "b", seconds=9.0))]) == 0  # timings do not count
    assert "3 of 3 numbers equal; identical" in capsys.readouterr().out
    for name, changed in (("w", {"weight": 1e-7}), ("p", {"pixel": 1e-7}), ("g", {"gain": 0.2})):
        assert main([str(base), str(_run(tmp_path / name, **changed))]) == 1
    out = capsys.readouterr().out
    assert "EMA weights DIFFER" in out and "1 images DIFFER" in out and "['.gain']" in out
