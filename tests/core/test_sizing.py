"""The network follows the image: levels per size, attention only within the token limit, explicit settings win."""

import pytest

from motfm_core.config import MODEL_SIZES, ModelConfig, PipelineConfig
from motfm_core.config.sizing import attention_tokens, level_sides, sized_network


@pytest.mark.parametrize("shape,levels,bottleneck", [
    ((48, 48), 3, (12, 12)),  # the demo's network, unchanged
    ((64, 64), 3, (16, 16)),
    ((128, 128), 4, (16, 16)),
    ((192, 192), 5, (12, 12)),
    ((256, 256), 5, (16, 16)),
    ((512, 512), 6, (16, 16)),
    ((32, 32, 8), 3, (8, 8, 2)),  # the 3D demo's blocks
    ((64, 64, 64), 4, (8, 8, 8)),
    ((96, 96, 96), 5, (6, 6, 6)),
    ((128, 128, 128), 5, (8, 8, 8)),
    ((120, 120), 4, (15, 15)),  # 120 = 8 x 15: a fifth level could not halve it evenly
])
def test_levels_bring_the_bottleneck_to_the_stated_side(shape, levels, bottleneck):
    channels, attention = sized_network("small", shape)
    assert len(channels) == len(attention) == levels
    assert level_sides(shape, levels)[-1] == bottleneck
    limit = 1024 if len(shape) == 2 else 512
    assert attention == (False,) * (levels - 1) + (True,)  # every bottleneck above is within the limit
    assert attention_tokens(shape, levels - 1) <= limit


def test_model_sizes_name_widths_and_the_demo_network_is_unchanged():
    assert MODEL_SIZES == {"small": (32, 64, 64), "medium": (64, 128, 128), "large": (128, 256, 256)}
    demo = ModelConfig()  # 48 px: what every earlier result was measured with
    assert (demo.channels, demo.attention_levels, demo.norm_num_groups) == ((32, 64, 64), (False, False, True), 8)
    assert sized_network("medium", (256, 256))[0] == (64, 128, 128, 256, 256)
    assert sized_network("large", (128, 128, 128))[0] == (128, 256, 256, 512, 512)


def test_explicit_channels_and_attention_win():
    cfg = ModelConfig(image_size=256, channels=(16, 32, 32, 64, 64, 64))
    assert cfg.attention_levels == (False,) * 5 + (True,)  # attention follows the given levels (8 x 8)
    cfg = ModelConfig(image_size=256, attention_levels=(False, False, False, True, False))
    assert cfg.channels == (32, 64, 64, 128, 128)  # the sized widths for the given number of levels
    assert ModelConfig(image_size=48, size="large").channels == (128, 256, 256)


def test_attention_over_the_token_limit_is_refused_naming_the_level_and_fix():
    with pytest.raises(ValueError, match=r"level 2 attends over 64 x 64 = 4096 tokens, over the limit of 1024.*"
                                         r"model.max_attention_tokens"):
        ModelConfig(image_size=256, channels=(32, 64, 64), attention_levels=(False, False, True)).validate()
    ok = ModelConfig(image_size=256, channels=(32, 64, 64), attention_levels=(False, False, True),
                     max_attention_tokens=4096)
    ok.validate()  # the limit is the user's to raise
    with pytest.raises(ValueError, match=r"level 2 attends over 16 x 16 x 16 = 4096 tokens, over the limit of 512"):
        ModelConfig(spatial_dims=3, image_size=64, depth=64, channels=(8, 8, 8),
                    attention_levels=(False, False, True)).validate()
    # 504 = 8 x 63: four levels leave 63 x 63 = 3969 tokens, so the sized network has no attention (not a refusal)
    odd = ModelConfig(image_size=504)
    assert len(odd.channels) == 4 and odd.attention_levels == (False,) * 4
    odd.validate()


def test_a_size_the_levels_cannot_halve_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"model.image_size 40 must be divisible by 16 for 5 levels.*"
                                         r"data.image_size = 32 or 48"):
        ModelConfig(image_size=40, channels=(8,) * 5).validate()


def test_model_geometry_follows_the_data_or_is_refused():
    cfg = PipelineConfig.from_overrides({"data": {"image_size": 128}})
    assert cfg.model.image_size == 128 and len(cfg.model.channels) == 4
    with pytest.raises(ValueError, match=r"model.image_size=64 contradicts data.image_size=48"):
        PipelineConfig.from_overrides({"model": {"image_size": 64}})
    assert PipelineConfig.from_overrides({"model": {"image_size": 48}}).model.image_size == 48  # same value: fine
    with pytest.raises(ValueError, match=r"model.spatial_dims=3 contradicts data.spatial_dims=2"):
        PipelineConfig.from_overrides({"model": {"spatial_dims": 3}})
    with pytest.raises(ValueError, match=r"model.depth=32 contradicts data.depth=16"):
        PipelineConfig.from_overrides({"data": {"spatial_dims": 3}, "model": {"depth": 32}})
