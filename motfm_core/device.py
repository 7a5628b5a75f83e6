"""The device a run uses: the one asked for, else the first CUDA device, else the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads where a function needs it: store tools (`motfm inspect`) run without it
    import torch

__all__ = ["default_device"]


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device` when given, else the first CUDA device when there is one, else the CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
