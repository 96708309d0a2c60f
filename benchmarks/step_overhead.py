"""Time per step of fixed-step Euler–Maruyama: sdekit vs a hand-written torch loop vs torchsde.

State (64, 2), a cheap drift (-x) and diffusion (0.5), 1000 steps on [0, 1], float32 on the CPU,
all measured in the same run (median of --repeats runs after one warm-up).

    python benchmarks/step_overhead.py [--batch 64] [--dim 2] [--steps 1000] [--json out.json]

Targets (issue 2): sdekit <= 1.3x the hand-written loop, >= 5x faster than torchsde's default
(BrownianInterval), and with a replayable BrownianTree >= 3x faster than torchsde with its
BrownianInterval.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import sdekit


class CheapSDE(sdekit.SDE):
    noise_type = "diagonal"

    def drift(self, t, x):
        return -x

    def diffusion(self, t, x):
        return torch.full_like(x, 0.5)


class CheapTorchSDE(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return torch.full_like(y, 0.5)


def hand_loop(x0, steps):
    sde, dt = CheapSDE(), 1.0 / steps
    sqrt_dt = dt ** 0.5
    ts = torch.linspace(0.0, 1.0, steps + 1)
    x = x0
    for i in range(steps):
        t = ts[i]
        x = x + sde.drift(t, x) * dt + sde.diffusion(t, x) * torch.randn_like(x) * sqrt_dt
    return x


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: per-step overhead)")
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x0 = torch.ones(args.batch, args.dim)
    n = args.steps
    shape = (args.batch, args.dim)

    def sdekit_generator():
        sdekit.solve(CheapSDE(), x0, 0.0, 1.0, solver="euler_maruyama", steps=n)

    def sdekit_tree():
        tree = sdekit.BrownianTree(0.0, 1.0, shape, seed=0, dtype=x0.dtype)
        sdekit.solve(CheapSDE(), x0, 0.0, 1.0, solver="euler_maruyama", steps=n, brownian=tree)

    rows = {"hand-written torch loop": timed(lambda: hand_loop(x0, n), args.repeats),
            "sdekit euler_maruyama (generator noise)": timed(sdekit_generator, args.repeats),
            "sdekit euler_maruyama (BrownianTree)": timed(sdekit_tree, args.repeats)}
    try:
        import torchsde

        ts = torch.tensor([0.0, 1.0])

        def torchsde_default():
            torchsde.sdeint(CheapTorchSDE(), x0, ts, method="euler", dt=1.0 / n)

        rows["torchsde.sdeint euler (default BrownianInterval)"] = timed(torchsde_default, args.repeats)
    except ImportError:
        print("torchsde is not installed: its rows are skipped")
    reference = rows["hand-written torch loop"]
    print(f"Euler–Maruyama, state {shape}, {n} steps, float32, {args.threads} thread(s); median of {args.repeats}")
    print(f"{'method':52s} {'us/step':>9s} {'vs loop':>8s}")
    for name, seconds in rows.items():
        print(f"{name:52s} {1e6 * seconds / n:9.1f} {seconds / reference:7.2f}x")
    ts_default = rows.get("torchsde.sdeint euler (default BrownianInterval)")
    if ts_default is not None:
        print(f"\nsdekit (generator) vs loop: {rows['sdekit euler_maruyama (generator noise)'] / reference:.2f}x (target <= 1.3x)")
        print(f"torchsde default / sdekit (generator): {ts_default / rows['sdekit euler_maruyama (generator noise)']:.1f}x faster (target >= 5x)")
        print(f"torchsde default / sdekit (BrownianTree): {ts_default / rows['sdekit euler_maruyama (BrownianTree)']:.1f}x faster (target >= 3x)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": shape, "steps": n, "seconds": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
