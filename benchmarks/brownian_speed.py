"""Time to produce the Brownian increments of a 1000-step solve at state shape (64, 2).

Compares sdekit's noise sources, queried the way ``sdekit.solve`` queries them (one
``increments`` call per chunk of 32 steps), with torchsde's ``BrownianInterval`` queried once per
step (as ``torchsde.sdeint`` does). Each figure is the best of ``--repeats`` runs, each run on a
fresh source (so no cache is reused between runs).

    python benchmarks/brownian_speed.py [--steps 1000] [--chunk 32] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from sdekit.brownian import BrownianTree, GeneratorNoise, PerSampleNoise


def best_time(make_source, run, repeats: int) -> float:
    """Best wall time (seconds) of ``run(source)`` over fresh sources."""
    run(make_source())  # warm-up
    times = []
    for _ in range(repeats):
        source = make_source()
        start = time.perf_counter()
        run(source)
        times.append(time.perf_counter() - start)
    return min(times)


def chunked(ts: torch.Tensor, chunk: int, levy_area: bool = False):
    steps = ts.shape[0] - 1

    def run(source):
        for start in range(0, steps, chunk):
            source.increments(ts[start:min(start + chunk, steps) + 1], levy_area=levy_area)
    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    shape, dtype = (64, 2), getattr(torch, args.dtype)
    ts = torch.linspace(0.0, 1.0, args.steps + 1, dtype=torch.float64)
    rows: dict[str, float] = {}
    rows["BrownianTree.increments (chunks)"] = best_time(
        lambda: BrownianTree(0.0, 1.0, shape, seed=0, dtype=dtype), chunked(ts, args.chunk),
        args.repeats)
    rows["BrownianTree.increments + Levy area"] = best_time(
        lambda: BrownianTree(0.0, 1.0, shape, seed=0, dtype=dtype),
        chunked(ts, args.chunk, levy_area=True), args.repeats)
    rows["GeneratorNoise (chunks)"] = best_time(
        lambda: GeneratorNoise(shape, torch.Generator().manual_seed(0), dtype=dtype),
        chunked(ts, args.chunk), args.repeats)
    rows["PerSampleNoise (chunks)"] = best_time(
        lambda: PerSampleNoise(shape, seed=0, dtype=dtype), chunked(ts, args.chunk), args.repeats)
    try:
        import torchsde
    except ImportError:  # pragma: no cover - torchsde is a core dependency
        torchsde = None
    if torchsde is not None:
        times = ts.tolist()

        def per_step(source):
            for i in range(args.steps):
                source(times[i], times[i + 1])
        rows["torchsde.BrownianInterval (per step)"] = best_time(
            lambda: torchsde.BrownianInterval(t0=0.0, t1=1.0, size=shape, dtype=dtype, entropy=0),
            per_step, args.repeats)

    print(f"Brownian increments for {args.steps} steps, shape {shape}, {args.dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (best of {args.repeats})")
    reference = rows.get("torchsde.BrownianInterval (per step)")
    print(f"{'source':40s} {'total ms':>10s} {'us/step':>9s} {'torchsde / this':>16s}")
    for name, seconds in rows.items():
        ratio = f"{reference / seconds:16.1f}" if reference else f"{'-':>16s}"
        print(f"{name:40s} {seconds * 1e3:10.2f} {seconds / args.steps * 1e6:9.1f} {ratio}")
    result = {"steps": args.steps, "shape": list(shape), "dtype": args.dtype,
              "threads": torch.get_num_threads(), "seconds": rows}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
