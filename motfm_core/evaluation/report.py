"""Run report: `report.json` (machine-readable, `schema_version` 2), `report.md` (first screen answers "use the
data?"), a sample grid, the gains figure and the training loss curve (drawn by `motfm_core.evaluation.figures`).

report.json schema versions: 1 (no `schema_version` key) and 2 (the same keys, plus `schema_version`) read alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from motfm_core import code_version
from motfm_core.data.store import channel_names, open_store
from motfm_core.data.synthetic import completed_shards
from motfm_core.evaluation.evaluate import Evaluation, read_evaluation
from motfm_core.evaluation.figures import gain_figure, loss_figure, sample_grid
from motfm_core.evaluation.metrics import Stat
from motfm_core.evaluation.privacy import Audit
from motfm_core.evaluation.quality import Quality
from motfm_core.evaluation.verdicts import nfe_lines, signed, verdict_of
from motfm_core.files import atomic_path
from motfm_core.model.enhance import Enhancement
from motfm_core.results import Result, optional

__all__ = ["coverage_lines", "DatasetInfo", "gain_rows", "gather", "publish_report", "read_report", "render_markdown",
           "Report", "REPORT_SCHEMA_VERSION", "SamplingInfo", "TrainingInfo", "write_report"]

REPORT_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class DatasetInfo(Result):
    """The real dataset store: where, from what source, its fingerprint, classes, sample shape and split sizes."""

    path: str
    source: str
    fingerprint: str
    class_names: list[str]
    sample_shape: list[int]
    sizes: dict[str, int]
    notes: list[str] = dataclasses.field(default_factory=list)  # how the files were read (ingest's warnings)
    channel_names: list[str] | None = optional()  # images of several channels (sequences): their names


@dataclass(frozen=True)
class TrainingInfo(Result):
    """The image generator's checkpoint: steps, final loss (mean of the last 50), loss curve (means of
    `loss_every` steps: every step of a short run, at most ~200 points for a long one)."""

    checkpoint: str
    steps: int
    final_loss: float
    loss_curve: list[float]
    seconds: float
    device: str
    loss_every: int = 50


@dataclass(frozen=True)
class SamplingInfo(Result):
    """The synthetic version: size, solver, NFE, guidance, mask source, copy guard, speed and device."""

    store: str
    num_samples: int
    solver: str
    nfe: int
    guidance: float
    mask_source: str | None
    copy_guard: bool
    seconds_per_image: float
    device: str
    checkpoint_sha256: str


@dataclass(frozen=True)
class Report(Result):
    """report.json: every stage's outputs with the run's config and code version."""

    run_name: str
    code_version: str
    config: dict[str, Any]
    dataset: DatasetInfo
    training: TrainingInfo
    sampling: SamplingInfo
    evaluation: Evaluation
    enhancement: list[Enhancement]
    files: dict[str, str | None] | None = optional()
    schema_version: int = REPORT_SCHEMA_VERSION


def read_report(path: str | Path) -> Report:
    """The typed report from a report.json (schema version 1 or 2); a newer version is refused by name."""
    data = json.loads(Path(path).read_text())
    version = data.get("schema_version", 1)
    if version > REPORT_SCHEMA_VERSION:
        raise ValueError(f"{path}: report schema_version {version} is newer than this motfm reads "
                         f"({REPORT_SCHEMA_VERSION}); upgrade motfm")
    return Report.from_json({**data, "schema_version": REPORT_SCHEMA_VERSION})

def _fmt(s: Stat | None) -> str:
    if s is None or math.isnan(s.mean):
        return "n/a"
    return f"{s.mean:.3f} ± {s.std:.3f}"


def _more_verdicts(evaluation: Evaluation) -> str:
    """The segmenter's headline gain and the best ratio, for the first screen."""
    out, ev, mem = "", evaluation.augmentation, evaluation.memorisation
    if ev.segmentation is not None:
        g = ev.segmentation.gains["real+synthetic"]
        out += f" Segmenter: Dice gain {signed(g['dice'])}, HD95 change {signed(g['hd95'])} px."
    if mem.fraction_flagged > 0.1:
        out += (f" **Warning: {mem.fraction_flagged:.0%} of the synthetic images are near-copies of training "
                "images** (memorisation audit below): gains may come from the real data copied back, not from new "
                "anatomy, and the copies carry the training patients' privacy risk.")
    ratios = {a: g["accuracy"].mean for a, g in ev.gains.items() if a.startswith("real+synthetic")}
    if len(ratios) > 1:
        best = max(ratios, key=lambda a: ratios[a])
        out += f" Best ratio arm by accuracy: {best} ({ratios[best]:+.3f})."
    return out


