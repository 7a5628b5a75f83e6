"""Typed configuration for every stage; each config is saved with the artifact it produced.

Defaults run on a 2-core CPU in minutes. `from_dict` refuses unknown keys so a typo in a
deployment parameter fails before any heavy work, naming the key and the valid ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from motfm_core.config.choices import (
    SOLVER_CHOICES,
    Compression,
    Coupling,
    EnhanceTask,
    Fit,
    GradientCheckpointing,
    Intensity,
    MaskConditioning,
    MaskSource,
    ModelSize,
    Precision,
    Prediction,
    Solver,
    Space,
    SpatialDims,
    TimeSampling,
)
from motfm_core.config.model import DDPM_TIMESTEPS, MODEL_SIZES, AutoencoderConfig, ModelConfig, auto_norm_groups
from motfm_core.config.stages import DataConfig, EnhanceConfig, EvalConfig, SampleConfig, TrainConfig
from motfm_core.errors import BadInput
from motfm_core.typed import config_hash, did_you_mean, from_dict

__all__ = ["auto_norm_groups", "AutoencoderConfig", "Compression", "config_hash", "Coupling", "DataConfig",
           "DDPM_TIMESTEPS", "EnhanceConfig", "EnhanceTask", "EvalConfig", "Fit", "from_dict", "GradientCheckpointing",
           "Intensity", "MaskConditioning", "MaskSource", "MODEL_SIZES", "ModelConfig", "ModelSize", "PipelineConfig",
           "Precision", "Prediction", "SampleConfig", "Solver", "SOLVER_CHOICES", "Space", "SpatialDims",
           "TimeSampling", "TrainConfig"]


def _latent_geometry(data: DataConfig, ae: AutoencoderConfig) -> dict[str, int]:
    """The latent flow's geometry: the data's sides divided by the autoencoder's downsampling, and its channels."""
    f, out = ae.factor, {"in_channels": ae.latent_channels}
    for key, side in (("image_size", data.image_size), ("depth", data.depth))[:data.spatial_dims - 1]:
        if side % f:
            raise BadInput(f"data.{key}={side} is not divisible by the autoencoder's downsampling {f} "
                           f"(autoencoder.channels has {len(ae.channels)} levels); use data.{key}="
                           f"{max(f, side // f * f)} or {(side // f + 1) * f}, or fewer autoencoder levels")
        out[key] = side // f
    if data.spatial_dims == 2:
        out["depth"] = data.depth
    return out


