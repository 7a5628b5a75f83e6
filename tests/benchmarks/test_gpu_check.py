"""CI runs the GPU check's dry run (`benchmarks/gpu_check.py --cpu`): the script a lent GPU machine will run in one
go, on tiny sizes on the CPU, so that it is known to work before the GPU minutes are spent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "gpu-check.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "cpu dry run" and r["failed_steps"] == [], res.stdout[-3000:]
    assert r["train"]["steps"] == 4 and r["train"]["s_per_step"] > 0
    assert r["bound"]["images_per_s_nfe10"] > 0
    assert r["sample"]["images"] == 12 and r["sample"]["workers"] == 1 and r["sample"]["images_per_s"] > 0
    cmp = r["bf16_vs_fp32"]  # CPU autocast really ran in bf16: the two sets differ, within the stated tolerance
    assert cmp["images"] == 4 and 0 < cmp["mean_abs_diff"] and cmp["within_tolerance"], cmp
    assert r["three_d"]["shape"] == [1, 16, 16, 16] and r["three_d"]["finite"]
    assert "tests/core/test_training.py" in r["data_parallel"]["skipped"]  # two gloo ranks are trained there
    w = r["writer"]  # the disk's rates, and whether the sampler just measured would wait on them
    assert w["raw_mb_s"] > 0 and w["shard_1024_uncompressed"]["images_per_s"] > 0
    assert isinstance(w[f"shard_{r['sizes']['shard_size']}_zstd"]["sampler_waits"], bool)
    for name in ("sizes_2d_32_small", "sizes_3d_16_small"):  # the size-aware networks: plan against a measured step
        sized = r[name]
        assert sized["planned_gb"] > 0 and sized["measured_gb"] > 0 and sized["s_per_step"] > 0, sized
    latent = r["latent_3d"]  # latent flow matching: a training step and one decoded volume
    assert latent["latent"] == [4, 4, 4, 4] and latent["image"] == [1, 16, 16, 16] and latent["finite"], latent
