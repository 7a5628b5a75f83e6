"""Typed configuration for every stage; each config is saved with the artifact it produced.

Defaults run on a 2-core CPU in minutes. `from_dict` refuses unknown keys so a typo in a
deployment parameter fails before any heavy work, naming the key and the valid ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from motfm_core.sizing import WIDTHS, check_attention, sized_network
from motfm_core.typed import check as _check
from motfm_core.typed import check_choices, config_hash, from_dict

__all__ = ["auto_norm_groups", "AutoencoderConfig", "config_hash", "DataConfig", "EnhanceConfig", "EnhanceTask",
           "EvalConfig", "from_dict",
           "GradientCheckpointing", "MaskConditioning", "MaskSource", "MODEL_SIZES", "ModelConfig", "ModelSize",
           "PipelineConfig", "SampleConfig", "Solver", "SOLVER_CHOICES", "Space", "TrainConfig"]

# Every choice, as a type: the config fields are typed with them, and `check_choices` (every validate()), the CLI's
# argparse choices, Prefect's parameter schema and `motfm config` all read them from here.
Solver = Literal["euler", "midpoint", "heun", "rk4", "dopri5", "ddpm", "ddim"]
ModelSize = Literal["small", "medium", "large"]
MaskConditioning = Literal["auto", "none", "concat", "controlnet"]
MaskSource = Literal["auto", "train", "deformed", "generated"]
EnhanceTask = Literal["denoise", "superres"]
GradientCheckpointing = Literal["auto", "on", "off"]
Space = Literal["pixel", "latent"]
SpatialDims = Literal[2, 3]
Prediction = Literal["velocity", "epsilon"]
TimeSampling = Literal["uniform", "logit_normal"]
Coupling = Literal["independent", "ot", "sinkhorn"]
Compression = Literal["zstd", "none"]
Precision = Literal["auto", "bf16", "fp32"]
SOLVER_CHOICES: tuple[str, ...] = get_args(Solver)

@dataclass
class DataConfig:
    """How the real dataset is built. `source` is `brain-mri` (bundled), a `.npz`, or a folder with labels.csv."""

    source: str = "brain-mri"
    image_size: int = 48
    spatial_dims: SpatialDims = 2
    depth: int = 16  # 3D only: slices per crop along the last axis
    # brain-mri 3D only: voxel side in mm (0 = 2 mm); blocks too large for the 28 mm split slabs are split by brain
    voxel_mm: float = 0.0
    val_fraction: float = 0.15  # folders/npz without a given split: patient-level fractions
    test_fraction: float = 0.15
    seed: int = 0
    keep_previous: int = 1  # earlier builds of dataset.zarr kept beside it when the data changes (0 = none)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(H, W) or (H, W, D) of one stored sample."""
        return (self.image_size,) * 2 if self.spatial_dims == 2 else (self.image_size, self.image_size, self.depth)

    def validate(self) -> None:
        check_choices(self, "data")
        _check(8 <= self.image_size <= 512 and self.image_size % 8 == 0,
               f"data.image_size must be a multiple of 8 in [8, 512], got {self.image_size}")
        _check(self.depth % 4 == 0 and self.depth >= 4, f"data.depth must be a multiple of 4 >= 4, got {self.depth}")
        brain_3d = self.source == "brain-mri" and self.spatial_dims == 3
        _check(self.voxel_mm == 0 or (brain_3d and self.voxel_mm in (1, 2)),
               f"data.voxel_mm={self.voxel_mm:g} applies to brain-mri 3D blocks only (1 or 2 mm; 0 = 2 mm); other "
               "sources are resampled to data.image_size, so leave it 0")
        _check(0 < self.val_fraction < 0.5 and 0 < self.test_fraction < 0.5,
               "data.val_fraction and data.test_fraction must lie in (0, 0.5)")
        _check(self.keep_previous >= 0, "data.keep_previous must be >= 0 (0 keeps no earlier build)")


