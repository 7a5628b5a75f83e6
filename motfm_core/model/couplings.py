"""Couplings: which noise sample is paired with which data sample in a minibatch.

`independent` is the plain conditional flow-matching pairing. `ot` re-pairs the minibatch by
exact optimal transport (squared Euclidean cost, Hungarian algorithm via SciPy); `sinkhorn` draws the
pairing from an entropic OT plan (POT's `sinkhorn`), a softer, cheaper-at-scale alternative. With
labels, both pair only within each label, so a class-conditional model never learns cross-class paths.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["COUPLINGS", "independent", "minibatch_ot", "pairing_cost", "sinkhorn"]

def independent(x0: torch.Tensor, x1: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Identity pairing: returns the noise unchanged."""
    return x0


def _ot_perm(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    cost = torch.cdist(x1.flatten(1).float(), x0.flatten(1).float()).pow(2)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm.to(x0.device)


def minibatch_ot(x0: torch.Tensor, x1: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Permute noise x0 so that (x0[i], x1[i]) is an exact OT plan, within each label when given."""
    if labels is None:
        return x0[_ot_perm(x0, x1)]
    out = x0.clone()
    for value in labels.unique():
        idx = (labels == value).nonzero(as_tuple=True)[0]
        out[idx] = x0[idx][_ot_perm(x0[idx], x1[idx])]
    return out


def _sinkhorn_perm(x0: torch.Tensor, x1: torch.Tensor, reg: float, generator: torch.Generator | None) -> torch.Tensor:
    import ot

    cost = torch.cdist(x1.flatten(1).double(), x0.flatten(1).double()).pow(2)
    cost = cost / cost.max().clamp_min(1e-12)
    n = len(x1)
    plan = torch.as_tensor(ot.sinkhorn(torch.full((n,), 1.0 / n, dtype=torch.float64),
                                       torch.full((n,), 1.0 / n, dtype=torch.float64), cost.cpu(), reg))
    rows = plan / plan.sum(1, keepdim=True)
    return torch.multinomial(rows.float(), 1, generator=generator).squeeze(1).to(x0.device)


def sinkhorn(x0: torch.Tensor, x1: torch.Tensor, labels: torch.Tensor | None = None, reg: float = 0.05,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise for each x1[i] drawn from row i of an entropic OT plan (within each label when given)."""
    if labels is None:
        return x0[_sinkhorn_perm(x0, x1, reg, generator)]
    out = x0.clone()
    for value in labels.unique():
        idx = (labels == value).nonzero(as_tuple=True)[0]
        out[idx] = x0[idx][_sinkhorn_perm(x0[idx], x1[idx], reg, generator)]
    return out


def pairing_cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """Mean squared distance between paired samples (what OT minimises)."""
    return float((x1 - x0).flatten(1).pow(2).sum(1).mean())


COUPLINGS = {"independent": independent, "ot": minibatch_ot, "sinkhorn": sinkhorn}
