"""The plugin's entry point and its device/dtype behaviour."""
import argparse

import pytest
import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion import plugin
from sdekit_diffusion.problems import GaussianMixture


def test_register_accepts_argparse_subparsers():
    parser = argparse.ArgumentParser(prog="sdekit")
    assert plugin.register(parser.add_subparsers()) is None


def test_public_names():
    for name in ("DiffusionSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "as_score",
                 "transform_score", "problems"):
        assert hasattr(skd, name), name
    assert skd.problems.GaussianMixture is GaussianMixture
    assert isinstance(skd.VPSDE(), sdekit.SDE)
    assert isinstance(skd.VPSDE().reverse(lambda t, x: -x), sdekit.SDE)
    assert isinstance(skd.VPSDE().probability_flow(lambda t, x: -x), sdekit.ODE)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_sampling_and_schedules(dtype):
    device = torch.device("cuda")
    gm = GaussianMixture([0.5, 0.5], torch.tensor([[-1.0, 0.0], [1.0, 0.0]], device=device), 0.3)
    beta = lambda t: 0.1 + t * 19.9
    for sde in (skd.VPSDE(), skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t, 1e-3, 0.99),
                skd.DiffusionSDE.from_linear_sde(lambda t: -0.5 * beta(t), lambda t: beta(t).sqrt())):
        x_T = sde.prior_sample((16, 2), generator=torch.Generator(device).manual_seed(0), dtype=dtype)
        assert x_T.device.type == "cuda"
        x = sdekit.solve(sde.reverse(gm.score_fn(sde)), x_T, sde.t_max, sde.t_min,
                         solver="euler_maruyama", steps=50).x
        assert x.device.type == "cuda" and x.dtype == dtype and torch.isfinite(x).all()
        t = torch.linspace(sde.t_min, sde.t_max, 5, device=device, dtype=dtype)
        assert sde.alpha(t).device.type == "cuda" and sde.g2(t).dtype == dtype
        assert sde.inverse_log_snr(sde.log_snr(t)).device.type == "cuda"
