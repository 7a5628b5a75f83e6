"""The memory plan: parameters, FLOPs and the peak memory of one training step and of sampling, known before any work.

A training step (the training code's own `train_step`: loss, backward, clipping, AdamW, EMA) and a sampling pass (the
solver over the guided velocity) run on the meta device (shapes and dtypes only, no data, no memory) under a dispatch
mode that adds up the bytes of every live tensor storage; the traced peak is the most alive at once. (The same step on
real CPU tensors under the same counter gives the same bytes; torch's FakeTensorMode did not free what gradient
checkpointing frees.) Meta tensors have no autocast, so a CUDA plan is traced in float32: an upper bound for bf16.
The estimate weighs that peak by an overhead measured on the device kind (`OVERHEAD`: on a CPU, glibc's heap for
storages under 32 MiB, fitted against peak RSS by benchmarks/sizes.py), plus the training set when it is held on the
device. torch's `MemTracker` traces the same way but spends seconds per step attributing memory to modules; this
only counts, in about a second at any image size.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from motfm_core.config import ModelConfig, SampleConfig, TrainConfig
from motfm_core.ddp import Rank, rank_slice

__all__ = ["available_memory", "is_out_of_memory", "MemoryPlanError", "out_of_memory", "OVERHEAD", "plan_memory",
           "plan_sampling", "plan_training", "SamplingPlan", "Trace", "trace_peak", "trace_sampling",
           "trace_training", "TrainingPlan"]

GB = 2 ** 30
# measured peak / traced bytes, for storages under HEAP_LIMIT and over it. CPU: peak RSS of a step above the process
# before it, fitted by benchmarks/sizes.py --fit (RESULTS.md); glibc maps allocations over its largest mmap threshold
# (32 MiB) exactly and serves smaller ones from its heap. CUDA: the caching allocator's usual rounding and
# fragmentation, an assumption until the GPU check measures it
OVERHEAD = {"cpu": (1.26, 1.08), "cuda": (1.15, 1.15)}
HEAP_LIMIT = 32 * 2 ** 20
# the share of the free memory a sampling batch is sized to: the batch is the pipeline's choice (samples do not
# depend on it), so it leaves room for the plan's error (within about 20% where measured)
SAMPLING_SHARE = 0.8
# left for the process itself: torch and the model package alone held 0.49 GB RSS in benchmarks/sizes.py's processes,
# a flow process with Prefect more; on CUDA the free memory is read after the context exists
PROCESS_GB = {"cpu": 0.7, "cuda": 0.0}


class MemoryPlanError(ValueError):
    """A configuration whose planned memory does not fit, or a step that ran out of memory: bad settings, never
    retried (a ValueError)."""


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages created under it (each storage once) and keeps the peak of
    `small_weight` x (bytes in storages under HEAP_LIMIT) + `large_weight` x (bytes in larger ones): on a CPU,
    glibc serves the small ones from its heap (with its overhead) and maps the large ones exactly."""

    def __init__(self, small_weight: float = 1.0, large_weight: float = 1.0) -> None:
        super().__init__()
        self.weights = (small_weight, large_weight)
        self.live = [0, 0]  # bytes in small and in large storages
        self.peak = self.raw_peak = 0.0
        self.split = (0, 0)
        self._seen: dict[int, weakref.ref] = {}

    def restart(self) -> None:
        """Count the peak from what is alive now."""
        small, large = self.live
        self.peak = self.weights[0] * small + self.weights[1] * large
        self.raw_peak, self.split = small + large, (small, large)

    def _free(self, key: int, nbytes: int, _ref: object = None) -> None:
        self._seen.pop(key, None)
        self.live[nbytes >= HEAP_LIMIT] -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = id(st)
                if key in self._seen and self._seen[key]() is st:
                    continue
                nbytes = st.nbytes()
                self._seen[key] = weakref.ref(st, functools.partial(self._free, key, nbytes))
                self.live[nbytes >= HEAP_LIMIT] += nbytes
                small, large = self.live
                self.peak = max(self.peak, self.weights[0] * small + self.weights[1] * large)
                if small + large > self.raw_peak:
                    self.raw_peak, self.split = small + large, (small, large)
        return out


class Trace(NamedTuple):
    """A traced step: `peak` the estimate (overhead-weighted bytes), `flops` of the step (sampling: per network
    evaluation), `params`, and the small/large storage bytes alive at the unweighted peak (to fit OVERHEAD)."""

    peak: int
    flops: float
    params: int
    small: int
    large: int


