"""What a run's numbers say: a gain with its interval in one cell, the verdict on the headline gain, the cheapest
NFE shown equivalent to the best, flow matching against the DDPM baseline (paired tests, `evaluation.statistics`),
and the report's per-NFE table."""

from __future__ import annotations

import math
from collections.abc import Callable

from motfm_core.evaluation.evaluate import Evaluation
from motfm_core.evaluation.metrics import Gain
from motfm_core.evaluation.statistics import Comparison

__all__ = ["cheapest_nfe", "ddpm_line", "nfe_lines", "signed", "verdict_of"]


def signed(g: Gain) -> str:
    """The mean gain ± its spread over seeds, with the 95% CI when measured ("n/a" without a mean)."""
    if math.isnan(g.mean):
        return "n/a"
    ci = f", 95% CI {g.ci95_low:+.3f}..{g.ci95_high:+.3f}" if g.ci95_low is not None else ""
    return f"{g.mean:+.3f} ± {g.std:.3f}{ci}"


def _comparison(comparisons: list[Comparison] | None, a: str, metric: str = "accuracy", ddpm: bool = False
                ) -> Comparison | None:
    """Arm `a`'s comparison on `metric`: against the best flow NFE, or (`ddpm`) against the DDPM baseline."""
    return next((c for c in comparisons or [] if c.a == a and c.metric == metric and ("DDPM" in c.b) == ddpm), None)


def cheapest_nfe(nfes: list[int], arm_of: Callable[[int], str], comparisons: list[Comparison] | None
                 ) -> tuple[int, str] | None:
    """The smallest NFE whose real+synthetic arm is shown equivalent to the best one (two one-sided tests within
    the margin), and the best arm's name; None when the evaluation made no paired comparisons."""
    tests = {n: _comparison(comparisons, arm_of(n)) for n in nfes}
    if not any(tests.values()):
        return None
    best = next(c.b for c in tests.values() if c is not None)  # every comparison is against the same best arm
    ok = [n for n, c in tests.items() if arm_of(n) == best or (c is not None and c.equivalent)]
    return (min(ok), best) if ok else None


def nfe_lines(evaluation: Evaluation, main_nfe: int, main_seconds: float | None = None) -> list[str]:
    """The report's downstream-value-per-NFE section: per NFE of the flow (and per DDIM NFE of the DDPM baseline,
    when measured), what sampling its store took an image (`main_seconds`: the run's own store's) and the store's
    quality beside the gains of its `real+synthetic` and `synthetic` arms, and the cheapest flow NFE that matches
    the best."""
    ev, q = evaluation.augmentation, evaluation.quality
    nfes = sorted({main_nfe, *(a.nfe for a in ev.arms if a.nfe and a.family == "flow")})
    ddpm = sorted({a.nfe for a in ev.arms if a.family == "ddpm"})
    if len(nfes) < 2 and not ddpm:
        return []
    curve = {p.nfe: (p.fid, p.swd_fine) for p in q.nfe_curve or []}  # for evaluations made before arm_stores
    stores = {name: (s.fid, (s.swd or {}).get("level0", float("nan"))) for name, s in (q.arm_stores or {}).items()}
    seconds = {name: s.seconds_per_image for name, s in (q.arm_stores or {}).items()}
    main = q.synthetic_vs_test  # the main store itself, at its own NFE
    stores["NFE " + str(main_nfe)] = (main.fid, (main.swd or {}).get("level0", float("nan")))
    seconds["NFE " + str(main_nfe)] = main_seconds

    def arm(prefix: str, n: int, family: str = "flow") -> str:
        if family == "ddpm":
            return f"{prefix} DDPM NFE {n}"
        return prefix if n == main_nfe else f"{prefix} NFE {n}"

    def row(model: str, n: int, family: str, store: str, quality: tuple[float, float] | None) -> str:
        cells = f"{quality[0]:.3f} | {quality[1]:.0f}" if quality else "n/a | n/a"
        sec = seconds.get(store)
        return (f"| {model} | {n} | {'n/a' if sec is None else f'{sec * 1e3:.1f}'} | {cells} | "
                f"{signed(ev.gains[arm('real+synthetic', n, family)]['accuracy'])} | "
                f"{signed(ev.gains[arm('synthetic', n, family)]['accuracy'])} |")

    lines = ["", "Downstream value per NFE (each store sampled at that NFE, the same arms and seeds; gains over "
             "`real`, 95% CI over seeds and test subjects; what sampling the store took an image, copy-guard "
             "redraws included, on the sampling device; FID and fine SWD of the store the arms train on against "
             "real test):", "",
             "| generator | NFE | ms / image | FID | fine SWD | real+synthetic accuracy gain | "
             "synthetic-only accuracy gain |",
             "|---|---|---|---|---|---|---|"]
    lines += [row("flow matching (Euler)", n, "flow", f"NFE {n}", stores.get(f"NFE {n}", curve.get(n))) for n in nfes]
    lines += [row("DDPM baseline (DDIM)", n, "ddpm", f"DDPM NFE {n}", stores.get(f"DDPM NFE {n}")) for n in ddpm]
    found = cheapest_nfe(nfes, lambda n: arm("real+synthetic", n), ev.comparisons)
    if found is not None and len(nfes) > 1:
        cheapest, best = found
        margin = next(c.margin for c in ev.comparisons or [])
        lines += ["", f"Cheapest NFE whose real+synthetic accuracy gain is equivalent to the best arm's ({best}) "
                  f"within +-{margin:g} (paired over seeds and test subjects; two one-sided tests): **{cheapest}**."]
        for n in nfes:
            c = _comparison(ev.comparisons, arm("real+synthetic", n))
            lines.append(f"- NFE {n}: " + ("the best" if arm("real+synthetic", n) == best
                                           else f"minus the best, {c.says()}" if c is not None else "not compared"))
    if ddpm:
        lines += ["", ddpm_line(ev.comparisons, main_nfe)]
    return lines


def ddpm_line(comparisons: list[Comparison] | None, main_nfe: int) -> str:
    """Flow matching at the run's NFE against the DDPM baseline at its best DDIM NFE: the paired difference of
    their real+synthetic arms, tested for a difference and for equivalence (the segmenter's Dice too)."""
    c = _comparison(comparisons, "real+synthetic", ddpm=True)
    if c is None:
        return "Flow matching vs the DDPM baseline: not compared (an evaluation made before paired comparisons)."
    n = c.b.rsplit(" ", 1)[-1]
    line = (f"Flow matching at NFE {main_nfe} vs the DDPM baseline at its best DDIM NFE ({n}), same network and "
            f"training budget, real+synthetic accuracy, flow minus DDPM: {c.says()}")
    dice = _comparison(comparisons, "real+synthetic", "dice", ddpm=True)
    if dice is not None:
        line += f"; segmenter Dice: {dice.says()}"
    return line + "."


def verdict_of(g: Gain) -> str:
    """'helped' / 'hurt' when the gain's 95% interval (paired bootstrap over training seeds and test subjects, so
    both the seed-to-seed spread and the choice of test patients are in it) excludes 0; otherwise no clear
    difference. A gain without an interval is not judged."""
    if g.ci95_low is None or g.ci95_high is None:
        return "could not be judged (this metric has no interval)"
    if g.ci95_low <= 0 <= g.ci95_high:
        return "made no clear difference (the 95% interval of the accuracy gain includes 0)"
    return "helped" if g.ci95_low > 0 else "hurt"
