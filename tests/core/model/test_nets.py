import pytest
import torch

from motfm_core.config import ModelConfig
from motfm_core.model.nets import build_model, guided_velocity
from tests.conftest import TINY_MODEL


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 16, 16)), (3, (2, 1, 16, 16, 8))])
def test_forward_backward_2d_and_3d(dims, shape):
    model = build_model(ModelConfig(spatial_dims=dims, image_size=16, depth=8, num_classes=3, **TINY_MODEL))
    x = torch.randn(shape, requires_grad=True)
    out = model(x, torch.rand(2), torch.tensor([0, 2]))
    assert out.shape == x.shape
    out.pow(2).mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_time_is_not_quantised():
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=16, num_classes=2, **TINY_MODEL)).eval()
    with torch.no_grad():  # MONAI zero-initialises the output layer; give it weights so outputs can differ
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    x, y = torch.randn(1, 1, 16, 16), torch.tensor([0])
    with torch.no_grad():
        a, b = model(x, torch.tensor([0.5000]), y), model(x, torch.tensor([0.5003]), y)
    assert not torch.equal(a, b)  # 0.3 of a 1/1000 step still changes the output


def test_guidance_scales():
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=16, num_classes=3, **TINY_MODEL)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    x, t, y = torch.randn(3, 1, 16, 16), torch.rand(3), torch.tensor([0, 1, 2])
    null = torch.full_like(y, model.null_class)
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, null)
        assert torch.allclose(guided_velocity(model, y, 1.0)(x, t), cond)
        assert torch.allclose(guided_velocity(model, y, 0.0)(x, t), uncond)
        assert torch.allclose(guided_velocity(model, y, 3.0)(x, t), uncond + 3.0 * (cond - uncond), atol=1e-5)


@pytest.mark.parametrize("how", ["concat", "controlnet"])
@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 16, 16)), (3, (2, 1, 16, 16, 8))])
def test_mask_conditioning_2d_and_3d(how, dims, shape):
    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=dims, image_size=16, depth=8, num_classes=3, mask_conditioning=how,
                      mask_classes=4, **TINY_MODEL)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    x, t, y = torch.randn(shape), torch.rand(2), torch.tensor([0, 1])
    mask = torch.randint(0, 4, (2, 1, *shape[2:]), dtype=torch.uint8)
    out = model(x, t, y, mask)
    assert out.shape == x.shape
    out.pow(2).mean().backward()
    other = model(x, t, y, (mask + 1) % 4)
    assert not torch.allclose(out, other)  # the mask changes the velocity
    with pytest.raises(ValueError, match="pass mask"):
        model(x, t, y)


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(image_size=16, num_classes=3, **TINY_MODEL))
    ckpt = build_model(ModelConfig(image_size=16, num_classes=3, gradient_checkpointing=True, **TINY_MODEL))
    ckpt.load_state_dict(plain.state_dict())  # same keys: checkpointing wraps forward only
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 2])
    a, b = plain(x, t, y), ckpt(x, t, y)
    assert torch.allclose(a, b, atol=1e-6)
    (a.sin().sum()).backward()
    (b.sin().sum()).backward()
    ga = dict(plain.named_parameters())["unet.conv_in.conv.weight"].grad
    gb = dict(ckpt.named_parameters())["unet.conv_in.conv.weight"].grad
    assert ga is not None and torch.allclose(ga, gb, atol=1e-5)


def test_a_copy_of_a_checkpointed_model_runs_its_own_weights():
    """The EMA is a deep copy of the training model: its checkpointed blocks must run the copy's weights (a forward
    closed over the original block ran the original's)."""
    import copy

    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=16, num_classes=3, gradient_checkpointing="on", **TINY_MODEL)).train()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(torch.randn_like(p))
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 2])
    reference = build_model(ModelConfig(image_size=16, num_classes=3, **TINY_MODEL)).train()
    reference.load_state_dict(twin.state_dict())
    assert torch.allclose(twin(x, t, y), reference(x, t, y), atol=1e-5)
    assert not torch.allclose(twin(x, t, y), model(x, t, y))
