"""The few-step samplers of issue 10: ``unipc``, ``ipndm``, ``deis``, ``dpm_solver++_2m_sde`` and
``dpm_solver++_3m_sde``.

* Orders: every deterministic sampler (and the SDE ones with ``eta=0``) against the exact
  probability-flow map of single-Gaussian data (``GaussianMixture.exact_flow``), slope of the max
  error over step counts within 0.3 of the declared global order.
* Peers on the same grid: diffusers' ``UniPCMultistepScheduler`` (float64 sigmas: it then runs in
  float64) and ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`` (it computes in
  float32 whatever the input: compared at float32 resolution) with the same normals;
  k-diffusion's ``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde`` and diff-sampler's ``ipndm`` /
  ``ipndm_v`` / ``deis`` (tAB) reimplemented below line by line, fed the same noise.
* Laws: the SDE samplers' mean and covariance at ``t_min`` against the exact mixture marginal,
  within Monte-Carlo error; the Brownian-path noise gives nearly the same sample at 20 and 40
  steps.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdekit_diffusion as skd
from sdekit.brownian import BrownianTree
from sdekit_diffusion.samplers import get
from sdekit_diffusion.samplers._common import NormalStream
from sdekit_diffusion.samplers._common import PATH_SEED_TAG

T_MIN = 0.02   # order tests end here, as tests/plugins/test_samplers.py
GAUSSIAN = skd.GaussianMixture.gaussian(torch.tensor([1.0, -0.5]), 0.5)
MIXTURE = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, 0.0]], stds=[0.5, 0.65])

SDES = {
    "vp": lambda: skd.VPSDE(),
    "ve": lambda: skd.VESDE(sigma_min=0.01, sigma_max=20.0),
    "custom": lambda: skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t, t_min=0.01,
                                                     t_max=0.99),
}


def mixture():
    return skd.GaussianMixture(MIXTURE["weights"], torch.tensor(MIXTURE["means"]), MIXTURE["stds"])


_FLOWS: dict = {}


def flow_problem(sde_name: str):
    """(sde, exact score of GAUSSIAN, x_T, exact probability-flow solution at T_MIN), cached."""
    if sde_name not in _FLOWS:
        sde = SDES[sde_name]()
        x_T = sde.prior_std * torch.randn(16, 2, generator=torch.Generator().manual_seed(0),
                                          dtype=torch.float64)
        _FLOWS[sde_name] = (sde, GAUSSIAN.score_fn(sde), x_T,
                            GAUSSIAN.exact_flow(sde, x_T, sde.t_max, T_MIN))
    return _FLOWS[sde_name]


def slope(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# -- orders ------------------------------------------------------------------------------------

ORDER_CASES = [
    # (sde, sampler, options, grid, steps, global order)
    ("vp", "unipc", dict(order=1, variant="bh1"), "logsnr", (16, 32, 64), 2),
    ("vp", "unipc", dict(order=2, variant="bh1"), "logsnr", (16, 32, 64), 3),
    ("vp", "unipc", dict(order=3, variant="bh1"), "logsnr", (32, 64, 128), 4),
    ("vp", "unipc", dict(order=1, variant="bh2"), "logsnr", (16, 32, 64), 2),
    ("vp", "unipc", dict(order=2, variant="bh2"), "logsnr", (16, 32, 64), 3),
    ("vp", "unipc", dict(order=3, variant="bh2"), "logsnr", (32, 64, 128), 4),
    ("vp", "unipc", dict(order=1, variant="bh1", prediction="noise"), "logsnr", (32, 64, 128), 2),
    ("vp", "unipc", dict(order=2, variant="bh2", prediction="noise"), "logsnr", (16, 32, 64), 3),
    ("vp", "unipc", dict(order=3, variant="bh2", prediction="noise"), "logsnr", (16, 32, 64), 4),
    ("custom", "unipc", dict(order=3), "logsnr", (64, 128, 256), 4),
    ("custom", "deis", dict(order=3), "logsnr", (16, 32, 64), 3),
    ("vp", "ipndm", dict(order=1, variable_step=True), "logsnr", (16, 32, 64), 1),
    ("vp", "ipndm", dict(order=2, variable_step=True), "logsnr", (32, 64, 128), 2),
    ("vp", "ipndm", dict(order=3, variable_step=True), "logsnr", (32, 64, 128), 3),
    ("vp", "ipndm", dict(order=4, variable_step=True), "logsnr", (64, 128, 256), 4),
    # the constant Adams-Bashforth coefficients are second order on a non-uniform grid
    ("vp", "ipndm", dict(order=1), "logsnr", (16, 32, 64), 1),
    ("vp", "ipndm", dict(order=2), "logsnr", (32, 64, 128), 2),
    ("vp", "ipndm", dict(order=3), "logsnr", (32, 64, 128), 2),
    ("vp", "ipndm", dict(order=4), "logsnr", (32, 64, 128), 2),
    ("vp", "deis", dict(order=1), "logsnr", (16, 32, 64), 1),
    ("vp", "deis", dict(order=2), "logsnr", (32, 64, 128), 2),
    ("vp", "deis", dict(order=3), "logsnr", (32, 64, 128), 3),
    ("ve", "deis", dict(order=3), "quadratic", (32, 64, 128), 3),
    ("vp", "dpm_solver++_2m_sde", dict(eta=0.0), "logsnr", (32, 64, 128), 2),
    ("vp", "dpm_solver++_2m_sde", dict(eta=0.0, solver_type="heun"), "logsnr", (32, 64, 128), 2),
    ("vp", "dpm_solver++_3m_sde", dict(eta=0.0), "logsnr", (64, 128, 256), 3),
]


@pytest.mark.parametrize("sde_name,solver,options,grid,steps,order", ORDER_CASES,
                         ids=[f"{c[0]}-{c[1]}-{'-'.join(f'{k}={v}' for k, v in c[2].items())}"
                              for c in ORDER_CASES])
def test_order_on_the_exact_flow(sde_name, solver, options, grid, steps, order):
    sde, score, x_T, exact = flow_problem(sde_name)
    options = dict(options)
    if solver == "unipc":
        options.setdefault("lower_order_final", False)
    errors = [(skd.sample(sde, score, x_T=x_T, solver=solver, steps=n, time_grid=grid,
                          t_min=T_MIN, **options).x - exact).abs().max().item() for n in steps]
    measured = slope(steps, errors)
    assert errors[-1] < errors[0] and abs(measured - order) <= 0.3, (errors, measured)


def test_declared_orders_are_the_defaults_measured_above():
    """The registry's order is the global order of each sampler's default options."""
    assert get("unipc").order == 4        # order=3: UniP-3 + UniC-3
    assert get("ipndm").order == 4        # order=4 (constant coefficients: 4 on equal sigma steps)
    assert get("deis").order == 3
    for name in ("dpm_solver++_2m_sde", "dpm_solver++_3m_sde"):
        record = get(name)
        assert record.order == 1 and record.stochastic({}) and not record.stochastic({"eta": 0.0})
        assert not record.stochastic({"s_noise": 0.0}) and record.data_prediction
    for name in ("unipc", "ipndm", "deis"):
        assert not get(name).stochastic({}) and get(name).data_prediction
        assert get(name).calls_per_step({}) == 1
    # the flags say what the samplers do: other seeds give other samples only when noise is drawn
    sde, score, x_T, _ = flow_problem("vp")
    for name, options in (("dpm_solver++_2m_sde", {}), ("dpm_solver++_3m_sde", {"noise": "fresh"}),
                          ("dpm_solver++_2m_sde", {"eta": 0.0}),
                          ("dpm_solver++_3m_sde", {"s_noise": 0.0}),
                          ("unipc", {}), ("ipndm", {}), ("deis", {})):
        a, b = (skd.sample(sde, score, x_T=x_T, solver=name, steps=6, seed=seed, **options).x
                for seed in (0, 1))
        assert bool((a != b).any()) is get(name).stochastic(options), (name, options)


def sigma_ve_uniform_grid(sde, steps: int, start: float = 2.0) -> torch.Tensor:
    """Times whose sigma/alpha are equally spaced from ``start`` down to that of T_MIN."""
    end = math.exp(-sde.log_snr(torch.tensor(T_MIN)).item())
    ts = sde.schedule.t_of_log_snr(-torch.log(torch.linspace(start, end, steps + 1)))
    ts[-1] = T_MIN
    return ts


def test_ipndm_constant_coefficients_are_adams_bashforth_on_equal_sigma_steps():
    """On a grid of equal steps in sigma/alpha the constant coefficients equal the variable-step
    ones (the Adams-Bashforth method); on the logsnr grid they differ."""
    sde, score, x_T, _ = flow_problem("vp")
    ts = sigma_ve_uniform_grid(sde, 12)
    for order in (2, 3, 4):
        fixed, variable = (skd.sample(sde, score, x_T=x_T, solver="ipndm", ts=ts, order=order,
                                      variable_step=v).x for v in (False, True))
        assert relative(fixed, variable) < 1e-12, order
    fixed, variable = (skd.sample(sde, score, x_T=x_T, solver="ipndm", steps=12,
                                  time_grid="logsnr", variable_step=v).x for v in (False, True))
    assert relative(fixed, variable) > 1e-3


def test_sde_samplers_with_eta_zero_are_dpm_solver_pp():
    sde, score, x_T, _ = flow_problem("vp")
    ode = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_2m", steps=12, time_grid="logsnr",
                     lower_order_final=False).x
    sde_eta0 = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_2m_sde", steps=12,
                          time_grid="logsnr", eta=0.0).x
    assert relative(sde_eta0, ode) < 1e-12


# -- k-diffusion and diff-sampler, reimplemented line by line ---------------------------------

def ve_problem(sde_name: str = "vp"):
    """(sde, score, ts, sigma/alpha on ts, alpha on ts, denoiser D(i, y), x_T) on a logsnr grid of
    12 steps: k-diffusion's and diff-sampler's variables, y = x/alpha, sigma_ve = e^{-lambda}."""
    sde = SDES[sde_name]()
    score = mixture().score_fn(sde)
    ts = skd.time_grid(sde, 12, "logsnr", t_min=T_MIN)
    alpha, sigma_ve = sde.alpha(ts), torch.exp(-sde.log_snr(ts))
    x_T = sde.prior_std * torch.randn(32, 2, generator=torch.Generator().manual_seed(1))

    def denoise(i, y):
        x = alpha[i] * y
        t = ts[i].expand(x.shape[0])
        return (x + sde.sigma(ts[i]) ** 2 * score(t, x)) / alpha[i]

    return sde, score, ts, sigma_ve, alpha, denoise, x_T


# The peers' code below is copied line for line (long lines kept) so that it can be diffed against
# the original files.

def k_diffusion_dpmpp_sde(denoise, x, sigmas, noise, order, eta=1.0, s_noise=1.0,
                          solver_type="midpoint", d2_factor=1.0):
    """crowsonkb/k-diffusion ``sampling.py``: ``sample_dpmpp_2m_sde`` (order 2) and
    ``sample_dpmpp_3m_sde`` (order 3), ``noise_sampler(sigma, sigma_next)`` replaced by
    ``noise(i)``; ``d2_factor`` multiplies their second difference (1: theirs, 2: the exact
    third-order coefficient sdekit uses)."""
    old_denoised, h_last = None, None
    denoised_1, denoised_2, h_1, h_2 = None, None, None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise(i, x)
        t, s = -sigmas[i].log(), -sigmas[i + 1].log()
        h = s - t
        if order == 2:
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(i) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
            old_denoised, h_last = denoised, h
        else:
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = d2_factor * (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + noise(i) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
            denoised_1, denoised_2 = denoised, denoised_1
            h_1, h_2 = h, h_1
    return x


def path_normals(sde, ts, shape, seed):
    """The documented path noise: (W(t_{i+1}) - W(t_i))/sqrt(t_i - t_{i+1}) of the tree on
    [t_min, t_max] with seed + 2**64 * PATH_SEED_TAG."""
    tree = BrownianTree(sde.t_min, sde.t_max, shape, seed=seed + (PATH_SEED_TAG << 64),
                        dtype=torch.float64)
    return tree.increments(ts)[0] / torch.sqrt(ts[:-1] - ts[1:])[:, None, None]


@pytest.mark.parametrize("solver,options,order", [
    ("dpm_solver++_2m_sde", {}, 2),
    ("dpm_solver++_2m_sde", {"solver_type": "heun", "eta": 0.7, "s_noise": 0.9}, 2),
    ("dpm_solver++_3m_sde", {}, 3),
    ("dpm_solver++_3m_sde", {"eta": 0.5}, 3),
])
@pytest.mark.parametrize("noise", ["path", "fresh"])
def test_sde_samplers_equal_k_diffusion_with_the_same_noise(solver, options, order, noise):
    sde, score, ts, sigma_ve, alpha, denoise, x_T = ve_problem("vp")
    if noise == "path":
        normals = path_normals(sde, ts, tuple(x_T.shape), seed=3)
    else:
        stream = NormalStream(x_T.shape, 3, 0, x_T.dtype, x_T.device)
        normals = torch.stack([stream() for _ in range(len(ts) - 1)])
    ours = skd.sample(sde, score, x_T=x_T, ts=ts, solver=solver, seed=3, noise=noise, **options).x
    peer = alpha[-1] * k_diffusion_dpmpp_sde(denoise, x_T / alpha[0], sigma_ve,
                                             lambda i: normals[i], order,
                                             d2_factor=2.0 if order == 3 else 1.0, **options)
    assert relative(ours, peer) < 1e-10
    if order == 3:   # k-diffusion's own (half) second difference: a visibly different sampler
        theirs = alpha[-1] * k_diffusion_dpmpp_sde(denoise, x_T / alpha[0], sigma_ve,
                                                   lambda i: normals[i], order, **options)
        assert relative(ours, theirs) > 1e-5


def test_k_diffusion_3m_coefficient_is_second_order():
    """With eta = 0, k-diffusion's 3M (half the second divided difference) converges with order 2;
    sdekit's dpm_solver++_3m_sde (the exact coefficient) with order 3 (ORDER_CASES)."""
    sde, score, x_T, exact = flow_problem("vp")
    steps = (32, 64, 128)
    errors = []
    for n in steps:
        ts = skd.time_grid(sde, n, "logsnr", t_min=T_MIN)
        alpha, sigma_ve = sde.alpha(ts), torch.exp(-sde.log_snr(ts))

        def denoise(i, y):
            x = alpha[i] * y
            return (x + sde.sigma(ts[i]) ** 2 * score(ts[i].expand(16), x)) / alpha[i]

        y = k_diffusion_dpmpp_sde(denoise, x_T / alpha[0], sigma_ve, None, 3, eta=0.0)
        errors.append((alpha[-1] * y - exact).abs().max().item())
    assert abs(slope(steps, errors) - 2) <= 0.3, errors


