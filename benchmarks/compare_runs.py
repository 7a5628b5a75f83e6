"""Whether two runs of the DAG gave the same figures: every checkpoint's EMA weights (`torch.equal`), every
synthetic store's images (`np.array_equal`) and every number of `report.json` apart from timings and paths.

    .venv/bin/python benchmarks/compare_runs.py outputs/demo /tmp/other-clone/outputs/demo

A change that only moves code (or adds a path the demo does not take) should print `identical` on every line; the
exit code is 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SKIPPED = ("seconds", "created", "time", "duration", "code_version", "path", "dir", "store", "checkpoint", "png",
           "source")  # report keys that differ between two identical runs: when, where and how long


def numbers(obj: Any, where: str = "") -> Iterator[tuple[str, float]]:
    """(JSON path, value) of every number in `obj`, leaving out the keys in SKIPPED."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not any(s in key for s in SKIPPED):
                yield from numbers(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from numbers(value, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield where, obj


def compare(a: Path, b: Path) -> list[str]:
    """One line per checkpoint, store and the report; each ends in `identical` or says what differs."""
    import torch
    import zarr

    lines = []
    for rel in sorted(p.relative_to(a) for p in a.rglob("model.pt")):
        x, y = (torch.load(root / rel, weights_only=True, map_location="cpu") for root in (a, b))
        same = x["ema"].keys() == y["ema"].keys() and all(torch.equal(x["ema"][k], y["ema"][k]) for k in x["ema"])
        lines.append(f"{rel}: EMA weights {'identical' if same else 'DIFFER'}")
    for rel in sorted(p.relative_to(a) for p in a.rglob("v0*.zarr")):
        if not (b / rel).exists():
            lines.append(f"{rel}: MISSING in {b}")
            continue
        x, y = (np.asarray(zarr.open_group(str(root / rel), mode="r")["images"][:]) for root in (a, b))
        same = x.shape == y.shape and np.array_equal(x, y)
        lines.append(f"{rel}: {len(x)} images {'identical' if same else 'DIFFER'}")
    ra, rb = (dict(numbers(json.loads((root / "report.json").read_text()))) for root in (a, b))
    differ = [k for k in ra if rb.get(k) != ra[k]]
    lines.append(f"report.json: {len(ra) - len(differ)} of {len(ra)} numbers equal" +
                 ("; identical" if not differ else f"; first that differ: {differ[:5]}"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="a run folder (outputs/<run-name>)")
    parser.add_argument("b", type=Path, help="the run folder to compare it with")
    args = parser.parse_args(argv)
    lines = compare(args.a, args.b)
    print("\n".join(lines))
    return 0 if all(line.endswith("identical") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
