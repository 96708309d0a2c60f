"""``afs=True``, the analytical first step of the multistep samplers (``ipndm``, ``deis``, ``unipc``,
``dpm_solver++_2m``, ``dpm_solver++_3m``): the model's output at ``t_max`` is that of standard
normal data (``samplers._common.analytic_score``) instead of a score call.

* It is exactly that: the run equals the plain sampler fed a score whose call at ``t_max`` returns
  the analytic score, with one call fewer (the registry's ``nfe`` counts it).
* For standard normal data the analytic score is the exact one, so the run equals the plain run on
  the same grid.
* It gains at few steps on a mixture, and ``optimize_time_grid`` spends ``nfe + 1`` steps with it.
* Bad values and budgets are refused.
"""
from __future__ import annotations

import pytest
import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion.samplers._common import analytic_score

AFS_SAMPLERS = ["ipndm", "deis", "unipc", "dpm_solver++_2m", "dpm_solver++_3m"]
MIXTURE = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, 0.0]], stds=[0.5, 0.65])


def mixture():
    return skd.GaussianMixture(MIXTURE["weights"], torch.tensor(MIXTURE["means"]), MIXTURE["stds"])


def prior(sde, n, seed, dim=2):
    return sde.prior_sample((n, dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def with_analytic_first_call(sde, score):
    """``score`` whose calls at ``t_max`` return the analytic score of standard normal data."""
    def wrapped(t, x):
        if float(t[0]) == sde.t_max:
            alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
            return analytic_score(alpha, sigma, x)
        return score(t, x)
    return wrapped


@pytest.mark.parametrize("name", AFS_SAMPLERS)
@pytest.mark.parametrize("make_sde", [skd.VPSDE, lambda: skd.VESDE(sigma_min=0.01, sigma_max=50.0)],
                         ids=["vp", "ve"])
def test_afs_replaces_the_first_model_call(name, make_sde):
    sde = make_sde()
    score = mixture().score_fn(sde)
    x_T = prior(sde, 32, 0)
    ts = skd.time_grid(sde, 8, "logsnr")
    afs = skd.sample(sde, score, x_T=x_T, solver=name, ts=ts, afs=True)
    wrapped = skd.sample(sde, with_analytic_first_call(sde, score), x_T=x_T, solver=name, ts=ts)
    assert afs.nfe == 7 and wrapped.nfe == 8 and afs.n_steps == 8
    assert skd.samplers.get(name).nfe(8, {"afs": True}) == 7
    assert skd.samplers.get(name).nfe(8, {}) == 8
    torch.testing.assert_close(afs.x, wrapped.x, rtol=0, atol=1e-12)
    plain = skd.sample(sde, score, x_T=x_T, solver=name, ts=ts)
    assert not torch.allclose(afs.x, plain.x)


@pytest.mark.parametrize("name", AFS_SAMPLERS)
def test_afs_is_exact_for_standard_normal_data(name):
    sde = skd.VPSDE()
    data = skd.GaussianMixture.gaussian(torch.zeros(3), 1.0)
    x_T = prior(sde, 16, 1, dim=3)
    ts = skd.time_grid(sde, 6, "quadratic")
    afs = skd.sample(sde, data.score_fn(sde), x_T=x_T, solver=name, ts=ts, afs=True)
    plain = skd.sample(sde, data.score_fn(sde), x_T=x_T, solver=name, ts=ts)
    assert afs.nfe == plain.nfe - 1
    torch.testing.assert_close(afs.x, plain.x, rtol=0, atol=1e-12)


def test_afs_gains_at_few_steps_for_the_same_calls():
    """ipndm at 5 score calls: 6 steps with afs against 5 without, on the quadratic grid."""
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    x_T = prior(sde, 256, 2)
    exact = sdekit.solve(sde.probability_flow(score), x_T, sde.t_max, sde.t_min, solver="dopri5",
                         rtol=1e-10, atol=1e-10).x

    def error(solution):
        return float((solution.x - exact).norm(dim=1).mean())

    plain = skd.sample(sde, score, x_T=x_T, solver="ipndm", steps=5, time_grid="quadratic")
    afs = skd.sample(sde, score, x_T=x_T, solver="ipndm", steps=6, time_grid="quadratic", afs=True)
    assert plain.nfe == afs.nfe == 5
    assert error(afs) < 0.8 * error(plain), (error(afs), error(plain))


def test_optimize_time_grid_spends_one_more_step_with_afs():
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    x_cal = prior(sde, 64, 3)
    ts = skd.optimize_time_grid(sde, score, x_cal, 6, "ipndm", max_evaluations=10, afs=True)
    assert ts.shape == (8,)
    solution = skd.sample(sde, score, x_T=x_cal, solver="ipndm", ts=ts, afs=True)
    assert solution.nfe == 6 and solution.n_steps == 7
    with pytest.raises(ValueError, match=r"\(1 fewer in all with these options\).*>= 3, got 2"):
        skd.optimize_time_grid(sde, score, x_cal, 2, "ipndm", afs=True)


@pytest.mark.parametrize("name", AFS_SAMPLERS)
@pytest.mark.parametrize("value", [1, "yes", None])
def test_afs_refuses_non_bool(name, value):
    sde = skd.VPSDE()
    with pytest.raises(ValueError, match="afs must be True"):
        skd.sample(sde, mixture().score_fn(sde), x_T=prior(sde, 4, 0), solver=name, steps=6, afs=value)
