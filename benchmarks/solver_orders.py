"""Strong convergence orders and cost of sdekit's SDE solvers against torchsde's, through sdekit.bench.

Problems (sdekit.bench, exact pathwise solutions): ``gbm`` (diagonal noise), ``rn_scalar``
(Rackauckas & Nie 2017 scalar noise) and ``rn_additive`` (their additive-noise system). Each solver
runs at every step count on the same Brownian path per sample batch: sdekit solvers on a
``sdekit.BrownianTree``, torchsde's on its own ``torchsde.BrownianInterval`` (space-time Lévy area,
which its ``srk`` needs), both seeded by ``--seed``; each solve gets a new interval object for the
same path, so torchsde's timings do not profit from the query cache of earlier solves. torchsde solves the same problem through
``sdekit.interop.to_torchsde``.

Reported per solver: fitted strong order (95% CI), wall time per step, and the time a solve would
take at equal accuracy — the step count that reaches the problem's target error (the largest of the
solvers' finest errors), read off each solver's fitted error line, times its time per step.

    python benchmarks/solver_orders.py [--samples 256] [--steps 8,16,32,64,128] [--seed 0]
                                        [--repeats 3] [--problems gbm,rn_scalar,rn_additive]
                                        [--no-torchsde] [--json out.json] [--plot out.png]
"""
from __future__ import annotations

import argparse
import json
import math

import torch

import sdekit
import sdekit.interop
from sdekit import bench
from sdekit.bench.measure import Outcome

# problem -> (sdekit solvers, torchsde methods)
PLAN = {
    "gbm": (["euler_maruyama", "milstein"], ["euler", "milstein", "srk"]),
    "rn_scalar": (["euler_maruyama", "milstein"], ["euler", "milstein", "srk"]),
    "rn_additive": (["euler_maruyama", "sra1"], ["euler", "srk"]),
}
# torchsde's declared orders (torchsde/_core/methods/*.py); Euler is strong 1.0 on additive noise there too
TORCHSDE_ORDERS = {"euler": (0.5, 1.0), "milstein": (1.0, 1.0), "srk": (1.5, 1.5)}


