"""Intervals a reviewer accepts for a downstream gain: a paired, two-level bootstrap over training seeds and test
subjects, and the tests built on it (a difference between two arms, equivalence within a margin).

Two sources of noise make a gain uncertain: which test patients were drawn (the slices of one patient are not
independent images) and which training seed each downstream model had. Each resample draws the seeds with
replacement and, independently, the test subjects with replacement (a subject's images together), then recomputes
the seed-averaged gain of the paired arms on the same draw. The interval is the percentiles of those gains.
scipy.stats.bootstrap resamples one level of independent observations (with BCa there); this design has two crossed
levels and clustered images, which it does not offer, so the resampling is written here, as multinomial weights on
subjects and seeds (every metric below is a ratio of weighted sums, computed for all resamples at once).

Equivalence is two one-sided tests at 5% each: the 90% interval of the difference lies inside (-margin, +margin)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from motfm_core.results import Result

__all__ = ["Comparison", "compare_arms", "N_BOOT", "paired_interval"]

N_BOOT = 2000


@dataclass(frozen=True)
class Comparison(Result):
    """Arm `a` against arm `b` on one metric, paired by seed and test image: the seed-averaged difference a - b,
    its 95% interval (a difference when it excludes 0) and 90% interval (equivalence within +-margin when inside)."""

    a: str
    b: str
    metric: str
    mean: float
    ci95_low: float
    ci95_high: float
    ci90_low: float
    ci90_high: float
    margin: float
    subjects: int
    seeds: int

    @property
    def different(self) -> bool:
        return self.ci95_low > 0 or self.ci95_high < 0

    @property
    def equivalent(self) -> bool:
        return -self.margin < self.ci90_low and self.ci90_high < self.margin

    def says(self) -> str:
        """'a differs from b', 'equivalent within +-m', or 'inconclusive', with the numbers."""
        what = ("a measurable difference (95% CI excludes 0)" if self.different
                else f"equivalent within +-{self.margin:g} (90% CI inside the margin: two one-sided tests)"
                if self.equivalent else f"inconclusive: neither a difference nor equivalence within +-{self.margin:g}")
        return (f"{self.mean:+.3f} (95% CI {self.ci95_low:+.3f}..{self.ci95_high:+.3f}, 90% CI "
                f"{self.ci90_low:+.3f}..{self.ci90_high:+.3f}; {self.seeds} seeds x {self.subjects} test subjects): "
                f"{what}")


def _weights(n_boot: int, seeds: int, subjects: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial counts: (B, seeds) over the seeds and (B, subjects) over the subjects, one row per resample."""
    u = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=n_boot).astype(float)
    w = rng.multinomial(subjects, np.full(subjects, 1.0 / subjects), size=n_boot).astype(float)
    return u, w


def _by_subject(values: np.ndarray, codes: np.ndarray, subjects: int) -> np.ndarray:
    """Sums of `values` (N, ...) per subject: (subjects, ...)."""
    out = np.zeros((subjects, *values.shape[1:]))
    np.add.at(out, codes, values)
    return out


def _per_seed(metric: str, y: np.ndarray | None, new: np.ndarray, base: np.ndarray, codes: np.ndarray, subjects: int,
              w: np.ndarray) -> np.ndarray:
    """The gain new - base of one seed under every subject weighting w (B, subjects) at once: (B,)."""
    if metric == "accuracy":
        assert y is not None
        hit = (new.argmax(1) == y).astype(float) - (base.argmax(1) == y).astype(float)
        return (w @ _by_subject(hit, codes, subjects)) / (w @ _by_subject(np.ones(len(y)), codes, subjects))
    if metric == "macro_f1":
        assert y is not None
        k = new.shape[1]

        def f1(proba: np.ndarray) -> np.ndarray:
            pred, cls = proba.argmax(1), np.arange(k)
            tp = _by_subject(((pred[:, None] == cls) & (y[:, None] == cls)).astype(float), codes, subjects)
            fp = _by_subject(((pred[:, None] == cls) & (y[:, None] != cls)).astype(float), codes, subjects)
            fn = _by_subject(((pred[:, None] != cls) & (y[:, None] == cls)).astype(float), codes, subjects)
            t, denom = w @ tp, w @ (2 * tp + fp + fn)
            return np.where(denom > 0, 2 * t / np.maximum(denom, 1e-12), 0.0).mean(1)

        return f1(new) - f1(base)
    # per-image scores (Dice, HD95): the mean paired difference over images where both are defined
    diff = new - base
    ok = np.isfinite(diff)
    total = w @ _by_subject(np.where(ok, diff, 0.0), codes, subjects)
    count = w @ _by_subject(ok.astype(float), codes, subjects)
    return np.where(count > 0, total / np.maximum(count, 1e-12), np.nan)