META = torch.device("meta")
_SDPA = torch.nn.functional.scaled_dot_product_attention


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """scaled_dot_product_attention as the fused kernel a CPU (or GPU) runs it with, on meta tensors: the math path
    the meta device would otherwise take holds the whole attention map (24 GB at 32768 tokens, where the kernel holds
    a few MB). Anything else goes to PyTorch's own function."""
    if query.device.type == "meta" and attn_mask is None and dropout_p == 0.0 and not kwargs:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, is_causal,
                                                                           scale=scale)[0]
    return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                 **kwargs)


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """While tracing, SDPA on meta tensors is the fused kernel's (`_fused_sdpa`); real tensors are untouched."""
    setattr(torch.nn.functional, "scaled_dot_product_attention", _fused_sdpa)  # noqa: B010 (typed as the builtin)
    try:
        yield
    finally:
        setattr(torch.nn.functional, "scaled_dot_product_attention", _SDPA)  # noqa: B010


def _build(model_cfg: ModelConfig, device_type: str):
    """The network on the meta device, with the attention kernel of `device_type`. Before a dataset is read, a
    mask_conditioning="auto" network is planned without mask channels and a mask-conditioned one with two mask
    classes (the train stage plans with the dataset's)."""
    from motfm_core.nets import build_model

    if model_cfg.mask_conditioning == "auto":
        model_cfg = replace(model_cfg, mask_conditioning="none")
    elif model_cfg.mask_conditioning != "none" and model_cfg.mask_classes < 1:
        model_cfg = replace(model_cfg, mask_classes=2)
    with META:
        model = build_model(model_cfg)
    model.attention_kernel = "sdpa" if device_type == "cuda" else "auto"
    return model


_TRACES: dict[str, Any] = {}  # a process traces each configuration once (the CLI's check, the plan stage, tests)


def _cached(fn):
    def traced(*args):
        key = json.dumps([fn.__name__, *[asdict(a) if is_dataclass(a) and not isinstance(a, type) else a
                                         for a in args]], sort_keys=True)
        if key not in _TRACES:
            _TRACES[key] = fn(*args)
        return _TRACES[key]

    traced.__doc__, traced.__name__ = fn.__doc__, fn.__name__
    return traced


