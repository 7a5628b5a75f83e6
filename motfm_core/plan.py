"""The run's plan: the memory and FLOPs of every stage that trains or samples, on this device, before any work.

Pixel-space runs plan the flow's training step and sampling batch (`motfm_core.memory`); latent runs also plan the
autoencoder's training step and the decoding of one image (`motfm_core.autoencoder`). Each raises MemoryPlanError,
naming the fix, for what cannot fit.
"""

from __future__ import annotations

from motfm_core.autoencoder import autoencoder_plan
from motfm_core.config import PipelineConfig
from motfm_core.memory import plan_memory

__all__ = ["plan_run"]


def plan_run(cfg: PipelineConfig) -> str:
    """The plan's lines for a run of `cfg` (before the data is read: the data section's geometry, one channel)."""
    training, sampling = plan_memory(cfg.model, cfg.train, cfg.sample)
    lines = f"plan: {training.line()}; {sampling.line()}"
    if cfg.model.space == "latent":
        lines += "; " + autoencoder_plan(cfg.autoencoder, cfg.data.spatial_shape)
    return lines
