"""Tracing a step on the meta device: the bytes of every live tensor storage added up under a dispatch mode, and the
step's FLOPs, with no data and no memory.

A training step (the training code's own `train_step`: loss, backward, clipping, AdamW, EMA), a sampling pass (the
solver over the guided velocity) and the autoencoder's training step and decoding run on the meta device (shapes and
dtypes only); the traced peak is the most alive at once. (The same step on real CPU tensors under the same counter gives
the same bytes; torch's FakeTensorMode did not free what gradient checkpointing frees.) Meta tensors have no autocast,
so a CUDA plan is traced in float32: an upper bound for bf16. The peak is weighed by an overhead measured on the device
kind (`OVERHEAD`: on a CPU, glibc's heap for storages under 32 MiB, fitted against peak RSS by benchmarks/sizes.py).
torch's `MemTracker` traces the same way but spends seconds per step attributing memory to modules; this only counts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass, replace
from typing import Any, NamedTuple, TypeVar, cast

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from motfm_core.config import AutoencoderConfig, ModelConfig, SampleConfig, TrainConfig
from motfm_core.model.ddp import Rank, rank_slice

__all__ = ["HEAP_LIMIT", "OVERHEAD", "Trace", "trace_autoencoder", "trace_peak", "trace_sampling", "trace_training",
           "TRACE_CACHE_SIZE"]

# measured peak / traced bytes, for storages under HEAP_LIMIT and over it. CPU: peak RSS of a step above the process
# before it, fitted by benchmarks/sizes.py --fit (RESULTS.md); glibc maps allocations over its largest mmap threshold
# (32 MiB) exactly and serves smaller ones from its heap. CUDA: the caching allocator's usual rounding and
# fragmentation, an assumption until the GPU check measures it
OVERHEAD = {"cpu": (1.26, 1.08), "cuda": (1.15, 1.15)}
HEAP_LIMIT = 32 * 2 ** 20


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
    from motfm_core.model.nets import build_model

    if model_cfg.mask_conditioning == "auto":
        model_cfg = replace(model_cfg, mask_conditioning="none")
    elif model_cfg.mask_conditioning != "none" and model_cfg.mask_classes < 1:
        model_cfg = replace(model_cfg, mask_classes=2)
    with META:
        model = build_model(model_cfg)
    model.attention_kernel = "sdpa" if device_type == "cuda" else "auto"
    return model

TRACE_CACHE_SIZE = 64  # traced configurations a process keeps (the CLI's check, the plan stage, tests trace a few)
_TRACES: OrderedDict[str, Any] = OrderedDict()  # the one trace cache: least recently used first

F_ = TypeVar("F_", bound=Callable[..., Any])


def _cached(fn: F_) -> F_:
    """`fn` traced once per process and arguments (dataclasses by value), in the one bounded cache."""
    @functools.wraps(fn)
    def traced(*args: Any) -> Any:
        key = json.dumps([fn.__name__, *[asdict(a) if is_dataclass(a) and not isinstance(a, type) else a
                                         for a in args]], sort_keys=True)
        if key in _TRACES:
            _TRACES.move_to_end(key)
        else:
            _TRACES[key] = fn(*args)
            while len(_TRACES) > TRACE_CACHE_SIZE:
                _TRACES.popitem(last=False)
        return _TRACES[key]

    return cast(F_, traced)


@_cached
def trace_training(model_cfg: ModelConfig, train_cfg: TrainConfig, device_type: str = "cpu",
                   checkpointing: bool = False) -> Trace:
    """Training steps at the config's batch on one device (a DDP rank's share of it), traced on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from motfm_core.model.step import train_step

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

    from motfm_core.model.nets import guided_velocity
    from motfm_core.model.solvers import SOLVERS

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


@_cached
def trace_autoencoder(cfg: AutoencoderConfig, dims: int, channels: int, shape: tuple[int, ...], kind: str,
                      what: str) -> tuple[int, float]:
    """(planned peak bytes, FLOPs) of an autoencoder training step on cfg.batch_size patches of `shape`
    (what="train") or of decoding one latent of `shape` (what="decode"), traced on the meta device."""
    from motfm_core.model.autoencoder import build_autoencoder, kl_loss

    cfg = replace(cfg, checkpoint="")

    def run() -> None:
        with META:
            ae = build_autoencoder(cfg, dims, channels)
        if what == "decode":
            with torch.inference_mode():
                ae.decode(torch.zeros(1, cfg.latent_channels, *shape, device=META))
            return
        opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr)
        x = torch.zeros(cfg.batch_size, channels, *shape, device=META)
        for _ in range(2):  # the second step holds AdamW's state as every later one does
            recon, mu, sigma = ae(x)
            loss = F.l1_loss(recon, x) + cfg.kl_weight * kl_loss(mu, sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return trace_peak(run, kind)
