"""Conditioning masks that are new (deformed, generated) and the copy guard."""

import dataclasses

import numpy as np
import pytest

from motfm_core.config import SampleConfig
from motfm_core.model.masks import deform, deform_columns, mask_seeds, resolve_mask_source


def _masks(n=4, side=32):
    m = np.zeros((n, 1, side, side), np.uint8)
    m[:, 0, 8:24, 6:26] = 1
    m[:, 0, 12:20, 12:20] = 2
    return m


def test_deformation_is_per_sample_recorded_and_keeps_labels():
    masks, seeds = _masks(), np.array([5, 6, 7, 8])
    out, params = deform(masks, seeds, SampleConfig())
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2}  # nearest neighbour: labels stay labels
    assert params.shape == (4, len(deform_columns(2))) == (4, 5)
    assert all(not np.array_equal(o, m) for o, m in zip(out, masks))  # every mask moved
    assert len({o.tobytes() for o in out}) == 4  # each by its own draw
    d = SampleConfig()
    assert np.abs(np.degrees(params[:, 0])).max() <= d.deform_rotate
    assert np.abs(params[:, 1:3] - 1).max() <= d.deform_scale
    again, p2 = deform(masks[[2, 0]], seeds[[2, 0]], SampleConfig())  # another batch layout, same samples
    assert np.array_equal(again, out[[2, 0]]) and np.array_equal(p2, params[[2, 0]])
    still, _ = deform(masks, seeds, SampleConfig(deform_rotate=0, deform_scale=0, deform_translate=0,
                                                  deform_elastic=0))
    assert np.array_equal(still, masks)  # zero deformation is the identity
    assert not set(mask_seeds(seeds)) & set(seeds.tolist())


def test_3d_deformation_rotates_in_the_axial_plane():
    vol = np.zeros((2, 1, 16, 16, 8), np.uint8)
    vol[:, 0, 4:12, 3:13, 2:6] = 1
    out, params = deform(vol, np.array([1, 2]), SampleConfig())
    assert out.shape == vol.shape and params.shape == (2, 9) and np.allclose(params[:, :2], 0)


def test_a_mask_source_that_cannot_apply_is_refused(phantom_store, tmp_path):
    from motfm_core.config import ModelConfig, TrainConfig
    from motfm_core.model.training import train_mask_generator
    from tests.conftest import TINY_MODEL

    assert resolve_mask_source("auto", False) is None and resolve_mask_source("auto", True) == "deformed"
    with pytest.raises(ValueError, match=r"sample.mask_source='generated' cannot apply: the model is not mask-cond"):
        train_mask_generator(phantom_store, ModelConfig(mask_conditioning="none", **TINY_MODEL), TrainConfig(steps=1),
                             "generated", tmp_path)
    assert not any(tmp_path.iterdir())  # refused before any training


def test_copy_guard_redraws_near_copies_deterministically(tiny_checkpoint):
    from motfm_core.model.guard import nearest
    from motfm_core.model.sampling import REDRAW_STRIDE, Sampler

    cfg = SampleConfig(samples_per_class=4, nfe=2, reject_copies=True, max_redraws=4)
    plain = Sampler(tiny_checkpoint, cfg)
    positions = np.arange(len(plain.labels))
    images, _, _ = plain.draw(positions, plain.seeds)
    d = nearest(images, plain.pool["images"])[0]
    threshold = float(np.median(d))  # a planted threshold: about half of the unguarded samples are "copies"
    guarded = Sampler(tiny_checkpoint, cfg, copy_threshold=threshold)
    out, _, info = guarded.draw_guarded(positions)
    redrawn = info["redraws"] > 0
    assert redrawn.sum() >= (d < threshold).sum() > 0
    final = nearest(out, guarded.pool["images"])[0]
    assert ((final >= threshold) | (info["redraws"] == cfg.max_redraws)).all()
    assert np.array_equal(info["seed"][~redrawn], plain.seeds[~redrawn])
    expected = plain.seeds[redrawn] + info["redraws"][redrawn].astype(np.int64) * REDRAW_STRIDE
    assert np.array_equal(info["seed"][redrawn], expected)
    # the same samples in two other "shards": the same seeds and images (to float rounding of batched convolutions)
    halves = [guarded.draw_guarded(p) for p in (positions[:5], positions[5:])]
    np.testing.assert_allclose(np.concatenate([h[0] for h in halves]), out, atol=1e-5)
    assert np.array_equal(np.concatenate([h[2]["seed"] for h in halves]), info["seed"])
    off = Sampler(tiny_checkpoint, dataclasses.replace(cfg, reject_copies=False))
    assert np.array_equal(off.draw_guarded(positions)[0], images)  # no threshold: no redraws