def diff_sampler_multistep(denoise, x, t_steps, max_order, kind, coefficients=None,
                           verbatim=False):
    """zju-pi/diff-sampler ``diff-solvers-main/solvers.py``: ``ipndm_sampler`` (kind "ipndm"),
    ``ipndm_v_sampler`` ("ipndm_v") and ``deis_sampler`` ("deis", ``coeff_list`` given), from
    ``x = latents * t_steps[0]`` (here the VE state itself) on the sigma grid ``t_steps``.

    ``ipndm_v`` orders 3 and 4 as written there compute ``temp = (1 - a * b) / 2`` with
    ``a = h_n / (3 (h_n + h_{n-1}))``, ``b = h_n (h_n + h_{n-1}) / (h_{n-1} (h_{n-1} + h_{n-2}))``,
    where the variable-step Adams-Bashforth coefficient is ``(1 - a) * b / 2`` (misplaced
    parenthesis; the same where ``b = 1``, i.e. on equal steps). ``verbatim=True`` keeps theirs,
    the default the corrected one."""
    buffer_model = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x
        d_cur = (x_cur - denoise(i, x_cur)) / t_cur
        order = min(max_order, i + 1)
        if order == 1:
            x = x_cur + (t_next - t_cur) * d_cur
        elif kind == "deis":
            x = x_cur + coefficients[i][0] * d_cur + sum(coefficients[i][k] * buffer_model[-k]
                                                         for k in range(1, order))
        elif kind == "ipndm":
            if order == 2:
                x = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
            elif order == 3:
                x = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
            else:
                x = x_cur + (t_next - t_cur) * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2] - 9 * buffer_model[-3]) / 24
        else:   # ipndm_v
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            if order == 2:
                coeff1 = (2 + (h_n / h_n_1)) / 2
                coeff2 = -(h_n / h_n_1) / 2
                x = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1])
            elif order == 3:
                h_n_2 = t_steps[i - 1] - t_steps[i - 2]
                temp = ((1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
                        if verbatim else
                        (1 - h_n / (3 * (h_n + h_n_1))) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2)) / 2)
                coeff1 = (2 + (h_n / h_n_1)) / 2 + temp
                coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
                coeff3 = temp * h_n_1 / h_n_2
                x = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1] + coeff3 * buffer_model[-2])
            else:
                h_n_2 = t_steps[i - 1] - t_steps[i - 2]
                h_n_3 = t_steps[i - 2] - t_steps[i - 3]
                temp1 = ((1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
                         if verbatim else
                         (1 - h_n / (3 * (h_n + h_n_1))) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2)) / 2)
                temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))) \
                    * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
                coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
                coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3)))) * temp2
                coeff3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * (1 + h_n_2 / h_n_3)) * temp2
                coeff4 = -temp2 * (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * h_n_1 / h_n_2
                x = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1] + coeff3 * buffer_model[-2] + coeff4 * buffer_model[-3])
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            if max_order > 1:
                buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return x