def paired_interval(base: list[np.ndarray], new: list[np.ndarray], groups: np.ndarray, metric: str,
                    y_true: np.ndarray | None = None, n_boot: int = N_BOOT, seed: int = 0,
                    levels: tuple[float, ...] = (95.0, 90.0)) -> dict[str, float | None]:
    """The seed-averaged gain new - base and its two-level bootstrap intervals (module docstring).

    `base`, `new`: one array per seed, in the same seed order, over the same test images: class probabilities
    (N, K) for "accuracy" and "macro_f1" (with `y_true`), per-image scores (N,) for any other metric (NaN: not
    defined for that image). `groups`: each test image's subject. Returns mean, ci<level>_low/high per level,
    n_boot and the number of subjects; intervals are None for a metric without one (AUROC)."""
    if len(base) != len(new) or not base:
        raise ValueError(f"broken pairing: {len(base)} seeds of the baseline against {len(new)} of the arm; both "
                         "arms need the same seeds")
    shapes = {a.shape[0] for a in [*base, *new]}
    if shapes != {len(groups)} or (y_true is not None and len(y_true) != len(groups)):
        raise ValueError(f"broken pairing: test sets of {sorted(shapes)} images against {len(groups)} subjects' "
                         "labels; both arms must be scored on the same test images")
    _, codes = np.unique(groups, return_inverse=True)
    subjects = int(codes.max()) + 1
    none: dict[str, float | None] = {f"ci{int(q)}_{side}": None for q in levels for side in ("low", "high")}
    if metric not in ("accuracy", "macro_f1") and base[0].ndim != 1:
        return {**none, "n_boot": 0, "subjects": subjects}
    rng = np.random.RandomState(seed)
    u, w = _weights(n_boot, len(base), subjects, rng)
    ones = np.ones((1, subjects))
    per_seed = np.stack([_per_seed(metric, y_true, b, a, codes, subjects, w) for a, b in zip(base, new)], 1)
    point = np.stack([_per_seed(metric, y_true, b, a, codes, subjects, ones) for a, b in zip(base, new)], 1)
    gains = np.nansum(u * per_seed, 1) / np.maximum((u * np.isfinite(per_seed)).sum(1), 1e-12)
    gains = gains[np.isfinite(gains)]
    out: dict[str, float | None] = {"mean": float(np.nanmean(point)), "n_boot": int(n_boot), "subjects": subjects}
    for q in levels:
        lo, hi = np.percentile(gains, [(100 - q) / 2, 100 - (100 - q) / 2]) if len(gains) else (np.nan, np.nan)
        out[f"ci{int(q)}_low"], out[f"ci{int(q)}_high"] = float(lo), float(hi)
    return out


def compare_arms(a: str, b: str, metric: str, scores: dict[str, list[np.ndarray]], groups: np.ndarray,
                 margin: float, y_true: np.ndarray | None = None) -> Comparison:
    """Arm `a` against arm `b` (their per-seed outputs in `scores`), paired by seed and test image."""
    r = paired_interval(scores[b], scores[a], groups, metric, y_true)
    return Comparison(a=a, b=b, metric=metric, mean=float(r["mean"] or 0.0), ci95_low=float(r["ci95_low"] or 0.0),
                      ci95_high=float(r["ci95_high"] or 0.0), ci90_low=float(r["ci90_low"] or 0.0),
                      ci90_high=float(r["ci90_high"] or 0.0), margin=margin, subjects=int(r["subjects"] or 0),
                      seeds=len(scores[a]))
