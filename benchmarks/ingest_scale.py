"""Ingest at users' scale: peak memory, throughput and resume of a folder of 240 x 240 x 155 int16 NIfTI subjects
(four sequences and a label map each, `motfm_core.data.reference_set`) ingested to 128^3.

    .venv/bin/python benchmarks/ingest_scale.py [--work outputs/scale]

Cases, each in a fresh process whose peak memory is the largest sum of PSS (proportional set size: a page shared
by n processes counts 1/n in each) over it and its children, the Dask workers:
- `ingest-<N>-w<W>`: `ingest` of the first N subjects (20, 80, 320) with data.workers=W (1: in the process itself);
  `ingest-80-d1`: on a local cluster of one Dask worker (one thread), the comparison for two; besides the wall
  time, the steady seconds per row while rows are prepared (from the progress lines);
- `nibabel-<N>`: nibabel alone reading and decompressing the same files (get_fdata, float32), one process: the
  rate a worker could at most reach;
- `kill-<N>`: an ingest (2 workers) killed with SIGKILL once half its rows are prepared, then run again: the rows the
  re-run prepared (from its log) and whether its store equals the uninterrupted one's (fingerprint);
- `before-<N>`: the whole-set ingest of commit b60abe8 (read everything, then prepare, then stack), for comparison,
  from a git worktree of that commit in `<work>/before` (`git worktree remove` it when done).
The reference set of 320 subjects is written once (about 3.7 GB); each case's figures are kept in
`<work>/cases/<case>.json`, so an interrupted benchmark resumes at the first case not measured.
Writes benchmarks/results/<date>-<machine>-ingest-scale.json and a table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import keep_case, save_results  # noqa: E402

BEFORE = "b60abe8"  # the last commit with the whole-set ingest
SIZES = (20, 80, 320)


def subset(work: Path, n: int) -> Path:
    """A folder of the reference set's first `n` subjects (hard links: no copy)."""
    full, out = work / "ref320", work / "sets" / f"n{n}"
    if not (full / "labels.csv").exists():
        from motfm_core.data.reference_set import write_reference_set

        write_reference_set(full, subjects=max(SIZES), seed=0)
    if (out / "labels.csv").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    lines = (full / "labels.csv").read_text().splitlines()
    for line in lines[1:n + 1]:
        sid = line.split(",")[0]
        (out / sid).mkdir(parents=True)
        for f in (full / sid).iterdir():
            os.link(f, out / sid / f.name)
    (out / "labels.csv").write_text("\n".join(lines[:n + 1]) + "\n")
    return out


