"""The configuration of the stages that read data, train, sample and evaluate: one dataclass per section, each with
the defaults that run on a CPU and a validate() that names the key and the fix."""

from __future__ import annotations

from dataclasses import dataclass

from motfm_core.config.choices import (
    Compression,
    Coupling,
    DdimSpacing,
    EnhanceTask,
    Fit,
    Intensity,
    MaskSource,
    Precision,
    Solver,
    SpatialDims,
    TimeSampling,
)
from motfm_core.typed import check as _check
from motfm_core.typed import check_choices

__all__ = ["DataConfig", "EnhanceConfig", "EvalConfig", "SampleConfig", "TrainConfig"]


@dataclass
class DataConfig:
    """How the real dataset is built. `source` is `brain-mri` (bundled), a `.npz`, or a folder with labels.csv."""

    source: str = "brain-mri"  # "brain-mri" (bundled), a MedMNIST .npz, or a folder with labels.csv
    image_size: int = 48  # stored side in pixels (a multiple of 8); images of another size are resized or fitted
    spatial_dims: SpatialDims = 2  # 2: images or axial slices of volumes; 3: whole volumes
    depth: int = 16  # 3D only: slices per crop along the last axis
    # brain-mri 3D only: voxel side in mm (0 = 2 mm); blocks too large for the 28 mm split slabs are split by brain
    voxel_mm: float = 0.0
    val_fraction: float = 0.15  # folders/npz without a given split: patient-level fractions
    test_fraction: float = 0.15  # the held-out test split's share, by subject (as val_fraction)
    seed: int = 0  # the train/val/test split by subject
    keep_previous: int = 1  # earlier builds of dataset.zarr kept beside it when the data changes (0 = none)
    # a folder of more than 8 rows is prepared on Dask workers: those of sample.scheduler (or
    # $MOTFM_DASK_SCHEDULER) when set, else a local cluster of this many (0 = one per CPU core, at most 8; 1 = in
    # the run's own process)
    workers: int = 0
    # how a volume reaches the stored shape, after reorientation to RAS: "fov" (crop to the foreground, pad to the
    # target's aspect in mm, resample: one isotropic spacing), "crop" (resample to data.spacing_mm, then crop or pad
    # around the foreground's centre), "resize" (pad to a cube in voxels, resize); "auto": "fov" for volumes that
    # record their geometry (NIfTI, positioned DICOM series) in a 3D run, "resize" for everything else
    fit: Fit = "auto"
    spacing_mm: float = 0.0  # data.fit="crop" only: the voxel side in mm the volumes are resampled to
    # how intensities become [0, 1], per channel: "percentile" (the image's foreground percentiles 0.5 / 99.5, for
    # MR and photos), "ct" (Hounsfield units clipped to data.ct_window); "auto": "ct" for a DICOM whose Modality is
    # CT, else "percentile". The window of every sample is stored, so images can be written back in its units
    intensity: Intensity = "auto"
    ct_window: tuple[float, ...] = (-1000.0, 1000.0)  # data.intensity="ct": the HU range mapped to [0, 1]

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
        _check(self.workers >= 0, "data.workers must be >= 0 (0 = one per CPU core, at most 8)")
        _check(self.fit in ("auto", "resize") or self.spatial_dims == 3,
               f"data.fit={self.fit!r} places volumes in millimetres, in 3D runs; use data.spatial_dims=3, or "
               "data.fit=auto (2D slices of volumes are resized in-plane)")
        _check(len(self.ct_window) == 2 and self.ct_window[0] < self.ct_window[1],
               f"data.ct_window must be [low, high] Hounsfield units with low < high, got {list(self.ct_window)}")
        _check((self.fit == "crop") == (self.spacing_mm > 0),
               f"data.fit='crop' needs data.spacing_mm > 0 (the voxel side to resample to) and only it uses it; got "
               f"data.fit={self.fit!r}, data.spacing_mm={self.spacing_mm:g}")


