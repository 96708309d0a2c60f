r"""Few-step sampling: error vs NFE of every deterministic sampler of ``skd.sample`` on every time grid
(and on a grid from ``skd.optimize_time_grid``, when the library has it), beside diffusers' and
k-diffusion's samplers (``benchmarks/peers.py``) in the same run, on two problems:

- ``mixture``: an 8-d mixture of 4 Gaussians (seeded; ``--dim``, ``--components``) through
  ``skd.VPSDE()`` (beta 0.1..20, ``t`` from 1 to 1e-3) with its exact score
  (:class:`sdekit_diffusion.GaussianMixture`); reference: the probability-flow ODE from the same
  ``x_T`` solved by sdekit's ``dopri5`` at ``rtol = atol = 1e-10`` (the exact PF-ODE solution to
  that tolerance).
- ``digits``: the trained 8x8-digits U-Net shipped in ``benchmarks/assets/digits_unet16.pt``
  (``benchmarks/assets/README.md``: the command that made it), loaded with
  ``skd.Trainer.load``; its EMA weights run in float32, the samplers in float64. Reference: a
  ``--reference-steps`` (1000) step ``dpm_solver++_3m`` solve on the logsnr grid from the same
  ``x_T``, checked against ``dopri5`` at ``--dopri5-tol`` (the agreement is printed and stored).

Every method starts from the same prior draws ``x_T`` at ``t_max = 1`` and stops at ``t_min =
1e-3``; its error is the mean over samples of the L2 distance between its ``x(t_min)`` and the
reference's. NFE counts the calls of the score (every peer calls it through a counted wrapper).
For a budget ``B`` each method takes the largest number of steps whose NFE is ``<= B`` (RK4 at
``B = 5`` takes one step: 4 NFE); the NFE used is shown when it is below ``B``. A method is a
sampler with options (``--methods``, ``--optimize``: ``name:option:option=value``, rows
``name[option, option=value]``); the defaults add the multistep samplers with ``afs=True`` (the
analytical first step: the model's output at ``t_max`` taken from standard normal data, one score
call fewer, so a budget ``B`` buys ``B + 1`` steps).

The optimized grid (``skd.optimize_time_grid(sde, score_fn, x_calibration, B, solver=name)``) is
calibrated on a *different* batch of prior draws (``--calibration`` samples, another seed) than the
one scored, for the samplers of ``--optimize`` (mixture, every budget) and ``--digits-optimize``
(digits, NFE 5, 10, 20: the U-Net's calibration costs ``--digits-evaluations`` runs of the sampler);
its cost (seconds, score calls) is stored. The ``learned`` rows (``--learn``, mixture, every budget;
``--digits-learn``, NFE 5, 10, 20) run iPNDM with the grid *and* per-step coefficients of
``skd.optimize_coefficients``, calibrated the same way.

``twins``: each peer that has an sdekit implementation of the same method (``Peer.twin``) is run at
``--twin-nfe`` steps on its own grid, and so is the sdekit twin on that grid (``ts=``) with the
peer's options and with sdekit's default options: their difference shows which part of a gap
between rows is arithmetic (none: they agree to float32 rounding), which options and which grid.

``digits`` also scores samples: the Fréchet distance between the hidden features of the classifier
of ``benchmarks/train_digits.py`` (trained on the same 1200 training digits, seed 0) on
``--fd-samples`` samples and on the 597 held-out digits, for the best sdekit and the best peer
configuration (by error) at NFE 5, 10, 20, beside real training digits, prior noise and a
near-converged ``dpm_solver++_3m`` solve (``--fd-floor-steps``, 100).

Targets of issue 10 (``targets`` in the JSON): best sdekit error / best peer error <= 1/3 at NFE 10
and 20 on ``mixture``, <= 1/2 at NFE 5, 10 and 20 on ``digits``.

    OMP_NUM_THREADS=1 python benchmarks/few_step.py --json docs/results/few_step.json \
        --plot docs/results/few_step.png
    python benchmarks/few_step.py --quick          # every code path on small sizes (the test's run)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCHMARKS = Path(__file__).resolve().parent
for _path in (BENCHMARKS.parent / "plugins", BENCHMARKS.parent, BENCHMARKS):  # checkout's packages, peers.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sdekit  # noqa: E402
import sdekit_diffusion as skd  # noqa: E402
from sdekit_diffusion import samplers  # noqa: E402

import peers as peer_library  # noqa: E402

MIXTURE_TOLERANCE = 1e-10     # dopri5 rtol = atol of the mixture's reference (as sdekit_diffusion.bench_problems)
DEFAULT_CHECKPOINT = BENCHMARKS / "assets" / "digits_unet16.pt"
FD_BUDGETS = (5, 10, 20)      # NFE at which the digits' Fréchet distance is measured (issue 10)
TARGETS = {"mixture": ((10, 20), 1 / 3), "digits": ((5, 10, 20), 1 / 2)}   # issue 10's ratios
# sampler specs: a name of skd.sample, then ":option" (True) or ":option=value" each (see parse_method)
AFS_VARIANTS = "ipndm:afs,unipc:afs,deis:afs,dpm_solver++_3m:afs"   # fixed grids, beside every plain sampler
OPTIMIZED_SAMPLERS = ("dpm_solver++_3m,unipc,ipndm,deis,ipndm:afs,ipndm:order=3:afs,unipc:afs,"
                      "unipc:order=2:afs")                                         # mixture
DIGITS_OPTIMIZED = "unipc,unipc:order=2,unipc:order=2:afs"       # digits, at NFE 5, 10, 20
LEARNED = "ipndm:order=4:afs,ipndm:order=3:afs"   # mixture: skd.optimize_coefficients's options
DIGITS_LEARNED = "ipndm:order=3:afs"               # digits, at --digits-optimize-budgets
TUNED = ("optimized", "learned")   # rows calibrated on x_calibration: grid only, grid and coefficients
QUICK = dict(budgets="5,10", batch=64, calibration=16, digits_batch=8, digits_calibration=4,
             methods="dpm_solver++_3m,unipc,ipndm,rk4,ipndm:afs", grids="logsnr,quadratic",
             optimize="dpm_solver++_3m,unipc:afs", digits_optimize="dpm_solver++_3m", digits_optimize_budgets="5,10",
             learn="ipndm:order=4:afs", digits_learn="ipndm:order=2", learn_evaluations=30, digits_learn_evaluations=30,
             evaluations=20, digits_evaluations=6, peers="diffusers DPMSolverMultistep 3M (trailing),"
             "diffusers UniPCMultistep bh2 order 2 (trailing),diffusers IPNDM (quadratic)",
             reference_steps=200, dopri5_tol=1e-4, fd_samples=80, fd_floor_steps=20)


# ----------------------------------------------------------------------------------------------
# problems

@dataclass
class Problem:
    """A benchmark problem: ``score_fn`` on ``sde``, the scored draws ``x_T``, the calibration draws
    (another seed), the reference ``x(t_min)`` of ``x_T`` and how it was made (``reference_info``)."""
    name: str
    description: str
    sde: skd.DiffusionSDE
    score_fn: Callable
    x_T: torch.Tensor
    x_calibration: torch.Tensor
    reference: torch.Tensor = None
    reference_info: dict = field(default_factory=dict)
    calibration_reference: torch.Tensor = None
    evaluations: int = 200
    extra: dict = field(default_factory=dict)


class Counted:
    """Wraps a function and counts its calls (one call = one network evaluation)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def prior_draws(sde, shape, seed: int) -> torch.Tensor:
    return sde.prior_sample(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def make_mixture(dim: int, components: int, seed: int):
    """A VP SDE and a seeded isotropic mixture in ``dim`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(components, dim, generator=g, dtype=torch.float64)
    stds = 0.3 + 0.3 * torch.rand(components, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return skd.VPSDE(), skd.GaussianMixture(weights, means, stds)


def mixture_problem(args) -> Problem:
    sde, mixture = make_mixture(args.dim, args.components, args.seed)
    score_fn = mixture.score_fn(sde)
    flow = sde.probability_flow(score_fn)

    def reference(x_T):
        return sdekit.solve(flow, x_T, sde.t_max, sde.t_min, solver="dopri5", rtol=MIXTURE_TOLERANCE,
                            atol=MIXTURE_TOLERANCE, max_steps=200_000)

    x_T = prior_draws(sde, (args.batch, args.dim), args.seed)
    x_calibration = prior_draws(sde, (args.calibration, args.dim), args.seed + 1)
    start = time.perf_counter()
    solution = reference(x_T)
    info = {"method": f"dopri5 rtol=atol={MIXTURE_TOLERANCE:g}", "nfe": solution.nfe,
            "seconds": time.perf_counter() - start}
    return Problem("mixture", f"{args.dim}-d mixture of {args.components} Gaussians, {sde!r}, exact score, "
                   f"{args.batch} samples", sde, score_fn, x_T, x_calibration, solution.x, info,
                   reference(x_calibration).x, evaluations=args.evaluations)


def float64_score(score_fn, dtype: torch.dtype) -> Callable:
    """``score_fn`` (a network in ``dtype``) taking and returning float64; autograd through the
    network only when ``t`` or ``x`` requires grad (``optimize_time_grid`` differentiating a run
    with respect to its grid), so a sampling loop keeps no graph."""
    def score(t, x):
        with torch.set_grad_enabled(torch.is_grad_enabled() and (t.requires_grad or x.requires_grad)):
            return score_fn(t.to(dtype), x.to(dtype)).double()
    return score


def digits_problem(args) -> Problem:
    trainer = skd.Trainer.load(args.checkpoint, device="cpu", progress=False)
    sde, shape = trainer.sde, tuple(trainer.sample_shape)
    score_fn = float64_score(trainer.score_fn(), trainer.dtype)

    def reference(x_T):
        return skd.sample(sde, score_fn, x_T=x_T, solver="dpm_solver++_3m", steps=args.reference_steps,
                          time_grid="logsnr").x

    x_T = prior_draws(sde, (args.digits_batch, *shape), args.seed)
    x_calibration = prior_draws(sde, (args.digits_calibration, *shape), args.seed + 1)
    start = time.perf_counter()
    x_reference = reference(x_T)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    check = sdekit.solve(sde.probability_flow(score_fn), x_T, sde.t_max, sde.t_min, solver="dopri5",
                         rtol=args.dopri5_tol, atol=args.dopri5_tol, max_steps=100_000)
    info = {"method": f"dpm_solver++_3m, {args.reference_steps} steps, logsnr grid", "nfe": args.reference_steps,
            "seconds": seconds, "check": f"dopri5 rtol=atol={args.dopri5_tol:g}", "check_nfe": check.nfe,
            "check_seconds": time.perf_counter() - start,
            "check_error": l2_error(check.x, x_reference),
            "check_relative": l2_error(check.x, x_reference) / float(x_reference.flatten(1).norm(dim=1).mean())}
    return Problem("digits", f"8x8-digits U-Net {args.checkpoint.name} ({trainer.step} training steps, "
                   f"{sum(p.numel() for p in trainer.net.parameters()):,} parameters), {sde!r}, "
                   f"{args.digits_batch} samples", sde, score_fn, x_T, x_calibration, x_reference, info,
                   reference(x_calibration), evaluations=args.digits_evaluations, extra={"shape": shape})


def l2_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over samples of the L2 distance."""
    return float((x.double() - reference.double()).flatten(1).norm(dim=1).mean())


# ----------------------------------------------------------------------------------------------
# running a method at a budget

def deterministic_samplers() -> list[str]:
    """The fixed-grid samplers that draw no noise with their default options (the registry's
    records): plugin samplers and the core's ODE solvers (run on the probability-flow ODE)."""
    return [record.name for record in samplers.records()
            if not record.stochastic({}) and not record.adaptive]


def parse_method(spec: str) -> tuple[str, dict, str]:
    """``"ipndm:order=3:afs"`` -> ``("ipndm", {"order": 3, "afs": True}, "ipndm[order=3, afs]")``: a
    sampler of ``skd.sample``, its options (``:name`` is True, ``:name=value`` an int when it reads
    as one, else the text) and the row label (the name, with its options in brackets if any)."""
    name, *parts = spec.split(":")
    options = {}
    for part in parts:
        key, has_value, value = part.partition("=")
        if not key:
            raise SystemExit(f"method spec {spec!r}: an empty option; write NAME:OPTION or NAME:OPTION=VALUE")
        options[key] = (int(value) if value.lstrip("-").isdigit() else value) if has_value else True
    label = name + (f"[{', '.join(p for p in parts)}]" if parts else "")
    return name, options, label


def fit_budget(run, budget: int, calls_per_step: int = 1, min_steps: int = 1):
    """``run(steps) -> (x, nfe)`` at the largest ``steps`` whose NFE is ``<= budget``: first
    ``budget // calls_per_step`` steps, then one more while ``calls_per_step`` more calls would fit
    (EDM-Heun's last step costs one call), fewer when it overshoots; ``(x, nfe, steps)``, or ``None``
    when even ``min_steps`` costs more."""
    steps, fitted = max(min_steps, budget // calls_per_step), None
    while True:
        x, nfe = run(steps)
        if nfe <= budget:
            fitted = (x, nfe, steps)
            if nfe + calls_per_step > budget:
                return fitted
            steps += 1
        elif fitted is not None:
            return fitted
        elif steps <= min_steps:
            return None
        else:
            steps = max(min_steps, min(steps - 1, budget * steps // nfe))


def run_sdekit(problem: Problem, x_T, name: str, *, steps=None, grid=None, ts=None, **options):
    counted = Counted(problem.score_fn)
    if ts is not None:
        solution = skd.sample(problem.sde, counted, x_T=x_T, solver=name, ts=ts, **options)
    else:
        solution = skd.sample(problem.sde, counted, x_T=x_T, solver=name, steps=steps, time_grid=grid, **options)
    assert solution.nfe == counted.calls, (name, solution.nfe, counted.calls)
    return solution.x, counted.calls


def new_row(method: str, library: str, **facts) -> dict:
    return {"method": method, "library": library, **facts, "errors": {}, "nfe": {}, "steps": {}}


def record(row: dict, budget: int, fitted, reference) -> None:
    if fitted is not None:
        x, nfe, steps = fitted
        row["errors"][budget], row["nfe"][budget], row["steps"][budget] = l2_error(x, reference), nfe, steps


def sdekit_rows(problem: Problem, methods, grids, budgets) -> list[dict]:
    rows = []
    for spec in methods:
        name, options, label = parse_method(spec)
        entry = samplers.get(name)
        for grid in grids:
            row = new_row(f"sdekit {label} ({grid})", "sdekit", sampler=name, options=options, variant=label,
                          grid=grid)
            for budget in budgets:
                record(row, budget, fit_budget(lambda steps: run_sdekit(problem, problem.x_T, name, steps=steps,
                                                                         grid=grid, **options),
                                               budget, entry.calls_per_step(options), entry.min_steps),
                       problem.reference)
            rows.append(row)
    return rows


def calibrated(problem: Problem, row: dict, budget: int, nfe: int, evaluations: int, notes, optimizer,
               **keywords):
    """``optimizer(sde, score, x_calibration, nfe, reference=..., max_evaluations=evaluations,
    **keywords)`` (``skd.optimize_time_grid`` or ``skd.optimize_coefficients``) with its cost
    (seconds, score calls) stored in ``row["calibration"][budget]``; ``None``, with a note, when it
    refuses the sampler or the budget."""
    counted = Counted(problem.score_fn)
    start = time.perf_counter()
    try:
        result = optimizer(problem.sde, counted, problem.x_calibration, nfe,
                           reference=problem.calibration_reference, max_evaluations=evaluations, **keywords)
    except (ValueError, TypeError) as error:
        notes.append(f"{problem.name}: {optimizer.__name__}({keywords}, nfe={budget}) refused: {error}")
        return None
    row["calibration"][budget] = {"seconds": time.perf_counter() - start, "score_calls": counted.calls,
                                  "batch": len(problem.x_calibration), "max_evaluations": evaluations}
    return result


def optimized_rows(problem: Problem, methods, budgets, evaluations: int, notes) -> list[dict]:
    """Each sampler of ``methods`` on ``skd.optimize_time_grid``'s grid for each budget, calibrated
    on ``problem.x_calibration`` against ``problem.calibration_reference`` (made as the scored
    batch's reference), at most ``evaluations`` sampler runs each."""
    if not hasattr(skd, "optimize_time_grid"):
        notes.append("skd.optimize_time_grid does not exist in this sdekit_diffusion: no optimized grids")
        return []
    rows = []
    for spec in methods:
        name, options, label = parse_method(spec)
        row = new_row(f"sdekit {label} (optimized)", "sdekit", sampler=name, options=options, variant=label,
                      grid="optimized", ts={}, calibration={})
        for budget in budgets:
            entry = samplers.get(name)
            calls, saved = entry.calls_per_step(options), entry.saved_calls(options)
            nfe = budget - (budget + saved) % calls    # the calls a grid can spend exactly
            ts = calibrated(problem, row, budget, nfe, evaluations, notes, skd.optimize_time_grid, solver=name,
                            **options)
            if ts is None:
                continue
            x, nfe = run_sdekit(problem, problem.x_T, name, ts=ts, **options)
            if nfe > budget:
                notes.append(f"{problem.name}: optimize_time_grid({name!r}, nfe={budget}) gave a grid of {nfe} "
                             "score calls; not counted")
                continue
            row["ts"][budget] = [float(t) for t in ts]
            record(row, budget, (x, nfe, len(ts) - 1), problem.reference)
        rows.append(row)
    return rows


def learned_rows(problem: Problem, methods, budgets, evaluations: int, notes) -> list[dict]:
    """iPNDM with the grid and per-step coefficients of ``skd.optimize_coefficients`` for each
    budget (``methods``: ``ipndm`` specs, their options passed on), calibrated as
    :func:`optimized_rows`, at most ``evaluations`` sampler runs each."""
    if not hasattr(skd, "optimize_coefficients"):
        notes.append("skd.optimize_coefficients does not exist in this sdekit_diffusion: no learned rows")
        return []
    rows = []
    for spec in methods:
        name, options, label = parse_method(spec)
        if name != "ipndm":
            raise SystemExit(f"--learn {spec!r}: skd.optimize_coefficients learns ipndm's coefficients; "
                             "give ipndm specs such as ipndm:order=4:afs")
        row = new_row(f"sdekit {label} (learned)", "sdekit", sampler=name, options=options, variant=label,
                      grid="learned", ts={}, coefficients={}, calibration={})
        for budget in budgets:
            learned = calibrated(problem, row, budget, budget, evaluations, notes, skd.optimize_coefficients,
                                 **options)
            if learned is None:
                continue
            x, nfe = run_learned(problem, problem.x_T, learned)
            row["ts"][budget] = [float(t) for t in learned["ts"]]
            row["coefficients"][budget] = learned["coefficients"].tolist()
            record(row, budget, (x, nfe, len(learned["ts"]) - 1), problem.reference)
        rows.append(row)
    return rows


def run_learned(problem: Problem, x_T, learned: dict):
    keywords = {key: value for key, value in learned.items() if key != "solver"}
    return run_sdekit(problem, x_T, learned["solver"], **keywords)


def run_peer(peer, problem: Problem, x_T, steps: int):
    """``peer.run``, checked to start at ``t_max`` and end at ``t_min`` (the reference's ends)."""
    result = peer.run(problem.sde, problem.score_fn, x_T, steps)
    ends = (float(result.ts[0]), float(result.ts[-1]))
    if abs(ends[0] - problem.sde.t_max) > 1e-12 or abs(ends[1] - problem.sde.t_min) > 1e-12:
        raise AssertionError(f"{peer.method} ran from {ends[0]} to {ends[1]}, not over the reference's "
                             f"[{problem.sde.t_min}, {problem.sde.t_max}]")
    return result


def peer_rows(problem: Problem, peers, budgets, notes) -> list[dict]:
    rows = []
    for peer in peers:
        row = new_row(peer.method, peer.library, options=peer.options)
        try:
            for budget in budgets:
                def run(steps):
                    result = run_peer(peer, problem, problem.x_T, steps)
                    return result.x, result.nfe
                record(row, budget, fit_budget(run, budget, 1, peer.min_steps), problem.reference)
        except Exception as error:   # noqa: BLE001 - report a failing peer configuration, go on
            notes.append(f"{problem.name}: {peer.method} failed: {type(error).__name__}: {error}")
        rows.append(row)
    return rows


def twin_checks(problem: Problem, peers, steps: int) -> list[dict]:
    """Each peer with an sdekit twin, both on the peer's own grid (module docstring)."""
    checks = []
    for peer in peers:
        if peer.twin is None:
            continue
        name, options = peer.twin
        result = run_peer(peer, problem, problem.x_T, steps)
        twin, _ = run_sdekit(problem, problem.x_T, name, ts=result.ts, **options)
        default, _ = run_sdekit(problem, problem.x_T, name, ts=result.ts)
        checks.append({"peer": peer.method, "twin": name, "twin_options": options, "steps": steps,
                       "relative_difference": peer_library.relative_difference(twin, result.x),
                       "peer_error": l2_error(result.x, problem.reference),
                       "twin_error": l2_error(twin, problem.reference),
                       "sdekit_default_options_error": l2_error(default, problem.reference)})
    return checks


# ----------------------------------------------------------------------------------------------
# digits: Fréchet distance of classifier features

def frechet_rows(problem: Problem, rows, best, peers, args) -> dict:
    """Fréchet distance (and the classifier scores of ``train_digits.scores``) of the best sdekit and
    the best peer configuration at each NFE of :data:`FD_BUDGETS`, on ``--fd-samples`` fresh draws."""
    import train_digits
    train_images, train_labels, held_out, _ = train_digits.split_digits(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)   # the classifier is float32, as in train_digits.py
    try:
        classifier = train_digits.train_classifier(train_images, train_labels)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        real_features = classifier.hidden(held_out).numpy().astype(np.float64)
    x_T = prior_draws(problem.sde, (args.fd_samples, *problem.extra["shape"]), args.seed + 2)

    def scored(x):
        return train_digits.scores(classifier, x.float(), real_features)

    by_method = {row["method"]: row for row in rows}
    peers_by_method = {peer.method: peer for peer in peers}
    result = {"samples": args.fd_samples, "real_training_digits": scored(train_images[:args.fd_samples])}
    result["prior noise"] = scored(x_T)
    floor, _ = run_sdekit(problem, x_T, "dpm_solver++_3m", steps=args.fd_floor_steps, grid="logsnr")
    result["converged"] = dict(scored(floor), method=f"dpm_solver++_3m {args.fd_floor_steps} steps (logsnr)",
                               nfe=args.fd_floor_steps)
    for budget in [b for b in FD_BUDGETS if b in best]:
        for side in ("sdekit", "peer"):
            if best[budget][side] is None:
                continue
            row = by_method[best[budget][side]["method"]]
            steps = row["steps"][budget]
            if side == "sdekit" and row["grid"] == "learned":
                x, nfe = run_learned(problem, x_T, dict(row["options"], solver=row["sampler"],
                                                        ts=torch.tensor(row["ts"][budget]),
                                                        coefficients=torch.tensor(row["coefficients"][budget])))
            elif side == "sdekit" and row["grid"] == "optimized":
                x, nfe = run_sdekit(problem, x_T, row["sampler"], ts=torch.tensor(row["ts"][budget]),
                                    **row.get("options", {}))
            elif side == "sdekit":
                x, nfe = run_sdekit(problem, x_T, row["sampler"], steps=steps, grid=row["grid"],
                                    **row.get("options", {}))
            else:
                run = run_peer(peers_by_method[row["method"]], problem, x_T, steps)
                x, nfe = run.x, run.nfe
            result[f"NFE {budget} {side}"] = dict(scored(x), method=row["method"], nfe=nfe)
    return result


# ----------------------------------------------------------------------------------------------
# report

def best_per_budget(rows, budgets) -> dict:
    best = {}
    for budget in budgets:
        entry = {}
        for side, test in (("sdekit", lambda r: r["library"] == "sdekit"),
                           ("peer", lambda r: r["library"] != "sdekit")):
            candidates = [(r["errors"][budget], r["method"]) for r in rows if test(r) and budget in r["errors"]]
            entry[side] = {"method": min(candidates)[1], "error": min(candidates)[0]} if candidates else None
        entry["sdekit_over_peer"] = (entry["sdekit"]["error"] / entry["peer"]["error"]
                                     if entry["peer"] and entry["sdekit"] else None)
        best[budget] = entry
    return best


def targets(problem: str, best: dict) -> list[dict]:
    budgets, limit = TARGETS[problem]
    return [{"problem": problem, "nfe": budget, "limit": limit,
             "sdekit_over_peer": best[budget]["sdekit_over_peer"],
             "met": best[budget]["sdekit_over_peer"] is not None and best[budget]["sdekit_over_peer"] <= limit}
            for budget in budgets if budget in best]


def format_table(rows, budgets, best) -> str:
    width = max(len(r["method"]) for r in rows) + 2
    lines = ["method".ljust(width) + "".join(f"NFE {b}".rjust(15) for b in budgets)]
    marked = {(best[b][side]["method"], b) for b in budgets for side in ("sdekit", "peer") if best[b][side]}
    for row in rows:
        cells = []
        for budget in budgets:
            if budget not in row["errors"]:
                cells.append("-".rjust(15))
                continue
            nfe = row["nfe"][budget]
            text = (f"{row['errors'][budget]:.2e}" + (f"({nfe})" if nfe != budget else "")
                    + ("*" if (row["method"], budget) in marked else ""))
            cells.append(text.rjust(15))
        lines.append(row["method"].ljust(width) + "".join(cells))
    lines += ["", "* best sdekit and best peer per NFE budget; (n): NFE used when below the budget"]
    for budget in budgets:
        b = best[budget]
        s = f"{b['sdekit']['method']} {b['sdekit']['error']:.2e}" if b["sdekit"] else "-"
        p = f"{b['peer']['method']} {b['peer']['error']:.2e}" if b["peer"] else "-"
        ratio = f"{b['sdekit_over_peer']:.3f}" if b["sdekit_over_peer"] else "-"
        lines.append(f"NFE {budget}: best sdekit {s} | best peer {p} | sdekit/peer error {ratio}")
    return "\n".join(lines)


def markdown_summary(results: dict) -> str:
    lines = ["| problem | NFE | best sdekit (error) | best peer (error) | sdekit / peer |", "|---|---|---|---|---|"]
    for name, result in results.items():
        for budget, b in result["best"].items():
            if b["sdekit"] and b["peer"]:
                lines.append(f"| {name} | {budget} | {b['sdekit']['method'][7:]} ({b['sdekit']['error']:.2e}) | "
                             f"{b['peer']['method']} ({b['peer']['error']:.2e}) | {b['sdekit_over_peer']:.2f} |")
    for name, result in results.items():
        if "frechet" not in result:
            continue
        frechet = result["frechet"]
        lines += ["", f"{name}: Fréchet distance of classifier features ({frechet['samples']} samples; real training "
                  f"digits {frechet['real_training_digits']['frechet_distance']:.2f}, {frechet['converged']['method']} "
                  f"{frechet['converged']['frechet_distance']:.2f}, prior noise {frechet['prior noise']['frechet_distance']:.0f})",
                  "", "| NFE | best sdekit | FD | best peer | FD |", "|---|---|---|---|---|"]
        for budget in FD_BUDGETS:
            if f"NFE {budget} sdekit" in frechet and f"NFE {budget} peer" in frechet:
                ours, theirs = frechet[f"NFE {budget} sdekit"], frechet[f"NFE {budget} peer"]
                lines.append(f"| {budget} | {ours['method'][7:]} | {ours['frechet_distance']:.2f} | {theirs['method']} | "
                             f"{theirs['frechet_distance']:.2f} |")
    return "\n".join(lines)


def _family(row) -> str:
    return row.get("variant", row["sampler"]) if row["library"] == "sdekit" else row["method"].rsplit(" (", 1)[0]


def plotted_rows(rows) -> list[dict]:
    """Per sdekit sampler its best fixed grid, its optimized grid and its learned one; per peer family (the method name
    without its grid) its best grid. "Best": the smallest geometric-mean error over the budgets."""
    def score(row):
        errors = list(row["errors"].values())
        return sum(math.log(e) for e in errors) / len(errors) if errors else math.inf
    best = {}
    for row in rows:
        key = (_family(row), row.get("grid") if row.get("grid") in TUNED else None)
        if row["errors"] and (key not in best or score(row) < score(best[key])):
            best[key] = row
    return list(best.values())


def plot(results: dict, path: str) -> None:
    """Error vs NFE, log-log, one panel per problem: sdekit solid (optimized grids thick), peers dashed,
    the best of each side at each NFE in black. ``results``: ``_run``'s ``problems`` or the JSON's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(8 * len(results), 6.5), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        shown = plotted_rows(result["rows"])
        colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(shown), 2)))
        for row, color in zip(shown, colors):
            budgets = sorted(row["errors"], key=int)
            ax.loglog([row["nfe"][b] for b in budgets], [row["errors"][b] for b in budgets],
                      "-" if row["library"] == "sdekit" else "--", color=color, marker="o", markersize=3,
                      label=row["method"], linewidth=2.2 if row.get("grid") in TUNED else 1)
        budgets = sorted(result["best"], key=int)
        for side, style in (("sdekit", "-"), ("peer", ":")):
            points = [(int(b), result["best"][b][side]["error"]) for b in budgets if result["best"][b][side]]
            ax.loglog(*zip(*points), style, color="black", linewidth=2.5, label=f"best {side}")
        errors = [e for row in shown for e in row["errors"].values()]
        ax.set_ylim(0.5 * min(errors), 2 * sorted(errors)[int(0.95 * (len(errors) - 1))])
        ax.set_xlabel("NFE (budget; a marker left of it: fewer used)")
        ax.set_ylabel(f"mean L2 error vs reference ({result['reference']['method']})")
        ax.set_title(f"{name}: sdekit (solid; thick: optimized grid or learned) vs peers (dashed, best grid each)",
                     fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="mixture,digits", help="comma-separated: mixture, digits")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few methods (the test's run): "
                        + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--budgets", default="5,10,20,50", help="comma-separated NFE budgets")
    parser.add_argument("--methods", default=None, help="comma-separated sdekit samplers, each a name with "
                        "optional :option or :option=value parts, e.g. ipndm:order=3:afs (default: every "
                        "deterministic one, and %s)" % AFS_VARIANTS)
    parser.add_argument("--grids", default=",".join(skd.GRIDS), help="comma-separated time grids")
    parser.add_argument("--optimize", default=OPTIMIZED_SAMPLERS, help="mixture: samplers also run on "
                        "skd.optimize_time_grid's grid ('' for none, 'all' for --methods)")
    parser.add_argument("--optimize-budgets", default=None, help="mixture: the budgets of the optimized grids "
                        "(default: --budgets)")
    parser.add_argument("--digits-optimize", default=DIGITS_OPTIMIZED, help="digits: the same")
    parser.add_argument("--digits-optimize-budgets", default="5,10,20", help="digits: the same")
    parser.add_argument("--learn", default=LEARNED, help="mixture: ipndm specs also run with the grid and "
                        "coefficients of skd.optimize_coefficients, every budget ('' for none)")
    parser.add_argument("--digits-learn", default=DIGITS_LEARNED, help="digits: the same, at "
                        "--digits-optimize-budgets")
    parser.add_argument("--learn-evaluations", type=int, default=900, help="mixture: optimize_coefficients's "
                        "max_evaluations")
    parser.add_argument("--digits-learn-evaluations", type=int, default=300, help="digits: the same")
    parser.add_argument("--evaluations", type=int, default=200, help="mixture: optimize_time_grid's "
                        "max_evaluations (sampler runs on the calibration batch)")
    parser.add_argument("--digits-evaluations", type=int, default=300, help="digits: the same")
    parser.add_argument("--peers", default=None, help="comma-separated peer method names (default: all installed)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--twin-nfe", type=int, default=10, help="steps of the twin checks (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--components", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512, help="mixture: scored samples")
    parser.add_argument("--calibration", type=int, default=1024, help="mixture: calibration samples "
                        "(optimize_time_grid's docstring: 1024 draws give on held-out draws the gain they give "
                        "on themselves, 256 less of it)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--digits-batch", type=int, default=32, help="digits: scored samples")
    parser.add_argument("--digits-calibration", type=int, default=256, help="digits: calibration samples")
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--dopri5-tol", type=float, default=1e-6)
    parser.add_argument("--fd-samples", type=int, default=500)
    parser.add_argument("--fd-floor-steps", type=int, default=100, help="dpm_solver++_3m steps (logsnr grid) "
                        "of the near-converged Fréchet distance")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--plot", metavar="PATH")
    parser.add_argument("--replot", metavar="JSON", help="only draw --plot from this JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.replot:
        if not args.plot:
            raise SystemExit("--replot needs --plot PATH")
        output = json.loads(Path(args.replot).read_text())
        plot(output["problems"], args.plot)
        print(f"wrote {args.plot}")
        return output
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _run(args)
    finally:
        torch.set_default_dtype(previous)


def _run(args) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    budgets = [int(b) for b in args.budgets.split(",")]
    every = deterministic_samplers()
    methods = every + AFS_VARIANTS.split(",") if args.methods is None else args.methods.split(",")
    optimize = {}
    for name, chosen, chosen_budgets in (("mixture", args.optimize, args.optimize_budgets),
                                         ("digits", args.digits_optimize, args.digits_optimize_budgets)):
        samplers_chosen = methods if chosen == "all" else [m for m in chosen.split(",") if m]
        wanted = budgets if chosen_budgets is None else [int(b) for b in chosen_budgets.split(",")]
        optimize[name] = (samplers_chosen, [b for b in budgets if b in wanted])
    learn = {"mixture": ([m for m in args.learn.split(",") if m], optimize["mixture"][1], args.learn_evaluations),
             "digits": ([m for m in args.digits_learn.split(",") if m], optimize["digits"][1],
                        args.digits_learn_evaluations)}
    unknown = sorted({parse_method(m)[0] for m in methods + optimize["mixture"][0] + optimize["digits"][0]}
                     - set(every))
    if unknown:
        raise SystemExit(f"not deterministic samplers of skd.sample: {unknown}; valid: {every}")
    grids = args.grids.split(",")
    notes = []
    if args.no_peers:
        peers = []
        notes.append("peers skipped (--no-peers)")
    else:
        peers, peer_notes = peer_library.available_peers()
        notes += peer_notes
        if args.peers is not None:
            wanted = args.peers.split(",")
            known = {p.method for p in peer_library.diffusers_peers() + peer_library.kdiffusion_peers()}
            unknown = sorted(set(wanted) - known)
            if unknown:
                raise SystemExit(f"unknown peers {unknown}; known: {sorted(known)}")
            peers = [p for p in peers if p.method in wanted]

    results = {}
    for name in args.problems.split(","):
        problem_start, problem_cpu = time.perf_counter(), time.process_time()
        problem = {"mixture": mixture_problem, "digits": digits_problem}[name](args)
        problem_notes = []
        rows = sdekit_rows(problem, methods, grids, budgets)
        rows += optimized_rows(problem, *optimize[name], problem.evaluations, problem_notes)
        rows += learned_rows(problem, *learn[name], problem_notes)
        rows += peer_rows(problem, peers, budgets, problem_notes)
        best = best_per_budget(rows, budgets)
        twins = twin_checks(problem, peers, args.twin_nfe) if args.twin_nfe else []
        result = {"description": problem.description, "reference": problem.reference_info, "rows": rows,
                  "best": best, "twins": twins, "targets": targets(name, best), "notes": problem_notes}
        if name == "digits":
            result["frechet"] = frechet_rows(problem, rows, best, peers, args)
        result["seconds"] = time.perf_counter() - problem_start
        result["cpu_seconds"] = time.process_time() - problem_cpu
        results[name] = result
        report(name, result, budgets)

    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    for note in notes:
        print("note:", note)
    print("\n" + markdown_summary(results))
    print(f"\n{elapsed:.1f} s wall, {cpu:.1f} s CPU (this process)")
    output = {"config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
              "budgets": budgets, "problems": results, "notes": notes, "seconds": elapsed, "cpu_seconds": cpu,
              "versions": _versions()}
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return output


def report(name: str, result: dict, budgets) -> None:
    reference = result["reference"]
    print(f"\n== {name}: {result['description']}; error = mean L2 distance to {reference['method']} "
          f"({reference['nfe']} NFE)")
    if "check" in reference:
        print(f"   reference vs {reference['check']} ({reference['check_nfe']} NFE): mean L2 {reference['check_error']:.2e}"
              f" ({reference['check_relative']:.1e} of the samples' mean norm)")
    print(format_table(result["rows"], budgets, result["best"]))
    if result["twins"]:
        print(f"\ntwins on the peer's own grid, {result['twins'][0]['steps']} steps: max |sdekit - peer| / max |peer|;"
              " errors of the peer, of sdekit with the peer's options and with sdekit's defaults")
        for check in result["twins"]:
            print(f"  {check['peer']:48s} = {check['twin']} {check['twin_options']}: {check['relative_difference']:.1e}"
                  f"  errors {check['peer_error']:.3e} / {check['twin_error']:.3e} / "
                  f"{check['sdekit_default_options_error']:.3e}")
    for target in result["targets"]:
        print(f"target {name} NFE {target['nfe']}: sdekit/peer {target['sdekit_over_peer']} <= "
              f"{target['limit']:.3f}: {'met' if target['met'] else 'NOT met'}")
    if "frechet" in result:
        print(f"\nFréchet distance of classifier features to the held-out digits ({result['frechet']['samples']} samples)")
        for label, value in result["frechet"].items():
            if isinstance(value, dict):
                method = f"  {value['method']} ({value['nfe']} NFE)" if "method" in value else ""
                print(f"  {label:38s} {value['frechet_distance']:8.2f}  conf>0.9 {value['share_confident']:.3f}{method}")
    for note in result["notes"]:
        print("note:", note)
    print(f"({result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU)")


def _versions() -> dict:
    versions = {"torch": torch.__version__}
    for module in ("diffusers", "k_diffusion"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:   # noqa: BLE001 - a missing peer
            versions[module] = None
    return versions


if __name__ == "__main__":
    main()
