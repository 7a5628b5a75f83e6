"""Thin Prefect tasks: arguments in, one `motfm_core` call, paths out.

Shared task settings:
- GPU_TAG marks the stages that use the accelerator (train, sample, evaluate, enhance); `deployments/local.sh up`
  sets a tag concurrency limit of 1 on it so two runs never oversubscribe one GPU (raise it per GPU count).
- `transient` lets a task retry (with backoff) on I/O and runtime failures, never on bad input: a ValueError or
  a missing file fails at once with its message.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BACKOFF", "GPU_TAG", "progress_bar", "transient"]

GPU_TAG = "motfm-gpu"
BACKOFF = [10, 60]  # seconds before the first and second retry


def progress_bar(description: str) -> Callable[[float], None]:
    """A Prefect progress artifact on the running task (shown on its run page) and the function that moves it,
    given the share done in [0, 1]; it writes to the API only when the whole percentage grows."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact = create_progress_artifact(progress=0.0, description=description)
    shown = [0]

    def advance(share: float) -> None:
        percent = int(100 * min(max(share, 0.0), 1.0))
        if percent > shown[0]:
            shown[0] = percent
            update_progress_artifact(artifact_id=artifact, progress=float(percent))

    return advance


def transient(task, task_run, state) -> bool:  # Prefect's retry_condition_fn signature; only `state` is read
    """Retry only what a second attempt can fix: OSError (disk, network) and RuntimeError (CUDA, Dask), but
    not a missing or unreadable path."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (OSError, RuntimeError)) and not isinstance(
        error, (FileNotFoundError, NotADirectoryError, PermissionError))
