"""Run report: `report.json` (machine-readable, `schema_version` 2), `report.md` (first screen answers "use the
data?"), a sample grid, the gains figure and the training loss curve (drawn by `motfm_core.evaluation.figures`).

report.json schema versions: 1 (no `schema_version` key) and 2 (the same keys, plus `schema_version`) read alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from motfm_core import code_version
from motfm_core.config import TrainConfig
from motfm_core.data.store import channel_names, open_store
from motfm_core.data.synthetic import sampling_seconds
from motfm_core.errors import BadInput
from motfm_core.evaluation.evaluate import Evaluation, read_evaluation
from motfm_core.evaluation.figures import gain_figure, loss_figure, sample_grid
from motfm_core.evaluation.sections import (
    enhancement_lines,
    fmt,
    gains_table,
    memorisation_lines,
    more_verdicts,
    nfe_curve_lines,
    quality_lines,
    shared_autoencoder_line,
    warning_lines,
)
from motfm_core.evaluation.verdicts import nfe_lines, signed, verdict_of
from motfm_core.files import atomic_path
from motfm_core.model.enhance import Enhancement
from motfm_core.results import Result, optional

__all__ = ["coverage_lines", "DatasetInfo", "gain_rows", "gather", "publish_report", "read_report", "render_markdown",
           "Report", "REPORT_SCHEMA_VERSION", "SamplingInfo", "TrainingInfo", "version_name", "write_report"]

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
    test_subjects: dict[str, int] | None = optional()  # subjects (groups) per class in the test split


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
    version: str | None = optional()  # the synthetic version's name (v0003): its report is reports/v0003/


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
        raise BadInput(f"{path}: report schema_version {version} is newer than this motfm reads "
                       f"({REPORT_SCHEMA_VERSION}); upgrade motfm")
    return Report.from_json({**data, "schema_version": REPORT_SCHEMA_VERSION})

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


def render_markdown(report: Report, grid_name: str, gains_png: str | None = None, loss_png: str | None = None
                    ) -> str:
    """report.md: verdict first, then sizes, metrics per arm, timing, configuration."""
    evaluation = report.evaluation
    ev, gain = evaluation.augmentation, evaluation.augmentation.gain
    g = gain["accuracy"]
    verdict = verdict_of(g)
    seeds = ev.summary["real"]["accuracy"].n
    data, sampling, training = report.dataset, report.sampling, report.training
    lines = [
        f"# motfm report: {report.run_name}",
        "",
        f"**Verdict:** adding synthetic images {verdict} on the held-out real test set: accuracy gain "
        f"{signed(g)}, macro-F1 gain {signed(gain['macro_f1'])}, AUROC gain {signed(gain['auroc'])} "
        f"(mean ± std over {seeds} seeds; 95% CI by a paired bootstrap over seeds and "
        f"{g.subjects or 'the'} test subjects)." + more_verdicts(evaluation),
        *coverage_lines(report),
        *(f"\n{line}" for line in warning_lines(evaluation, data.test_subjects, training.loss_curve, training.steps,
                                                 TrainConfig.steps)),
        "",
        f"- dataset: {data.source} — train {ev.sizes.real_train}, val {data.sizes['val']}, test "
        f"{ev.sizes.real_test} real images, {data.sample_shape} each; classes {data.class_names}"
        + (f"; channels {data.channel_names}" if data.channel_names else ""),
        *(f"- **data note:** {note}" for note in data.notes),
        *shared_autoencoder_line(report.config),
        *([f"- synthetic version **{sampling.version}** (`synthetic/{sampling.version}.zarr`); every version's "
           f"report is in `reports/<version>/`"] if sampling.version else []),
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
        lines.append(f"| {arm} | {fmt(s['accuracy'])} | {fmt(s['macro_f1'])} | {fmt(s['auroc'])} |")
    lines += gains_table(evaluation)
    lines += nfe_lines(evaluation, report.sampling.nfe, report.sampling.seconds_per_image)
    lines += quality_lines(evaluation.quality)
    lines += memorisation_lines(evaluation.memorisation)
    lines += enhancement_lines(report.enhancement)
    lines += nfe_curve_lines(evaluation.quality)
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


def _test_subjects(data: Any, split: np.ndarray) -> dict[str, int]:
    """How many subjects (groups: patients, source volumes) hold each class in the test split."""
    test = split == 2
    labels, groups = data["labels"][:][test], data["group"][:][test]
    names = list(data.attrs["class_names"])
    return {names[c]: int(len(np.unique(groups[labels == c]))) for c in range(len(names))}


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
    seconds, device = sampling_seconds(synthetic_path)
    return Report(
        run_name=run_name, code_version=code_version(), config=config,
        dataset=DatasetInfo(path=data_path, source=data.attrs["source"], fingerprint=data.attrs["fingerprint"],
                            class_names=data.attrs["class_names"], sample_shape=list(data["images"].shape[1:]),
                            sizes={n: int((split == c).sum()) for n, c in (("train", 0), ("val", 1), ("test", 2))},
                            notes=list(data.attrs.get("notes", [])),
                            channel_names=channel_names(data.attrs, int(data["images"].shape[1]))
                            if data["images"].shape[1] > 1 else None,
                            test_subjects=_test_subjects(data, split)),
        training=TrainingInfo(checkpoint=checkpoint, steps=ckpt["step"], final_loss=float(np.mean(losses[-50:])),
                              loss_curve=[float(np.mean(losses[i:i + every])) for i in range(0, len(losses), every)],
                              seconds=ckpt.get("train_seconds", float("nan")), device=ckpt["device"],
                              loss_every=every),
        sampling=SamplingInfo(store=synthetic_path, num_samples=syn.attrs["num_samples"], solver=syn.attrs["solver"],
                              nfe=syn.attrs["nfe"], guidance=syn.attrs["guidance"],
                              mask_source=syn.attrs.get("mask_source"),
                              copy_guard=syn.attrs.get("copy_threshold") is not None,
                              seconds_per_image=seconds, device=device,
                              checkpoint_sha256=syn.attrs["checkpoint_sha256"],
                              version=version_name(synthetic_path)),
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


def version_name(synthetic_path: str | Path) -> str:
    """The name of the synthetic version a store path is (or links to): `v0003` for `synthetic/v0003.zarr` or a
    `latest` link to it."""
    return Path(synthetic_path).resolve().name.removesuffix(".zarr")


def publish_report(run_name: str, config: dict[str, Any], data_path: str, checkpoint: str, synthetic_path: str,
                   evaluation_path: str, run_dir: str | Path, enhancement_paths: list[str] | None = None
                   ) -> tuple[Report, dict[str, str]]:
    """Gather every stage's outputs and write report.json, report.md and the figures into
    `run_dir/reports/<version>/` (one folder per synthetic version, never overwritten by another version's), then
    copy them to `run_dir`, whose report is the latest; returns the report and the files at the top."""
    report = gather(run_name, config, data_path, checkpoint, synthetic_path, evaluation_path, enhancement_paths or [])
    run_dir = Path(run_dir)
    folder = run_dir / "reports" / version_name(synthetic_path)
    pairs = report.evaluation.memorisation.png  # the evaluation's figure, kept with the version it shows
    if pairs and Path(pairs).exists():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / Path(pairs).name) as tmp:
            shutil.copyfile(pairs, tmp)
    per_version = write_report(folder, report, data_path, synthetic_path)
    top = {}
    for key, name in (("grid", Path(per_version["grid"]).name), ("gains", "gains.png"), ("training", "training.png"),
                      ("json", "report.json"), ("markdown", "report.md")):  # report.md last: it names the others
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(folder / name, tmp)
        top[key] = str(run_dir / name)
    return report, top