@dataclass
class TrainConfig:
    """Flow-matching optimisation recipe."""

    steps: int = 1200  # optimizer steps of the generator (the demo preset: 180)
    batch_size: int = 32  # images per optimizer step, over all devices (capped at the training set's size)
    lr: float = 2e-3  # AdamW learning rate after the warm-up, cosine-decayed to 10% of it at the last step
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 100  # linear learning-rate warm-up from 0
    ema_decay: float = 0.995  # the sampled weights are this exponential moving average of the trained ones
    # EMA decay ramps up as min(ema_decay, (1 + k) / (10 + k)) after k optimizer steps, so that a short run's EMA
    # is not mostly its random initial weights (0.995^150 = 47% of it after 150 steps); False: ema_decay from step 0
    ema_warmup: bool = True
    grad_clip: float = 1.0  # the gradient's norm is clipped to this
    time_sampling: TimeSampling = "uniform"  # or "logit_normal"
    time_shift: float = 1.0  # > 1 spends more training time near noise (SD3/MAISI resolution shift)
    coupling: Coupling = "independent"  # "ot" (minibatch exact OT, within class) or "sinkhorn" (entropic OT)
    class_dropout: float = 0.1  # drop labels to the null class for classifier-free guidance
    checkpoint_every: int = 200  # steps between checkpoints: an interrupted run resumes from the last one
    seed: int = 0  # weights, noise and time draws of the training
    # low-data generators: train on a class-stratified share of the train split (`stratified_subset`, the same
    # indices the downstream `real f%` arms use, recorded in the checkpoint); 1.0 = the whole split
    real_fraction: float = 1.0
    subset_seed: int = 0  # picks the real_fraction share (eval.subset_seed picks the same one)
    # reflow (rectified flow, Liu et al. 2023): retrain on a trained model's own noise -> sample couplings so
    # that its trajectories straighten and 1-2 steps suffice; the student starts from the teacher's EMA weights
    reflow_from: str = ""  # path of the teacher model.pt ("" = ordinary training)
    reflow_pairs: int = 512  # (noise, sample) pairs generated by the teacher
    reflow_steps: int = 10  # midpoint steps (2 network evaluations each) to solve the teacher's ODE
    # data-parallel training (motfm_core/model/ddp.py): processes, one per GPU (or gloo on a CPU), each training on
    # batch_size / devices rows of every global batch; the result does not depend on it (not in the run key)
    devices: int = 1
    # the memory a training step may plan for, in GB per device (0 = what the device has free): the plan refuses a
    # configuration over it and turns gradient checkpointing on where that makes it fit (motfm_core.model.memory)
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

    # synthetic images per class in the version (the demo preset: 40); enough for the largest eval.ratios arm
    samples_per_class: int = 80
    # images per shard: the unit written, resumed and fanned out to Dask workers; 0 = sized by `shard_mb`
    shard_size: int = 0
    # with shard_size 0: a shard holds about this many MiB of float32 images (at most 1/8 of the version, so 8
    # workers share it); the writer's speed follows a shard's bytes, so every image size gets a fast layout
    # (16 MiB: 48 px images 1,820 a shard, 128^3 volumes 2; benchmarks/RESULTS.md, writer options)
    shard_mb: float = 16.0
    # the images' codec inside a shard: "zstd" (smaller stores) or "none" (with large shards the writer then runs
    # close to the disk's bandwidth); the figures are in benchmarks/RESULTS.md, writer options
    compression: Compression = "zstd"
    # flush each shard's data to disk before its completion record (a power cut then never leaves a record over
    # lost data); false writes faster where a lost run is simply re-run (benchmarks/RESULTS.md, writer options)
    fsync: bool = True
    # flow models: euler/midpoint/heun/rk4/dopri5, or rflow (MONAI's RFlowScheduler loop); DDPM: ddpm (1000) or ddim
    solver: Solver = "euler"
    # DDIM only: where its steps sit among the DDPM's 1000. "trailing" (999, 899, .., 99 for 10 steps: each step
    # lands on the next one evaluated) or "linspace" (MONAI's default: 999, 888, .., 111, 0, while each step moves
    # the sample 1000 // steps back, to 899 from 999); trailing measured far better at few steps
    # (benchmarks/RESULTS.md, "DDIM against its steps")
    ddim_spacing: DdimSpacing = "trailing"
    nfe: int = 10  # solver steps: euler spends exactly this many evaluations (dopri5: adaptive, ignored)
    guidance: float = 1.0  # classifier-free guidance scale; 1.0 = plain conditional model
    rtol: float = 1e-5  # dopri5 only: error tolerances (the NFE it spends follows from them)
    atol: float = 1e-5  # dopri5 only: the absolute error tolerance
    batch_size: int = 64  # images per forward pass; on a GPU raise it until memory is full
    compile: bool = False  # torch.compile the network (pays off on a GPU for large runs)
    precision: Precision = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on a CPU), "bf16" (on any device), "fp32"
    workers: int = 0  # Dask workers of the local cluster (0 = one per GPU, or one on a CPU)
    scheduler: str = ""  # address of an existing Dask scheduler (or $MOTFM_DASK_SCHEDULER); "" = local cluster
    seed: int = 1234  # the base of every sample's recorded noise seed (a regeneration takes a new one)
    keep_versions: int = 0  # synthetic dataset versions to keep (0 = all; the published one always stays)
    # a version pruned away is deleted only this long after it left the newest keep_versions, and never while a
    # lease on it is live: readers that did not take a lease (a user's training job) keep reading it meanwhile
    prune_grace_hours: float = 24.0
    # mask-conditioned models: where each sample's mask comes from (motfm_core/model/masks.py): "train" (the training
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
    copy_quantile: float = 0.01  # the copy guard's threshold: this quantile of real test-to-train distances
    max_redraws: int = 20  # the most redraws of one sample

    def validate(self) -> None:
        check_choices(self, "sample")
        _check(self.samples_per_class >= 1, "sample.samples_per_class must be >= 1")
        _check(self.shard_size >= 0, "sample.shard_size must be >= 0 (0 = sized by sample.shard_mb)")
        _check(self.shard_mb > 0, f"sample.shard_mb must be > 0, got {self.shard_mb}")
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

    seeds: tuple[int, ...] = (0, 1, 2)  # downstream training seeds: every arm trains once per seed
    steps: int = 300  # optimizer steps of each downstream classifier
    batch_size: int = 32  # images per step of the downstream models
    lr: float = 1e-3  # the downstream models' learning rate
    synthetic_ratio: float = 1.0  # the headline arm: synthetic images per real training image
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # every real+synthetic arm (the headline ratio is always run)
    real_fractions: tuple[float, ...] = (0.25, 0.1)  # low-data arms: this share of real train, +/- synthetic
    channels: tuple[int, ...] = (16, 32, 64)  # the downstream classifier's widths per level
    segmentation: bool = True  # also train a segmenter when both stores have masks
    seg_steps: int = 200  # optimizer steps of each downstream segmenter
    seg_channels: tuple[int, ...] = (8, 16, 32)  # the downstream segmenter's (a MONAI UNet) widths per level
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
    # an arm's synthetic images, and each real split (images and masks), up to this size are loaded; more are read
    # from the store a batch at a time (same batches, same result), so memory stays flat however many there are
    memory_mb: int = 512
    # "as useful as": two arms (an NFE and the best one, flow matching and the DDPM baseline) count as equivalent
    # when the 90% interval of their paired difference lies within +- this (accuracy; Dice for the segmenter)
    equivalence_margin: float = 0.01

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
        _check(self.equivalence_margin > 0, f"eval.equivalence_margin must be > 0, got {self.equivalence_margin}")