def auto_norm_groups(channels: tuple[int, ...], per_group: int = 4, most: int = 32) -> int:
    """GroupNorm groups for UNet `channels`: the largest power of two <= `most` dividing every level's channel
    count while leaving >= `per_group` channels per group (>= 2 if none does), so no level can erase the
    time/class embedding. small (32, 64, 64) -> 8, medium (64, ...) -> 16, large (128, ...) -> 32."""
    smallest = min(channels)
    for need in (per_group, 2):
        for groups in (32, 16, 8, 4, 2, 1):
            if groups <= most and all(c % groups == 0 for c in channels) and smallest // groups >= need:
                return groups
    return 1


@dataclass
class ModelConfig:
    """MONAI `DiffusionModelUNet` backbone used as the velocity field v(x_t, t, y).

    `size` names a width; the number of levels and where attention goes follow the image (`motfm_core.sizing`).
    Explicit `channels` / `attention_levels` win over the sizing. With space="latent" the geometry (`image_size`,
    `depth`, `in_channels`) is the autoencoder's latent grid, set from the data and `autoencoder` sections."""

    spatial_dims: SpatialDims = 2
    in_channels: int = 1
    num_classes: int = 3
    size: ModelSize = "small"  # small / medium / large: the first level's width (32 / 64 / 128 channels)
    channels: tuple[int, ...] = ()  # () = sized from `size` and the image (48 px small: 32, 64, 64)
    attention_levels: tuple[bool, ...] = ()  # () = at the deepest level if its tokens are within the limit
    max_attention_tokens: int = 0  # 0 = 1024 tokens in 2D, 512 in 3D; an attention level over it is refused
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 0  # 0 = auto: every GroupNorm group holds >= 4 channels (see `auto_norm_groups`)
    image_size: int = 48
    depth: int = 16  # 3D only
    prediction: Prediction = "velocity"  # "velocity": flow matching; "epsilon": the DDPM/DDIM baseline
    # "concat" (one-hot mask channels), "controlnet" (MONAI ControlNet), or "auto" ("concat" when the dataset has
    # masks, else "none"; resolved by `training.model_for_data`)
    mask_conditioning: MaskConditioning = "none"
    mask_classes: int = 0  # set from the dataset's mask_names when masks condition the model
    # recompute each residual block in backward: less memory, more compute (its forward runs twice). "auto": on when
    # the memory plan says a training step would not fit without it (motfm_core.memory); it never changes the result
    gradient_checkpointing: GradientCheckpointing = "auto"
    # "pixel": the flow works on images; "latent": on the latents of an autoencoder trained by its own stage
    # (motfm_core.autoencoder), every sample decoded before it is written
    space: Space = "pixel"

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(H, W) or (H, W, D) of one sample."""
        return (self.image_size,) * 2 + ((self.depth,) if self.spatial_dims == 3 else ())

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) or (C, H, W, D) of one sample."""
        return (self.in_channels, *self.spatial_shape)

    def __post_init__(self) -> None:
        if isinstance(self.gradient_checkpointing, bool):  # configs and checkpoints written before "auto"
            self.gradient_checkpointing = "on" if self.gradient_checkpointing else "off"
        if self.size in WIDTHS and self.spatial_dims in (2, 3) and self.image_size > 0 and self.depth > 0:
            self.channels, self.attention_levels = sized_network(
                self.size, self.spatial_shape, tuple(self.channels), tuple(self.attention_levels),
                self.max_attention_tokens)
        if self.norm_num_groups == 0 and isinstance(self.channels, (tuple, list)) and self.channels:
            self.norm_num_groups = auto_norm_groups(tuple(self.channels))

    def validate(self) -> None:
        check_choices(self, "model")
        _check(self.max_attention_tokens >= 0, "model.max_attention_tokens must be >= 0 (0 = the default limit)")
        _check(len(self.channels) == len(self.attention_levels),
               f"model.channels {self.channels} and model.attention_levels {self.attention_levels} differ in length")
        _check(self.norm_num_groups >= 1,
               f"model.norm_num_groups must be >= 1 (or 0 = auto), got {self.norm_num_groups}")
        _check(all(c % self.norm_num_groups == 0 for c in self.channels),
               f"model.channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}")
        for level, c in enumerate(self.channels):
            # MONAI's ResnetBlock adds the time/class embedding (a per-channel constant) right before norm2; a
            # GroupNorm group of one channel subtracts exactly that constant, so the level ignores t and y
            _check(c // self.norm_num_groups >= 2,
                   f"model.norm_num_groups={self.norm_num_groups} leaves one channel per group at level {level} "
                   f"({c} channels): GroupNorm would erase the time and class embedding there; use "
                   f"norm_num_groups <= {c // 2} (or 0 = auto: {auto_norm_groups(tuple(self.channels))})")
        down = 2 ** (len(self.channels) - 1)
        for name, side in (("image_size", self.image_size), ("depth", self.depth))[:self.spatial_dims - 1]:
            _check(side % down == 0,
                   f"model.{name} {side} must be divisible by {down} for {len(self.channels)} levels (each halves "
                   f"it); use data.{name} = {max(down, side // down * down)} or {(side // down + 1) * down}, or "
                   "fewer levels (model.channels)")
        _check(self.num_classes >= 1, "model.num_classes must be >= 1")
        check_attention(self.spatial_shape, tuple(self.attention_levels), self.max_attention_tokens)


