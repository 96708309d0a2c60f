"""Adaptive ODE solving at equal tolerance: sdekit's dopri5 vs torchdiffeq's dopri5 vs scipy's RK45.

Problems (sdekit.bench): ``linear`` (4-d linear system, exact ``expm(A t) x0``) and ``van_der_pol``
(mu = 1 on [0, 10], reference scipy DOP853 at rtol = atol = 1e-13). Every solver gets the same
``rtol`` and ``atol = rtol * --atol-ratio``; reported: error against the exact/reference solution,
NFE (drift evaluations, counted by wrapping the function), steps and wall time per solve (fastest of
``--repeats``). torchdiffeq does not report its step count: it is estimated as ``(NFE - 2) / 6``
(dopri5 is FSAL with 6 new evaluations per step, plus 2 for the initial step size); scipy's
counts accepted steps only.

    python benchmarks/adaptive_ode.py [--rtol 1e-3,1e-5,1e-7,1e-9] [--atol-ratio 1e-3]
                                      [--problems linear,van_der_pol] [--repeats 3] [--json out.json] [--plot out.png]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import sdekit
import sdekit.interop
from sdekit import bench
from sdekit.bench.measure import Outcome, SdekitSolver


class _CountingSolver:
    kind_info = {"kind": "ode", "order": 5, "strong_order": None, "weak_order": None, "noise_types": [],
                 "adaptive": True}

    def check(self, problem):
        if problem.is_sde:
            raise sdekit.SolverError(f"{self.name} integrates ODEs only")

    def brownian(self, problem, n, seed, dtype, device):
        return None


class TorchdiffeqSolver(_CountingSolver):
    def __init__(self, method: str = "dopri5"):
        import torchdiffeq  # noqa: F401
        self.method, self.name = method, f"torchdiffeq.{method}"
        self.info = {"name": self.name, **self.kind_info}

    def solve(self, problem, x0, bm, *, steps=None, rtol=None, atol=None):
        import torchdiffeq
        func = sdekit.interop.to_torchdiffeq(problem.problem)
        calls = [0]

        def counted(t, y):
            calls[0] += 1
            return func(t, y)

        ts = torch.tensor([problem.t0, problem.t1], dtype=x0.dtype)
        ys = torchdiffeq.odeint(counted, x0, ts, method=self.method, rtol=rtol, atol=atol)
        return Outcome(ys[-1], calls[0], max(1, (calls[0] - 2) // 6), 0)


class ScipySolver(_CountingSolver):
    def __init__(self, method: str = "RK45"):
        self.method, self.name = method, f"scipy.{method}"
        self.info = {"name": self.name, **self.kind_info, "order": 5 if method == "RK45" else None}

    def solve(self, problem, x0, bm, *, steps=None, rtol=None, atol=None):
        from scipy.integrate import solve_ivp
        shape = x0.shape

        def f(t, y):  # scipy works on flat float64 numpy vectors; evaluate the same torch drift
            x = torch.from_numpy(y).reshape(shape)
            return problem.problem.drift(torch.tensor(t, dtype=x.dtype), x).reshape(-1).numpy()

        sol = solve_ivp(f, (problem.t0, problem.t1), x0.reshape(-1).numpy(), method=self.method, rtol=rtol,
                        atol=atol)
        return Outcome(torch.from_numpy(sol.y[:, -1]).reshape(shape).to(x0), sol.nfev, len(sol.t) - 1, 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="linear,van_der_pol", help="comma-separated sdekit.bench ODE problems")
    parser.add_argument("--rtol", default="1e-3,1e-5,1e-7,1e-9", help="comma-separated relative tolerances")
    parser.add_argument("--atol-ratio", type=float, default=1e-3, help="atol = rtol * this")
    parser.add_argument("--repeats", type=int, default=3, help="time each solve this many times, keep the fastest")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write error vs NFE and vs time, one row per problem")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rtols = [float(r) for r in args.rtol.split(",")]
    atols = [r * args.atol_ratio for r in rtols]
    results = {}
    for problem in args.problems.split(","):
        solvers = [SdekitSolver("dopri5"), TorchdiffeqSolver("dopri5"), ScipySolver("RK45")]
        result = bench.run(problem, solvers, rtols=rtols, atol=atols, repeats=args.repeats)
        results[problem] = result
        print(result)
        print(f"\nat equal tolerance on {problem} (atol = {args.atol_ratio:g} rtol):")
        print(f"{'rtol':>8s}  " + "  ".join(f"{name:>30s}" for name in result.solvers))
        print(f"{'':8s}  " + "  ".join(f"{'error':>11s} {'NFE':>6s} {'ms':>11s}" for _ in result.solvers))
        for rtol in rtols:
            cells = []
            for name in result.solvers:
                row = next(r for r in result.rows_of(name) if r["rtol"] == rtol)
                cells.append(f"{row['strong_error']:11.3e} {row['nfe']:6.0f} {1e3 * row['seconds']:11.3f}")
            print(f"{rtol:8.0e}  " + "  ".join(cells))
        print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({name: r.to_dict() for name, r in results.items()}, handle, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        _plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 4 * len(results)), squeeze=False)
    for (ax_nfe, ax_time), (problem, result) in zip(axes, results.items()):
        for i, name in enumerate(result.solvers):
            rows = result.rows_of(name)
            errors = np.array([r["strong_error"] for r in rows])
            ax_nfe.loglog([r["nfe"] for r in rows], errors, "o-", color=f"C{i}", label=name)
            ax_time.loglog([r["seconds"] for r in rows], errors, "o-", color=f"C{i}", label=name)
        ax_nfe.set_xlabel("NFE")
        ax_time.set_xlabel("wall time per solve (s)")
        for ax in (ax_nfe, ax_time):
            ax.set_ylabel("error |x_N - x(T)|")
            ax.set_title(problem)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
