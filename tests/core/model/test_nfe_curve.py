"""The quality-vs-NFE curve: the sampling stage draws its fresh samples (once per version and setting), the
quality stage scores them."""

import os

import numpy as np
import pytest

from motfm_core.config import EvalConfig, SampleConfig
from motfm_core.evaluation.quality import FeatureExtractor, score_nfe_curve
from motfm_core.model.sampling import generate, prepare_version, sample_nfe_curve, sample_plan
from motfm_core.model.training import load_checkpoint

CFG = SampleConfig(samples_per_class=4, shard_size=4, nfe=4, reject_copies=False)


def test_the_sampling_stage_draws_the_curve_once_and_the_quality_stage_scores_it(tiny_checkpoint, phantom_store,
                                                                                  tmp_path):
    store, _ = prepare_version(tiny_checkpoint, CFG, tmp_path / "synthetic")
    out = sample_nfe_curve(store, (1, 2), 2, tmp_path / "nfe-curve.npz")
    assert out is not None
    with np.load(out) as curve:
        assert list(curve["nfes"]) == [1, 2] and np.all(curve["seconds_per_image"] > 0)
        labels, one, two = curve["labels"], curve["images_1"], curve["images_2"]
    assert one.shape == two.shape == (6, 1, 16, 16) and sorted(np.bincount(labels)) == [2, 2, 2]
    assert not np.allclose(one, two)  # the same noise, another step count
    model, _ = load_checkpoint(tiny_checkpoint)  # a plain Euler draw of the curve's plan gives the same images
    plan_labels, seeds = sample_plan(3, SampleConfig(samples_per_class=2, seed=99))
    again, _ = generate(model, plan_labels, seeds, SampleConfig(solver="euler", nfe=1))
    assert np.array_equal(plan_labels, labels) and np.allclose(again, one, atol=1e-5)

    stamp = os.stat(out).st_mtime_ns  # the same version and setting: reused, not drawn again
    assert sample_nfe_curve(store, (1, 2), 2, out) == out and os.stat(out).st_mtime_ns == stamp
    sample_nfe_curve(store, (1, 4), 2, out)  # another setting: drawn again
    with np.load(out) as curve:
        assert list(curve["nfes"]) == [1, 4]

    extractor = FeatureExtractor.train(phantom_store, EvalConfig(steps=5, channels=(8, 16)))
    points = score_nfe_curve(out, extractor, one, extractor(one))
    assert [p.nfe for p in points] == [1, 4] and all(p.seconds_per_image > 0 for p in points)
    assert points[0].fid == pytest.approx(0.0, abs=1e-3) and points[1].fid > points[0].fid  # scored against itself


def test_a_diffusion_checkpoint_has_no_curve(ddpm_checkpoint, tmp_path):
    store, _ = prepare_version(ddpm_checkpoint, SampleConfig(samples_per_class=2, shard_size=2, solver="ddim",
                                                             nfe=2, reject_copies=False), tmp_path / "synthetic")
    assert sample_nfe_curve(store, (1, 2), 2, tmp_path / "nfe-curve.npz") is None
    assert not (tmp_path / "nfe-curve.npz").exists()
