"""The report's markdown sections, each written from the result it describes (the evaluation, its quality, the
memorisation audit, the enhancement scores, the run's config); `report.render_markdown` puts them in order."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from motfm_core.evaluation.evaluate import Evaluation
from motfm_core.evaluation.metrics import Stat
from motfm_core.evaluation.privacy import Audit
from motfm_core.evaluation.quality import Quality
from motfm_core.evaluation.verdicts import signed
from motfm_core.model.enhance import Enhancement

__all__ = ["enhancement_lines", "fmt", "gains_table", "memorisation_lines", "MIN_TEST_SUBJECTS", "more_verdicts",
           "nfe_curve_lines", "quality_lines", "shared_autoencoder_line", "shortfall", "warning_lines"]

# fewer test subjects per class than this and the interval over test images is no interval: slices of one patient
# are not independent samples (an assumed floor, as in the review guidance the issue cites; not measured)
MIN_TEST_SUBJECTS = 5
# the generator's loss counts as still falling when the last tenth of its curve is this much below the tenth before
FALLING = 0.05
# fine SWD of the synthetic images this many times the real train split's (both against real test): far off
SWD_FAR = 3.0


def fmt(s: Stat | None) -> str:
    if s is None or math.isnan(s.mean):
        return "n/a"
    return f"{s.mean:.3f} ± {s.std:.3f}"


def more_verdicts(evaluation: Evaluation) -> str:
    """The segmenter's headline gain and the best ratio, for the first screen."""
    out, ev, mem = "", evaluation.augmentation, evaluation.memorisation
    if ev.segmentation is not None:
        g = ev.segmentation.gains["real+synthetic"]
        out += f" Segmenter: Dice gain {signed(g['dice'])}, HD95 change {signed(g['hd95'])} px."
    if mem.fraction_flagged > 0.1:
        out += (f" **Warning: {mem.fraction_flagged:.0%} of the synthetic images are near-copies of training "
                "images** (memorisation audit below): gains may come from the real data copied back, not from new "
                "anatomy, and the copies carry the training patients' privacy risk.")
    # the ratio arms only ("real+synthetic", "real+synthetic x2"): not the NFE or DDPM arms, which share the prefix
    ratios = {a: g["accuracy"].mean for a, g in ev.gains.items()
              if a == "real+synthetic" or a.startswith("real+synthetic x")}
    if len(ratios) > 1:
        best = max(ratios, key=lambda a: ratios[a])
        out += f" Best ratio arm by accuracy: {best} ({ratios[best]:+.3f})."
    return out


def shortfall(ratio: float | None, real_train: int, synthetic: int | None) -> str:
    """' (short: ratio R asks for N)' when an arm got fewer synthetic images than its ratio asks for (the store held
    fewer), else ''."""
    if ratio is None or synthetic is None or not math.isfinite(ratio) or ratio <= 0:
        return ""
    wanted = int(round(ratio * real_train))
    return f" (**short**: ratio {ratio:g} asks for {wanted}; sample more)" if synthetic < wanted else ""


def gains_table(evaluation: Evaluation) -> list[str]:
    """Every augmented arm against its baseline: sizes and gains with CIs (and the segmenter's, if any)."""
    ev = evaluation.augmentation
    seg = ev.segmentation
    head = "| arm (vs baseline) | real / synthetic images | accuracy gain | macro-F1 gain |"
    lines = ["", "Augmentation gain of every arm over its baseline (mean ± std over seeds, 95% CI by a paired "
             "bootstrap over seeds and test subjects):", "",
             head + (" Dice gain | HD95 change (px) |" if seg else ""),
             "|---|---|---|---|" + ("---|---|" if seg else "")]
    baselines = {a.name: a.baseline for a in ev.arms}
    ratios = {a.name: a.ratio for a in ev.arms}
    for arm, g in ev.gains.items():
        size = ev.sizes.arms.get(arm, {})
        row = (f"| {arm} (vs {baselines.get(arm, 'real')}) | {size.get('real', '?')} / {size.get('synthetic', '?')}"
               f"{shortfall(ratios.get(arm), ev.sizes.real_train, size.get('synthetic'))} | "
               f"{signed(g['accuracy'])} | {signed(g['macro_f1'])} |")
        if seg:
            sg = seg.gains[arm]
            row += f" {signed(sg['dice'])} | {signed(sg['hd95'])} |"
        lines.append(row)
    if seg:
        lines += ["", f"Segmenter (MONAI UNet, DiceCELoss; {seg.mask_classes - 1} foreground classes) on the real "
                  "test split: Dice (higher is better) / HD95 in pixels (lower is better):", "",
                  "| arm | Dice | HD95 |", "|---|---|---|"]
        lines += [f"| {arm} | {fmt(s['dice'])} | {fmt(s['hd95'])} |" for arm, s in seg.summary.items()]
    if any("%" in arm for arm in ev.gains):
        lines += ["", "Low-data arms use one class-stratified share of the real train split (the same images for "
                  "every seed); the synthetic images of `real f%+synthetic` come from a generator trained on exactly "
                  "that share, so nothing of the other real training images reaches them."]
        for f, mem in evaluation.low_data_memorisation.items():
            lines.append(f"- generator of the real {float(f):.0%} share ({mem.reference_images} images): "
                         f"{mem.fraction_flagged:.0%} of its images flagged as near-copies of its training images")
    return lines


