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