def diff_sampler_deis_coefficients(t_steps, max_order, beta_0, beta_1, points=20001):
    """diff-sampler ``get_deis_coeff_list(deis_mode="tab")`` on VP times ``t_steps``
    (``t2alpha_fn``, ``cal_intergrand`` by autograd, ``cal_poly``), its 10,000-point Riemann sum (accurate to about
    1e-4) replaced by the trapezoid rule on ``points`` points of the same integrand."""
    def t2alpha_fn(t):
        return torch.exp(-0.5 * t ** 2 * (beta_1 - beta_0) - t * beta_0)

    def cal_intergrand(taus):
        taus = taus.clone().requires_grad_(True)
        alpha = t2alpha_fn(taus)
        alpha.log().sum().backward()
        return (-0.5 * taus.grad / torch.sqrt(alpha * (1 - alpha))).detach()

    def cal_poly(prev_t, j, taus):
        poly = 1
        for k in range(prev_t.shape[0]):
            if k != j:
                poly = poly * (taus - prev_t[k]) / (prev_t[j] - prev_t[k])
        return poly

    C = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        order = min(i + 1, max_order)
        if order == 1:
            C.append([])
            continue
        taus = torch.linspace(float(t_cur), float(t_next), points)
        prev_t = t_steps[[i - k for k in range(order)]]
        integrand = cal_intergrand(taus)
        C.append([torch.trapezoid(integrand * cal_poly(prev_t, j, taus), taus)
                  for j in range(order)])
    return C


