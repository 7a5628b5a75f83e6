"""Networks: a MONAI `DiffusionModelUNet` used as a conditional velocity field v(x_t, t, y[, mask]).

The UNet's sinusoidal time embedding takes real-valued inputs, so t in [0, 1] is scaled by
`TIME_SCALE` (to the 0..1000 range the embedding frequencies were designed for) and never rounded.
Class labels use the UNet's class embedding with one extra "null" class (index `num_classes`) used
for classifier-free guidance. Segmentation masks condition the field either by channel concatenation
(one-hot mask channels appended to x_t) or through a MONAI `ControlNet` trained jointly with the UNet.

Attention (at `attention_levels`, and in the mid block, which MONAI's UNet always has at its deepest level) runs
through PyTorch's scaled dot-product attention (MONAI's `use_flash_attention`) on CUDA, and on a CPU where a level it
attends at is over the default token limit, where MONAI's einsum path would hold the whole attention map; at or
under it a CPU keeps the einsum path (the same weights either way; the results agree to ~1e-6, and the project's
CPU results were measured with the einsum path).
"""

from __future__ import annotations

import types
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import ControlNet, DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

from motfm_core.config import ModelConfig
from motfm_core.config.sizing import ATTENTION_TOKENS, attention_tokens
from motfm_core.errors import BadInput

__all__ = ["AttentionKernel", "build_model", "guided_velocity", "TIME_SCALE", "VelocityUNet"]

TIME_SCALE = 1000.0
AttentionKernel = Literal["auto", "sdpa", "einsum"]


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """A block's forward that recomputes its activations in backward while training (less memory, more compute)."""
    inner = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(inner, self, *args, use_reentrant=False, **kwargs)
    return inner(self, *args, **kwargs)


def _checkpoint_forward(block: nn.Module) -> None:
    """Make `block` recompute its activations in backward while training.

    The block itself stays in place (the UNet reads attributes such as `resnets` from its blocks, and
    state-dict keys stay unchanged); only its forward is replaced, by a method bound to the block, so that a
    deep copy (the EMA) runs its own weights, not the original's.
    """
    block.forward = types.MethodType(_checkpointed_forward, block)


def _unet_kwargs(cfg: ModelConfig) -> dict:
    return dict(spatial_dims=cfg.spatial_dims, num_res_blocks=cfg.num_res_blocks, channels=tuple(cfg.channels),
                attention_levels=tuple(cfg.attention_levels), norm_num_groups=cfg.norm_num_groups,
                num_head_channels=cfg.num_head_channels, num_class_embeds=cfg.num_classes + 1)


class VelocityUNet(nn.Module):
    """v(x, t, y, mask): x (B, C, H, W[, D]), t (B,) in [0, 1], y (B,) class ids (num_classes = null),
    mask (B, 1, H, W[, D]) integer labels in [0, mask_classes) when the model is mask-conditioned."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.mask_conditioning == "auto":
            raise ValueError("model.mask_conditioning='auto' must be resolved against a dataset first "
                             "(motfm_core.model.training.model_for_data)")
        cfg.validate()
        self.cfg = cfg
        if cfg.mask_conditioning != "none" and cfg.mask_classes < 1:
            raise BadInput("model.mask_conditioning needs mask_classes >= 1 (a dataset with masks)")
        extra = cfg.mask_classes if cfg.mask_conditioning == "concat" else 0
        self.unet = DiffusionModelUNet(in_channels=cfg.in_channels + extra, out_channels=cfg.in_channels,
                                       **_unet_kwargs(cfg))
        self.controlnet = None
        if cfg.mask_conditioning == "controlnet":
            self.controlnet = ControlNet(in_channels=cfg.in_channels,
                                         conditioning_embedding_in_channels=cfg.mask_classes,
                                         conditioning_embedding_num_channels=(16,), **_unet_kwargs(cfg))
        if cfg.gradient_checkpointing == "on":
            # per residual block: the backward then recomputes one block at a time (whole down/up blocks would hold
            # a full-resolution up block's activations at once, which is most of a step's memory)
            for block in self.modules():
                if isinstance(block, DiffusionUNetResnetBlock):
                    _checkpoint_forward(block)
        # "auto": SDPA on CUDA, or where an attention level is over the default token limit; "sdpa"/"einsum" force
        # one (the memory plan traces the kernel of the device it plans for)
        self.attention_kernel: AttentionKernel = "auto"
        # MONAI's mid block always attends at the deepest level, whatever attention_levels says
        limit, deepest = ATTENTION_TOKENS[cfg.spatial_dims], len(cfg.channels) - 1
        self._large_attention = any((on or level == deepest) and attention_tokens(cfg.spatial_shape, level) > limit
                                    for level, on in enumerate(cfg.attention_levels))
        self._sdpa: bool | None = None

    def _use_sdpa(self, x: torch.Tensor) -> None:
        kernel = self.attention_kernel
        sdpa = kernel == "sdpa" or (kernel == "auto" and (x.device.type == "cuda" or self._large_attention))
        if sdpa != self._sdpa:
            for module in self.modules():
                if hasattr(module, "use_flash_attention"):
                    setattr(module, "use_flash_attention", sdpa)  # noqa: B010 (MONAI's blocks, typed as Module)
            self._sdpa = sdpa

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def _one_hot(self, mask: torch.Tensor) -> torch.Tensor:
        oh = F.one_hot(mask[:, 0].long(), self.cfg.mask_classes)  # (B, *spatial, K)
        return oh.movedim(-1, 1).to(torch.float32)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        self._use_sdpa(x)
        ts = t.float() * TIME_SCALE
        if self.cfg.mask_conditioning == "none":
            return self.unet(x, ts, class_labels=y)
        if mask is None:
            raise ValueError("this model is mask-conditioned: pass mask (B, 1, *spatial)")
        cond = self._one_hot(mask).to(x.dtype)
        if self.controlnet is None:
            return self.unet(torch.cat([x, cond], 1), ts, class_labels=y)
        down, mid = self.controlnet(x, ts, controlnet_cond=cond, class_labels=y)
        return self.unet(x, ts, class_labels=y, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid)


def build_model(cfg: ModelConfig) -> VelocityUNet:
    """Velocity network for `cfg` (weights freshly initialised)."""
    return VelocityUNet(cfg)


def guided_velocity(model: VelocityUNet, y: torch.Tensor, guidance: float = 1.0, mask: torch.Tensor | None = None):
    """Velocity function of (x, t) for labels y (and masks); guidance w != 1 mixes in the null-class velocity.

    v = v_null + w (v_y - v_null): w = 1 is the conditional model (one network pass per call),
    w = 0 the class-unconditional one; other w evaluate both in one batched pass. Masks, when given,
    condition both terms (guidance acts on the class only).
    """

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return model(x, t, y, mask)
        null = torch.full_like(y, model.null_class)
        if guidance == 0.0:
            return model(x, t, null, mask)
        m2 = None if mask is None else torch.cat([mask, mask])
        v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), m2)
        v_cond, v_null = v.chunk(2)
        return v_null + guidance * (v_cond - v_null)

    return velocity