@dataclass
class TrainConfig:
    """Flow-matching optimisation recipe."""

    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    ema_decay: float = 0.995
    # EMA decay ramps up as min(ema_decay, (1 + k) / (10 + k)) after k optimizer steps, so that a short run's EMA
    # is not mostly its random initial weights (0.995^150 = 47% of it after 150 steps); False: ema_decay from step 0
    ema_warmup: bool = True
    grad_clip: float = 1.0
    time_sampling: TimeSampling = "uniform"  # or "logit_normal"
    time_shift: float = 1.0  # > 1 spends more training time near noise (SD3/MAISI resolution shift)
    coupling: Coupling = "independent"  # "ot" (minibatch exact OT, within class) or "sinkhorn" (entropic OT)
    class_dropout: float = 0.1  # drop labels to the null class for classifier-free guidance
    checkpoint_every: int = 200
    seed: int = 0
    # low-data generators: train on a class-stratified share of the train split (`stratified_subset`, the same
    # indices the downstream `real f%` arms use, recorded in the checkpoint); 1.0 = the whole split
    real_fraction: float = 1.0
    subset_seed: int = 0
    # reflow (rectified flow, Liu et al. 2023): retrain on a trained model's own noise -> sample couplings so
    # that its trajectories straighten and 1-2 steps suffice; the student starts from the teacher's EMA weights
    reflow_from: str = ""  # path of the teacher model.pt ("" = ordinary training)
    reflow_pairs: int = 512  # (noise, sample) pairs generated by the teacher
    reflow_steps: int = 10  # midpoint steps (2 network evaluations each) to solve the teacher's ODE
    # data-parallel training (motfm_core/ddp.py): processes, one per GPU (or gloo on a CPU), each training on
    # batch_size / devices rows of every global batch; the result does not depend on it (not in the run key)
    devices: int = 1
    # the memory a training step may plan for, in GB per device (0 = what the device has free): the plan refuses a
    # configuration over it and turns gradient checkpointing on where that makes it fit (motfm_core.memory)
    memory_gb: float = 0.0

    def validate(self) -> None:
        check_choices(self, "train")
        _check(self.steps >= 1 and self.batch_size >= 1, "train.steps and train.batch_size must be >= 1")
        _check(self.memory_gb >= 0,
               f"train.memory_gb must be >= 0 (0 = the device's free memory), got {self.memory_gb}")
        _check(self.devices >= 1 and self.batch_size % self.devices == 0,
               f"train.devices must be >= 1 and divide train.batch_size ({self.batch_size}), got {self.devices}")
        _check(0 < self.real_fraction <= 1, f"train.real_fraction must lie in (0, 1], got {self.real_fraction}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.reflow_pairs >= 1 and self.reflow_steps >= 1, "train.reflow_pairs and reflow_steps must be >= 1")
        _check(self.time_shift > 0, f"train.time_shift must be > 0, got {self.time_shift}")
        _check(0.0 <= self.class_dropout < 1.0, "train.class_dropout must lie in [0, 1)")
        _check(0.0 <= self.ema_decay < 1.0, "train.ema_decay must lie in [0, 1)")


@dataclass
class SampleConfig:
    """Large-scale sampling into a sharded Zarr store."""

    samples_per_class: int = 80  # 240 on the demo set: enough for the x2 ratio arm (114 real)
    shard_size: int = 32
    # the images' codec inside a shard: "zstd" (smaller stores) or "none" (with large shards the writer then runs
    # close to the disk's bandwidth); the figures are in benchmarks/RESULTS.md, writer options
    compression: Compression = "zstd"
    # flush each shard's data to disk before its completion record (a power cut then never leaves a record over
    # lost data); false writes faster where a lost run is simply re-run (benchmarks/RESULTS.md, writer options)
    fsync: bool = True
    solver: Solver = "euler"  # flow models: euler/midpoint/heun/rk4/dopri5; DDPM models: ddpm (1000) or ddim
    nfe: int = 10  # solver steps: euler spends exactly this many evaluations (dopri5: adaptive, ignored)
    guidance: float = 1.0  # classifier-free guidance scale; 1.0 = plain conditional model
    rtol: float = 1e-5  # dopri5 only: error tolerances (the NFE it spends follows from them)
    atol: float = 1e-5
    batch_size: int = 64  # images per forward pass; on a GPU raise it until memory is full
    compile: bool = False  # torch.compile the network (pays off on a GPU for large runs)
    precision: Precision = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on a CPU), "bf16" (on any device), "fp32"
    workers: int = 0  # Dask workers of the local cluster (0 = one per GPU, or one on a CPU)
    scheduler: str = ""  # address of an existing Dask scheduler (or $MOTFM_DASK_SCHEDULER); "" = local cluster
    seed: int = 1234
    keep_versions: int = 0  # synthetic dataset versions to keep (0 = all; the published one always stays)
    # a version pruned away is deleted only this long after it left the newest keep_versions, and never while a
    # lease on it is live: readers that did not take a lease (a user's training job) keep reading it meanwhile
    prune_grace_hours: float = 24.0
    # mask-conditioned models: where each sample's mask comes from (motfm_core/masks.py): "train" (the training
    # masks, cycling: copies), "deformed" (a training mask under a random affine + elastic deformation drawn
    # from the sample's seed), "generated" (a class-conditional flow model over masks, its own train stage), or
    # "auto" (AUTO_MASK_SOURCE when the model is mask-conditioned; nothing otherwise)
    # The defaults (deformed masks at these strengths, with the copy guard) are the one variant benchmarks/novelty.py
    # found to meet all three targets on the bundled data (near-copies, coverage, same-class likeness): stronger
    # deformation makes same-class pairs less alike than real ones; without the guard, weaker lets copies through;
    # the guard redraws more samples at this strength than at a stronger one. Figures in RESULTS.md.
    mask_source: MaskSource = "auto"
    deform_rotate: float = 5.0  # degrees, uniform in +-
    deform_scale: float = 0.05  # scale factor 1 +- this, per axis
    deform_translate: float = 0.02  # shift, fraction of the image side, per axis
    deform_elastic: float = 1.0  # elastic displacement magnitude (pixels at the control points); 0 = affine only
    deform_elastic_spacing: float = 0.25  # elastic control-point spacing, fraction of the image side
    # copy guard: redraw (new recorded seed) any sample nearer to a training image of its generator than the
    # `copy_quantile` of real test images are (the memorisation audit's threshold), up to `max_redraws` times
    reject_copies: bool = True
    copy_quantile: float = 0.01
    max_redraws: int = 20

    def validate(self) -> None:
        check_choices(self, "sample")
        _check(self.samples_per_class >= 1, "sample.samples_per_class must be >= 1")
        _check(self.shard_size >= 1, "sample.shard_size must be >= 1")
        _check(self.nfe >= 1, f"sample.nfe must be >= 1, got {self.nfe}")
        _check(self.guidance >= 0.0, "sample.guidance must be >= 0")
        _check(self.rtol > 0 and self.atol > 0, "sample.rtol and sample.atol must be > 0")
        _check(self.workers >= 0, "sample.workers must be >= 0 (0 = one per GPU, or one on a CPU)")
        _check(self.keep_versions >= 0, "sample.keep_versions must be >= 0 (0 keeps all)")
        _check(self.prune_grace_hours >= 0, "sample.prune_grace_hours must be >= 0")
        _check(0 <= self.deform_rotate <= 180 and 0 <= self.deform_scale < 1 and 0 <= self.deform_translate < 0.5,
               "sample.deform_rotate must lie in [0, 180] degrees, deform_scale in [0, 1), deform_translate in "
               "[0, 0.5)")
        _check(self.deform_elastic >= 0 and 0 < self.deform_elastic_spacing <= 1,
               "sample.deform_elastic must be >= 0 and sample.deform_elastic_spacing in (0, 1] (fraction of the side)")
        _check(0 < self.copy_quantile < 0.5 and self.max_redraws >= 1,
               "sample.copy_quantile must lie in (0, 0.5) and sample.max_redraws be >= 1")