@pytest.mark.parametrize("kind,order", [("ipndm", 2), ("ipndm", 3), ("ipndm", 4), ("ipndm_v", 2),
                                        ("ipndm_v", 3), ("deis", 2), ("deis", 3)])
def test_ipndm_and_deis_equal_diff_sampler(kind, order):
    """``ipndm_v`` order 3 with diff-sampler's misplaced parenthesis corrected (see
    ``diff_sampler_multistep``; the next test keeps theirs)."""
    sde, score, ts, sigma_ve, alpha, denoise, x_T = ve_problem("vp")
    options = {"order": order}
    coefficients = None
    if kind == "deis":
        coefficients = diff_sampler_deis_coefficients(ts, order, sde.schedule.beta_min,
                                                      sde.schedule.beta_max)
        solver = "deis"
    else:
        solver = "ipndm"
        options["variable_step"] = kind == "ipndm_v"
    ours = skd.sample(sde, score, x_T=x_T, ts=ts, solver=solver, **options).x
    peer = alpha[-1] * diff_sampler_multistep(denoise, x_T / alpha[0], sigma_ve, order, kind,
                                              coefficients)
    assert relative(ours, peer) < (1e-7 if kind == "deis" else 1e-12)


def test_diff_sampler_ipndm_v_as_written_is_not_variable_step_adams_bashforth():
    """diff-sampler's ``ipndm_v`` as written: order 3 equals the variable-step Adams-Bashforth
    method (ours) only on equal steps; its order-4 coefficients are not Adams-Bashforth's even
    there (57/24 for the current value where AB4 has 55/24), so ``variable_step=True`` of order 4
    equals no diff-sampler formula."""
    sde, score, ts, sigma_ve, alpha, denoise, x_T = ve_problem("vp")
    uniform = sigma_ve_uniform_grid(sde, 12)
    sigma_uniform = torch.exp(-sde.log_snr(uniform))
    alpha_uniform = sde.alpha(uniform)

    def denoise_uniform(i, y):
        x = alpha_uniform[i] * y
        t = uniform[i].expand(x.shape[0])
        return (x + sde.sigma(uniform[i]) ** 2 * score(t, x)) / alpha_uniform[i]

    def gap(grid, sigmas, alphas, denoiser, order):
        ours = skd.sample(sde, score, x_T=x_T, ts=grid, solver="ipndm", order=order,
                          variable_step=True).x
        theirs = alphas[-1] * diff_sampler_multistep(denoiser, x_T / alphas[0], sigmas, order,
                                                     "ipndm_v", verbatim=True)
        return relative(ours, theirs)

    assert gap(ts, sigma_ve, alpha, denoise, 3) > 1e-3
    assert gap(uniform, sigma_uniform, alpha_uniform, denoise_uniform, 3) < 1e-12
    assert gap(uniform, sigma_uniform, alpha_uniform, denoise_uniform, 4) > 1e-4


