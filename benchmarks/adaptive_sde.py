"""Adaptive reverse-SDE sampling vs Euler–Maruyama at equal *pathwise* error.

Distribution distances at a few thousand samples are dominated by Monte-Carlo noise, so this
benchmark measures the strong error instead: ``adaptive_sde`` (Jolicoeur-Martineau et al. 2021,
with its noise from a Brownian tree) and Euler–Maruyama on the reverse SDE are driven by the SAME
Brownian path from the same x_T, and compared with a reference solution on that path (SRA1, strong
order 1.5 for the additive noise of a diffusion's reverse SDE, at ``--reference-steps``; its own
error is printed, from half as many steps). Data: a Gaussian mixture through VP with its exact score.

    OMP_NUM_THREADS=1 python benchmarks/adaptive_sde.py [--dim 8] [--n 1000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion.samplers.adaptive import PATH_SEED_TAG


def strong_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return (x - reference).flatten(1).norm(dim=1).mean().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000, help="samples (paths)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-steps", type=int, default=8192)
    parser.add_argument("--em-steps", default="32,64,128,256,512,1024")
    parser.add_argument("--rel-tols", default="0.2,0.1,0.05,0.02,0.01")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    generator = torch.Generator().manual_seed(args.seed)
    means = 2.0 * torch.randn(4, args.dim, generator=generator)
    data = skd.GaussianMixture([0.4, 0.3, 0.2, 0.1], means, [0.1, 0.2, 0.3, 0.5])
    sde = skd.VPSDE()
    score = data.score_fn(sde)
    x_T = sde.prior_sample((args.n, args.dim), generator=generator)
    # the path adaptive_sde draws for seed=args.seed (samplers/adaptive.py)
    tree = sdekit.BrownianTree(sde.t_min, sde.t_max, tuple(x_T.shape), seed=args.seed + (PATH_SEED_TAG << 64),
                               dtype=x_T.dtype)
    reverse = sde.reverse(score)

    def on_path(solver, steps):
        return sdekit.solve(reverse, x_T, sde.t_max, sde.t_min, solver=solver, steps=steps, brownian=tree)

    start = time.perf_counter()
    reference = on_path("sra1", args.reference_steps).x
    reference_error = strong_error(on_path("sra1", args.reference_steps // 2).x, reference)
    print(f"{args.dim}-d 4-component mixture (stds 0.1..0.5) through VP, {args.n} paths; reference SRA1 with "
          f"{args.reference_steps} steps (its error from {args.reference_steps // 2} steps: {reference_error:.2e}; "
          f"{time.perf_counter() - start:.0f} s)\n")
    rows = []
    print(f"{'sampler':34s} {'NFE':>7s} {'strong error':>13s}")
    for steps in [int(s) for s in args.em_steps.split(",")]:
        for grid in ("uniform", "logsnr"):
            ts = skd.time_grid(sde, steps, grid)
            x = sdekit.solve(reverse, x_T, sde.t_max, sde.t_min, solver="euler_maruyama", ts=ts, brownian=tree).x
            rows.append({"sampler": f"euler_maruyama ({grid})", "steps": steps, "nfe": steps,
                         "error": strong_error(x, reference)})
            print(f"{rows[-1]['sampler']:34s} {steps:7d} {rows[-1]['error']:13.3e}")
    for rel_tol in [float(r) for r in args.rel_tols.split(",")]:
        sol = skd.sample(sde, score, x_T=x_T, solver="adaptive_sde", seed=args.seed, rtol=rel_tol)
        rows.append({"sampler": f"adaptive_sde rel_tol={rel_tol}", "nfe": sol.nfe, "error": strong_error(sol.x, reference)})
        print(f"{rows[-1]['sampler']:34s} {sol.nfe:7d} {rows[-1]['error']:13.3e}")

    print("\nEuler–Maruyama NFE for the adaptive sampler's error (log-log interpolation on each grid):")
    for row in (r for r in rows if r["sampler"].startswith("adaptive")):
        cells = []
        for grid in ("uniform", "logsnr"):
            em = [(r["nfe"], r["error"]) for r in rows if r["sampler"] == f"euler_maruyama ({grid})"]
            needed = _interpolate_nfe(em, row["error"])
            cells.append(f"{grid}: " + ("beyond the sweep" if needed is None else f"{needed:.0f} ({needed / row['nfe']:.2f}x)"))
        print(f"  {row['sampler']:30s} NFE {row['nfe']:5d}  ->  " + ", ".join(cells))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"reference_error": reference_error, "rows": rows}, handle, indent=1)
    return 0


def _interpolate_nfe(points, target):
    """NFE at which the (NFE, error) curve reaches ``target``, interpolating log error vs log NFE."""
    points = sorted(points)
    for (n0, e0), (n1, e1) in zip(points, points[1:]):
        if e0 >= target >= e1:
            w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return None


if __name__ == "__main__":
    raise SystemExit(main())
