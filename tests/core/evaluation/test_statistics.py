"""The intervals and tests of a downstream gain: paired over seeds and test subjects (motfm_core.evaluation.statistics),
and the report lines built on them (verdicts)."""

import numpy as np
import pytest

from motfm_core.evaluation.metrics import Gain
from motfm_core.evaluation.statistics import Comparison, compare_arms, paired_interval


def _onehot(pred: np.ndarray, k: int = 2) -> np.ndarray:
    return np.eye(k)[pred]


def test_known_gains_and_their_intervals():
    y = np.array([0, 1] * 20)
    groups = np.repeat(np.arange(10), 4)
    right, wrong = _onehot(y), _onehot(1 - y)
    same = paired_interval([right, right], [right, right], groups, "accuracy", y, n_boot=200)
    assert same["mean"] == same["ci95_low"] == same["ci95_high"] == 0.0 and same["subjects"] == 10
    better = paired_interval([wrong], [right], groups, "accuracy", y, n_boot=200)
    assert better["mean"] == better["ci95_low"] == better["ci95_high"] == 1.0
    f1 = paired_interval([wrong], [right], groups, "macro_f1", y, n_boot=200)
    assert f1["mean"] == pytest.approx(1.0) and f1["ci95_low"] == pytest.approx(1.0)
    dice = paired_interval([np.full(40, 0.5)], [np.where(np.arange(40) % 2, 0.7, np.nan)], groups, "dice",
                           n_boot=200)
    assert dice["mean"] == pytest.approx(0.2) and dice["ci95_low"] == pytest.approx(0.2)  # NaN images left out
    assert paired_interval([right], [right], groups, "auroc", y)["ci95_low"] is None  # probabilities: no interval


def test_clustered_images_widen_the_interval_where_the_image_bootstrap_said_helped():
    """Four test patients of 25 slices each; the new arm is right on every slice of one patient where the baseline
    is wrong, equal elsewhere. Resampling images (the old CI) calls that a clear gain; resampling patients does not:
    a draw without that patient (a third of them) has no gain at all."""
    y = np.zeros(100, int)
    groups = np.repeat(np.arange(4), 25)
    base = _onehot(np.where(groups == 0, 1, 0))
    new = _onehot(np.zeros(100, int))
    r = paired_interval([base], [new], groups, "accuracy", y)
    assert r["mean"] == pytest.approx(0.25) and r["ci95_low"] <= 0.0 < r["ci95_high"]
    as_images = paired_interval([base], [new], np.arange(100), "accuracy", y)  # every image its own subject
    assert as_images["ci95_low"] > 0.1  # what the image-level bootstrap said
    from motfm_core.evaluation.verdicts import verdict_of

    def gain(ci):
        return Gain(mean=0.25, std=0.0, min=0.25, max=0.25, n=1, ci95_low=ci["ci95_low"], ci95_high=ci["ci95_high"])

    assert verdict_of(gain(as_images)) == "helped"
    assert verdict_of(gain(r)).startswith("made no clear difference")


def test_seed_to_seed_spread_is_in_the_interval():
    """The 3D demo's 'hurt' came from a CI that held the trained models fixed while the seeds disagreed (per-seed
    gains -0.167 and 0.000); the seeds are now resampled too, so that disagreement widens the interval to 0."""
    y = np.zeros(60, int)
    groups = np.repeat(np.arange(30), 2)
    right, wrong = _onehot(np.zeros(60, int)), _onehot(np.ones(60, int))
    hurt_by_seed0 = np.where(np.arange(60) < 10, 1, 0)  # seed 0: the arm wrong on 10 images; seed 1: no change
    r = paired_interval([right, right], [_onehot(hurt_by_seed0), right], groups, "accuracy", y)
    assert r["mean"] == pytest.approx(-10 / 60 / 2) and r["ci95_high"] >= 0.0
    fixed = paired_interval([right], [_onehot(hurt_by_seed0)], groups, "accuracy", y)  # one seed: a clear hurt
    assert fixed["ci95_high"] < 0.0
    assert wrong.shape == right.shape


