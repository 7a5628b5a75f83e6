"""Plan task: the memory plan of a run (parameters, FLOPs, peak memory of training and sampling), before any work."""

from __future__ import annotations

from prefect import get_run_logger, task

from motfm_core.config import PipelineConfig
from motfm_core.model.memory import plan_run

__all__ = ["plan_task"]


@task(name="plan-memory")
def plan_task(cfg: PipelineConfig) -> str:
    """Log the run's memory plan on this machine's device and refuse (MemoryPlanError, not retried) a configuration
    that cannot fit; the train stage plans again with the dataset's channels and size. Returns the plan's lines."""
    lines = plan_run(cfg)
    get_run_logger().info(lines)
    return lines
