"""Networks: a MONAI `DiffusionModelUNet` used as a class-conditional velocity field v(x_t, t, y).

The UNet's sinusoidal time embedding takes real-valued inputs, so t in [0, 1] is scaled by
`TIME_SCALE` (to the 0..1000 range the embedding frequencies were designed for) and never rounded.
Class labels use the UNet's class embedding with one extra "null" class (index `num_classes`) used
for classifier-free guidance.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from motfm_core.config import ModelConfig

TIME_SCALE = 1000.0


class VelocityUNet(nn.Module):
    """v(x, t, y): x (B, C, H, W[, D]) in data space, t (B,) in [0, 1], y (B,) class ids (num_classes = null)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = DiffusionModelUNet(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.in_channels,
            out_channels=cfg.in_channels,
            num_res_blocks=cfg.num_res_blocks,
            channels=tuple(cfg.channels),
            attention_levels=tuple(cfg.attention_levels),
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels,
            num_class_embeds=cfg.num_classes + 1,
        )

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t.float() * TIME_SCALE, class_labels=y)


def build_model(cfg: ModelConfig) -> VelocityUNet:
    """Velocity network for `cfg` (weights freshly initialised)."""
    return VelocityUNet(cfg)


def guided_velocity(model: VelocityUNet, y: torch.Tensor, guidance: float = 1.0):
    """Velocity function of (x, t) for labels y; guidance w != 1 mixes in the null-class velocity.

    v = v_null + w (v_y - v_null): w = 1 is the conditional model (one network pass per call),
    w = 0 the unconditional one; other w evaluate both in one batched pass.
    """

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return model(x, t, y)
        null = torch.full_like(y, model.null_class)
        if guidance == 0.0:
            return model(x, t, null)
        v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        v_cond, v_null = v.chunk(2)
        return v_null + guidance * (v_cond - v_null)

    return velocity
