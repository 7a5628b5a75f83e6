"""Are the synthetic images new, and do they help? The issue-11 targets on the bundled brain-MRI set.

Runs the whole synth-and-eval DAG once per variant in one run folder, so the image generators (all real data,
and one per low-data share, each trained only on its share) are trained once and reused; each variant then
samples and evaluates:
- `train`: conditioning masks are the training masks (the behaviour before deformed masks; copies expected);
- `deformed`: each training mask under a recorded random affine + elastic deformation;
- `deformed+guard`: the same with the copy guard (near-copies redrawn); `deformed` is the default strength of
  the first version (15 degrees, 15% scale, 6% shift, 2 px elastic);
- `mild`, `mild+guard`: a third of that deformation (5 degrees, 5% scale, 2% shift, 1 px elastic), without
  and with the copy guard: nearer the real slices' alignment, so nearer their MS-SSIM, and nearer to copies;
  `mild+guard` is the default now (`SampleConfig`), chosen by this benchmark;
- `half+guard`: half that deformation (7.5 degrees, 7.5% scale, 3% shift, 1.5 px elastic) with the guard (the
  default before);
- `two-fifths+guard`: 0.4 of it (6 degrees, 6% scale, 2.4% shift, 1.2 px elastic) with the guard, between the
  third (near its MS-SSIM target, too many copies unguarded) and the half (near its recall target);
- `generated`: masks from a class-conditional flow model over masks (trained once, per share).

Targets (issue 11): memorisation flagged <= 5%; recall >= 0.5; synthetic intra-class MS-SSIM within 20% of the
real one; the full-data and leak-free low-data gains with 95% CIs, whatever their sign.

    .venv/bin/python benchmarks/novelty.py                 # full budget (PipelineConfig defaults)
    .venv/bin/python benchmarks/novelty.py --preset demo   # the demo's budget (what `make demo` runs)
    .venv/bin/python benchmarks/novelty.py --preset bench --real-fractions 0.25   # with a leak-free 25% generator

Writes benchmarks/results/<date>-<machine>-novelty-<preset>.json and one RESULTS.md row per variant.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results_table import add_row
from flows.cli import prefect_ready
from flows.presets import PRESETS
from flows.synth_and_eval import synth_and_eval

MILD = {"deform_rotate": 5.0, "deform_scale": 0.05, "deform_translate": 0.02, "deform_elastic": 1.0}
TWO_FIFTHS = {"deform_rotate": 6.0, "deform_scale": 0.06, "deform_translate": 0.024, "deform_elastic": 1.2}
HALF = {"deform_rotate": 7.5, "deform_scale": 0.075, "deform_translate": 0.03, "deform_elastic": 1.5}
FULL = {"deform_rotate": 15.0, "deform_scale": 0.15, "deform_translate": 0.06, "deform_elastic": 2.0}
VARIANTS: dict[str, dict] = {  # each names all its settings: `mild+guard` is the default
    "train": {"mask_source": "train", "reject_copies": False},
    "deformed": {"mask_source": "deformed", **FULL, "reject_copies": False},
    "deformed+guard": {"mask_source": "deformed", **FULL, "reject_copies": True},
    "generated": {"mask_source": "generated", "reject_copies": False},
    "mild": {"mask_source": "deformed", **MILD, "reject_copies": False},
    "mild+guard": {"mask_source": "deformed", **MILD, "reject_copies": True},
    "two-fifths+guard": {"mask_source": "deformed", **TWO_FIFTHS, "reject_copies": True},
    "half+guard": {"mask_source": "deformed", **HALF, "reject_copies": True},
}
COLUMNS = ["date", "machine", "command", "variant", "memorisation flagged", "recall", "MS-SSIM syn / real",
           "fine SWD / FID (real baseline)", "accuracy gain full data", "accuracy gain low data",
           "Dice gain full / low data", "targets", "file"]


def targets(report: dict) -> dict:
    """The issue's figures and whether each target holds, from one run's report.json."""
    ev = report["evaluation"]
    q, mem = ev["quality"], ev["memorisation"]
    d = q["diversity"]
    ratio = (d["synthetic"]["ms_ssim"] - d["real_train"]["ms_ssim"]) / d["real_train"]["ms_ssim"]
    low = {arm: g["accuracy"] for arm, g in ev["gains"].items() if "%" in arm}
    seg = ev.get("segmentation", {}).get("gains", {})
    return {
        "memorisation_flagged": mem["fraction_flagged"], "recall": q["synthetic_vs_test"]["recall"],
        "precision": q["synthetic_vs_test"]["precision"],
        "ms_ssim": {"synthetic": d["synthetic"]["ms_ssim"], "real": d["real_train"]["ms_ssim"], "relative": ratio},
        "fid": {"synthetic": q["synthetic_vs_test"]["fid"], "real": q["train_vs_test"]["fid"]},
        "swd_fine": {"synthetic": q["synthetic_vs_test"]["swd"]["level0"], "real": q["train_vs_test"]["swd"]["level0"]},
        "gain_full": ev["gain"]["accuracy"], "gain_low": low,
        "dice_gain_full": seg.get("real+synthetic", {}).get("dice"),
        "dice_gain_low": {arm: g["dice"] for arm, g in seg.items() if "%" in arm},
        "low_data_memorisation": {f: m["fraction_flagged"] for f, m in ev.get("low_data_memorisation", {}).items()},
        "copy_guard": mem.get("copy_guard"),
        "holds": {"memorisation <= 5%": mem["fraction_flagged"] <= 0.05,
                  "recall >= 0.5": q["synthetic_vs_test"]["recall"] >= 0.5,
                  "MS-SSIM within 20% of real": abs(ratio) <= 0.2},
    }


def _ci(g: dict | None) -> str:
    if not g:
        return "n/a"
    return f"{g['mean']:+.3f} ± {g['std']:.3f} (CI {g['ci95_low']:+.3f}..{g['ci95_high']:+.3f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--output-root", default="outputs/benchmarks")
    p.add_argument("--real-fractions", nargs="*", type=float, default=None,
                   help="low-data shares, each with its own generator trained at the preset's budget (replaces the "
                        "preset's eval.real_fractions)")
    a = p.parse_args()
    machine = f"cpu{__import__('os').cpu_count()}-{platform.machine()}"
    date = time.strftime("%Y-%m-%d")
    preset = {k: dict(v) for k, v in PRESETS[a.preset].items()}
    name = a.preset
    if a.real_fractions is not None:
        preset.setdefault("eval", {})["real_fractions"] = a.real_fractions
        name += "".join(f"-low{f:g}" for f in a.real_fractions)
    out = {"preset": a.preset, "overrides": preset, "machine": machine, "date": date, "variants": {}}
    results = Path(__file__).resolve().parent / "results"
    target = results / f"{date}-{machine}-novelty-{name}.json"
    if target.exists():  # variants measured earlier the same day (same weights: the run folder is reused) stay
        out["variants"] = json.loads(target.read_text()).get("variants", {})
    run_dir = Path(a.output_root) / f"novelty-{name}"
    with prefect_ready():
        for variant in a.variants:
            overrides = {k: dict(v) for k, v in preset.items()}
            overrides.setdefault("sample", {}).update(VARIANTS[variant])
            t0 = time.time()
            report_md = synth_and_eval(run_name=run_dir.name, output_root=str(run_dir.parent), overrides=overrides)
            report = json.loads((Path(report_md).parent / "report.json").read_text())
            for f in ("samples.png", "closest_pairs.png"):  # keep each variant's figures beside its report
                shutil.copy(Path(report_md).parent / f, Path(report_md).parent / f"{variant}-{f}")
            row = targets(report)
            row["seconds"] = time.time() - t0
            out["variants"][variant] = row
            results.mkdir(exist_ok=True)
            target.write_text(json.dumps(out, indent=2))
            print(json.dumps({variant: row}, indent=1, default=str), flush=True)
            holds = ", ".join(f"{k}: {'holds' if v else 'misses'}" for k, v in row["holds"].items())
            low = "; ".join(f"{arm} {_ci(g)}" for arm, g in row["gain_low"].items()) or "n/a"
            dice_low = "; ".join(f"{arm} {_ci(g)}" for arm, g in row["dice_gain_low"].items())
            add_row("Novelty and usefulness of the synthetic data (`benchmarks/novelty.py`)", COLUMNS, [
                date, machine, f"`benchmarks/novelty.py {' '.join(sys.argv[1:])}`", variant,
                f"{row['memorisation_flagged']:.1%}", f"{row['recall']:.2f} (precision {row['precision']:.2f})",
                f"{row['ms_ssim']['synthetic']:.3f} / {row['ms_ssim']['real']:.3f} ({row['ms_ssim']['relative']:+.0%})",
                f"{row['swd_fine']['synthetic']:.0f} ({row['swd_fine']['real']:.0f}) / {row['fid']['synthetic']:.2f} "
                f"({row['fid']['real']:.2f})", _ci(row["gain_full"]), low,
                f"{_ci(row['dice_gain_full'])}; {dice_low}", holds, f"[{target.name}](results/{target.name})"])


if __name__ == "__main__":
    main()
