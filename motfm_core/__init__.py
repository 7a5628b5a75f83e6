"""motfm_core: optimal-transport flow matching for medical images, usable without Prefect.

Three wings, each importing only those below it (the contracts in pyproject.toml check it):
- `evaluation/`: everything that judges the synthetic data and writes the report;
- `model/`: the generative model (paths, couplings, networks, solvers, training, sampling) and its memory plan;
- `data/`: readers of users' formats, the bundled demo sets, the real and synthetic Zarr stores and their versions.

Shared conventions, used by every wing and using none: `config` (typed settings, one dataclass per section),
`typed` (dicts to dataclasses, config hashes), `results` (the stages' typed results), `files` (files published whole
and durably, content hashes), `device`, `scale` (the model-space intensity scale) and `allocator` (how freed buffers
go back to the system).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["__version__", "code_version"]

__version__ = "0.1.0"


def code_version() -> str:
    """Package version plus the git commit (and '+dirty') when run from a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__
