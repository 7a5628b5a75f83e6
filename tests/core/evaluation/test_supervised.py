"""Downstream networks at eval.downsample: they see pooled images, a segmenter predicts at native size, and a factor
that does not divide the images is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motfm_core.config import EvalConfig, PipelineConfig
from motfm_core.evaluation.segmentation import build_segmenter, predict_masks, train_segmenter
from motfm_core.evaluation.supervised import Downsampled, build_classifier, predict_proba, train_classifier


def test_downstream_networks_see_pooled_images_and_segment_at_native_size():
    cfg = EvalConfig(downsample=2, channels=(4, 8), seg_channels=(4, 8), steps=2, seg_steps=2, batch_size=2)
    clf = build_classifier((1, 16, 16, 8), 3, cfg)
    assert isinstance(clf, Downsampled) and list(clf.inner.in_shape) == [8, 8, 4]
    # the pooled images are all it sees: two volumes with the same 2^3 block means score the same
    x = torch.rand(1, 1, 16, 16, 8)
    blocks = x.reshape(1, 1, 8, 2, 8, 2, 4, 2).mean((3, 5, 7))
    same = blocks.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    clf.eval()
    assert torch.allclose(clf(x), clf(same), atol=1e-5) and clf.net(x).shape[0] == 1
    seg = build_segmenter(3, 1, 4, cfg).eval()
    assert seg(x).shape == (1, 4, 16, 16, 8)  # logits at native size: loss and Dice there
    images = np.random.default_rng(0).random((4, 1, 16, 16, 8), dtype=np.float32)
    labels, masks = np.array([0, 1, 2, 0]), (images > 0.5).astype(np.uint8)
    model = train_classifier(images, labels, 3, cfg, 0, torch.device("cpu"))
    assert predict_proba(model, images, torch.device("cpu")).shape == (4, 3)
    seg = train_segmenter(images, masks, 2, cfg, 0, torch.device("cpu"))
    assert predict_masks(seg, images, torch.device("cpu")).shape == masks.shape
    assert type(build_classifier((1, 16, 16), 3, EvalConfig())).__name__ == "Classifier"  # native: as before


def test_a_downsample_that_does_not_divide_the_images_is_refused():
    with pytest.raises(ValueError, match=r"eval.downsample=5 does not divide the images' sides \(48, 48\)"):
        PipelineConfig.from_overrides({"eval": {"downsample": 5}})
