"""Interop: torchsde and sdekit agree on the same Brownian path; torchdiffeq accepts our ODEs."""
import pytest
import torch

import sdekit
from sdekit.interop import to_torchsde, to_torchsde_brownian

torchsde = pytest.importorskip("torchsde")


class GBM(sdekit.SDE):
    noise_type = "diagonal"

    def drift(self, t, x):
        return 0.5 * x * torch.cos(t)

    def diffusion(self, t, x):
        return 0.4 * x


class TwoByTwo(sdekit.SDE):
    """General noise on a (batch, 2, 2) state with 3 Brownian motions (checks reshaping)."""

    noise_type = "general"
    brownian_size = 3

    def drift(self, t, x):
        return -x

    def diffusion(self, t, x):
        return torch.stack([x, 0.5 * x, torch.ones_like(x)], dim=-1) * 0.3


@pytest.mark.parametrize("problem,shape", [(GBM(), (16, 3)), (TwoByTwo(), (8, 2, 2))])
def test_euler_maruyama_matches_torchsde_euler_on_the_same_path(problem, shape):
    x0 = torch.rand(shape, dtype=torch.float64) + 0.5
    tree = sdekit.BrownianTree(0.0, 1.0, sdekit.problems.brownian_shape(problem, shape), seed=7,
                               dtype=torch.float64)
    steps = 64
    ours = sdekit.solve(problem, x0, 0.0, 1.0, solver="euler_maruyama", steps=steps, brownian=tree).x
    theirs = torchsde.sdeint(to_torchsde(problem, state_shape=shape[1:]), x0.reshape(shape[0], -1),
                             torch.tensor([0.0, 1.0], dtype=torch.float64), bm=to_torchsde_brownian(tree),
                             method="euler", dt=1.0 / steps)[-1]
    assert (ours.reshape(shape[0], -1) - theirs).abs().max().item() < 1e-10