@dataclass
class EvalConfig:
    """Downstream classifier (and segmenter, when masks exist): real-only vs real+synthetic arms, each
    tested on the real test split."""

    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    synthetic_ratio: float = 1.0  # the headline arm: synthetic images per real training image
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # every real+synthetic arm (the headline ratio is always run)
    real_fractions: tuple[float, ...] = (0.25, 0.1)  # low-data arms: this share of real train, +/- synthetic
    channels: tuple[int, ...] = (16, 32, 64)
    segmentation: bool = True  # also train a segmenter when both stores have masks
    seg_steps: int = 200
    seg_channels: tuple[int, ...] = (8, 16, 32)
    nfe_curve: tuple[int, ...] = (1, 2, 4, 10, 20)  # Euler NFEs of the report's quality-vs-NFE curve (() = none)
    nfe_curve_samples: int = 32  # fresh samples per class at each NFE of the curve
    # downstream value per NFE: for each of these Euler NFEs (other than sample.nfe, the main store's), a synthetic
    # version of the same size sampled at that NFE and its own `real+synthetic` and `synthetic` arms over the same
    # seeds, so the report can say which NFE is the cheapest whose gain matches the best one's (() = none)
    nfe_arms: tuple[int, ...] = ()
    # the same comparison against the same-backbone DDPM baseline (model.prediction=epsilon, trained with the run's
    # train settings on the same data, its own train stage): for each of these DDIM NFEs a version of the same size
    # and its `real+synthetic DDPM NFE n` and `synthetic DDPM NFE n` arms over the same seeds (() = none)
    ddpm_arms: tuple[int, ...] = ()
    # picks the class-stratified real subset of each low-data arm (fixed across seeds); its generator is trained on
    # exactly that subset (train.real_fraction / train.subset_seed)
    subset_seed: int = 0
    # the downstream models (and the quality metrics' feature extractor) see images average-pooled by this factor per
    # axis; a segmenter's masks are predicted back at native size (1 = native; 2 makes 128^3 volumes 8x cheaper)
    downsample: int = 1
    # an arm's synthetic images up to this size are loaded for its training; more are read from the store a batch at a
    # time (same batches, same result), so memory stays flat however many there are
    memory_mb: int = 512

    def validate(self) -> None:
        _check(len(self.seeds) >= 1, "eval.seeds must name at least one seed")
        _check(self.synthetic_ratio > 0, "eval.synthetic_ratio must be > 0")
        _check(all(r > 0 for r in self.ratios), f"eval.ratios must all be > 0, got {self.ratios}")
        _check(all(0 < f < 1 for f in self.real_fractions),
               f"eval.real_fractions must lie in (0, 1) (the full set is always run), got {self.real_fractions}")
        _check(self.steps >= 1 and self.seg_steps >= 1, "eval.steps and eval.seg_steps must be >= 1")
        _check(len(self.seg_channels) >= 2, "eval.seg_channels needs at least two levels")
        _check(all(n >= 1 for n in self.nfe_curve) and self.nfe_curve_samples >= 1,
               "eval.nfe_curve values and eval.nfe_curve_samples must be >= 1")
        _check(all(n >= 1 for n in self.nfe_arms), f"eval.nfe_arms values must be >= 1, got {self.nfe_arms}")
        _check(all(n >= 1 for n in self.ddpm_arms), f"eval.ddpm_arms values must be >= 1, got {self.ddpm_arms}")
        _check(self.downsample >= 1, f"eval.downsample must be >= 1 (1 = native size), got {self.downsample}")
        _check(self.memory_mb >= 0, f"eval.memory_mb must be >= 0 (0: read every batch from the store), got "
               f"{self.memory_mb}")


