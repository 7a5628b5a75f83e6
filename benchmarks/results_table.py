"""Append a row to one section's table in benchmarks/RESULTS.md (the section is created when missing)."""

from __future__ import annotations

from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def add_row(section: str, columns: list[str], row: list[str], path: Path = RESULTS_MD) -> None:
    """Put `row` at the end of the table under `## {section}`, after the rows already there."""
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmark results", ""]
    line = "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |"
    heading = f"## {section}"
    if heading not in lines:
        lines += ["", heading, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines.append(line)
    else:
        i = lines.index(heading) + 1
        while i < len(lines) and not lines[i].startswith(("|", "## ")):
            i += 1  # the section's prose, up to its table (or the next section, when it has none yet)
        if i == len(lines) or lines[i].startswith("## "):
            while i > 0 and not lines[i - 1].strip():
                i -= 1
            lines[i:i] = ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            i += 3
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines.insert(i, line)
    path.write_text("\n".join(lines) + "\n")


def save_results(kind: str, cases: list[dict]) -> Path:
    """`cases` as benchmarks/results/<date>-<machine>-<kind>.json, with the date, machine and commit they ran at."""
    import datetime as dt
    import json
    import subprocess

    from sampling_throughput import machine_name

    stamp = dt.date.today().isoformat()
    out = RESULTS_MD.parent / "results" / f"{stamp}-{machine_name()}-{kind}.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS_MD.parent.parent,
                            capture_output=True, text=True).stdout.strip()
    out.write_text(json.dumps({"date": stamp, "machine": machine_name(), "commit": commit, "cases": cases},
                              indent=2))
    return out


def keep_case(kept: Path, got: dict) -> dict:
    """A long benchmark's measured case `got`, kept at `kept` (a re-run skips it: the benchmark resumes) and
    printed as one JSON line."""
    import json

    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(got, indent=2))
    print(json.dumps(got), flush=True)
    return got