# -- diffusers ---------------------------------------------------------------------------------

# diffusers' own numpy-2 deprecation (np.array(tensor, copy=False) in set_timesteps)
DIFFUSERS_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def diffusers_problem(scheduler):
    """(sde, score, eps-model, x_T) for a diffusers scheduler's discrete schedule: timestep n at
    t = (n + 1)/N, eps(x, n) = -sigma(t) score(t, x)."""
    sde = skd.DiffusionSDE.from_alphas_cumprod(scheduler.alphas_cumprod)
    score = mixture().score_fn(sde)

    def eps_model(x, n):
        t = sde.schedule.timestep_time(n).reshape(1).expand(x.shape[0]).to(x.dtype)
        return -(sde.schedule.sigma(t)[:, None] * score(t, x))

    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    return sde, score, eps_model, x_T


def diffusers_grid(sde, scheduler) -> torch.Tensor:
    """The scheduler's timesteps as times, then timestep 0 (final_sigmas_type="sigma_min")."""
    return torch.cat([sde.schedule.timestep_time(scheduler.timesteps),
                      sde.schedule.timestep_time(torch.tensor([0]))])


UNIPC_PEER_CASES = [(order, variant, prediction, steps, lower_final)
                    for order in (1, 2, 3) for variant in ("bh1", "bh2")
                    for prediction in ("data", "noise")
                    for steps, lower_final in ((8, True), (20, False))]
