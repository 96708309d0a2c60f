r"""Cost of a schedule per reverse-drift call: a marginal given by functions (``from_marginal``,
``f`` and ``g^2`` by autograd) against the closed-form VP schedule, both with VP's alpha and sigma.

Three timings per schedule, one torch thread, state ``(batch, dim)``, the exact score of a
Gaussian mixture:

- ``drift (cold)``: ``reverse.drift(t, x)`` at times never seen before (autograd every call);
- ``drift (grid)``: the same on a grid the schedule has precomputed (what :func:`skd.sample` does
  before it steps: one vectorised autograd pass, then a cached look-up per call);
- ``sample/step``: a whole ``skd.sample(solver="euler_maruyama", steps=N)`` divided by ``N``.

The ratio column divides by the closed-form VP in the same run (target of issue 9: <= 1.3).

    OMP_NUM_THREADS=1 python benchmarks/schedule_overhead.py [--batch 64] [--dim 2] [--steps 500]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import sdekit_diffusion as skd


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)

    vp = skd.VPSDE()
    schedules = {"VP closed form": lambda: skd.VPSDE(),
                 "from_marginal (autograd)": lambda: skd.DiffusionSDE.from_marginal(
                     lambda t: vp.schedule.alpha(t), lambda t: vp.schedule.sigma(t))}
    data = skd.GaussianMixture([0.5, 0.5], torch.stack([torch.full((args.dim,), -1.0),
                                                        torch.full((args.dim,), 1.0)]), [0.3, 0.5])
    x = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, make in schedules.items():
        sde = make()
        reverse = sde.reverse(data.score_fn(sde))
        n = args.steps

        def cold():   # fresh times on every repeat: never in a cache
            for t in torch.rand(n).unbind():
                reverse.drift(t * 0.99 + 0.005, x)

        grid = torch.linspace(1.0, 1e-3, n + 1)
        if hasattr(sde.schedule, "precompute"):
            sde.schedule.precompute(grid)
        times = list(grid.unbind())

        def warm():
            for t in times[:-1]:
                reverse.drift(t, x)

        def sampling():
            skd.sample(sde, data.score_fn(sde), x_T=x, solver="euler_maruyama", steps=n, seed=0)

        rows.append({"schedule": name,
                     "drift_cold_us": best_of(cold, args.repeats) / n * 1e6,
                     "drift_grid_us": best_of(warm, args.repeats) / n * 1e6,
                     "sample_step_us": best_of(sampling, args.repeats) / n * 1e6})
    base = rows[0]
    print(f"reverse drift per call, state ({args.batch}, {args.dim}), float64, "
          f"{torch.get_num_threads()} thread(s); ratio = / VP closed form")
    print(f"{'schedule':26s} {'drift cold':>12s} {'drift grid':>12s} {'sample/step':>12s}"
          f" {'ratio cold':>10s} {'ratio grid':>10s} {'ratio sample':>12s}")
    for row in rows:
        row.update(ratio_cold=row["drift_cold_us"] / base["drift_cold_us"],
                   ratio_grid=row["drift_grid_us"] / base["drift_grid_us"],
                   ratio_sample=row["sample_step_us"] / base["sample_step_us"])
        print(f"{row['schedule']:26s} {row['drift_cold_us']:10.1f}µs {row['drift_grid_us']:10.1f}µs "
              f"{row['sample_step_us']:10.1f}µs {row['ratio_cold']:10.2f} {row['ratio_grid']:10.2f} "
              f"{row['ratio_sample']:12.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