def test_equivalence_shown_and_not_shown_and_a_difference():
    y = np.array([0, 1] * 200)
    groups = np.repeat(np.arange(100), 4)
    base = _onehot(y)
    near = _onehot(np.where(np.arange(400) == 0, 1 - y, y))  # one image of 400 differs
    far = _onehot(np.where(np.arange(400) < 80, 1 - y, y))  # 80 differ
    scores = {"a": [near, near], "b": [base, base], "c": [far, far]}
    eq = compare_arms("a", "b", "accuracy", scores, groups, 0.01, y)
    assert eq.equivalent and not eq.different and "equivalent within +-0.01" in eq.says()
    diff = compare_arms("c", "b", "accuracy", scores, groups, 0.01, y)
    assert diff.different and not diff.equivalent and "measurable difference" in diff.says()
    wide = compare_arms("a", "b", "accuracy", {"a": [near[:8]], "b": [base[:8]]}, groups[:8], 0.01, y[:8])
    assert not wide.equivalent  # too few subjects to show anything: inconclusive
    assert "inconclusive" in wide.says() or wide.different


def test_a_broken_pairing_is_refused():
    y = np.array([0, 1] * 5)
    groups = np.arange(10)
    p = _onehot(y)
    with pytest.raises(ValueError, match="broken pairing: 2 seeds of the baseline against 1"):
        paired_interval([p, p], [p], groups, "accuracy", y)
    with pytest.raises(ValueError, match="broken pairing: test sets of"):
        paired_interval([p], [p[:9]], groups, "accuracy", y)


def _comparison(a: str, b: str, mean: float, ci95: tuple[float, float], ci90: tuple[float, float],
                metric: str = "accuracy") -> Comparison:
    return Comparison(a=a, b=b, metric=metric, mean=mean, ci95_low=ci95[0], ci95_high=ci95[1], ci90_low=ci90[0],
                      ci90_high=ci90[1], margin=0.01, subjects=20, seeds=3)


def test_the_cheapest_nfe_is_the_fewest_steps_shown_equivalent_to_the_best():
    from motfm_core.evaluation.verdicts import cheapest_nfe

    def arm(n):
        return "real+synthetic" if n == 10 else f"real+synthetic NFE {n}"

    comparisons = [_comparison(arm(1), arm(10), -0.05, (-0.08, -0.02), (-0.07, -0.03)),
                   _comparison(arm(4), arm(10), -0.002, (-0.012, 0.008), (-0.009, 0.006))]
    assert cheapest_nfe([1, 4, 10], arm, comparisons) == (4, "real+synthetic")
    # the headline arm's comparison with the DDPM baseline is not one of the NFE comparisons
    ddpm = _comparison("real+synthetic", "real+synthetic DDPM NFE 10", 0.0, (-0.001, 0.001), (-0.001, 0.001))
    assert cheapest_nfe([1, 4, 10], arm, [ddpm, *comparisons]) == (4, "real+synthetic")
    comparisons[1] = _comparison(arm(4), arm(10), -0.002, (-0.03, 0.02), (-0.025, 0.018))  # not shown equivalent
    assert cheapest_nfe([1, 4, 10], arm, comparisons) == (10, "real+synthetic")
    assert cheapest_nfe([1, 4, 10], arm, None) is None


def test_flow_matching_against_the_ddpm_baseline_is_a_paired_test():
    from motfm_core.evaluation.verdicts import ddpm_line

    c = [_comparison("real+synthetic", "real+synthetic DDPM NFE 50", 0.04, (0.02, 0.06), (0.025, 0.055)),
         _comparison("real+synthetic", "real+synthetic DDPM NFE 50", 0.027, (0.02, 0.035), (0.021, 0.033), "dice")]
    line = ddpm_line(c, 4)
    assert "best DDIM NFE (50)" in line and "flow minus DDPM: +0.040" in line and "measurable difference" in line
    assert "segmenter Dice: +0.027" in line
    assert "not compared" in ddpm_line(None, 4)


def test_a_gain_without_an_interval_is_not_judged_and_nothing_else_is_called_a_ci():
    from motfm_core.evaluation.verdicts import signed, verdict_of

    g = Gain(mean=0.05, std=0.02, min=0.03, max=0.07, n=3)
    assert verdict_of(g) == "could not be judged (this metric has no interval)"
    assert "CI" not in signed(g)