def _shortfall(ratio: float | None, real_train: int, synthetic: int | None) -> str:
    """' (short: ratio R asks for N)' when an arm got fewer synthetic images than its ratio asks for (the store held
    fewer), else ''."""
    if ratio is None or synthetic is None or not math.isfinite(ratio) or ratio <= 0:
        return ""
    wanted = int(round(ratio * real_train))
    return f" (**short**: ratio {ratio:g} asks for {wanted}; sample more)" if synthetic < wanted else ""


def _gains_table(evaluation: Evaluation) -> list[str]:
    """Every augmented arm against its baseline: sizes and gains with CIs (and the segmenter's, if any)."""
    ev = evaluation.augmentation
    seg = ev.segmentation
    head = "| arm (vs baseline) | real / synthetic images | accuracy gain | macro-F1 gain |"
    lines = ["", "Augmentation gain of every arm over its baseline (mean ± std over seeds, 95% bootstrap CI):", "",
             head + (" Dice gain | HD95 change (px) |" if seg else ""),
             "|---|---|---|---|" + ("---|---|" if seg else "")]
    baselines = {a.name: a.baseline for a in ev.arms}
    ratios = {a.name: a.ratio for a in ev.arms}
    for arm, g in ev.gains.items():
        size = ev.sizes.arms.get(arm, {})
        row = (f"| {arm} (vs {baselines.get(arm, 'real')}) | {size.get('real', '?')} / {size.get('synthetic', '?')}"
               f"{_shortfall(ratios.get(arm), ev.sizes.real_train, size.get('synthetic'))} | "
               f"{signed(g['accuracy'])} | {signed(g['macro_f1'])} |")
        if seg:
            sg = seg.gains[arm]
            row += f" {signed(sg['dice'])} | {signed(sg['hd95'])} |"
        lines.append(row)
    if seg:
        lines += ["", f"Segmenter (MONAI UNet, DiceCELoss; {seg.mask_classes - 1} foreground classes) on the real "
                  "test split: Dice (higher is better) / HD95 in pixels (lower is better):", "",
                  "| arm | Dice | HD95 |", "|---|---|---|"]
        lines += [f"| {arm} | {_fmt(s['dice'])} | {_fmt(s['hd95'])} |" for arm, s in seg.summary.items()]
    if any("%" in arm for arm in ev.gains):
        lines += ["", "Low-data arms use one class-stratified share of the real train split (the same images for "
                  "every seed); the synthetic images of `real f%+synthetic` come from a generator trained on exactly "
                  "that share, so nothing of the other real training images reaches them."]
        for f, mem in evaluation.low_data_memorisation.items():
            lines.append(f"- generator of the real {float(f):.0%} share ({mem.reference_images} images): "
                         f"{mem.fraction_flagged:.0%} of its images flagged as near-copies of its training images")
    return lines