def quality_lines(q: Quality) -> list[str]:
    """The quality table (synthetic and real train against real test), the latent ceiling and the diversity."""
    lines: list[str] = []
    if q:
        lines += ["", f"Image quality against the real test split. FID/KID/precision/recall/density/coverage on "
                  f"in-domain features ({q.feature_dim}-d, from a classifier trained on the real train split: "
                  "anatomy-sensitive, blind to blur); SWD (x1e3) on Laplacian-pyramid patches, finest level first "
                  "(detail-sensitive). Lower FID/KID/SWD is better; precision = fidelity, recall = coverage, and "
                  "density / coverage the same two questions asked so that outliers cannot inflate them (density "
                  "about 1 when the synthetic images follow the real ones). In-domain FID rests on this run's own "
                  "feature classifier: compare it within this table (synthetic against the real-train baseline), "
                  "never across runs.", "",
                  "| compared with real test | FID | KID | precision | recall | density | coverage | SWD fine / mid / "
                  "coarse |", "|---|---|---|---|---|---|---|---|"]
        for name, row in (("synthetic", q.synthetic_vs_test), ("real train (baseline)", q.train_vs_test)):
            sw = row.swd or {}
            levels = " / ".join(f"{sw[k]:.0f}" for k in sorted(sw) if k.startswith("level")) or "n/a"
            dc = " | ".join("n/a" if v is None else f"{v:.2f}" for v in (row.density, row.coverage))
            lines.append(f"| {name} | {row.fid:.3f} | {row.kid:.4f} | {row.precision:.2f} | {row.recall:.2f} | "
                         f"{dc} | {levels} |")
        syn, base = q.synthetic_vs_test.swd_channels, q.train_vs_test.swd_channels
        if syn and base:
            lines += ["", "Fine SWD of each channel alone (synthetic / real train, against real test; the table's "
                      "SWD takes the channels together): " + ", ".join(
                          f"{name} {syn[name]:.0f} / {base.get(name, float('nan')):.0f}" for name in syn) + "."]
    if q.reconstruction:
        r = q.reconstruction
        lines += ["", f"Latent model: its autoencoder reproduces {r.images} real test images at PSNR {r.psnr:.1f} dB, "
                  f"SSIM {r.ssim:.3f}, fine SWD {r.swd_fine:.0f} against the originals: the ceiling it sets on the "
                  "synthetic images' detail (their own scores above include it)."]
    if q.diversity:
        d = q.diversity
        lines += ["", f"Diversity (mean MS-SSIM of random same-class pairs; lower = more diverse): synthetic "
                  f"{d['synthetic'].ms_ssim:.3f}, real train {d['real_train'].ms_ssim:.3f}."]
    return lines


def memorisation_lines(mem: Audit) -> list[str]:
    """The memorisation audit's sentence and its closest pairs."""
    return ["", f"Memorisation audit: {mem.fraction_flagged:.1%} of synthetic images are nearer to a training "
              f"image than {1 - mem.quantile:.0%} of unseen real test images are (threshold RMS "
              f"{mem.threshold:.3f}); nearest-train distance median {mem.synthetic_nn['median']:.3f} for "
              f"synthetic vs {mem.test_nn['median']:.3f} for real test images. Closest pairs: "
              f"![closest pairs]({Path(mem.png or 'closest_pairs.png').name})"]