@_cached
def trace_training(model_cfg: ModelConfig, train_cfg: TrainConfig, device_type: str = "cpu",
                   checkpointing: bool = False) -> Trace:
    """Training steps at the config's batch on one device (a DDP rank's share of it), traced on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from motfm_core.step import train_step

    cfg = replace(model_cfg, gradient_checkpointing="on" if checkpointing else "off")
    batch = train_cfg.batch_size
    part = rank_slice(batch, Rank(0, train_cfg.devices))
    counter, flops = _LiveBytes(*OVERHEAD[device_type]), FlopCounterMode(display=False)
    with _tracing(), counter:
        model = _build(cfg, device_type)
        ema = _build(cfg, device_type).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr)
        gen = torch.Generator()
        x1 = torch.zeros(batch, *cfg.sample_shape, device=META)
        y = torch.zeros(batch, dtype=torch.long, device=META)
        mask = None
        if model.cfg.mask_conditioning != "none":
            mask = torch.zeros(batch, 1, *cfg.spatial_shape, dtype=torch.uint8, device=META)
        with flops:  # the first step (it also creates AdamW's state); the FLOP counter keeps what a step frees
            train_step(model, ema, opt, x1, y, mask, train_cfg, gen, 0, part=part)
        counter.restart()  # (checkpointing's recomputed activations), so the peak is the second step's
        train_step(model, ema, opt, x1, y, mask, train_cfg, gen, 1, part=part)
        params = sum(p.numel() for p in model.parameters())
    return Trace(int(counter.peak), float(flops.get_total_flops()), params, *counter.split)


@_cached
def trace_sampling(model_cfg: ModelConfig, sample_cfg: SampleConfig, device_type: str = "cpu") -> Trace:
    """One solver step on a batch of sample.batch_size (flops: per network evaluation), traced on the meta device.
    dopri5 is traced as an RK4 step plus the three further stages it holds."""
    from torch.utils.flop_counter import FlopCounterMode

    from motfm_core.nets import guided_velocity
    from motfm_core.solvers import SOLVERS

    cfg = replace(model_cfg, gradient_checkpointing="off")
    batch = sample_cfg.batch_size
    method = sample_cfg.solver if sample_cfg.solver in SOLVERS else "rk4" if sample_cfg.solver == "dopri5" else "euler"
    counter, flops, calls = _LiveBytes(*OVERHEAD[device_type]), FlopCounterMode(display=False), [0]
    with _tracing(), counter:
        model = _build(cfg, device_type).eval().requires_grad_(False)
        x0 = torch.zeros(batch, *cfg.sample_shape, device=META)
        y = torch.zeros(batch, dtype=torch.long, device=META)
        mask = None
        if model.cfg.mask_conditioning != "none":
            mask = torch.zeros(batch, 1, *cfg.spatial_shape, dtype=torch.uint8, device=META)
        velocity = guided_velocity(model, y, sample_cfg.guidance, mask)

        def v(x: torch.Tensor, t: float) -> torch.Tensor:
            calls[0] += 1
            return velocity(x, torch.full((x.shape[0],), t, device=META))

        with torch.inference_mode(), flops:
            SOLVERS[method](cast(Any, v), x0, 0.0, 0.5)  # a step takes any velocity of (x, float t)
    extra = 3 * x0.numel() * 4 * OVERHEAD[device_type][0] if sample_cfg.solver == "dopri5" else 0
    params = sum(p.numel() for p in model.parameters())
    return Trace(int(counter.peak + extra), float(flops.get_total_flops()) / calls[0], params, *counter.split)


def trace_peak(run: Any, device_type: str = "cpu") -> tuple[int, float]:
    """(overhead-weighted peak bytes, FLOPs) of `run()`, which builds its modules and tensors on the meta device:
    the plan of any other network (the autoencoder's training step and decoding)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter, flops = _LiveBytes(*OVERHEAD[device_type]), FlopCounterMode(display=False)
    with _tracing(), counter, flops:
        run()
    return int(counter.peak), float(flops.get_total_flops())


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


def _budget(dev: torch.device, budget_gb: float) -> tuple[float, str]:
    """(bytes a run's work may use on `dev`, where the figure comes from): `budget_gb` when given, else the device's
    free memory less what the process itself holds."""
    kind = "cuda" if dev.type == "cuda" else "cpu"
    if budget_gb:
        return budget_gb * GB, "train.memory_gb"
    free, where = available_memory(dev)
    process = PROCESS_GB[kind]
    return max(free - process * GB, 0.0), f"{free / GB:.1f} GB {where}, less {process:g} GB for the process"


@dataclass(frozen=True)
class TrainingPlan:
    """One training step on `device`: what it needs and what is there."""

    device: str
    params: int
    batch: int
    tflop_per_step: float
    step_gb: float  # estimated peak of a step: weights, EMA, AdamW state, gradients, activations, overhead
    data_gb: float  # the training set, held on the device (0 when not known yet)
    gradient_checkpointing: bool
    budget_gb: float
    budget_from: str
    channels: tuple[int, ...]
    attention: str

    def line(self) -> str:
        ckpt = ", gradient checkpointing on" if self.gradient_checkpointing else ""
        data = f" + {self.data_gb:.2f} GB training set" if self.data_gb else ""
        return (f"{self.params / 1e6:.1f}M parameters, channels {'/'.join(map(str, self.channels))}, attention "
                f"{self.attention}; a training step: {self.tflop_per_step:.3f} TFLOP, peak {self.step_gb:.2f} GB{data} "
                f"at batch {self.batch}{ckpt}; {self.device}: {self.budget_gb:.1f} GB to use ({self.budget_from})")


def _attention_text(cfg: ModelConfig) -> str:
    """Where the network attends: its attention levels and MONAI's mid block, which always attends at the deepest
    level."""
    from motfm_core.sizing import attention_tokens, level_sides

    shape, deepest = cfg.spatial_shape, len(cfg.channels) - 1

    def at(level: int) -> str:
        return f"{'x'.join(map(str, level_sides(shape, level + 1)[level]))} ({attention_tokens(shape, level)} tokens)"

    levels = [at(i) for i, on in enumerate(cfg.attention_levels) if on and i != deepest]
    where = "at " + ", ".join(levels) + " and " if levels else "at "
    mid = "" if cfg.attention_levels[deepest] else " (MONAI's mid block only)"
    return where + at(deepest) + mid


def plan_training(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device | str | None = None,
                  data_bytes: int = 0) -> TrainingPlan:
    """The plan of a training step of `model_cfg` on `device` (default: CUDA when present) within train.memory_gb
    (0: the device's free memory). Resolves model.gradient_checkpointing="auto" (on only when a step would not fit
    without it) and raises MemoryPlanError, naming the fixes, when it cannot fit."""
    from motfm_core.utils import default_device

    dev = default_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    budget, where = _budget(dev, train_cfg.memory_gb)

    def traced(checkpointing: bool) -> tuple[float, float, int]:
        t = trace_training(model_cfg, train_cfg, kind, checkpointing)
        return float(t.peak), t.flops, t.params

    mode = model_cfg.gradient_checkpointing
    ckpt = mode == "on"
    need, flops, params = traced(ckpt)
    if mode == "auto" and need + data_bytes > budget:
        with_ckpt = traced(True)
        if with_ckpt[0] < need:
            (need, flops, params), ckpt = with_ckpt, True
    plan = TrainingPlan(str(dev), params, train_cfg.batch_size, flops / 1e12, need / GB, data_bytes / GB, ckpt,
                        budget / GB, where, tuple(model_cfg.channels), _attention_text(model_cfg))
    if need + data_bytes > budget:
        fixes = [f"a smaller train.batch_size (now {train_cfg.batch_size}; memory grows about linearly with it)"]
        if not ckpt:
            fixes.append("model.gradient_checkpointing=on")
        if model_cfg.size != "small" and not ckpt:
            fixes.append("a smaller model.size")
        held = f" + {plan.data_gb:.1f} GB training set" if data_bytes else ""
        raise MemoryPlanError(
            f"train: a training step needs about {plan.step_gb:.1f} GB{held} on {dev} but {budget / GB:.1f} GB is "
            f"there ({where}); use " + ", or ".join(fixes) + " (train.memory_gb plans for another device)")
    return plan


@dataclass(frozen=True)
class SamplingPlan:
    """One sampling batch on `device`: the batch that fits (at most the one asked for) and what it needs."""

    device: str
    asked: int
    batch: int
    gb: float
    gflop_per_image: float  # one network evaluation of one image

    def line(self) -> str:
        capped = f" (capped from {self.asked} to fit)" if self.batch < self.asked else ""
        return (f"sampling: {self.gflop_per_image:.2f} GFLOP per image and evaluation, peak {self.gb:.2f} GB at "
                f"batch {self.batch}{capped}")


def plan_sampling(model_cfg: ModelConfig, sample_cfg: SampleConfig, device: torch.device | str | None = None,
                  budget_gb: float = 0.0) -> SamplingPlan:
    """The largest sampling batch up to sample.batch_size that fits SAMPLING_SHARE of `device`'s free memory (samples
    do not depend on the batch); raises MemoryPlanError when not even one image fits. Memory grows linearly with the
    batch, so two traces at batch 1 and 2 give the batch that fits when the one asked for does not."""
    from motfm_core.utils import default_device

    dev = default_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    budget, where = _budget(dev, budget_gb)
    budget *= SAMPLING_SHARE
    peak, flops = trace_sampling(model_cfg, sample_cfg, kind)[:2]
    per_image = flops / sample_cfg.batch_size / 1e9
    batch, need = sample_cfg.batch_size, float(peak)
    if need > budget:
        one = trace_sampling(model_cfg, replace(sample_cfg, batch_size=1), kind).peak
        two = trace_sampling(model_cfg, replace(sample_cfg, batch_size=2), kind).peak
        fixed, each = float(2 * one - two), float(max(two - one, 1))
        batch = int(min(sample_cfg.batch_size - 1, (budget - fixed) // each))
        if batch < 1:
            raise MemoryPlanError(f"sample: one image needs about {(fixed + each) / GB:.1f} GB on {dev} but "
                                  f"{budget / GB:.1f} GB is there ({SAMPLING_SHARE:.0%} of {where}); use a smaller "
                                  "model, or sample on a device with more memory")
        need = fixed + each * batch
    return SamplingPlan(str(dev), sample_cfg.batch_size, batch, need / GB, per_image)


def plan_memory(model_cfg: ModelConfig, train_cfg: TrainConfig, sample_cfg: SampleConfig,
                device: torch.device | str | None = None, data_bytes: int = 0) -> tuple[TrainingPlan, SamplingPlan]:
    """Both plans (training within train.memory_gb, sampling within the device), refusing what cannot fit."""
    return (plan_training(model_cfg, train_cfg, device, data_bytes),
            plan_sampling(model_cfg, sample_cfg, device, train_cfg.memory_gb))


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