def coverage_lines(report: Report) -> list[str]:
    """First-screen answer to "are the synthetic images new, and do they cover the real data?": memorisation,
    recall, intra-class diversity, then fine SWD and FID (the last blind to within-class diversity)."""
    q, mem = report.evaluation.quality, report.evaluation.memorisation
    syn, base = q.synthetic_vs_test, q.train_vs_test
    out = [f"**New data?** {mem.fraction_flagged:.0%} of synthetic images are near-copies of a training image "
           f"(memorisation audit; target <= 5%)"]
    if mem.copy_guard is not None and mem.copy_guard.enabled:
        out[-1] += f", after the copy guard redrew {mem.copy_guard.redrawn_samples} sample(s)"
    out[-1] += (f". Coverage of the real test distribution (recall): {syn.recall:.2f} (real train: "
                f"{base.recall:.2f}; precision {syn.precision:.2f})")
    if syn.coverage is not None and base.coverage is not None:
        out[-1] += (f"; robust to outliers (Naeem et al. 2020): coverage {syn.coverage:.2f}, density "
                    f"{syn.density:.2f} (real train: {base.coverage:.2f}, {base.density:.2f})")
    out[-1] += "."
    d = q.diversity
    if d:
        s_, r_ = d["synthetic"].ms_ssim, d["real_train"].ms_ssim
        out[-1] += (f" Intra-class similarity (mean MS-SSIM of same-class pairs, lower = more diverse): synthetic "
                    f"{s_:.3f} vs real {r_:.3f} ({(s_ - r_) / r_:+.0%}).")
    else:
        out[-1] += " Intra-class similarity: not enough samples (no class has two images to compare)."
    if syn.swd and base.swd:
        out[-1] += f" Fine-detail SWD {syn.swd['level0']:.0f} (real train vs test {base.swd['level0']:.0f});"
    out[-1] += (f" FID {syn.fid:.3f} (real train vs test {base.fid:.3f}; in-domain features: blind to "
                "within-class diversity).")
    source = report.sampling.mask_source
    if source:
        out[-1] += f" Conditioning masks: `{source}`."
    return ["", *out]


