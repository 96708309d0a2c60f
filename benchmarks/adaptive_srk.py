"""Adaptive order-1.5 SRK solvers vs fixed grids at equal strong error, on one Brownian path.

Problem (``sdekit.bench``): ``additive_transient`` by default — the Rackauckas–Nie additive-noise
system with the clock ``0.01 + t`` (drift and noise change on the time scale 0.01 at t = 0 and 1 at
t = 1) and alpha = 1, exact pathwise solution ``sqrt(s+t) x_t = sqrt(s) x0 + b (t + alpha W_t)``;
``--problem rn_additive`` is the original (clock ``1 + t``, smooth, alpha = 0.1). Every method
solves the same ``--samples`` paths (one ``sdekit.BrownianTree`` per batch, the same seed for
every method): Euler–Maruyama and SRA1 on uniform grids, and sra3, sosra, shark (and adaptive_em
for comparison) adaptively at each ``--rtol`` (``atol = rtol``). Reported per row: NFE (drift
evaluations per solve; adaptive rows include the 2 of the initial step), accepted and rejected
steps, the strong error ``E |X_N - X(1)|_2`` with its Monte-Carlo standard error, and for each
adaptive row the NFE that Euler–Maruyama and SRA1 need for the same error (log-log interpolation
between their grid points, extrapolated beyond their sweep) as a ratio to the adaptive NFE;
``--srk-steps`` adds the adaptive methods on uniform grids. ``--per-sample`` gives every sample
its own step size (the problem then takes one time per sample).

    OMP_NUM_THREADS=1 python benchmarks/adaptive_srk.py [--problem additive_transient] [--samples 256]
        [--rtol 1e-1,1e-2,1e-3,1e-4,1e-5] [--em-steps 16,...,16384] [--sra1-steps 8,...,2048]
        [--srk-steps 16,64,256] [--per-sample] [--json out.json] [--plot out.png]
"""
from __future__ import annotations

import argparse
import json
import math
import time

from sdekit import bench
from sdekit.bench.result import BenchResult

ADAPTIVE = ("sra3", "sosra", "shark", "adaptive_em")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def nfe_for_error(points, target):
    """``(nfe, extrapolated)``: the NFE at which the (NFE, error) curve of a uniform grid reaches
    ``target``, by log-log interpolation between neighbouring points, or beyond the sweep by
    extrapolating the line through its two finest points (``extrapolated=True``); ``(None, False)``
    when the curve does not decrease."""
    points = sorted(p for p in points if p[1] is not None and p[1] > 0)
    if len(points) < 2:
        return None, False
    for (n0, e0), (n1, e1) in zip(points, points[1:]):
        if e0 >= target >= e1 and e0 > e1:
            w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))), False
    (n0, e0), (n1, e1) = points[-2:] if target < points[-1][1] else points[:2]
    if not e0 > e1:
        return None, False
    slope = (math.log(n1) - math.log(n0)) / (math.log(e0) - math.log(e1))  # log NFE per log(1/error)
    return math.exp(math.log(n1) + slope * (math.log(e1) - math.log(target))), True


def _problem(name: str, per_sample: bool):
    problem = bench.get_problem(name)
    if per_sample:
        try:
            problem = type(problem)(batched_time=True)
        except TypeError as error:
            raise SystemExit(f"problem {name!r} does not take one time per sample (batched_time): {error}")
    if not (problem.is_sde and problem.has_exact and problem.problem.noise_type == "additive"):
        raise SystemExit(f"problem {name!r} must be an additive-noise SDE with an exact solution")
    return problem


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="additive_transient")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", default="1e-1,1e-2,1e-3,1e-4,1e-5")
    parser.add_argument("--em-steps", default="16,64,256,1024,4096,16384")
    parser.add_argument("--sra1-steps", default="8,32,128,512,2048")
    parser.add_argument("--solvers", default=",".join(ADAPTIVE), help="adaptive solvers to run")
    parser.add_argument("--srk-steps", default="", help="also run the adaptive solvers on these uniform grids")
    parser.add_argument("--per-sample", action="store_true", help="one step size per sample")
    parser.add_argument("--json", help="write the rows and ratios here")
    parser.add_argument("--plot", help="write a work-precision plot (error vs NFE and seconds) here")
    args = parser.parse_args(argv)
    problem = _problem(args.problem, args.per_sample)
    common = dict(samples=args.samples, seed=args.seed)
    adaptive = [s for s in args.solvers.split(",") if s]
    start = time.perf_counter()
    parts = [bench.run(problem, ["euler_maruyama"], steps=_ints(args.em_steps), **common),
             bench.run(problem, ["sra1"], steps=_ints(args.sra1_steps), **common),
             bench.run(problem, adaptive, rtols=_floats(args.rtol), **common)]
    if args.srk_steps:
        fixed_srk = bench.run(problem, adaptive, steps=_ints(args.srk_steps), **common)
        for row in fixed_srk.rows:
            row["solver"] += " (uniform)"
        parts.append(BenchResult(fixed_srk.meta, {f"{k} (uniform)": v for k, v in fixed_srk.solvers.items()},
                                 fixed_srk.rows))
    result = BenchResult(meta={**parts[0].meta, "per_sample": args.per_sample},
                         solvers={k: v for part in parts for k, v in part.solvers.items()},
                         rows=[row for part in parts for row in part.rows])
    elapsed = time.perf_counter() - start

    fixed = {name: [(r["nfe"], r["strong_error"]) for r in result.rows_of(name)]
             for name in ("euler_maruyama", "sra1")}
    print(f"{problem.name}: {problem.description}\n{args.samples} paths, seed {args.seed}, one Brownian path per "
          f"sample for every method{', per-sample steps' if args.per_sample else ''}; {elapsed:.0f} s\n")
    header = (f"{'solver':24s} {'steps/rtol':>10s} {'NFE':>9s} {'accepted':>9s} {'rejected':>8s} "
              f"{'strong error':>12s} {'+-':>8s} {'EM NFE/NFE':>11s} {'SRA1 NFE/NFE':>12s}")
    print(header)
    print("-" * len(header))
    for row in result.rows:
        adaptive = row["rtol"] is not None
        row["nfe_ratio"], row["nfe_ratio_extrapolated"] = {}, {}
        cells = []
        for name in ("euler_maruyama", "sra1"):
            needed, extrapolated = nfe_for_error(fixed[name], row["strong_error"]) if adaptive else (None, False)
            row["nfe_ratio"][name] = None if needed is None else needed / row["nfe"]
            row["nfe_ratio_extrapolated"][name] = extrapolated
            cells.append("-" if needed is None else f"{'~' if extrapolated else ''}{needed / row['nfe']:.3g}x")
        setting = f"{row['rtol']:.0e}" if adaptive else str(row["steps"])
        print(f"{row['solver']:24s} {setting:>10s} {row['nfe']:9.0f} {row['n_steps']:9.0f} {row['n_rejected']:8.0f} "
              f"{row['strong_error']:12.3e} {row['strong_stderr'] or 0:8.1e} {cells[0]:>11s} {cells[1]:>12s}")
    print("\nEM/SRA1 NFE/NFE: the NFE Euler-Maruyama / SRA1 on a uniform grid need for the adaptive row's error, "
          "over the row's NFE;\n'~': beyond their sweep, extrapolated along the line through their two finest "
          "(or coarsest) points.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result.to_dict(), handle, indent=1)
    if args.plot:
        result.plot_work_precision(args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