def watched(cmd: list[str], log: Path, stop: callable = None) -> dict:  # type: ignore[valid-type]
    """Run `cmd`, sampling the memory of it and its children every 0.1 s (the sum of their proportional set sizes:
    a page shared by several counts once in all); `stop()` true kills the process group."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak, main, others, killed = 0, 0, 0, False
    while proc.poll() is None:
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            pss = [p.memory_full_info().pss if p.is_running() else 0 for p in tree]
            peak, main, others = max(peak, sum(pss)), max(main, pss[0]), max(others, sum(pss[1:]))
        except psutil.Error:
            pass
        if stop is not None and not killed and stop():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    return {"seconds": time.perf_counter() - start, "peak_pss_gb": peak / 1e9, "rc": proc.returncode,
            "killed": killed, "peak_main_pss_gb": main / 1e9, "peak_children_pss_gb": others / 1e9}


def run_ingest(src: str, out: str, workers: str) -> None:
    """The child: ingest `src` to 128^3 into `out` with data.workers=`workers`, or on a local cluster of one worker
    (`d1`: one Dask worker against the two of data.workers=2, as against one in-process)."""
    from motfm_core.cluster import dask_client
    from motfm_core.config import DataConfig
    from motfm_core.data import ingest

    if workers.startswith("d"):
        with dask_client(None, int(workers[1:]), threads_per_worker=1) as client:
            ingest(DataConfig(source=src, spatial_dims=3, image_size=128, depth=128), Path(out), print,
                   scheduler=client.scheduler.address)
        return
    ingest(DataConfig(source=src, spatial_dims=3, image_size=128, depth=128, workers=int(workers)), Path(out),
           print)


def run_nibabel(src: str) -> None:
    """The child: read and decompress every NIfTI file of `src` as nibabel does for the ingest."""
    import nibabel as nib
    import numpy as np

    for f in sorted(Path(src).rglob("*.nii.gz")):
        np.asarray(nib.load(str(f)).get_fdata(dtype=np.float32))


def steady_seconds_per_row(log: Path) -> float | None:
    """Seconds per row while rows are prepared, from an ingest's progress lines (`ingest: 8/80 rows prepared ...
    (6.7s)`): from the first line to the last, so the start (a local cluster's, the first row's imports) and the
    store's write after the last row are left out."""
    seen = [(int(m.group(1)), float(m.group(2))) for m in
            re.finditer(r"ingest: (\d+)/\d+ rows prepared .*\(([\d.]+)s\)", log.read_text())] if log.exists() else []
    if len(seen) < 2 or seen[-1][0] == seen[0][0]:
        return None
    return (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])


def case(work: Path, name: str) -> dict:
    """Measure one case (or return its kept figures)."""
    kept = work / "cases" / f"{name}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    kind, n, *rest = name.split("-")
    src, logs = subset(work, int(n)), work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    store = work / "stores" / name / "dataset.zarr"
    shutil.rmtree(store.parent, ignore_errors=True)
    me = [sys.executable, __file__]
    if kind == "ingest":
        how = rest[0][1:] if rest[0].startswith("w") else rest[0]  # w<N>: data.workers=N; d<N>: a cluster of N
        got = watched([*me, "--child-ingest", str(src), str(store), how], logs / f"{name}.log")
    elif kind == "nibabel":
        got = watched([*me, "--child-nibabel", str(src)], logs / f"{name}.log")
    elif kind == "before":
        tree = work / "before"
        if not tree.exists():
            subprocess.run(["git", "worktree", "add", "-f", str(tree), BEFORE], cwd=ROOT, check=True)
        child = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from motfm_core.config import "
                 "DataConfig; from motfm_core.data import ingest; ingest(DataConfig(source=sys.argv[2], "
                 "spatial_dims=3, image_size=128, depth=128), sys.argv[3], print)", str(tree), str(src), str(store)]
        got = watched(child, logs / f"{name}.log")
    else:  # kill: at half, then the re-run
        parts = store.with_name(store.name + ".parts")
        half = int(n) // 2
        got = watched([*me, "--child-ingest", str(src), str(store), "2"], logs / f"{name}.log",
                      stop=lambda: len(list(parts.glob("row-*.npz"))) >= half)
        got["parts_at_kill"] = len(list(parts.glob("row-*.npz")))
        again = watched([*me, "--child-ingest", str(src), str(store), "2"], logs / f"{name}-rerun.log")
        said = (logs / f"{name}-rerun.log").read_text()
        m = re.search(r"resuming: (\d+) of (\d+) rows already prepared .*; preparing (\d+)", said)
        got.update({"rerun_seconds": again["seconds"], "rerun_rc": again["rc"],
                    "rerun_prepared": int(m.group(3)) if m else None, "rerun_found": int(m.group(1)) if m else None})
        from motfm_core.data import open_store

        whole = work / "stores" / f"ingest-{n}-w2" / "dataset.zarr"
        got["same_store"] = (whole.exists() and open_store(store).attrs["fingerprint"]
                             == open_store(whole).attrs["fingerprint"])
    got.update({"case": name, "subjects": int(n), "raw_float32_gb": int(n) * 5 * 240 * 240 * 155 * 4 / 1e9})
    if kind in ("ingest", "before") and got["rc"] == 0:
        from motfm_core.data import open_store

        got["fingerprint"] = open_store(store).attrs["fingerprint"]
    if kind != "kill":
        got["seconds_per_subject"] = got["seconds"] / int(n)
    return keep_case(kept, got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "scale")
    parser.add_argument("--child-ingest", nargs=3, metavar=("SRC", "OUT", "WORKERS"))
    parser.add_argument("--child-nibabel", metavar="SRC")
    parser.add_argument("--cases", nargs="*", help="measure these cases only (a trial run), not the table's")
    args = parser.parse_args()
    if args.child_ingest:
        return run_ingest(*args.child_ingest)
    if args.child_nibabel:
        return run_nibabel(args.child_nibabel)
    names = ["nibabel-80", "ingest-20-w2", "ingest-80-w2", "ingest-80-w1", "ingest-80-d1", "ingest-320-w2", "kill-80",
             "before-20"]
    results = [case(args.work, name) for name in args.cases or names]
    for got in results:
        if got["case"].startswith("ingest-"):
            got["steady_seconds_per_row"] = steady_seconds_per_row(args.work / "logs" / f"{got['case']}.log")
    if args.cases:
        return
    out = save_results("ingest-scale", results)
    print(out)


if __name__ == "__main__":
    main()