@dataclass
class EnhanceConfig:
    """One enhancement task and its training recipe."""

    task: EnhanceTask = "denoise"
    level: float = 0.0  # noise sigma (images in [0, 1]) or integer downsampling factor; 0 = the task's default
    source_noise: float = 0.02
    channels: tuple[int, ...] = (32, 64, 64)
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    nfe: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.level == 0:  # one `--enhance denoise superres` run gets a sensible level for each task
            self.level = 2.0 if self.task == "superres" else 0.1

    def validate(self) -> None:
        check_choices(self, "enhance")
        if self.task == "superres":
            _check(float(self.level).is_integer() and self.level >= 2,
                   "enhance.level for superres: integer factor >= 2")
        _check(self.level > 0 and self.steps >= 1 and self.nfe >= 1, "enhance.level, steps and nfe must be positive")


@dataclass
class AutoencoderConfig:
    """MONAI `AutoencoderKL` of `model.space="latent"`: images <-> latents 2^(levels - 1) times smaller per axis,
    trained by its own stage on random patches and applied fully convolutionally to whole images."""

    channels: tuple[int, ...] = (16, 32, 64)  # per level; each level after the first halves every side
    latent_channels: int = 4
    num_res_blocks: int = 1
    patch_size: int = 32  # side of the random training patches (cubes in 3D), capped at the image's sides
    steps: int = 1500
    batch_size: int = 4
    lr: float = 5e-4
    kl_weight: float = 1e-6  # weight of the KL term against the L1 reconstruction loss
    # a patch discriminator's least-squares loss at this weight from `adversarial_start` on (0 = off)
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    # encoding and decoding window: latent voxels per side (0 = whole images when one fits the memory plan, else
    # windows of 32), and the windows' overlap (blended with Gaussian weights)
    tile: int = 0
    tile_overlap: float = 0.25
    checkpoint: str = ""  # a trained autoencoder.pt to use instead of training one (same data and image size)
    checkpoint_every: int = 250
    seed: int = 0

    @property
    def factor(self) -> int:
        """Downsampling per axis from image to latent."""
        return 2 ** (len(self.channels) - 1)

    def validate(self) -> None:
        _check(len(self.channels) >= 2 and all(c >= 4 for c in self.channels),
               f"autoencoder.channels needs at least two levels of >= 4 channels, got {self.channels}")
        _check(self.latent_channels >= 1 and self.num_res_blocks >= 1,
               "autoencoder.latent_channels and autoencoder.num_res_blocks must be >= 1")
        _check(self.patch_size >= self.factor and self.patch_size % self.factor == 0,
               f"autoencoder.patch_size must be a multiple of the downsampling {self.factor}, got {self.patch_size}")
        _check(self.steps >= 1 and self.batch_size >= 1 and self.lr > 0,
               "autoencoder.steps, autoencoder.batch_size and autoencoder.lr must be positive")
        _check(self.kl_weight >= 0 and self.adversarial_weight >= 0 and self.adversarial_start >= 0,
               "autoencoder.kl_weight, adversarial_weight and adversarial_start must be >= 0")
        _check(self.tile == 0 or self.tile >= 4, f"autoencoder.tile must be 0 (auto) or >= 4, got {self.tile}")
        _check(0 <= self.tile_overlap < 1 and (self.tile * self.tile_overlap).is_integer(),
               f"autoencoder.tile_overlap must lie in [0, 1) and give whole latent voxels of overlap at tile "
               f"{self.tile}, got {self.tile_overlap}")
        _check(self.checkpoint_every >= 1, "autoencoder.checkpoint_every must be >= 1")