@dataclass
class PipelineConfig:
    """Everything one run of the DAG needs; saved in the report."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)  # used when model.space = "latent"

    @classmethod
    def from_overrides(cls, overrides: dict[str, dict[str, Any]] | None) -> "PipelineConfig":
        """Defaults with per-section overrides, e.g. {"train": {"steps": 50}}; unknown keys raise."""
        overrides = dict(overrides or {})
        sections = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(overrides) - set(sections))
        if unknown:
            raise BadInput(f"unknown config section(s) {unknown}{did_you_mean(unknown, set(sections))}; valid ones "
                           f"are {sorted(sections)}")
        kinds = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sample": SampleConfig,
                 "eval": EvalConfig, "autoencoder": AutoencoderConfig}
        data = from_dict(DataConfig, overrides.get("data"), where="data")
        autoencoder = from_dict(AutoencoderConfig, overrides.get("autoencoder"), where="autoencoder")
        # the model's geometry is the data's (latent: the autoencoder's grid): another value is a contradiction
        model = dict(overrides.get("model") or {})
        latent = model.get("space", "pixel") == "latent"
        geometry = {"spatial_dims": data.spatial_dims, "image_size": data.image_size, "depth": data.depth}
        if latent:
            geometry.update(_latent_geometry(data, autoencoder))
        for key, value in geometry.items():
            if key in model and model[key] != value:
                raise BadInput(f"model.{key}={model[key]!r} contradicts data.{key}={getattr(data, key)!r}: the "
                               f"network takes the data's geometry; set data.{key} instead")
            model[key] = value
        built: dict[str, Any] = {name: from_dict(kind, model if name == "model" else overrides.get(name), where=name)
                                 for name, kind in kinds.items() if name not in ("data", "autoencoder")}
        out = cls(data=data, autoencoder=autoencoder, **built)
        f = out.eval.downsample
        if any(side % f for side in data.spatial_shape):
            raise BadInput(f"eval.downsample={f} does not divide the images' sides {data.spatial_shape}; use a "
                           "factor that divides every side (1 = native size)")
        if latent:
            out.check_latent()
        diffusion = out.sample.solver in ("ddpm", "ddim")
        if diffusion != (out.model.prediction == "epsilon"):  # refused here, not after the whole training
            fix = ("a flow-matching solver (euler, midpoint, heun, rk4, dopri5, rflow), or model.prediction='epsilon' "
                   "for the DDPM baseline" if diffusion else "sample.solver 'ddpm' or 'ddim' for an epsilon model")
            raise BadInput(f"sample.solver={out.sample.solver!r} cannot sample a model with model.prediction="
                           f"{out.model.prediction!r}; use {fix}")
        if out.eval.ddpm_arms and out.model.prediction == "epsilon":
            raise BadInput("eval.ddpm_arms compares the flow-matching generator with a DDPM baseline, but "
                           "model.prediction='epsilon' makes the run's generator the DDPM; leave one of them unset")
        out.check_across_sections()
        return out

    def check_across_sections(self) -> None:
        """The rules between sections that a later stage would otherwise refuse after hours of work (the sampler,
        the DDPM baseline, reflow, the mask source): refused at load, naming the keys and the fix."""
        solver, nfe = self.sample.solver, self.sample.nfe
        if solver == "ddpm" and nfe != DDPM_TIMESTEPS:
            raise BadInput(f"sample.solver='ddpm' samples with all {DDPM_TIMESTEPS} of its training steps, so "
                           f"sample.nfe={nfe} cannot apply; use sample.nfe={DDPM_TIMESTEPS} or sample.solver='ddim' "
                           f"for {nfe} steps")
        too_many = [n for n in ((nfe,) if solver == "ddim" else ()) + tuple(self.eval.ddpm_arms) if n > DDPM_TIMESTEPS]
        if too_many:
            raise BadInput(f"DDIM steps {too_many} (sample.nfe with sample.solver='ddim', or eval.ddpm_arms) exceed "
                           f"the DDPM's {DDPM_TIMESTEPS} training steps; use at most {DDPM_TIMESTEPS}")
        if self.train.reflow_from and self.model.prediction == "epsilon":
            raise BadInput("train.reflow_from: reflow straightens a flow-matching model's paths; it does not apply "
                           "to model.prediction='epsilon' (the DDPM); leave one of them unset")
        if self.sample.mask_source != "auto" and self.model.mask_conditioning == "none":
            raise BadInput(f"sample.mask_source={self.sample.mask_source!r} cannot apply with "
                           "model.mask_conditioning='none' (the model takes no masks); leave sample.mask_source='auto' "
                           "or condition on masks (model.mask_conditioning 'auto', 'concat' or 'controlnet')")

    def check_latent(self) -> None:
        """Refuse the settings the latent path cannot apply (before any work), naming the key and the fix."""
        if self.model.mask_conditioning == "controlnet":
            raise BadInput("model.mask_conditioning='controlnet' is not supported with model.space='latent' (the "
                           "masks condition the latent flow on its own grid); use 'concat' or 'auto'")
        if self.sample.mask_source == "generated":
            raise BadInput("sample.mask_source='generated' is not supported with model.space='latent' (the mask "
                           "generator would train in pixel space); use 'deformed' or 'train'")
        if self.train.reflow_from:
            raise BadInput("train.reflow_from: reflow is not supported with model.space='latent'; leave it empty")
        if self.autoencoder.checkpoint and self.eval.real_fractions and not self.autoencoder.share_checkpoint:
            shares = list(self.eval.real_fractions)
            raise BadInput(f"autoencoder.checkpoint serves every generator, so the low-data generators (eval."
                           f"real_fractions={shares}) would encode with an autoencoder trained on more than their "
                           "share: not leak-free. Leave autoencoder.checkpoint empty (each generator trains its "
                           "own), leave eval.real_fractions empty, or set autoencoder.share_checkpoint=true to "
                           "accept it (the report then says so)")
        if self.eval.ddpm_arms:
            raise BadInput("eval.ddpm_arms: the DDPM baseline trains in pixel space, not on the latents; leave it "
                           "empty with model.space='latent'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