def enhancement_lines(enhancement: list[Enhancement]) -> list[str]:
    """The enhancement table: degraded input, classical filter and flow, per task."""
    if not enhancement:
        return []
    return ["", "Image enhancement on the real test split (PSNR dB / SSIM; higher is better):", "",
            "| task | degraded input | classical | flow (NFE) |", "|---|---|---|---|",
            *(f"| {e.config['task']} (level {e.config['level']}) | {e.degraded.psnr:.2f} / {e.degraded.ssim:.3f} | "
              f"{e.classical.psnr:.2f} / {e.classical.ssim:.3f} ({e.classical.method}) | {e.flow.psnr:.2f} / "
              f"{e.flow.ssim:.3f} ({e.nfe}) |" for e in enhancement)]


def nfe_curve_lines(q: Quality) -> list[str]:
    """Quality vs NFE of the fresh Euler samples, with their speed."""
    if not q.nfe_curve:
        return []
    return ["", "Quality vs NFE (fresh Euler samples, same noise at every NFE; FID / fine SWD against the real test "
            "split): " + ", ".join(f"NFE {r.nfe}: {r.fid:.2f} / {r.swd_fine:.0f} ({r.seconds_per_image * 1e3:.1f} "
                                   "ms/img)" for r in q.nfe_curve) + "."]


def shared_autoencoder_line(config: dict[str, Any]) -> list[str]:
    """A warning when the low-data generators shared a given autoencoder (autoencoder.share_checkpoint)."""
    ae, fractions = config.get("autoencoder") or {}, (config.get("eval") or {}).get("real_fractions") or []
    if not (ae.get("checkpoint") and ae.get("share_checkpoint") and fractions
            and (config.get("model") or {}).get("space") == "latent"):
        return []
    return [f"- **not leak-free:** the low-data generators ({', '.join(f'{f:g}' for f in fractions)} of the real "
            f"train split) encoded with the given autoencoder {ae['checkpoint']}, trained on more than their share "
            "(autoencoder.share_checkpoint)"]


def warning_lines(evaluation: Evaluation, test_subjects: dict[str, int] | None, loss_curve: list[float],
                  steps: int, default_steps: int) -> list[str]:
    """What the reader must know before trusting the numbers, for the report's top: a baseline at or below chance,
    a test split of too few subjects per class, a generator that looks under-trained (its loss still falling at
    the end, or its images' fine detail far from the real images')."""
    out = []
    ev = evaluation.augmentation
    real = ev.summary.get("real", {})
    chance = 1.0 / max(ev.num_classes, 2)
    acc, auroc = real.get("accuracy"), real.get("auroc")
    low = [f"{name} {s.mean:.3f} (chance {c:.3f})" for name, s, c in (("accuracy", acc, chance), ("AUROC", auroc, 0.5))
           if s is not None and math.isfinite(s.mean) and s.mean <= c + 1e-9]
    if low:
        out.append(f"**Warning: the real-only baseline is at or below chance** ({', '.join(low)}): the downstream "
                   "classifier did not learn the task, so no gain over it means anything. Give it more steps "
                   "(eval.steps) or more real data before reading the gains.")
    few = {c: n for c, n in (test_subjects or {}).items() if n < MIN_TEST_SUBJECTS}
    if few:
        out.append(f"**Warning: the test split holds fewer than {MIN_TEST_SUBJECTS} subjects in class(es) "
                   + ", ".join(f"{c} ({n})" for c, n in few.items()) + "**: its images are slices of few patients, "
                   "so the intervals, which resample subjects, are wide and rest on very few of them; treat the gains "
                   "as unreliable and add subjects.")
    reasons = []
    k = max(1, len(loss_curve) // 10)
    if len(loss_curve) >= 20:
        last, before = float(np.mean(loss_curve[-k:])), float(np.mean(loss_curve[-2 * k:-k]))
        if before > 0 and (before - last) / before > FALLING:
            reasons.append(f"its loss was still falling at the end ({before:.4f} -> {last:.4f} over the last "
                           f"tenths of {steps} steps)")
    q = evaluation.quality
    syn, base = (q.synthetic_vs_test.swd or {}).get("level0"), (q.train_vs_test.swd or {}).get("level0")
    if syn is not None and base and syn > SWD_FAR * base:
        reasons.append(f"the fine detail of its images is far from the real images' (fine SWD {syn:.0f} against "
                       f"{base:.0f} for real train vs test)")
    if reasons:
        budget = (f"--train-steps {4 * steps}, or the full default of {default_steps}" if 4 * steps < default_steps
                  else f"--train-steps {4 * steps}")
        out.append("**Warning: the generator looks under-trained:** " + "; ".join(reasons) + f". Train longer "
                   f"({budget}) before judging the synthetic images.")
    return out