UNIPC_PEER_CASES.append((3, "bh2", "data", 20, True))   # diffusers lowers the order at any count


@DIFFUSERS_WARNING
@pytest.mark.parametrize("order,variant,prediction,steps,lower_final", UNIPC_PEER_CASES)
def test_unipc_equals_diffusers(order, variant, prediction, steps, lower_final):
    """diffusers' UniPCMultistepScheduler, its sigmas in float64 (it fails with float32 sigmas
    under a float64 default dtype, and runs in float64 with float64 ones): equal to rounding."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(
        solver_order=order, solver_type=variant, predict_x0=prediction == "data",
        lower_order_final=lower_final, final_sigmas_type="sigma_min")
    scheduler.set_timesteps(steps)
    sde, score, eps_model, x_T = diffusers_problem(scheduler)
    ts = diffusers_grid(sde, scheduler)
    scheduler.sigmas = torch.exp(-sde.schedule.log_snr(ts))      # sigma/alpha, in float64
    x = x_T
    for n in scheduler.timesteps:
        x = scheduler.step(eps_model(x, n), n, x).prev_sample
    ours = skd.sample(sde, score, x_T=x_T, ts=ts, solver="unipc", order=order, variant=variant,
                      prediction=prediction, lower_order_final=lower_final).x
    assert x.dtype == torch.float64 and relative(ours, x) < 1e-12


@DIFFUSERS_WARNING
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("steps,lower_final", [(20, True), (8, False)])
def test_dpm_solver_pp_2m_sde_equals_diffusers(solver_type, steps, lower_final):
    """diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)
    fed our fresh normals as ``variance_noise``; it computes in float32 whatever the input
    (``sample.to(torch.float32)`` and float32 sigmas), so equality is to float32 resolution."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="sde-dpmsolver++", solver_order=2, solver_type=solver_type,
        lower_order_final=lower_final, final_sigmas_type="sigma_min")
    scheduler.set_timesteps(steps)
    sde, score, eps_model, x_T = diffusers_problem(scheduler)
    stream = NormalStream(x_T.shape, 5, 0, x_T.dtype, x_T.device)
    x = x_T
    for n in scheduler.timesteps:
        x = scheduler.step(eps_model(x, n), n, x, variance_noise=stream()).prev_sample
    ours = skd.sample(sde, score, x_T=x_T, ts=diffusers_grid(sde, scheduler),
                      solver="dpm_solver++_2m_sde", solver_type=solver_type, noise="fresh",
                      seed=5).x
    assert relative(ours, x) < 2e-6