def _latent_geometry(data: DataConfig, ae: AutoencoderConfig) -> dict[str, int]:
    """The latent flow's geometry: the data's sides divided by the autoencoder's downsampling, and its channels."""
    f, out = ae.factor, {"in_channels": ae.latent_channels}
    for key, side in (("image_size", data.image_size), ("depth", data.depth))[:data.spatial_dims - 1]:
        if side % f:
            raise ValueError(f"data.{key}={side} is not divisible by the autoencoder's downsampling {f} "
                             f"(autoencoder.channels has {len(ae.channels)} levels); use data.{key}="
                             f"{max(f, side // f * f)} or {(side // f + 1) * f}, or fewer autoencoder levels")
        out[key] = side // f
    if data.spatial_dims == 2:
        out["depth"] = data.depth
    return out


# the named model sizes (`model.size`, the flow's `model_size`): UNet channels per level at the demo's 48 px; other
# image sizes get other levels (motfm_core.sizing)
MODEL_SIZES: dict[str, tuple[int, ...]] = {k: sized_network(k, (48, 48))[0] for k in WIDTHS}


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
            raise ValueError(f"unknown config section(s) {unknown}; valid ones are {sorted(sections)}")
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
                raise ValueError(f"model.{key}={model[key]!r} contradicts data.{key}={getattr(data, key)!r}: the "
                                 f"network takes the data's geometry; set data.{key} instead")
            model[key] = value
        built: dict[str, Any] = {name: from_dict(kind, model if name == "model" else overrides.get(name), where=name)
                                 for name, kind in kinds.items() if name not in ("data", "autoencoder")}
        out = cls(data=data, autoencoder=autoencoder, **built)
        f = out.eval.downsample
        if any(side % f for side in data.spatial_shape):
            raise ValueError(f"eval.downsample={f} does not divide the images' sides {data.spatial_shape}; use a "
                             "factor that divides every side (1 = native size)")
        if latent:
            out.check_latent()
        if out.eval.ddpm_arms and out.model.prediction == "epsilon":
            raise ValueError("eval.ddpm_arms compares the flow-matching generator with a DDPM baseline, but "
                             "model.prediction='epsilon' makes the run's generator the DDPM; leave one of them unset")
        return out

    def check_latent(self) -> None:
        """Refuse the settings the latent path cannot apply (before any work), naming the key and the fix."""
        if self.model.mask_conditioning == "controlnet":
            raise ValueError("model.mask_conditioning='controlnet' is not supported with model.space='latent' (the "
                             "masks condition the latent flow on its own grid); use 'concat' or 'auto'")
        if self.sample.mask_source == "generated":
            raise ValueError("sample.mask_source='generated' is not supported with model.space='latent' (the mask "
                             "generator would train in pixel space); use 'deformed' or 'train'")
        if self.train.reflow_from:
            raise ValueError("train.reflow_from: reflow is not supported with model.space='latent'; leave it empty")
        if self.eval.ddpm_arms:
            raise ValueError("eval.ddpm_arms: the DDPM baseline trains in pixel space, not on the latents; leave it "
                             "empty with model.space='latent'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