@dataclass
class EnhanceConfig:
    """One enhancement task and its training recipe."""

    task: EnhanceTask = "denoise"  # set by --enhance: "denoise" or "superres"
    level: float = 0.0  # noise sigma (images in [0, 1]) or integer downsampling factor; 0 = the task's default
    source_noise: float = 0.02  # noise added to the degraded source image the flow starts from
    channels: tuple[int, ...] = (32, 64, 64)  # the enhancement UNet's widths per level
    steps: int = 600  # optimizer steps of the enhancement flow
    batch_size: int = 16  # images per optimizer step
    lr: float = 1e-3  # its learning rate
    nfe: int = 4  # Euler steps from the degraded image to the enhanced one
    seed: int = 0  # weights and noise of the enhancement run

    def __post_init__(self) -> None:
        if self.level == 0:  # one `--enhance denoise superres` run gets a sensible level for each task
            self.level = 2.0 if self.task == "superres" else 0.1

    def validate(self) -> None:
        check_choices(self, "enhance")
        if self.task == "superres":
            _check(float(self.level).is_integer() and self.level >= 2,
                   "enhance.level for superres: integer factor >= 2")
        _check(self.level > 0 and self.steps >= 1 and self.nfe >= 1, "enhance.level, steps and nfe must be positive")
