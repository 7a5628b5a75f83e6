"""What a store holds, for `motfm inspect`: a real dataset (samples per split and class, source, notes) or a synthetic
dataset (its versions, which is `latest`, complete / missing / damaged shards, samples per class, and where they
came from: checkpoint, sampler, NFE, seeds, copy-guard redraws). Reads Zarr metadata and the small per-sample
arrays only, never the images."""

from __future__ import annotations

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


def describe(path: str | Path) -> str:
    """A few lines on the store (or synthetic folder of versions) at `path`; raises naming the path if it is
    neither."""
    path = Path(path)
    if (path / "zarr.json").exists():
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
        if "num_shards" in root.attrs:
            latest = path.parent / "latest"
            return "\n".join(_version(path, latest.resolve() if latest.is_symlink() else None))
        return "\n".join(_real(path))
    found = versions(path) if path.is_dir() else []
    if not found:
        raise InputMissing(f"{path}: neither a motfm store nor a folder of synthetic versions; give a "
                           "dataset.zarr, a synthetic/vNNNN.zarr or the synthetic/ folder")
    link = path / "latest"
    current = link.resolve() if link.is_symlink() else None
    lines = [f"{path}: {len(found)} synthetic version(s)"]
    for v in found:
        lines += _version(v, current)
    return "\n".join(lines)