class FreshBrownianInterval:
    """One torchsde Brownian path (fixed ``entropy``), handed to every solve as a new, empty
    ``torchsde.BrownianInterval``: the same path each time, without the cache of earlier solves'
    queries (sdekit's tree keeps no cache either), so both libraries are timed on a path's first
    solve."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def fresh(self):
        import torchsde
        return torchsde.BrownianInterval(**self.kwargs)

    def __call__(self, ta, tb):
        return self.fresh()(ta, tb)


class TorchsdeSolver:
    """A torchsde method as a sdekit.bench solver (see ``sdekit.bench.measure.SdekitSolver``)."""

    def __init__(self, method: str):
        import torchsde  # noqa: F401  (fail early when torchsde is missing)
        self.method = method
        self.name = f"torchsde.{method}"
        strong, weak = TORCHSDE_ORDERS[method]
        self.info = {"name": self.name, "kind": "sde", "order": None, "strong_order": strong,
                     "weak_order": weak, "noise_types": ["diagonal", "additive", "scalar"], "adaptive": False}

    def check(self, problem):
        if problem.problem.noise_type not in self.info["noise_types"]:
            raise sdekit.SolverError(f"{self.name} does not handle noise_type={problem.problem.noise_type!r}")

    def brownian(self, problem, n, seed, dtype, device):
        shape = problem.noise_shape(n)
        size = (shape[0], 1) if len(shape) == 1 else (shape[0], math.prod(shape[1:]))
        levy = "space-time" if self.method == "srk" else "none"
        return FreshBrownianInterval(t0=min(problem.t0, problem.t1), t1=max(problem.t0, problem.t1), size=size,
                                     dtype=dtype, device=device, entropy=seed, levy_area_approximation=levy)

    def solve(self, problem, x0, bm, *, steps=None, rtol=None, atol=None):
        import torchsde
        sde = sdekit.interop.to_torchsde(problem.problem, tuple(x0.shape[1:]))
        calls = {"f": 0}
        f = sde.f

        def counted(t, y):
            calls["f"] += 1
            return f(t, y)

        sde.f = counted
        ts = torch.tensor([problem.t0, problem.t1], dtype=x0.dtype, device=x0.device)
        ys = torchsde.sdeint(sde, x0.reshape(x0.shape[0], -1), ts, bm=bm.fresh(), method=self.method,
                             dt=abs(problem.t1 - problem.t0) / steps)
        return Outcome(ys[-1].reshape(x0.shape), calls["f"], steps, 0)


def _per_step_seconds(result, name):
    rows = result.rows_of(name)
    return sum(r["seconds"] / r["n_steps"] for r in rows) / len(rows)


def equal_accuracy(result, target: float) -> dict:
    """Per solver: steps and seconds its fitted error line needs to reach ``target``."""
    out = {}
    for name in result.solvers:
        fit = result.fit(name)
        rows = result.rows_of(name)
        if math.isnan(fit.order) or fit.order <= 0:
            continue
        # log e = log e_ref + p (log h - log h_ref) through the mean point of the fit
        logs = [(math.log(r["h"]), math.log(r["strong_error"])) for r in rows if r["strong_error"]]
        mean_h = sum(x for x, _ in logs) / len(logs)
        mean_e = sum(y for _, y in logs) / len(logs)
        h = math.exp(mean_h + (math.log(target) - mean_e) / fit.order)
        steps = max(1.0, abs(result.meta["t1"] - result.meta["t0"]) / h)  # at least one step
        per_step = _per_step_seconds(result, name)
        out[name] = {"order": fit.order, "low": fit.low, "high": fit.high, "seconds_per_step": per_step,
                     "steps_at_target": steps, "seconds_at_target": steps * per_step}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(PLAN), help="comma-separated, from " + ", ".join(PLAN))
    parser.add_argument("--steps", default="8,16,32,64,128", help="comma-separated step counts")
    parser.add_argument("--samples", type=int, default=256, help="Monte Carlo samples (one batch, one path each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="time each solve this many times, keep the fastest")
    parser.add_argument("--no-torchsde", action="store_true", help="sdekit solvers only")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings)")
    parser.add_argument("--json", metavar="PATH", help="write all results and the summary as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write the strong-error convergence plot, one panel per problem")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    names = args.problems.split(",")
    known = {info["name"] for info in sdekit.solvers.available()}
    results, summary = {}, {}
    for problem in names:
        if problem not in PLAN:
            parser.error(f"unknown problem {problem!r}; choose from {', '.join(PLAN)}")
        ours, theirs = PLAN[problem]
        solvers = [s for s in ours if s in known]
        if not args.no_torchsde:
            solvers += [TorchsdeSolver(m) for m in theirs]
        result = bench.run(problem, solvers, steps=steps, samples=args.samples, seed=args.seed,
                            repeats=args.repeats)
        finest = [min(r["strong_error"] for r in result.rows_of(n)) for n in result.solvers]
        target = max(finest)
        summary[problem] = {"target_error": target, "solvers": equal_accuracy(result, target)}
        results[problem] = result
        print(result)
        print(f"\nequal accuracy on {problem}: strong error {target:.3e}")
        print(f"{'solver':18s} {'order [95% CI]':>22s} {'us/step':>10s} {'steps':>10s} {'ms/solve':>10s}")
        for name, row in summary[problem]["solvers"].items():
            interval = f"{row['order']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"
            print(f"{name:18s} {interval:>22s} {1e6 * row['seconds_per_step']:10.1f} "
                  f"{row['steps_at_target']:10.1f} {1e3 * row['seconds_at_target']:10.2f}")
        print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"results": {k: r.to_dict() for k, r in results.items()}, "summary": summary}, handle, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        _plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (problem, result) in zip(axes[0], results.items()):
        for i, name in enumerate(result.solvers):
            rows = result.rows_of(name)
            style = "o-" if not name.startswith("torchsde") else "s--"
            ax.loglog([r["h"] for r in rows], [r["strong_error"] for r in rows], style, color=f"C{i}",
                      label=f"{name} ({result.fit(name).order:.2f})")
        ax.set_xlabel("step size h")
        ax.set_ylabel("strong error E|X_N - X(T)|")
        ax.set_title(problem)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
