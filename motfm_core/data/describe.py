"""What a store or a run holds, for `motfm inspect`: a run folder (its data, checkpoint and every synthetic version
with its report's headline numbers, side by side), a real dataset (samples per split and class, source, notes) or a
synthetic dataset (its versions, which is `latest`, complete / missing / damaged shards, samples per class, and
where they came from: checkpoint, sampler, NFE, seeds, copy-guard redraws). Reads Zarr metadata, the small
per-sample arrays and the reports' JSON only, never the images."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import zarr

from motfm_core.data.store import SPLITS, open_store
from motfm_core.data.synthetic import shard_states
from motfm_core.data.versions import versions
from motfm_core.errors import InputMissing

__all__ = ["describe"]


def _counts(labels: np.ndarray, names: list[str]) -> str:
    values, counts = np.unique(labels[labels >= 0], return_counts=True)
    return ", ".join(f"{names[v] if v < len(names) else v}: {c}" for v, c in zip(values.tolist(), counts.tolist()))


def _real(path: Path) -> list[str]:
    root = open_store(path)
    a = root.attrs
    labels, split = root["labels"][:], root["split"][:]
    names = list(a.get("class_names", []))
    lines = [f"{path}: real dataset, {a['num_samples']} samples of {list(root['images'].shape[1:])} "
             f"({'with' if 'masks' in root.array_keys() else 'without'} masks), source {a.get('source')}",
             f"  fingerprint {a.get('fingerprint', '?')[:16]}, {len(set(root['group'][:].tolist()))} groups"]
    for name, code in SPLITS.items():
        lines.append(f"  {name}: {int((split == code).sum())} ({_counts(labels[split == code], names)})")
    lines += [f"  note: {note}" for note in a.get("notes", [])]
    return lines


def _version(path: Path, latest: Path | None) -> list[str]:
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    a = root.attrs
    done, damaged, missing = shard_states(path)
    state = "complete" if not missing and not damaged else "INCOMPLETE" if not damaged else "DAMAGED"
    tag = " <- latest" if latest is not None and path.resolve() == latest else ""
    lines = [f"{path.name}{tag}: {state}, {len(done)}/{a['num_shards']} shards of {a['shard_size']}, "
             f"{a['num_samples']} samples of {a['sample_shape']}"]
    if missing:
        lines.append(f"  missing shards: {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    lines += [f"  damaged shard {i}: {why}" for i, why in list(damaged.items())[:10]]
    if done:
        labels = root["labels"][:]
        lines.append(f"  per class: {_counts(labels, list(a.get('class_names', [])))}")
    sample = a.get("sample_config", {})
    lines.append(f"  checkpoint {a.get('checkpoint')} (sha256 {str(a.get('checkpoint_sha256'))[:16]}), solver "
                 f"{a.get('solver')}, NFE {a.get('nfe')}, guidance {a.get('guidance')}, seed {sample.get('seed')}, "
                 f"masks {a.get('mask_source')}")
    redraws = sum(int(r.get("redraws", 0)) for r in done.values())
    rejected = sum(int(r.get("rejected", 0)) for r in done.values())
    guard = "on" if a.get("copy_threshold") is not None else "off"
    lines.append(f"  copy guard {guard}: {rejected} samples redrawn as near-copies ({redraws} redraws); created "
                 f"{a.get('created')}, run key {a.get('run_key')}")
    return lines


def _report_line(report: Path) -> str:
    """A version's headline from its report.json (read as JSON: the data wing imports no evaluation code)."""
    try:
        r = json.loads(report.read_text())
        ev = r["evaluation"]
        g, q = ev["gain"]["accuracy"], ev["quality"]
        where = report.with_suffix(".md").relative_to(report.parents[2] if report.parent.parent.name == "reports"
                                                      else report.parent)
        return (f"  report {where}: accuracy gain {g['mean']:+.3f} (95% CI "
                f"{g['ci95_low']:+.3f}..{g['ci95_high']:+.3f}, {g['n']} seeds), in-domain FID "
                f"{q['synthetic_vs_test']['fid']:.3f} (real train {q['train_vs_test']['fid']:.3f}), near-copies "
                f"{ev['memorisation']['fraction_flagged']:.1%}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"  report {report}: unreadable ({type(e).__name__}: {e})"


def _reported_version(report: Path) -> Path | None:
    try:
        return Path(json.loads(report.read_text())["sampling"]["store"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run(path: Path) -> list[str]:
    """A run folder: its real data, its checkpoint and every synthetic version beside its report's numbers."""
    lines = [f"{path}: run folder"]
    ckpt = path / "checkpoints" / "model.pt"
    if ckpt.exists():
        st = ckpt.stat()
        lines.append(f"checkpoint {ckpt.relative_to(path)}: {st.st_size / 2**20:.1f} MB, written "
                     f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(st.st_mtime))}")
    if (path / "dataset.zarr").exists():
        lines += _real(path / "dataset.zarr")
    synthetic, reports = path / "synthetic", path / "reports"
    link = synthetic / "latest"
    current = link.resolve() if link.is_symlink() else None
    found = versions(synthetic) if synthetic.is_dir() else []
    lines.append(f"{len(found)} synthetic version(s):")
    for v in found:
        lines.append(_version(v, current)[0])
        report = reports / v.name.removesuffix(".zarr") / "report.json"
        if not report.exists() and _reported_version(path / "report.json") == v.resolve():
            report = path / "report.json"  # a run from before reports/<version>/: its one report
        lines.append(_report_line(report) if report.exists() else "  no report for this version yet")
    names = {v.name.removesuffix(".zarr") for v in found}
    for old in sorted(reports.glob("v*/report.json")) if reports.is_dir() else []:
        if old.parent.name not in names:  # its version was pruned; the report stays
            lines += [f"{old.parent.name} (pruned)", _report_line(old)]
    return lines


def describe(path: str | Path) -> str:
    """A few lines on the store (or synthetic folder of versions) at `path`; raises naming the path if it is
    neither."""
    path = Path(path)
    if (path / "config.json").exists() or (path / "dataset.zarr").exists():
        return "\n".join(_run(path))
    if (path / "zarr.json").exists():
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
        if "num_shards" in root.attrs:
            latest = path.parent / "latest"
            return "\n".join(_version(path, latest.resolve() if latest.is_symlink() else None))
        return "\n".join(_real(path))
    found = versions(path) if path.is_dir() else []
    if not found:
        raise InputMissing(f"{path}: neither a run folder, a motfm store nor a folder of synthetic versions; give "
                           "outputs/<run-name>, a dataset.zarr, a synthetic/vNNNN.zarr or the synthetic/ folder")
    link = path / "latest"
    current = link.resolve() if link.is_symlink() else None
    lines = [f"{path}: {len(found)} synthetic version(s)"]
    for v in found:
        lines += _version(v, current)
    return "\n".join(lines)
