"""The time and class embedding must reach every UNet level (issue: GroupNorm of one channel per group erases it)."""

import pytest
import torch

from motfm_core.config import MODEL_SIZES, ModelConfig, auto_norm_groups, from_dict
from motfm_core.model.nets import build_model


def _resnet_outputs(model, x, t, y) -> dict[str, torch.Tensor]:
    """Output of every MONAI ResnetBlock (by module name) for one forward pass."""
    from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out.detach().clone()))
             for name, m in model.named_modules() if isinstance(m, DiffusionUNetResnetBlock)]
    with torch.no_grad():
        model(x, t, y)
    for h in hooks:
        h.remove()
    return seen


def _randomised(cfg: ModelConfig):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # MONAI zero-initialises some output convolutions; give every weight a value
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
@pytest.mark.parametrize("dims", [2, 3])
def test_time_and_class_reach_every_resnet_block(size, dims):
    channels = MODEL_SIZES[size]
    cfg = ModelConfig(spatial_dims=dims, image_size=16, depth=8, num_classes=3, channels=channels,
                      attention_levels=(False,) * len(channels), num_head_channels=16)
    cfg.validate()
    model = _randomised(cfg)
    shape = (2, 1, 16, 16) + ((8,) if dims == 3 else ())
    x = torch.randn(shape)
    base = _resnet_outputs(model, x, torch.tensor([0.2, 0.2]), torch.tensor([0, 1]))
    moved_t = _resnet_outputs(model, x, torch.tensor([0.8, 0.8]), torch.tensor([0, 1]))
    moved_y = _resnet_outputs(model, x, torch.tensor([0.2, 0.2]), torch.tensor([2, 2]))
    assert len(base) >= 2 * len(channels)  # down, mid and up blocks
    for name, a in base.items():
        scale = a.abs().mean().item()
        assert (moved_t[name] - a).abs().mean().item() > 1e-3 * scale, f"{size} {dims}D {name} ignores t"
        assert (moved_y[name] - a).abs().mean().item() > 1e-3 * scale, f"{size} {dims}D {name} ignores y"


def test_one_channel_per_group_erases_conditioning_and_is_refused():
    """The planted fault: 32 groups on 32 channels makes the first level blind to t and y, and validate names it."""
    blind = ModelConfig(image_size=16, num_classes=3, channels=(32, 64), attention_levels=(False, False),
                        norm_num_groups=32)
    with pytest.raises(ValueError, match=r"one channel per group at level 0 \(32 channels\).*norm_num_groups <= 16"):
        blind.validate()
    with pytest.raises(ValueError, match="level 0"):
        from_dict(ModelConfig, {"channels": [32, 64], "attention_levels": [False, False], "norm_num_groups": 32})
    # bypass validation to show what it guards against: the level-0 ResnetBlock's output ignores t and y there
    object.__setattr__(blind, "validate", lambda: None)
    model = _randomised(blind)
    block = model.unet.down_blocks[0].resnets[0]
    x = torch.randn(1, 1, 16, 16)
    outs = []
    for t, y in ((0.2, 0), (0.8, 2)):
        seen = {}
        h = block.register_forward_hook(lambda m, i, o, seen=seen: seen.__setitem__("o", o.detach().clone()))
        with torch.no_grad():
            model(x, torch.tensor([t]), torch.tensor([y]))
        h.remove()
        outs.append(seen["o"])
    assert (outs[0] - outs[1]).abs().max().item() < 1e-4


def test_auto_groups_per_model_size():
    assert {k: auto_norm_groups(v) for k, v in MODEL_SIZES.items()} == {"small": 8, "medium": 16, "large": 32}
    assert ModelConfig().norm_num_groups == 8 and ModelConfig(channels=(16, 16)).norm_num_groups == 4
