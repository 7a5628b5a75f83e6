"""Thin Prefect tasks: arguments in, one `motfm_core` call, paths out.

Shared task settings:
- GPU_TAG marks the stages that use the accelerator (train, sample, evaluate, enhance); `deployments/local.sh up`
  sets a tag concurrency limit of 1 on it so two runs never oversubscribe one GPU (raise it per GPU count).
- `transient` lets a task retry (with backoff) on I/O and runtime failures, never on bad input: a ValueError or
  a missing file fails at once with its message.
"""

from __future__ import annotations

__all__ = ["BACKOFF", "GPU_TAG", "transient"]

GPU_TAG = "motfm-gpu"
BACKOFF = [10, 60]  # seconds before the first and second retry


def transient(task, task_run, state) -> bool:  # Prefect's retry_condition_fn signature; only `state` is read
    """Retry only what a second attempt can fix: OSError (disk, network) and RuntimeError (CUDA, Dask), but
    not a missing or unreadable path."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (OSError, RuntimeError)) and not isinstance(
        error, (FileNotFoundError, NotADirectoryError, PermissionError))
