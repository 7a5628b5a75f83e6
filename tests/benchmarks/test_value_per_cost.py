"""benchmarks/value_per_cost.py's judgement: each arm against the reference sampler, paired by seed and test image;
the cheapest arm equivalent on accuracy and Dice; the verdict cells of its RESULTS.md table."""

import numpy as np

from benchmarks.value_per_cost import REFERENCE, Way, cheapest_equivalent, statistics, verdict

BASE = "real 25%"


def _outputs(rng, flips: dict[str, int], seeds: int = 4, n: int = 40):
    """Per arm and seed: class probabilities where the reference is right on every image and each arm gets
    `flips[arm]` images wrong, and per-image Dice equal to the reference's (plus `flips` of 0.1 lower)."""
    y = np.arange(n) % 2
    right = np.eye(2)[y] * 0.8 + 0.1
    probas: dict[str, list[np.ndarray]] = {}
    dice: dict[str, list[np.ndarray]] = {}
    for arm, k in {BASE: n // 4, REFERENCE: 0, **flips}.items():
        name = arm if arm == BASE else f"{BASE}+{arm}"
        probas[name], dice[name] = [], []
        for _ in range(seeds):
            p, d = right.copy(), np.full(n, 0.8)
            wrong = rng.choice(n, k, replace=False)
            p[wrong] = p[wrong][:, ::-1]
            d[wrong] -= 0.1
            probas[name].append(p)
            dice[name].append(d)
    return probas, dice, {"labels": y, "group": np.arange(n) // 4}


def test_an_arm_that_predicts_as_the_reference_is_equivalent_and_one_that_errs_is_not():
    probas, dice, test = _outputs(np.random.default_rng(0), {"Euler 4": 0, "Euler 1": 8})
    ways = [Way("Euler 1", "flow", "euler", 1), Way("Euler 4", "flow", "euler", 4),
            Way(REFERENCE, "flow", "rflow", 30)]
    rows = statistics(probas, dice, test, ways, BASE, margin=0.01)
    assert REFERENCE not in {k for k, r in rows.items() if "accuracy_vs_reference" in r}
    same, worse = rows["Euler 4"], rows["Euler 1"]
    assert same["accuracy_vs_reference"]["equivalent"] and same["accuracy_vs_reference"]["margin_shown"] == 0
    assert worse["accuracy_vs_reference"]["different"] and worse["accuracy_vs_reference"]["mean"] < -0.1
    assert worse["dice_vs_reference"]["different"]
    assert rows[REFERENCE]["accuracy_gain"]["mean"] > 0  # the real share alone errs on a quarter
    seconds = {"Euler 1": 0.001, "Euler 4": 0.004, REFERENCE: 0.03}
    assert cheapest_equivalent(rows, seconds) == {"arm": "Euler 4", "speedup_vs_reference": 0.03 / 0.004}
    assert "different (95% CI excludes 0)" in verdict(worse["accuracy_vs_reference"])
    assert "equivalent at +-0.01" in verdict(same["accuracy_vs_reference"]) and verdict(None) == "the reference"
    rows.pop("Euler 4")
    assert cheapest_equivalent(rows, seconds) is None
