"""Sample a 2-D Gaussian mixture through a VP diffusion with its exact score and compare samplers.

The score is exact (``GaussianMixture.score_fn``), so every error below is discretization error:

- deterministic samplers: mean distance per sample to the probability-flow ODE solved by dopri5 at
  rtol = atol = 1e-10 from the same x_T (the exact answer of the sampler's own equation);
- stochastic samplers: sliced Wasserstein-1 distance between the samples and fresh data samples,
  beside the same distance between two independent data sets of the same size (its noise floor).

    python examples/compare_samplers.py [--n 2000] [--sde vp|subvp|ve|cosine] [--plot samples.png]
"""
from __future__ import annotations

import argparse
import time

import torch

import sdekit_diffusion as skd

DETERMINISTIC = ["ddim", "dpm_solver_2", "dpm_solver_3", "dpm_solver++_2m", "dpm_solver++_3m", "unipc", "ipndm",
                 "deis", "edm_heun", "heun", "rk4"]
STOCHASTIC = [("euler_maruyama", {}), ("sra1", {}), ("reverse_diffusion", {}), ("ancestral", {}),
              ("pc", {"corrector": "langevin", "snr": 0.16}), ("ddim", {"eta": 1.0}), ("dpm_solver++_2m_sde", {})]
SDES = {"vp": skd.VPSDE, "subvp": skd.SubVPSDE, "ve": skd.VESDE, "cosine": skd.CosineVPSDE}


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Mean over random directions of the 1-D Wasserstein-1 distance of the projections."""
    directions = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return (pa - pb).abs().mean().item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of samples (deterministic samplers)")
    parser.add_argument("--n-stochastic", type=int, default=20000,
                        help="number of samples for the stochastic samplers' distribution distance")
    parser.add_argument("--sde", choices=sorted(SDES), default="vp", help="forward process")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50], help="score-evaluation budgets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="save a scatter plot of data and samples here (PNG)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small tensors: 1 is fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)

    data = skd.GaussianMixture([0.5, 0.3, 0.2], [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], [0.4, 0.3, 0.5])
    sde = SDES[args.sde]()
    score = data.score_fn(sde)
    x_T = sde.prior_sample((args.n, 2), generator=torch.Generator().manual_seed(args.seed))
    reference = skd.sample(sde, score, x_T=x_T, solver="dopri5", rtol=1e-10, atol=1e-10).x
    print(f"{sde!r}, 3-component 2-D Gaussian mixture, exact score, {args.n} samples\n")

    print("Deterministic samplers: mean |x0 - x0_ref| (probability-flow ODE reference, dopri5 1e-10)")
    print(f"{'sampler':18s} " + " ".join(f"{'NFE~' + str(n):>12s}" for n in args.nfe))
    best = {}
    for name in DETERMINISTIC:
        cells = []
        for nfe in args.nfe:
            calls = skd.samplers.get(name).calls_per_step({})   # score calls per grid step
            steps = (nfe + 1) // 2 if name == "edm_heun" else nfe // calls   # edm_heun: its last step is Euler
            sol = skd.sample(sde, score, x_T=x_T, solver=name, steps=max(steps, 1), time_grid="logsnr")
            err = (sol.x - reference).norm(dim=1).mean().item()
            best[nfe] = min(best.get(nfe, (float("inf"), "")), (err, name))
            cells.append(f"{err:9.2e}/{sol.nfe:<2d}")
        print(f"{name:18s} " + " ".join(f"{c:>12s}" for c in cells))
    print("(cells: error/actual NFE)  best: " + ", ".join(f"NFE {n}: {name} {err:.1e}" for n, (err, name) in best.items()))

    n = args.n_stochastic
    fresh = data.sample(n, generator=torch.Generator().manual_seed(args.seed + 1))
    floor = sliced_wasserstein(data.sample(n, generator=torch.Generator().manual_seed(args.seed + 2)), fresh)
    print(f"\nStochastic samplers: sliced W1 to data (noise floor for n={n}: {floor:.3f})")
    print(f"{'sampler':32s} {'steps':>6s} {'NFE':>6s} {'SW1':>8s} {'seconds':>8s}")
    for name, options in STOCHASTIC + [("adaptive_sde", {})]:
        for steps in ([None] if name == "adaptive_sde" else [50, 200]):
            start = time.perf_counter()
            sol = skd.sample(sde, score, (n, 2), solver=name, steps=steps, seed=args.seed, **options)
            elapsed = time.perf_counter() - start
            label = name + ("" if not options else " " + ",".join(f"{k}={v}" for k, v in options.items()))
            print(f"{label:32s} {str(steps or '-'):>6s} {sol.nfe:6d} {sliced_wasserstein(sol.x, fresh):8.3f} {elapsed:8.2f}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
        axes[0].scatter(*fresh[:args.n].T, s=2)
        axes[0].set_title("data")
        sol = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_3m", steps=10, time_grid="logsnr")
        axes[1].scatter(*sol.x.T, s=2, color="C1")
        axes[1].set_title(f"dpm_solver++_3m, {sol.nfe} NFE")
        fig.savefig(args.plot, dpi=120)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
