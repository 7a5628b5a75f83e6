"""The model-space intensity scale: stores hold images in [0, 1], every network here (generator and downstream)
sees [-1, 1]."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["to_image_space", "to_model_space"]


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] stored intensities -> [-1, 1], the scale every network here (generator and downstream) sees."""
    return images * 2.0 - 1.0


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space -> [0, 1] stored intensities, clipped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
