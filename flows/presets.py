"""Named budgets for the CLI (`--preset`); explicit arguments win over them.

"full" is the default budget (the benchmarks' recipe). "demo" is the short budget of `make demo` (its
target: 15 minutes on a slow 2-core CPU, which RESULTS.md estimates it now misses there): short generators, one
low-data share, one synthetic ratio, both generators sampling on one Dask
cluster; the others trade budget for image size or dimensionality. The timings each was sized from are in
benchmarks/RESULTS.md (demo and test timings, 3D, 2D at native resolution, 3D at clinical size). Pure data: the
`motfm config --preset` reference reads it without starting Prefect.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {},
    # benchmarks/novelty.py: the full recipe at 800 steps for the all-data generator (no low-data share: its
    # leak-free gain is measured by the demo and the full budget)
    "bench": {"train": {"steps": 800}, "eval": {"real_fractions": [], "nfe_curve": [1, 4, 10]}},
    "demo": {"train": {"steps": 180, "batch_size": 16, "warmup_steps": 20, "checkpoint_every": 60},
             "sample": {"samples_per_class": 40},
             "eval": {"ratios": [1.0], "real_fractions": [0.25], "nfe_curve": [1, 4, 10], "nfe_arms": [1],
                      "steps": 160, "seg_steps": 100}},
    # `make demo-3d`: the DAG in 3D on sub-volume blocks of the bundled brains (32 x 32 x 8 voxels at 2 mm). The
    # small UNet's 3D step is three times the cost of this narrower one without attention levels (MONAI's mid block
    # still attends over its 8 x 8 x 2 bottleneck); no low-data generator (it would double the training)
    "demo-3d": {"data": {"spatial_dims": 3, "image_size": 32, "depth": 8},
                "model": {"channels": [16, 32, 32], "attention_levels": [False, False, False],
                          "num_head_channels": 16},
                # 450 steps: at 150 the blocks were visibly noisy; five seeds: the real arm's accuracy alone varies
                # widely across seeds, so two made a verdict of noise (RESULTS.md, "Why the 3D demo said hurt")
                "train": {"steps": 450, "batch_size": 8, "warmup_steps": 20, "checkpoint_every": 150},
                "sample": {"samples_per_class": 20, "batch_size": 16},
                "eval": {"seeds": [0, 1, 2, 3, 4], "ratios": [1.0], "real_fractions": [], "nfe_curve": [1, 4],
                         "nfe_curve_samples": 8, "steps": 120, "seg_steps": 80}},
    # 2D at the bundled brains' native 1 mm: 192 x 192 axial slices, the size-aware network (five levels, attention
    # at 12 x 12); short budgets for a 2-core CPU (its timings in RESULTS.md)
    "clinical-2d": {"data": {"image_size": 192},
                    "train": {"steps": 200, "batch_size": 4, "warmup_steps": 20, "checkpoint_every": 50},
                    "sample": {"samples_per_class": 16, "batch_size": 8},
                    "eval": {"seeds": [0, 1], "ratios": [1.0], "real_fractions": [], "nfe_curve": [1, 4],
                             "nfe_curve_samples": 4, "steps": 100, "seg_steps": 60, "batch_size": 16}},
    # 3D at clinical size: 128^3 blocks at 1 mm (most of a brain; split by brain), flow matching in the latent space
    # of a 4x autoencoder (4 x 32^3 latents); short budgets for a 2-core CPU (its timings in RESULTS.md)
    "clinical-3d": {"data": {"spatial_dims": 3, "image_size": 128, "depth": 128, "voxel_mm": 1},
                    "model": {"space": "latent"},
                    "autoencoder": {"steps": 800, "checkpoint_every": 100},
                    "train": {"steps": 250, "batch_size": 4, "warmup_steps": 20, "checkpoint_every": 50},
                    "sample": {"samples_per_class": 10, "batch_size": 4},
                    "eval": {"seeds": [0, 1], "ratios": [1.0], "real_fractions": [], "nfe_curve": [1, 4],
                             "nfe_curve_samples": 2, "steps": 45, "seg_steps": 30, "batch_size": 4,
                             "downsample": 2}},
}
