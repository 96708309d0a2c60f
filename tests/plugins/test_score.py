"""Score parameterizations and transform_score between schedules."""
import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion.problems import GaussianMixture


def data():
    return GaussianMixture([0.25, 0.45, 0.3], [[-2.0, 0.5], [1.5, 1.0], [0.0, -3.0]],
                           [0.4, 0.7, 0.2])


@pytest.mark.parametrize("prediction", skd.PREDICTIONS)
@pytest.mark.parametrize("sde", [skd.VPSDE(), skd.VESDE(),
                                 skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t,
                                                                1e-3, 0.999)])
def test_prediction_round_trip(prediction, sde):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, generator=g)
    t = torch.linspace(sde.t_min, sde.t_max, 7)
    score = data().score_fn(sde)(t, x)
    output = skd.score_to_prediction(prediction, score, sde, t, x)
    torch.testing.assert_close(skd.prediction_to_score(prediction, output, sde, t, x), score)
    # as_score wraps a "network" that outputs exactly this prediction
    net = lambda x_, t_: skd.score_to_prediction(prediction, data().score_fn(sde)(t_, x_), sde, t_, x_)
    torch.testing.assert_close(skd.as_score(net, sde, prediction)(t, x), score)


def test_prediction_definitions():
    """eps = -sigma s, x0 = (x + sigma^2 s)/alpha, v = alpha eps - sigma x0, on x = alpha x0 + sigma eps."""
    sde = skd.VPSDE()
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = torch.linspace(0.1, 0.9, 5)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x = alpha * x0 + sigma * eps
    score = -eps / sigma      # the score of p(x_t | x_0)
    torch.testing.assert_close(skd.score_to_prediction("eps", score, sde, t, x), eps)
    torch.testing.assert_close(skd.score_to_prediction("x0", score, sde, t, x), x0)
    torch.testing.assert_close(skd.score_to_prediction("v", score, sde, t, x), alpha * eps - sigma * x0)


def test_as_score_passes_batched_time_and_rejects_unknown_prediction():
    sde = skd.VPSDE()
    seen = []
    net = lambda x, t: (seen.append(t.shape), torch.zeros_like(x))[1]
    skd.as_score(net, sde, "eps")(torch.tensor(0.5), torch.ones(4, 3, 8, 8))
    assert seen == [(4,)]
    with pytest.raises(ValueError, match="'eps', 'x0', 'v', 'score'"):
        skd.as_score(net, sde, "epsilon")


SOURCE = skd.VPSDE(t_min=1e-8, t_max=1.0)   # log-SNR range [-5.03, 9.9] covers all targets below


@pytest.mark.parametrize("target", [skd.VESDE(), skd.SubVPSDE(), skd.CosineVPSDE(),
                                    skd.VPSDE(beta_min=0.05, beta_max=15.0, t_min=1e-3),
                                    skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t,
                                                                   1e-3, 0.99)])
def test_transform_score_is_exact(target):
    gm = data()
    transformed = skd.transform_score(gm.score_fn(SOURCE), SOURCE, target)
    exact = gm.score_fn(target)
    t = torch.linspace(target.t_min, target.t_max, 400)
    g = torch.Generator().manual_seed(3)
    x = target.alpha(t)[:, None] * gm.sample(400, generator=g) \
        + target.sigma(t)[:, None] * torch.randn(400, 2, generator=g)
    expected = exact(t, x)
    actual = transformed(t, x)
    relative = ((actual - expected).norm(dim=1) / expected.norm(dim=1)).max().item()
    assert relative < 1e-8, relative


def test_transform_score_refuses_targets_outside_the_source_range():
    gm = data()
    with pytest.raises(ValueError, match="leaves the range"):
        skd.transform_score(gm.score_fn(skd.VPSDE()), skd.VPSDE(), skd.SubVPSDE())  # 9.1 > 4.6
    with pytest.raises(ValueError, match="lower the source's t_min"):
        skd.transform_score(gm.score_fn(skd.VPSDE()), skd.VPSDE(), skd.VESDE(sigma_max=400.0))