@DIFFUSERS_WARNING
def test_unipc_final_step_zero_equals_diffusers():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=3, final_sigmas_type="zero")
    scheduler.set_timesteps(10)
    sde, score, eps_model, x_T = diffusers_problem(scheduler)
    ts = diffusers_grid(sde, scheduler)
    sigmas = torch.exp(-sde.schedule.log_snr(ts))
    sigmas[-1] = 0.0
    scheduler.sigmas = sigmas
    x = x_T
    for n in scheduler.timesteps:
        x = scheduler.step(eps_model(x, n), n, x).prev_sample
    ours = skd.sample(sde, score, x_T=x_T, ts=ts, solver="unipc", final_step="zero")
    assert relative(ours.x, x) < 1e-12 and ours.nfe == 10


# -- final_step="zero" -------------------------------------------------------------------------

@pytest.mark.parametrize("solver,options", [
    ("unipc", {"lower_order_final": False}),
    ("unipc", {"prediction": "noise", "lower_order_final": False}),
    ("ipndm", {}), ("deis", {}), ("dpm_solver++_2m_sde", {}),
    ("dpm_solver++_3m_sde", {"noise": "fresh"}),
])
def test_final_step_zero_is_the_data_prediction_at_the_last_grid_point(solver, options):
    """To sigma = 0 the last step is x = x0_hat(t_{N-1}, x) at the state the model saw there: the
    end state of the same sampler on the grid without its last time (UniPC: its predictor, as
    that run's last step has no corrector)."""
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    ts = skd.time_grid(sde, 10, "logsnr")
    x_T = sde.prior_std * torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    zero = skd.sample(sde, score, x_T=x_T, ts=ts, solver=solver, final_step="zero", seed=4,
                      **options)
    before = skd.sample(sde, score, x_T=x_T, ts=ts[:-1], solver=solver, seed=4, **options).x
    t = ts[-2].expand(8)
    expected = before + sde.sigma(ts[-2]) ** 2 * score(t, before)    # alpha(t_{N-1}) x0_hat
    assert torch.allclose(zero.x, expected / sde.alpha(ts[-2]), rtol=1e-10, atol=1e-10)
    assert zero.nfe == 10


# -- laws of the SDE samplers ------------------------------------------------------------------

def mixture_moments(sde, t: float):
    """Exact mean and covariance of p_t for MIXTURE data."""
    t = torch.tensor(t)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    weights, means = torch.tensor(MIXTURE["weights"]), alpha * torch.tensor(MIXTURE["means"])
    variances = alpha ** 2 * torch.tensor(MIXTURE["stds"]) ** 2 + sigma ** 2
    mean = (weights[:, None] * means).sum(0)
    second = sum(w * (v * torch.eye(2) + torch.outer(m, m))
                 for w, m, v in zip(weights, means, variances))
    return mean, second - torch.outer(mean, mean)