def _quality_lines(q: Quality) -> list[str]:
    """The quality table (synthetic and real train against real test), the latent ceiling and the diversity."""
    lines: list[str] = []
    if q:
        lines += ["", f"Image quality against the real test split. FID/KID/precision/recall/density/coverage on "
                  f"in-domain features ({q.feature_dim}-d, from a classifier trained on the real train split: "
                  "anatomy-sensitive, blind to blur); SWD (x1e3) on Laplacian-pyramid patches, finest level first "
                  "(detail-sensitive). Lower FID/KID/SWD is better; precision = fidelity, recall = coverage, and "
                  "density / coverage the same two questions asked so that outliers cannot inflate them (density "
                  "about 1 when the synthetic images follow the real ones).", "",
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


def _memorisation_lines(mem: Audit) -> list[str]:
    """The memorisation audit's sentence and its closest pairs."""
    return ["", f"Memorisation audit: {mem.fraction_flagged:.1%} of synthetic images are nearer to a training "
              f"image than {1 - mem.quantile:.0%} of unseen real test images are (threshold RMS "
              f"{mem.threshold:.3f}); nearest-train distance median {mem.synthetic_nn['median']:.3f} for "
              f"synthetic vs {mem.test_nn['median']:.3f} for real test images. Closest pairs: "
              f"![closest pairs]({Path(mem.png or 'closest_pairs.png').name})"]


def _enhancement_lines(enhancement: list[Enhancement]) -> list[str]:
    """The enhancement table: degraded input, classical filter and flow, per task."""
    if not enhancement:
        return []
    return ["", "Image enhancement on the real test split (PSNR dB / SSIM; higher is better):", "",
            "| task | degraded input | classical | flow (NFE) |", "|---|---|---|---|",
            *(f"| {e.config['task']} (level {e.config['level']}) | {e.degraded.psnr:.2f} / {e.degraded.ssim:.3f} | "
              f"{e.classical.psnr:.2f} / {e.classical.ssim:.3f} ({e.classical.method}) | {e.flow.psnr:.2f} / "
              f"{e.flow.ssim:.3f} ({e.nfe}) |" for e in enhancement)]


def _nfe_curve_lines(q: Quality) -> list[str]:
    """Quality vs NFE of the fresh Euler samples, with their speed."""
    if not q.nfe_curve:
        return []
    return ["", "Quality vs NFE (fresh Euler samples, same noise at every NFE; FID / fine SWD against the real test "
            "split): " + ", ".join(f"NFE {r.nfe}: {r.fid:.2f} / {r.swd_fine:.0f} ({r.seconds_per_image * 1e3:.1f} "
                                   "ms/img)" for r in q.nfe_curve) + "."]


def _shared_autoencoder_line(config: dict[str, Any]) -> list[str]:
    """A warning when the low-data generators shared a given autoencoder (autoencoder.share_checkpoint)."""
    ae, fractions = config.get("autoencoder") or {}, (config.get("eval") or {}).get("real_fractions") or []
    if not (ae.get("checkpoint") and ae.get("share_checkpoint") and fractions
            and (config.get("model") or {}).get("space") == "latent"):
        return []
    return [f"- **not leak-free:** the low-data generators ({', '.join(f'{f:g}' for f in fractions)} of the real "
            f"train split) encoded with the given autoencoder {ae['checkpoint']}, trained on more than their share "
            "(autoencoder.share_checkpoint)"]


def render_markdown(report: Report, grid_name: str, gains_png: str | None = None, loss_png: str | None = None
                    ) -> str:
    """report.md: verdict first, then sizes, metrics per arm, timing, configuration."""
    evaluation = report.evaluation
    ev, gain = evaluation.augmentation, evaluation.augmentation.gain
    g = gain["accuracy"]
    per_seed = [ev.per_seed["real+synthetic"][s]["accuracy"] - ev.per_seed["real"][s]["accuracy"]
                for s in ev.per_seed["real"]]
    verdict = verdict_of(g, per_seed)
    seeds = ev.summary["real"]["accuracy"].n
    data, sampling, training = report.dataset, report.sampling, report.training
    lines = [
        f"# motfm report: {report.run_name}",
        "",
        f"**Verdict:** adding synthetic images {verdict} on the held-out real test set: accuracy gain "
        f"{signed(g)}, macro-F1 gain {signed(gain['macro_f1'])}, AUROC gain {signed(gain['auroc'])} "
        f"(mean ± std over {seeds} seeds; CI by bootstrap over test images)." + _more_verdicts(evaluation),
        *coverage_lines(report),
        "",
        f"- dataset: {data.source} — train {ev.sizes.real_train}, val {data.sizes['val']}, test "
        f"{ev.sizes.real_test} real images, {data.sample_shape} each; classes {data.class_names}"
        + (f"; channels {data.channel_names}" if data.channel_names else ""),
        *(f"- **data note:** {note}" for note in data.notes),
        *_shared_autoencoder_line(report.config),
        f"- synthetic: {sampling.num_samples} images, solver {sampling.solver}, NFE {sampling.nfe}, "
        f"{sampling.seconds_per_image * 1e3:.1f} ms per image on {sampling.device}; {ev.sizes.synthetic_added} "
        "added to the real training set",
        f"- flow-matching training: {training.steps} steps, final loss {training.final_loss:.4f}, "
        f"{training.seconds:.0f} s" + (" (loss curve below)" if loss_png else ""),
        "",
        "| arm | accuracy | macro-F1 | AUROC |",
        "|---|---|---|---|",
    ]
    for arm, s in ev.summary.items():
        lines.append(f"| {arm} | {_fmt(s['accuracy'])} | {_fmt(s['macro_f1'])} | {_fmt(s['auroc'])} |")
    lines += _gains_table(evaluation)
    lines += nfe_lines(evaluation, report.sampling.nfe)
    lines += _quality_lines(evaluation.quality)
    lines += _memorisation_lines(evaluation.memorisation)
    lines += _enhancement_lines(report.enhancement)
    lines += _nfe_curve_lines(evaluation.quality)
    if loss_png:
        lines += ["", f"![training loss]({loss_png})"]
    if gains_png:
        lines += ["", f"![gains and quality vs NFE]({gains_png})"]
    lines += ["", f"![real vs synthetic samples per class]({grid_name})", "",
              "Per-seed figures, the full configuration and the store paths are in `report.json`."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: Report, real_path: str | Path,
                 synthetic_path: str | Path) -> dict[str, str]:
    """Write report.json, report.md, samples.png, gains.png and training.png into out_dir (each via a temporary
    name)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = sample_grid(real_path, synthetic_path, out_dir / "samples.png")
    gains = gain_figure(report.evaluation.augmentation, report.evaluation.quality, out_dir / "gains.png")
    loss = loss_figure(report.training.loss_curve, report.training.steps, report.training.final_loss,
                       out_dir / "training.png", every=report.training.loss_every)
    report = dataclasses.replace(report, files={"grid": str(grid), "gains": str(gains), "training": str(loss)})
    for name, text in (("report.json", json.dumps(report.to_json(), indent=2, default=str)),
                       ("report.md", render_markdown(report, grid.name, gains.name, loss.name))):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text)
    return {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"), "grid": str(grid)}


def gather(run_name: str, config: dict[str, Any], data_path: str, checkpoint: str, synthetic_path: str,
           evaluation_path: str, enhancement_paths: list[str]) -> Report:
    """Every stage's outputs in one report (dataset, training, sampling, evaluation, enhancement, with the run's
    config and code version)."""
    data = open_store(data_path)
    split = data["split"][:]
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    losses = ckpt["losses"]
    every = max(1, math.ceil(len(losses) / 200))  # a point per step for short runs (one 50-step mean was one dot)
    syn = zarr.open_group(synthetic_path, mode="r", zarr_format=3)
    shard_info = list(completed_shards(synthetic_path).values())
    seconds = sum(s["seconds"] for s in shard_info)
    return Report(
        run_name=run_name, code_version=code_version(), config=config,
        dataset=DatasetInfo(path=data_path, source=data.attrs["source"], fingerprint=data.attrs["fingerprint"],
                            class_names=data.attrs["class_names"], sample_shape=list(data["images"].shape[1:]),
                            sizes={n: int((split == c).sum()) for n, c in (("train", 0), ("val", 1), ("test", 2))},
                            notes=list(data.attrs.get("notes", [])),
                            channel_names=channel_names(data.attrs, int(data["images"].shape[1]))
                            if data["images"].shape[1] > 1 else None),
        training=TrainingInfo(checkpoint=checkpoint, steps=ckpt["step"], final_loss=float(np.mean(losses[-50:])),
                              loss_curve=[float(np.mean(losses[i:i + every])) for i in range(0, len(losses), every)],
                              seconds=ckpt.get("train_seconds", float("nan")), device=ckpt["device"],
                              loss_every=every),
        sampling=SamplingInfo(store=synthetic_path, num_samples=syn.attrs["num_samples"], solver=syn.attrs["solver"],
                              nfe=syn.attrs["nfe"], guidance=syn.attrs["guidance"],
                              mask_source=syn.attrs.get("mask_source"),
                              copy_guard=syn.attrs.get("copy_threshold") is not None,
                              seconds_per_image=seconds / max(1, syn.attrs["num_samples"]),
                              device=shard_info[0].get("device", "?") if shard_info else "?",
                              checkpoint_sha256=syn.attrs["checkpoint_sha256"]),
        evaluation=read_evaluation(evaluation_path),
        enhancement=[Enhancement.from_json(json.loads(Path(p).read_text())) for p in enhancement_paths])


def gain_rows(report: Report) -> list[dict[str, str]]:
    """The test-set metrics table (mean ± std over seeds per arm, then the headline gain) of a report."""
    ev = report.evaluation.augmentation
    rows = [{"arm": arm, **{m: f"{s.mean:.3f} ± {s.std:.3f}" for m, s in stats.items()}}
            for arm, stats in ev.summary.items()]
    rows.append({"arm": "gain (real+synthetic - real)",
                 **{m: f"{s.mean:+.3f} ± {s.std:.3f}" for m, s in ev.gain.items()}})
    return rows


def publish_report(run_name: str, config: dict[str, Any], data_path: str, checkpoint: str, synthetic_path: str,
                   evaluation_path: str, run_dir: str | Path, enhancement_paths: list[str] | None = None
                   ) -> tuple[Report, dict[str, str]]:
    """Gather every stage's outputs and write report.json, report.md and the figures into `run_dir`; returns
    the report and the written files."""
    report = gather(run_name, config, data_path, checkpoint, synthetic_path, evaluation_path, enhancement_paths or [])
    return report, write_report(run_dir, report, data_path, synthetic_path)
