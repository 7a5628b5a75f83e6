"""Thin Prefect tasks: arguments in, one `motfm_core` call, paths out.

Shared task settings:
- GPU_TAG marks the stages that use the accelerator (train, sample, evaluate, enhance); `deployments/local.sh up`
  sets a tag concurrency limit of 1 on it so two runs never oversubscribe one GPU (raise it per GPU count).
- `transient` lets a task retry (with backoff) on I/O and runtime failures, never on bad input: a ValueError, a
  missing file or an allocation that failed (out of memory) fails at once with its message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["BACKOFF", "GPU_TAG", "progress_bar", "transient"]

GPU_TAG = "motfm-gpu"
BACKOFF = [10, 60]  # seconds before the first and second retry


def progress_bar(description: str, every: float = 5.0) -> Callable[[float], None]:
    """The function that moves a Prefect progress artifact on the running task (shown on its run page), given
    the share done in [0, 1]. Each write is an API call to the server, so the artifact is created at the first
    call, then updated at most once per `every` seconds, and always at 100%."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    state: dict[str, Any] = {"id": None, "shown": -1, "at": 0.0}

    def advance(share: float) -> None:
        percent = int(100 * min(max(share, 0.0), 1.0))
        if percent <= state["shown"] or (percent < 100 and time.monotonic() - state["at"] < every):
            return
        if state["id"] is None:
            state["id"] = create_progress_artifact(progress=float(percent), description=description)
        else:
            update_progress_artifact(artifact_id=state["id"], progress=float(percent))
        state["shown"], state["at"] = percent, time.monotonic()

    return advance


def transient(task, task_run, state) -> bool:  # Prefect's retry_condition_fn signature; only `state` is read
    """Retry only what a second attempt can fix: OSError (disk, network) and RuntimeError (CUDA, Dask), but
    not a missing or unreadable path, and never running out of memory or disk (the same step needs the same memory,
    and writes the same bytes)."""
    from motfm_core.files import is_out_of_disk
    from motfm_core.model.memory import is_out_of_memory

    error = state.result(raise_on_failure=False)
    return isinstance(error, (OSError, RuntimeError)) and not is_out_of_memory(error) and not is_out_of_disk(
        error) and not isinstance(error, (FileNotFoundError, NotADirectoryError, PermissionError))
