"""Every choice of the configuration, as a type: the config fields are typed with them, and `check_choices` (every
validate()), the CLI's argparse choices, Prefect's parameter schema and `motfm config` all read them from here."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Coupling", "Compression", "DdimSpacing", "EnhanceTask", "Fit", "GradientCheckpointing", "Intensity",
           "MaskConditioning", "MaskSource", "ModelSize", "Precision", "Prediction", "Solver", "SOLVER_CHOICES",
           "Space", "SpatialDims", "TimeSampling"]

Solver = Literal["euler", "midpoint", "heun", "rk4", "dopri5", "rflow", "ddpm", "ddim"]
DdimSpacing = Literal["linspace", "trailing"]
ModelSize = Literal["small", "medium", "large"]
MaskConditioning = Literal["auto", "none", "concat", "controlnet"]
MaskSource = Literal["auto", "train", "deformed", "generated"]
EnhanceTask = Literal["denoise", "superres"]
GradientCheckpointing = Literal["auto", "on", "off"]
Space = Literal["pixel", "latent"]
Fit = Literal["auto", "fov", "crop", "resize"]
Intensity = Literal["auto", "percentile", "ct"]
SpatialDims = Literal[2, 3]
Prediction = Literal["velocity", "epsilon"]
TimeSampling = Literal["uniform", "logit_normal"]
Coupling = Literal["independent", "ot", "sinkhorn"]
Compression = Literal["zstd", "none"]
Precision = Literal["auto", "bf16", "fp32"]
SOLVER_CHOICES: tuple[str, ...] = get_args(Solver)
