"""The configuration of the networks: the velocity UNet (`model`, sized to the image by `config.sizing`) and the
autoencoder of latent flow matching (`autoencoder`)."""

from __future__ import annotations

from dataclasses import dataclass

from motfm_core.config.choices import GradientCheckpointing, MaskConditioning, ModelSize, Prediction, Space, SpatialDims
from motfm_core.config.sizing import WIDTHS, check_attention, sized_network
from motfm_core.typed import check as _check
from motfm_core.typed import check_choices

__all__ = ["auto_norm_groups", "AutoencoderConfig", "DDPM_TIMESTEPS", "MODEL_SIZES", "ModelConfig"]

# the DDPM baseline's training steps (model.prediction='epsilon'); its DDIM sampler takes at most as many
DDPM_TIMESTEPS = 1000


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

    `size` names a width; the number of levels and where attention goes follow the image (`motfm_core.config.sizing`).
    Explicit `channels` / `attention_levels` win over the sizing. With space="latent" the geometry (`image_size`,
    `depth`, `in_channels`) is the autoencoder's latent grid, set from the data and `autoencoder` sections."""

    spatial_dims: SpatialDims = 2  # set from data.spatial_dims
    in_channels: int = 1  # set from the data's channels (sequences), or the latents'
    num_classes: int = 3  # set from the data's classes; one more is the null class of guidance
    size: ModelSize = "small"  # small / medium / large: the first level's width (32 / 64 / 128 channels)
    channels: tuple[int, ...] = ()  # () = sized from `size` and the image (48 px small: 32, 64, 64)
    attention_levels: tuple[bool, ...] = ()  # () = at the deepest level if its tokens are within the limit
    max_attention_tokens: int = 0  # 0 = 1024 tokens in 2D, 512 in 3D; an attention level over it is refused
    num_res_blocks: int = 1  # residual blocks per level
    num_head_channels: int = 32  # channels per attention head
    norm_num_groups: int = 0  # 0 = auto: every GroupNorm group holds >= 4 channels (see `auto_norm_groups`)
    image_size: int = 48  # set from data.image_size (latent: the autoencoder's grid)
    depth: int = 16  # 3D only
    prediction: Prediction = "velocity"  # "velocity": flow matching; "epsilon": the DDPM/DDIM baseline
    # "concat" (one-hot mask channels), "controlnet" (MONAI ControlNet), or "auto" ("concat" when the dataset has
    # masks, else "none"; resolved by `training.model_for_data`)
    mask_conditioning: MaskConditioning = "none"
    mask_classes: int = 0  # set from the dataset's mask_names when masks condition the model
    # recompute each residual block in backward: less memory, more compute (its forward runs twice). "auto": on
    # when the memory plan says a training step would not fit without it (model.memory); it never changes the result
    gradient_checkpointing: GradientCheckpointing = "auto"
    # "pixel": the flow works on images; "latent": on the latents of an autoencoder trained by its own stage
    # (motfm_core.model.autoencoder), every sample decoded before it is written
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
class AutoencoderConfig:
    """MONAI `AutoencoderKL` of `model.space="latent"`: images <-> latents 2^(levels - 1) times smaller per axis,
    trained by its own stage on random patches and applied fully convolutionally to whole images."""

    channels: tuple[int, ...] = (16, 32, 64)  # per level; each level after the first halves every side
    latent_channels: int = 4  # channels of the latent the flow works on
    num_res_blocks: int = 1  # residual blocks per level
    patch_size: int = 32  # side of the random training patches (cubes in 3D), capped at the image's sides
    steps: int = 1500  # optimizer steps of the autoencoder
    batch_size: int = 4  # patches per step
    lr: float = 5e-4  # its learning rate
    kl_weight: float = 1e-6  # weight of the KL term against the L1 reconstruction loss
    # a patch discriminator's least-squares loss at this weight from `adversarial_start` on (0 = off)
    adversarial_weight: float = 0.0
    adversarial_start: int = 0  # the step the adversarial loss starts at
    # encoding and decoding window: latent voxels per side (0 = whole images when one fits the memory plan, else
    # windows of 32), and the windows' overlap (blended with Gaussian weights)
    tile: int = 0
    tile_overlap: float = 0.25  # the windows' overlap, a share of their side
    checkpoint: str = ""  # a trained autoencoder.pt to use instead of training one (same data and image size)
    # with autoencoder.checkpoint and low-data arms (eval.real_fractions): let every low-data generator use that
    # one autoencoder, trained on more than its share, so those arms are not leak-free (the report says so)
    share_checkpoint: bool = False
    checkpoint_every: int = 250  # steps between checkpoints: an interrupted stage resumes from the last one
    seed: int = 0  # weights and patch draws of the autoencoder

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


# the named model sizes (`model.size`, the flow's `model_size`): UNet channels per level at the demo's 48 px; other
# image sizes get other levels (motfm_core.config.sizing)
MODEL_SIZES: dict[str, tuple[int, ...]] = {k: sized_network(k, (48, 48))[0] for k in WIDTHS}