@pytest.mark.parametrize("sde_name,solver,options", [
    ("vp", "dpm_solver++_2m_sde", {}),
    ("ve", "dpm_solver++_2m_sde", {"solver_type": "heun", "noise": "fresh"}),
    ("vp", "dpm_solver++_3m_sde", {"eta": 0.5, "noise": "fresh"}),
    ("ve", "dpm_solver++_3m_sde", {}),
])
def test_sde_sampler_law_matches_the_exact_mixture(sde_name, solver, options):
    """Mean and covariance at t_min of 2000 samples (100 logsnr steps) within 4 Monte-Carlo
    standard errors of the exact marginal (the discretisation bias is below 1 standard error
    there, measured at 40,000 samples)."""
    sde = SDES[sde_name]()
    n = 2000
    x = skd.sample(sde, mixture().score_fn(sde), (n, 2), solver=solver, steps=100,
                   time_grid="logsnr", seed=11, **options).x
    mean, covariance = mixture_moments(sde, sde.t_min)
    centred = x - x.mean(0)
    products = (centred[:, :, None] * centred[:, None, :]).reshape(n, 4)
    z_mean = (x.mean(0) - mean) / (x.std(0) / math.sqrt(n))
    z_cov = (torch.cov(x.T).reshape(4) - covariance.reshape(4)) / (products.std(0) / math.sqrt(n))
    assert z_mean.abs().max() < 4 and z_cov.abs().max() < 4, (z_mean, z_cov)


@pytest.mark.parametrize("solver", ["dpm_solver++_2m_sde", "dpm_solver++_3m_sde"])
def test_brownian_path_gives_nearly_the_same_sample_at_20_and_40_steps(solver):
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    x_T = sde.prior_sample((100, 2), generator=torch.Generator().manual_seed(0))

    def run(steps, seed, noise):
        return skd.sample(sde, score, x_T=x_T, solver=solver, steps=steps, time_grid="logsnr",
                          seed=seed, noise=noise).x

    path_20 = run(20, 7, "path")
    other_seed = relative(run(20, 8, "path"), path_20)
    assert relative(run(40, 7, "path"), path_20) < 0.2 * other_seed      # measured 0.11 vs 1.25
    assert relative(run(40, 7, "fresh"), run(20, 7, "fresh")) > 0.5 * other_seed


# -- errors ------------------------------------------------------------------------------------

def test_bad_options_are_refused_clearly():
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    cases = [
        ("unipc", dict(order=4), ValueError, "order must be an int in 1..3"),
        ("unipc", dict(order=1, steps=2), ValueError, "'unipc' needs an integer steps >= 3"),
        ("unipc", dict(variant="bh3"), ValueError, "variant"),
        ("unipc", dict(prediction="v"), ValueError, "prediction"),
        ("unipc", dict(lower_order_final="sometimes"), ValueError, "lower_order_final"),
        ("ipndm", dict(order=5), ValueError, "1..4"),
        ("ipndm", dict(steps=3), ValueError, "steps >= 4"),
        ("ipndm", dict(variable_step="yes"), ValueError, "variable_step"),
        ("deis", dict(order=0), ValueError, "1..3"),
        ("deis", dict(order=2.0), ValueError, "order must be an int"),
        ("dpm_solver++_2m_sde", dict(eta=-1.0), ValueError, "eta"),
        ("dpm_solver++_2m_sde", dict(s_noise=float("nan")), ValueError, "s_noise"),
        ("dpm_solver++_2m_sde", dict(noise="brownian"), ValueError, "noise"),
        ("dpm_solver++_2m_sde", dict(solver_type="euler"), ValueError, "solver_type"),
        ("dpm_solver++_3m_sde", dict(solver_type="heun"), TypeError,
         "unknown option 'solver_type'"),
        ("dpm_solver++_3m_sde", dict(steps=2), ValueError, "steps >= 3"),
    ]
    for solver, options, error, match in cases:
        steps = options.pop("steps", 6)
        with pytest.raises(error, match=match):
            skd.sample(sde, score, (2, 2), solver=solver, steps=steps, **options)
