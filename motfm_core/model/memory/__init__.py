"""The memory plan: parameters, FLOPs and the peak memory of every stage that trains or samples (the flow, the mask
generator, the autoencoder and its decoding), known before any work on the device at hand.

`trace` counts a step's live bytes on the meta device (one bounded cache of traced configurations), `budget` reads what
the device has and names the errors, `plan` turns both into the plan lines and the refusals the stages make.
"""

from motfm_core.model.memory.budget import (
    GB,
    PROCESS_GB,
    SAMPLING_SHARE,
    MemoryPlanError,
    available_memory,
    is_out_of_memory,
    out_of_memory,
)
from motfm_core.model.memory.plan import (
    WHOLE_TILE,
    SamplingPlan,
    TrainingPlan,
    autoencoder_plan,
    plan_memory,
    plan_run,
    plan_sampling,
    plan_training,
    whole_fits,
)
from motfm_core.model.memory.trace import OVERHEAD, Trace, trace_autoencoder, trace_peak, trace_sampling, trace_training

__all__ = ["autoencoder_plan", "available_memory", "GB", "is_out_of_memory", "MemoryPlanError", "out_of_memory",
           "OVERHEAD", "plan_memory", "plan_run", "plan_sampling", "plan_training", "PROCESS_GB", "SAMPLING_SHARE",
           "SamplingPlan", "Trace", "trace_autoencoder", "trace_peak", "trace_sampling", "trace_training",
           "TrainingPlan", "WHOLE_TILE", "whole_fits"]
