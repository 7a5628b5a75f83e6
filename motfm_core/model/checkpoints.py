"""Checkpoints of the model's stages: published whole (a reader never sees half a file), and resumed only by the run
that wrote them (same data and config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from motfm_core.files import atomic_path

__all__ = ["resumable", "save_atomic"]


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save published whole: a reader never sees half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def resumable(path: str | Path, key: str, device: str | torch.device) -> dict[str, Any] | None:
    """The training state saved at `path` when it belongs to the run `key` (same data and config), else None: an
    interrupted stage resumes from it, a changed one starts afresh."""
    if not Path(path).exists():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    return state if state.get("run_key") == key else None
