r"""Few-step sampling: error vs NFE of every deterministic sampler of ``skd.sample``, side by side
with k-diffusion's and diffusers' samplers, all driven by the same exact score.

Problem: a Gaussian mixture (``--dim``, ``--components``; seeded) through the VP SDE (beta 0.1..20,
``t`` from 1 to 1e-3), whose score is exact (:class:`sdekit_diffusion.GaussianMixture`). Every
method starts from the same prior draws ``x_T`` and stops at ``t_min``; the error of a method is the
mean over samples of the L2 distance between its ``x(t_min)`` and the reference: the
probability-flow ODE solved by sdekit's ``dopri5`` at ``rtol = atol = 1e-10`` from the same ``x_T``.
NFE counts the calls of the score (or of the denoiser / eps-model built on it) for every method.
For a budget ``B`` each method takes the largest number of steps whose NFE is ``<= B`` (RK4 at
``B = 5`` takes one step: 4 NFE); the NFE actually used is shown when it differs from ``B``.

sdekit: every name of ``sdekit_diffusion.samplers.available()`` that is deterministic (the plugin's
samplers with ``stochastic=False`` and the core's fixed-step ODE solvers on the probability-flow
ODE) on every time grid of ``skd.GRIDS``.

Peers (optional, in their own virtual environment, e.g.
``python3 -m venv /work/peers-venv && /work/peers-venv/bin/pip install -e . "setuptools<81"
k-diffusion==0.1.1.post1 diffusers matplotlib``; k-diffusion 0.1.1.post1 imports ``clip``, which
needs ``pkg_resources`` from ``setuptools<81``, and pulls torchvision and a CUDA torch 2.14.1 —
the full install was used, nothing patched). A missing peer's rows are skipped with a note.

- k-diffusion works in the VE form :math:`y = x/\alpha`, :math:`\sigma_{ve} = \sigma/\alpha =
  e^{-\lambda}` with a denoiser :math:`D(y, \sigma_{ve}) = \hat x_0 = (x + \sigma^2 s(t, x))/\alpha`
  at the :math:`t` with :math:`\lambda(t) = -\log\sigma_{ve}`. Its sigma lists
  (``get_sigmas_karras`` / ``get_sigmas_exponential`` between :math:`\sigma_{ve}(t_{min})` and
  :math:`\sigma_{ve}(t_{max})`, float64) drop the trailing 0 so they stop at ``t_min``; without
  that 0 Heun and DPM-2 take two evaluations on every step.
- diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M/3M) and
  ``UniPCMultistepScheduler`` (bh2) get ``trained_betas`` whose ``alphas_cumprod`` equal
  :math:`1/(1 + \sigma_{ve}(t_i)^2)` on 1000 uniform times of ``[t_min, t_max]``, epsilon
  prediction :math:`\epsilon = -\sigma s`, ``final_sigmas_type="sigma_min"`` and the default
  ``timestep_spacing="linspace"`` (a uniform time grid); the eps model reads the noise level from
  the scheduler's own ``sigmas[step_index]``. diffusers keeps ``alphas_cumprod`` in float32, so its
  first and last noise levels differ from ``t_max``/``t_min`` by ~1e-7 relative: its reference is
  the same ODE solved between its own end points (same ``y_T = x_T/\alpha(t_max)``). UniPC runs in
  float32 (it fails under a float64 default dtype), so it floors near 1e-6.

Also, when ``adaptive_sde`` exists: the adaptive reverse-SDE sampler (Jolicoeur-Martineau et al.
2021) against Euler–Maruyama on the reverse SDE, distribution error = ``|mean - m| + |cov - C|_F``
of the samples against the exact moments of :math:`p_{t_{min}}` (and a sliced Wasserstein distance
to exact samples), with the EM NFE that reaches the same moment error (log-log interpolation).

    python benchmarks/few_step.py [--dim 8] [--components 4] [--batch 512] [--budgets 5,10,20,50]
                                  [--methods ...] [--grids ...] [--no-peers] [--no-adaptive]
                                  [--json out.json] [--plot out.png]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion import samplers

REFERENCE_TOLERANCE = 1e-10   # dopri5 rtol = atol of the reference probability-flow solves
TRAIN_TIMESTEPS = 1000        # diffusers' discrete schedule (DDPM's N = 1000)


# ----------------------------------------------------------------------------------------------
# problem

def make_problem(dim: int, components: int, seed: int):
    """A VP SDE and a seeded isotropic mixture in ``dim`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(components, dim, generator=g, dtype=torch.float64)
    stds = 0.3 + 0.3 * torch.rand(components, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return skd.VPSDE(), skd.GaussianMixture(weights, means, stds)


class Counted:
    """Wraps a function and counts its calls (one call = one network evaluation)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def deterministic_samplers() -> list[str]:
    """The fixed-grid samplers that draw no noise with their default options (the registry's
    records): plugin samplers and the core's ODE solvers (run on the probability-flow ODE)."""
    return [record.name for record in samplers.records()
            if not record.stochastic({}) and not record.adaptive]


def fit_budget(run, budget: int, min_steps: int = 1):
    """``run(steps) -> (x, nfe)`` at the largest ``steps`` whose NFE is ``<= budget``; ``None`` when
    even ``min_steps`` costs more."""
    steps = budget
    while steps >= min_steps:
        x, nfe = run(steps)
        if nfe <= budget:
            return x, nfe, steps
        per_step = nfe / steps
        steps = min(steps - 1, int(math.floor(budget / per_step)))
    return None


class Reference:
    """The probability-flow ODE by dopri5 at 1e-10 from ``alpha(t0) y_T`` at ``t0`` to ``t1``."""

    def __init__(self, sde, score_fn, y_T):
        self.sde, self.flow, self.y_T, self.cache = sde, sde.probability_flow(score_fn), y_T, {}
        self.nfe = 0

    def __call__(self, t0: float, t1: float) -> torch.Tensor:
        key = (round(t0, 14), round(t1, 14))
        if key not in self.cache:
            x0 = self.sde.alpha(torch.tensor(t0)) * self.y_T
            solution = sdekit.solve(self.flow, x0, t0, t1, solver="dopri5", rtol=REFERENCE_TOLERANCE,
                                    atol=REFERENCE_TOLERANCE, max_steps=200_000)
            self.cache[key] = solution.x
            self.nfe += solution.nfe
        return self.cache[key]


def l2_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - reference).flatten(1).norm(dim=1).mean())


# ----------------------------------------------------------------------------------------------
# sdekit

def run_sdekit(sde, score_fn, x_T, name: str, grid: str, budget: int):
    minimum = samplers.get(name).min_steps

    def run(steps):
        counted = Counted(score_fn)
        solution = skd.sample(sde, counted, x_T=x_T, solver=name, steps=steps, time_grid=grid,
                              seed=0)
        assert solution.nfe == counted.calls, (name, solution.nfe, counted.calls)
        return solution.x, counted.calls

    return fit_budget(run, budget, minimum)


# ----------------------------------------------------------------------------------------------
# k-diffusion (VE form)

def _sigma_ve(sde, t: float) -> float:
    t = torch.tensor(t, dtype=torch.float64)
    return float(sde.sigma(t) / sde.alpha(t))


def _time_of_sigma_ve(sde, sigma_ve: torch.Tensor) -> torch.Tensor:
    """``t`` with ``lambda(t) = -log sigma_ve``, clamped to ``[t_min, t_max]``."""
    ends = sde.log_snr(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))
    lam = (-torch.log(sigma_ve.double())).clamp(float(ends[0]), float(ends[1]))
    return sde.inverse_log_snr(lam)


def kdiffusion_denoiser(sde, score_fn):
    r""":math:`D(y, \sigma_{ve}) = (x + \sigma^2 s(t, x))/\alpha` with :math:`x = \alpha y`."""
    def denoiser(y, sigma_ve, **_):
        sigma_ve = torch.as_tensor(sigma_ve, dtype=torch.float64).expand(y.shape[0])
        t = _time_of_sigma_ve(sde, sigma_ve)
        alpha = sde.alpha(t).reshape(-1, *([1] * (y.dim() - 1))).to(y.dtype)
        sigma = sde.sigma(t).reshape(-1, *([1] * (y.dim() - 1))).to(y.dtype)
        x = alpha * y
        return (x + sigma ** 2 * score_fn(t.to(y.dtype), x)) / alpha
    return denoiser


KDIFFUSION = [("sample_euler", ("karras", "exponential")), ("sample_heun", ("karras", "exponential")),
              ("sample_dpm_2", ("karras", "exponential")), ("sample_lms", ("karras", "exponential")),
              ("sample_dpmpp_2m", ("karras", "exponential"))]


def kdiffusion_rows(sde, score_fn, x_T, budgets, reference, notes):
    try:
        from k_diffusion import sampling as K
    except Exception as error:   # noqa: BLE001 - any import failure means "peer missing"
        notes.append(f"k-diffusion skipped: {type(error).__name__}: {error}")
        return []
    s_min, s_max = _sigma_ve(sde, sde.t_min), _sigma_ve(sde, sde.t_max)
    alpha_T = sde.alpha(torch.tensor(sde.t_max))
    alpha_0 = sde.alpha(torch.tensor(sde.t_min))
    y_T = x_T / alpha_T
    target = reference(sde.t_max, sde.t_min)
    rows = []
    for sampler_name, schedules in KDIFFUSION:
        sampler = getattr(K, sampler_name)
        for schedule in schedules:
            def sigmas(steps):   # steps + 1 noise levels, trailing 0 dropped
                if schedule == "karras":
                    return K.get_sigmas_karras(steps + 1, s_min, s_max, device="cpu")[:-1].double()
                return K.get_sigmas_exponential(steps + 1, s_min, s_max, device="cpu")[:-1].double()

            def run(steps):
                model = Counted(kdiffusion_denoiser(sde, score_fn))
                levels = sigmas(steps)
                y = sampler(model, y_T.clone(), levels, disable=True)
                return alpha_0 * y, model.calls

            row = {"method": f"k-diffusion {sampler_name[7:]} ({schedule})", "library": "k-diffusion",
                   "errors": {}, "nfe": {}}
            for budget in budgets:
                fitted = fit_budget(run, budget)
                if fitted is not None:
                    row["errors"][budget] = l2_error(fitted[0], target)
                    row["nfe"][budget] = fitted[1]
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# diffusers (VP form, discrete schedule matched to the continuous one)

def _trained_betas(sde):
    t = torch.linspace(sde.t_min, sde.t_max, TRAIN_TIMESTEPS, dtype=torch.float64)
    sigma_ve = sde.sigma(t) / sde.alpha(t)
    alphas_cumprod = 1.0 / (1.0 + sigma_ve ** 2)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1.0 - alphas_cumprod / previous).numpy()


DIFFUSERS = [("DPMSolverMultistep 2M", "DPMSolverMultistepScheduler", dict(solver_order=2), torch.float64),
             ("DPMSolverMultistep 3M", "DPMSolverMultistepScheduler", dict(solver_order=3), torch.float64),
             ("DPMSolverMultistep 2M karras", "DPMSolverMultistepScheduler",
              dict(solver_order=2, use_karras_sigmas=True), torch.float64),
             ("UniPCMultistep bh2", "UniPCMultistepScheduler", dict(solver_order=2), torch.float32),
             ("UniPCMultistep bh2 order 3", "UniPCMultistepScheduler", dict(solver_order=3), torch.float32)]


def diffusers_rows(sde, score_fn, x_T, budgets, reference, notes):
    try:
        import diffusers
    except Exception as error:   # noqa: BLE001
        notes.append(f"diffusers skipped: {type(error).__name__}: {error}")
        return []
    betas = _trained_betas(sde)
    y_T = x_T / sde.alpha(torch.tensor(sde.t_max))
    rows = []
    for label, class_name, options, dtype in DIFFUSERS:
        row = {"method": f"diffusers {label}", "library": "diffusers", "errors": {}, "nfe": {}}
        previous_dtype = torch.get_default_dtype()
        try:
            torch.set_default_dtype(dtype)
            scheduler = getattr(diffusers, class_name)(
                num_train_timesteps=TRAIN_TIMESTEPS, trained_betas=betas, prediction_type="epsilon",
                final_sigmas_type="sigma_min", **options)
            for budget in budgets:
                scheduler.set_timesteps(budget)
                sigmas = scheduler.sigmas.double()
                t_start = float(_time_of_sigma_ve(sde, sigmas[:1]))
                t_end = float(_time_of_sigma_ve(sde, sigmas[-1:]))

                def eps_model(x_vp, _timestep):
                    index = scheduler.step_index or 0
                    sigma_ve = scheduler.sigmas[index].double().expand(x_vp.shape[0])
                    t = _time_of_sigma_ve(sde, sigma_ve)
                    y = x_vp.double() * torch.sqrt(1 + sigma_ve[:, None] ** 2)
                    x = sde.alpha(t)[:, None] * y
                    return (-sde.sigma(t)[:, None] * score_fn(t, x)).to(dtype)

                model = Counted(eps_model)
                x = (y_T / torch.sqrt(1 + sigmas[0] ** 2)).to(dtype)
                for timestep in scheduler.timesteps:
                    x = scheduler.step(model(x, timestep), timestep, x).prev_sample
                y_end = x.double() * torch.sqrt(1 + sigmas[-1] ** 2)
                x_end = sde.alpha(torch.tensor(t_end)) * y_end
                row["errors"][budget] = l2_error(x_end, reference(t_start, t_end))
                row["nfe"][budget] = model.calls
        except Exception as error:   # noqa: BLE001 - report a failing peer configuration, go on
            notes.append(f"diffusers {label} failed: {type(error).__name__}: {error}")
        finally:
            torch.set_default_dtype(previous_dtype)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# adaptive SDE vs Euler-Maruyama

def exact_moments(sde, mixture, t: float):
    tt = torch.tensor(t, dtype=torch.float64)
    alpha, sigma = float(sde.alpha(tt)), float(sde.sigma(tt))
    w, mu, s = mixture.weights, mixture.means, mixture.stds
    mean = alpha * (w[:, None] * mu).sum(0)
    var = alpha ** 2 * s ** 2 + sigma ** 2
    second = (w[:, None, None] * (alpha ** 2 * mu[:, :, None] * mu[:, None, :]
                                  + var[:, None, None] * torch.eye(mu.shape[1]))).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


def moment_error(x, mean, cov) -> float:
    x = x.double()
    return float((x.mean(0) - mean).norm() + (torch.cov(x.T) - cov).norm())


def sliced_wasserstein(x, y, n_projections: int = 64, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    px, _ = (x.double() @ directions).sort(0)
    py, _ = (y.double() @ directions).sort(0)
    return float((px - py).abs().mean())


def adaptive_vs_em(sde, mixture, score_fn, n: int, em_steps, tolerances, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    x_T = sde.prior_sample((n, mixture.size), generator=g, dtype=torch.float64)
    mean, cov = exact_moments(sde, mixture, sde.t_min)
    tt = torch.tensor(sde.t_min)
    exact = (sde.alpha(tt) * mixture.sample(n, g)
             + sde.sigma(tt) * torch.randn(n, mixture.size, generator=g, dtype=torch.float64))
    floor = moment_error(exact, mean, cov)
    exact_again = (sde.alpha(tt) * mixture.sample(n, g)
                   + sde.sigma(tt) * torch.randn(n, mixture.size, generator=g, dtype=torch.float64))
    sliced_floor = sliced_wasserstein(exact_again, exact)

    def measure(solver, **options):
        counted = Counted(score_fn)
        solution = skd.sample(sde, counted, x_T=x_T, solver=solver, seed=seed, **options)
        return {"nfe": counted.calls, "moment_error": moment_error(solution.x, mean, cov),
                "sliced_w": sliced_wasserstein(solution.x, exact)}

    em = [dict(steps=steps, **measure("euler_maruyama", steps=steps)) for steps in em_steps]
    adaptive = [dict(rel_tol=tol, **measure("adaptive_sde", rtol=tol)) for tol in tolerances]
    # the EM NFE reaching each adaptive error: log-log interpolation of EM's error vs NFE
    em_sorted = sorted(em, key=lambda r: r["nfe"])
    for row in adaptive:
        row["em_nfe_same_error"] = None
        for a, b in zip(em_sorted, em_sorted[1:]):
            ea, eb = a["moment_error"], b["moment_error"]
            if min(ea, eb) <= row["moment_error"] <= max(ea, eb) and ea != eb:
                w = (math.log(row["moment_error"]) - math.log(ea)) / (math.log(eb) - math.log(ea))
                row["em_nfe_same_error"] = math.exp(math.log(a["nfe"]) + w * (math.log(b["nfe"])
                                                                             - math.log(a["nfe"])))
                break
        row["nfe_ratio"] = (row["em_nfe_same_error"] / row["nfe"]
                            if row["em_nfe_same_error"] else None)
    return {"n_samples": n, "noise_floor": floor, "sliced_w_noise_floor": sliced_floor,
            "euler_maruyama": em, "adaptive_sde": adaptive}


# ----------------------------------------------------------------------------------------------
# report

def best_per_budget(rows, budgets):
    best = {}
    for budget in budgets:
        entry = {}
        for side, test in (("sdekit", lambda r: r["library"] == "sdekit"),
                           ("peer", lambda r: r["library"] != "sdekit")):
            candidates = [(r["errors"][budget], r["method"]) for r in rows
                          if test(r) and budget in r["errors"]]
            entry[side] = ({"method": min(candidates)[1], "error": min(candidates)[0]}
                           if candidates else None)
        entry["peer_over_sdekit"] = (entry["peer"]["error"] / entry["sdekit"]["error"]
                                     if entry["peer"] and entry["sdekit"] else None)
        best[budget] = entry
    return best


def format_table(rows, budgets, best) -> str:
    width = max(len(r["method"]) for r in rows) + 2
    lines = ["method".ljust(width) + "".join(f"NFE {b}".rjust(16) for b in budgets)]
    for row in rows:
        cells = []
        for budget in budgets:
            if budget not in row["errors"]:
                cells.append("-".rjust(16))
                continue
            mark = ""
            for side in ("sdekit", "peer"):
                if best[budget][side] and best[budget][side]["method"] == row["method"]:
                    mark = "*"
            nfe = row["nfe"][budget]
            text = f"{row['errors'][budget]:.2e}" + (f"({nfe})" if nfe != budget else "") + mark
            cells.append(text.rjust(16))
        lines.append(row["method"].ljust(width) + "".join(cells))
    lines.append("")
    lines.append("* best sdekit and best peer per NFE budget; (n): NFE actually used when below the budget")
    for budget in budgets:
        b = best[budget]
        s = f"{b['sdekit']['method']} {b['sdekit']['error']:.2e}" if b["sdekit"] else "-"
        p = f"{b['peer']['method']} {b['peer']['error']:.2e}" if b["peer"] else "-"
        ratio = f"{b['peer_over_sdekit']:.2f}" if b["peer_over_sdekit"] else "-"
        lines.append(f"NFE {budget}: best sdekit {s} | best peer {p} | peer/sdekit error {ratio}")
    return "\n".join(lines)


def _best_grid_rows(rows):
    """Per sdekit sampler, the grid with the smallest geometric-mean error; every peer row."""
    def score(row):
        errors = list(row["errors"].values())
        return sum(math.log(e) for e in errors) / len(errors) if errors else math.inf
    best = {}
    for row in rows:
        if row["library"] == "sdekit":
            key = row["sampler"]
            if key not in best or score(row) < score(best[key]):
                best[key] = row
    return list(best.values()) + [row for row in rows if row["library"] != "sdekit"]


def plot(rows, path: str):
    """Error vs NFE, log-log: each sdekit sampler on its best grid (solid), the peers (dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 6))
    for row in _best_grid_rows(rows):
        budgets = sorted(row["errors"])
        if not budgets:
            continue
        style = "-" if row["library"] == "sdekit" else "--"
        ax.loglog([row["nfe"][b] for b in budgets], [row["errors"][b] for b in budgets], style,
                  marker="o", markersize=3, label=row["method"], linewidth=1)
    ax.set_xlabel("NFE")
    ax.set_ylabel("mean L2 error vs dopri5 reference")
    ax.set_title("few-step sampling: sdekit (solid, best time grid per sampler) vs peers (dashed)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--components", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512, help="samples (prior draws x_T)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", default="5,10,20,50", help="comma-separated NFE budgets")
    parser.add_argument("--methods", default=None, help="comma-separated sdekit samplers (default: all "
                        "deterministic ones)")
    parser.add_argument("--grids", default=",".join(skd.GRIDS), help="comma-separated time grids")
    parser.add_argument("--no-peers", action="store_true", help="skip k-diffusion and diffusers")
    parser.add_argument("--no-adaptive", action="store_true", help="skip adaptive_sde vs Euler-Maruyama")
    parser.add_argument("--adaptive-samples", type=int, default=4096)
    parser.add_argument("--em-steps", default="20,50,100,200,500,1000")
    parser.add_argument("--rel-tols", default="0.2,0.1,0.05,0.02,0.01")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write error vs NFE (log-log)")
    args = parser.parse_args(argv)

    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _run(args)
    finally:
        torch.set_default_dtype(previous_dtype)


def _run(args) -> dict:
    start = time.perf_counter()
    budgets = [int(b) for b in args.budgets.split(",")]
    sde, mixture = make_problem(args.dim, args.components, args.seed)
    score_fn = mixture.score_fn(sde)
    x_T = sde.prior_sample((args.batch, args.dim), generator=torch.Generator().manual_seed(args.seed),
                           dtype=torch.float64)
    reference = Reference(sde, score_fn, x_T / sde.alpha(torch.tensor(sde.t_max)))
    target = reference(sde.t_max, sde.t_min)
    notes = []
    all_deterministic = deterministic_samplers()
    methods = all_deterministic if args.methods is None else args.methods.split(",")
    unknown = sorted(set(methods) - set(all_deterministic))
    if unknown:
        raise SystemExit(f"not deterministic samplers of skd.sample: {unknown}; valid: {all_deterministic}")
    grids = args.grids.split(",")

    rows = []
    for name in methods:
        for grid in grids:
            row = {"method": f"sdekit {name} ({grid})", "library": "sdekit", "sampler": name,
                   "grid": grid, "errors": {}, "nfe": {}}
            for budget in budgets:
                fitted = run_sdekit(sde, score_fn, x_T, name, grid, budget)
                if fitted is not None:
                    row["errors"][budget] = l2_error(fitted[0], target)
                    row["nfe"][budget] = fitted[1]
            rows.append(row)
    if args.no_peers:
        notes.append("peers skipped (--no-peers)")
    else:
        rows += kdiffusion_rows(sde, score_fn, x_T, budgets, reference, notes)
        rows += diffusers_rows(sde, score_fn, x_T, budgets, reference, notes)
    best = best_per_budget(rows, budgets)

    adaptive = None
    if not args.no_adaptive:
        if "adaptive_sde" in samplers.available():
            adaptive = adaptive_vs_em(sde, mixture, score_fn, args.adaptive_samples,
                                      [int(s) for s in args.em_steps.split(",")],
                                      [float(t) for t in args.rel_tols.split(",")], args.seed)
        else:
            notes.append("adaptive_sde is not a sampler of skd.sample: comparison skipped")

    print(f"few-step sampling, {args.dim}-d mixture of {args.components} Gaussians, VP SDE, "
          f"{args.batch} samples; error = mean L2 distance to dopri5 (rtol=atol={REFERENCE_TOLERANCE:g})")
    print(format_table(rows, budgets, best))
    for note in notes:
        print("note:", note)
    if adaptive is not None:
        print(f"\nadaptive_sde vs Euler-Maruyama, {adaptive['n_samples']} samples; moment error "
              f"|mean-m|+|cov-C|_F vs exact p_t_min (noise floor of exact samples "
              f"{adaptive['noise_floor']:.2e}; SW between two exact sample sets "
              f"{adaptive['sliced_w_noise_floor']:.2e})")
        for r in adaptive["euler_maruyama"]:
            print(f"  euler_maruyama steps={r['steps']:5d}  NFE={r['nfe']:6d}  moment={r['moment_error']:.3e}"
                  f"  SW={r['sliced_w']:.3e}")
        for r in adaptive["adaptive_sde"]:
            em_nfe = f"{r['em_nfe_same_error']:.0f}" if r["em_nfe_same_error"] else "n/a"
            ratio = f"{r['nfe_ratio']:.2f}x" if r["nfe_ratio"] else "n/a"
            print(f"  adaptive_sde rel_tol={r['rel_tol']:<5g} NFE={r['nfe']:6d}  moment={r['moment_error']:.3e}"
                  f"  SW={r['sliced_w']:.3e}  EM NFE for same error={em_nfe} ({ratio})")
    elapsed = time.perf_counter() - start
    print(f"\n{elapsed:.1f} s (reference NFE {reference.nfe})")

    result = {"config": {"dim": args.dim, "components": args.components, "batch": args.batch,
                         "seed": args.seed, "sde": repr(sde),
                         "reference": f"dopri5 rtol=atol={REFERENCE_TOLERANCE:g}"},
              "budgets": budgets, "rows": rows, "best": best, "notes": notes,
              "adaptive_sde": adaptive, "seconds": elapsed}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return result


if __name__ == "__main__":
    main()
