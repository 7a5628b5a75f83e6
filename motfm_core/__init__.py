"""motfm_core: optimal-transport flow matching for medical images, usable without Prefect.

Modules: `config` (typed configs), `utils` (device, model-space scale, atomic writes), `paths` (x_t and target),
`couplings` (noise/data pairing), `nets` (MONAI UNet velocity field), `solvers` (ODE integration with exact NFE),
`baselines` (DDPM/DDIM), `training`, `masks` (conditioning masks), `sampling`, `distributed` (Dask fan-out),
`data` (readers, demo sets, Zarr stores), `supervised` / `segmentation` (downstream models), `downstream` (the
augmentation arms), `quality`, `privacy`, `metrics`, `evaluation` (the evaluate stage), `report`, `enhance`.
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
