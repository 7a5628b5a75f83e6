"""What a device has for a run's work, and the errors of a plan that does not fit or a step that ran out of memory
(bad settings, never retried)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from motfm_core.errors import BadInput

__all__ = ["available_memory", "GB", "is_out_of_memory", "MemoryPlanError", "out_of_memory", "PROCESS_GB",
           "SAMPLING_SHARE", "work_budget"]

GB = 2 ** 30
# the share of the free memory a sampling batch is sized to: the batch is the pipeline's choice (samples do not
# depend on it), so it leaves room for the plan's error (measured by benchmarks/sizes.py: RESULTS.md)
SAMPLING_SHARE = 0.8
# left for the process itself: torch and the model package alone, as measured by benchmarks/sizes.py (RESULTS.md),
# and a flow process with Prefect more; on CUDA the free memory is read after the context exists
PROCESS_GB = {"cpu": 0.7, "cuda": 0.0}


class MemoryPlanError(BadInput):
    """A configuration whose planned memory does not fit, or a step that ran out of memory: bad settings, never
    retried (a ValueError)."""


def _cgroup_free() -> float | None:
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text != "max" and int(text) < 2 ** 60:
                return int(text) - int(Path(used).read_text())
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: torch.device) -> tuple[float, str]:
    """(bytes free for this process's work on `device`, what the figure is)."""
    if device.type == "cuda":
        gpu_free, total = torch.cuda.mem_get_info(device)
        return float(gpu_free), f"free of {total / GB:.0f} GB on {torch.cuda.get_device_name(device)}"
    free: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = float(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:
        free = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    where = "available"
    cgroup = _cgroup_free()
    if cgroup is not None and cgroup < free:
        free, where = float(cgroup), "left under the memory cgroup's limit"
    return free, where


def work_budget(dev: torch.device, budget_gb: float) -> tuple[float, str]:
    """(bytes a run's work may use on `dev`, where the figure comes from): `budget_gb` when given, else the device's
    free memory less what the process itself holds."""
    kind = "cuda" if dev.type == "cuda" else "cpu"
    if budget_gb:
        return budget_gb * GB, "train.memory_gb"
    free, where = available_memory(dev)
    process = PROCESS_GB[kind]
    return max(free - process * GB, 0.0), f"{free / GB:.1f} GB {where}, less {process:g} GB for the process"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure (CUDA or CPU): never transient, a retry would fail the same way."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError, MemoryPlanError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def out_of_memory(stage: str, plan: str, error: BaseException, fix: str) -> MemoryPlanError:
    """The one-line error for an allocation that failed although the plan said it fits."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return MemoryPlanError(f"{stage}: out of memory ({first}); planned: {plan}; {fix}")
