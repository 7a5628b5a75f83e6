"""What a run's numbers say: a gain with its CI in one cell, the verdict on the headline gain, the cheapest NFE
that keeps the downstream value, flow matching against the DDPM baseline, and the report's per-NFE table."""

from __future__ import annotations

import math

from motfm_core.evaluation.evaluate import Evaluation
from motfm_core.evaluation.metrics import Gain

__all__ = ["cheapest_nfe", "ddpm_line", "nfe_lines", "signed", "verdict_of"]


def signed(g: Gain) -> str:
    """The mean gain ± its spread over seeds, with the 95% CI when measured ("n/a" without a mean)."""
    if math.isnan(g.mean):
        return "n/a"
    ci = f", 95% CI {g.ci95_low:+.3f}..{g.ci95_high:+.3f}" if g.ci95_low is not None else ""
    return f"{g.mean:+.3f} ± {g.std:.3f}{ci}"


def cheapest_nfe(gains: dict[int, Gain]) -> int | None:
    """The smallest NFE whose gain's 95% CI overlaps the CI of the best mean gain (None without CIs): where fewer
    steps stop costing measurable downstream value."""
    ci = {n: (g.ci95_low, g.ci95_high) for n, g in gains.items()}
    if not ci or any(lo is None or hi is None for lo, hi in ci.values()):
        return None
    lo_best, hi_best = ci[max(gains, key=lambda n: gains[n].mean)]
    return min(n for n, (lo, hi) in ci.items() if lo <= hi_best and lo_best <= hi)  # type: ignore[operator]


def nfe_lines(evaluation: Evaluation, main_nfe: int) -> list[str]:
    """The report's downstream-value-per-NFE section: per NFE of the flow (and per DDIM NFE of the DDPM baseline,
    when measured), the quality of the store the arms train on beside the gains of its `real+synthetic` and
    `synthetic` arms, and the cheapest flow NFE that matches the best."""
    ev, q = evaluation.augmentation, evaluation.quality
    nfes = sorted({main_nfe, *(a.nfe for a in ev.arms if a.nfe and a.family == "flow")})
    ddpm = sorted({a.nfe for a in ev.arms if a.family == "ddpm"})
    if len(nfes) < 2 and not ddpm:
        return []
    curve = {p.nfe: (p.fid, p.swd_fine) for p in q.nfe_curve or []}  # for evaluations made before arm_stores
    stores = {name: (s.fid, (s.swd or {}).get("level0", float("nan"))) for name, s in (q.arm_stores or {}).items()}
    main = q.synthetic_vs_test  # the main store itself, at its own NFE
    stores["NFE " + str(main_nfe)] = (main.fid, (main.swd or {}).get("level0", float("nan")))

    def arm(prefix: str, n: int, family: str = "flow") -> str:
        if family == "ddpm":
            return f"{prefix} DDPM NFE {n}"
        return prefix if n == main_nfe else f"{prefix} NFE {n}"

    def row(model: str, n: int, family: str, quality: tuple[float, float] | None) -> str:
        cells = f"{quality[0]:.3f} | {quality[1]:.0f}" if quality else "n/a | n/a"
        return (f"| {model} | {n} | {cells} | {signed(ev.gains[arm('real+synthetic', n, family)]['accuracy'])} | "
                f"{signed(ev.gains[arm('synthetic', n, family)]['accuracy'])} |")

    lines = ["", "Downstream value per NFE (each store sampled at that NFE, the same arms and seeds; gains over "
             "`real`, 95% bootstrap CI; FID and fine SWD of the store the arms train on against real test):", "",
             "| generator | NFE | FID | fine SWD | real+synthetic accuracy gain | synthetic-only accuracy gain |",
             "|---|---|---|---|---|---|"]
    lines += [row("flow matching (Euler)", n, "flow", stores.get(f"NFE {n}", curve.get(n))) for n in nfes]
    lines += [row("DDPM baseline (DDIM)", n, "ddpm", stores.get(f"DDPM NFE {n}")) for n in ddpm]
    cheapest = cheapest_nfe({n: ev.gains[arm("real+synthetic", n)]["accuracy"] for n in nfes})
    if cheapest is not None and len(nfes) > 1:
        fewer = ("fewer evaluations were not measured" if cheapest == nfes[0]
                 else "fewer evaluations cost downstream value measurably here")
        lines += ["", f"Cheapest NFE whose real+synthetic gain's CI overlaps the best one's: **{cheapest}** (no NFE "
                  f"in the table gains measurably more downstream; {fewer})."]
    if ddpm:
        lines += ["", ddpm_line(ev.gains, main_nfe, ddpm, ev.segmentation.gains if ev.segmentation else None)]
    return lines


def ddpm_line(gains: dict[str, dict[str, Gain]], main_nfe: int, ddpm: list[int],
              seg_gains: dict[str, dict[str, Gain]] | None = None) -> str:
    """Flow matching at the run's NFE against the DDPM baseline's best DDIM NFE (by real+synthetic accuracy gain):
    which is ahead, and whether their 95% CIs separate them; the same for the segmenter's Dice gain when it ran."""
    n = max(ddpm, key=lambda k: gains[f"real+synthetic DDPM NFE {k}"]["accuracy"].mean)
    line = (f"Flow matching at NFE {main_nfe} vs the DDPM baseline at its best DDIM NFE ({n}), same network and "
            f"training budget: real+synthetic accuracy gain "
            + _compare(gains["real+synthetic"]["accuracy"], gains[f"real+synthetic DDPM NFE {n}"]["accuracy"]))
    if seg_gains:
        line += ("; segmenter Dice gain "
                 + _compare(seg_gains["real+synthetic"]["dice"], seg_gains[f"real+synthetic DDPM NFE {n}"]["dice"]))
    return line + "."


def _compare(fm: Gain, base: Gain) -> str:
    """'+a vs +b: <which data helps more, or no measurable difference>' by the overlap of the two 95% CIs."""
    if None in (fm.ci95_low, fm.ci95_high, base.ci95_low, base.ci95_high):
        verdict = "no CIs to compare"
    elif fm.ci95_low > base.ci95_high:  # type: ignore[operator]
        verdict = "flow matching's data helps more (the CIs do not overlap)"
    elif base.ci95_low > fm.ci95_high:  # type: ignore[operator]
        verdict = "the DDPM baseline's data helps more (the CIs do not overlap)"
    else:
        verdict = "no measurable difference (the CIs overlap)"
    return f"{fm.mean:+.3f} vs {base.mean:+.3f}: {verdict}"


def verdict_of(g: Gain, per_seed: list[float]) -> str:
    """'helped' / 'hurt' only when the gain's 95% CI (bootstrap over test images) excludes 0 *and* every seed's
    paired gain has that sign: the CI holds the trained models fixed, so a baseline seed that trained well (RESULTS.md,
    "Why the 3D demo said hurt") could make a 'hurt' of training noise alone."""
    lo = g.mean - g.std if g.ci95_low is None else g.ci95_low
    hi = g.mean + g.std if g.ci95_high is None else g.ci95_high
    if lo <= 0 <= hi:
        return "made no clear difference (the 95% CI of the accuracy gain includes 0)"
    sign = "helped" if lo > 0 else "hurt"
    if all(d > 0 for d in per_seed) if sign == "helped" else all(d < 0 for d in per_seed):
        return sign
    seeds = ", ".join(f"{d:+.3f}" for d in per_seed)
    return (f"made no clear difference: the 95% CI over test images excludes 0, but the seeds disagree (per-seed "
            f"gains {seeds}), so training noise is as large as the effect; add seeds (eval.seeds)")
