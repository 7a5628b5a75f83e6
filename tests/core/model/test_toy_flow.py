"""Flow matching learns a 2D Gaussian mixture: Wasserstein distance to the data drops (path + coupling + solver)."""

import ot
import pytest
import torch

from motfm_core.config import TrainConfig
from motfm_core.model.couplings import COUPLINGS
from motfm_core.model.paths import CondOTPath, sample_time
from motfm_core.model.solvers import solve


def mixture(n, g):
    centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [0.0, -2.5]])
    return centres[torch.randint(0, 3, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g)


def w2(a, b):
    return float(ot.emd2(torch.full((len(a),), 1 / len(a), dtype=torch.float64),
                         torch.full((len(b),), 1 / len(b), dtype=torch.float64), torch.cdist(a, b).pow(2).double()))


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_toy_mixture_is_learned(coupling):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128), torch.nn.SiLU(),
                              torch.nn.Linear(128, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    path, cfg = CondOTPath(), TrainConfig(coupling=coupling)
    for _ in range(600):
        x1 = mixture(256, g)
        x0 = COUPLINGS[cfg.coupling](torch.randn(256, 2, generator=g), x1)
        t = sample_time(256, "uniform", g)
        xt, ut = path.sample(x0, x1, t)
        loss = (net(torch.cat([xt, t[:, None]], 1)) - ut).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    def velocity(x, t):
        return net(torch.cat([x, t[:, None]], 1))
    noise, target = torch.randn(500, 2, generator=g), mixture(500, g)
    samples, nfe = solve(velocity, noise, 20, "euler")
    assert nfe == 20
    assert w2(samples, target) < 0.15 * w2(noise, target)
