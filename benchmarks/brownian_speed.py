"""Time per step of the Brownian increments of a fixed grid, for each noise source.

For each case (a state shape and a number of steps on [0, 1]) the grid is queried two ways:

* **whole grid** -- one ``increments`` call with all ``k + 1`` times (a fixed-grid query; the
  tree shares the nodes of the whole grid);
* **chunks** -- one call per chunk of ``--chunk`` steps, as ``sdekit.solve`` queries a source.

Sources: sdekit's ``BrownianTree`` (with and without the Lévy area), ``GeneratorNoise`` and
``PerSampleNoise``, and torchsde's ``BrownianInterval`` queried once per step (as
``torchsde.sdeint`` does). The tree's cost per step is set by the grid: on a dyadic grid of 2**j
steps its points need the top j levels only (about one tree node per step for a whole-grid query),
on other grids every point needs all ``depth`` levels (see ``BrownianTree``'s docstring), unless
the tree is built with ``align=steps``, which stretches its dyadic grid so that the uniform grid of
``steps`` steps lies on it (rows ``BrownianTree(align=k)``, for the non-dyadic cases). The default
cases hold one dyadic and one non-dyadic grid per shape.

Each figure is the best of ``--repeats`` rounds, each on a fresh source (no path state is reused;
the tree's per-thread scratch buffers are, as in any process that queries more than once); a
round times every source of the case once, interleaved, in an order that rotates from round to
round, so that a slow phase of a shared machine weighs on all rows alike.
Target (issue 11): ``BrownianTree.increments`` over a fixed grid <= 3x ``GeneratorNoise`` per step
at (64, 2) and at (64, 3, 32, 32).

    python benchmarks/brownian_speed.py [--cases 64x2:1024 64x2:1000 64x3x32x32:64 64x3x32x32:50]
        [--chunk 32] [--repeats 9] [--dtype float64] [--clock wall|cpu] [--json out.json]
        [--plot out.png]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from sdekit.brownian import BrownianTree, GeneratorNoise, PerSampleNoise

DEFAULT_CASES = ["64x2:1024", "64x2:1000", "64x3x32x32:64", "64x3x32x32:50"]
TARGET = 3.0


def parse_case(text: str) -> tuple[tuple[int, ...], int]:
    """``"64x3x32x32:64"`` -> ((64, 3, 32, 32), 64)."""
    shape, _, steps = text.partition(":")
    try:
        return tuple(int(n) for n in shape.split("x")), int(steps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a case is SHAPE:STEPS such as 64x2:1000, got {text!r}") from None


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def best_times(entries: dict, repeats: int, clock=time.perf_counter) -> dict[str, float]:
    """Best time (seconds, on ``clock``) of each ``entries[name] = (make_source, run)`` over
    ``repeats`` rounds, each on a fresh source, after one warm-up round. Every round runs every
    entry once, so a slow phase of a shared machine slows all of them alike instead of whichever
    was being measured: the ratios between rows are what the figures are for. The order rotates
    from round to round, so that no entry always runs in the cold caches the previous round's
    last (torchsde's Python-heavy loop) leaves."""
    for make_source, run in entries.values():
        run(make_source())
    best = {name: math.inf for name in entries}
    names = list(entries)
    for round_ in range(repeats):
        # rotated each round: no entry always runs first (after the previous round's slowest)
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            make_source, run = entries[name]
            source = make_source()
            start = clock()
            run(source)
            best[name] = min(best[name], clock() - start)
    return best


def queries(ts: torch.Tensor, chunk: int | None, levy_area: bool = False):
    """Query all of ``ts``, in one call (``chunk=None``) or in chunks of ``chunk`` steps."""
    steps = ts.shape[0] - 1
    chunk = steps if chunk is None else chunk

    def run(source):
        for start in range(0, steps, chunk):
            source.increments(ts[start:min(start + chunk, steps) + 1], levy_area=levy_area)
    return run


def measure_case(shape, steps, chunk, repeats, dtype, clock=time.perf_counter) -> dict[str, float]:
    """Seconds per step of every source on one case."""
    ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    rows: dict = {}   # name -> (make_source, run), timed together by best_times

    def tree():
        return BrownianTree(0.0, 1.0, shape, seed=0, dtype=dtype)

    def aligned():
        return BrownianTree(0.0, 1.0, shape, seed=0, dtype=dtype, align=steps)

    def generator():
        return GeneratorNoise(shape, torch.Generator().manual_seed(0), dtype=dtype)

    for label, query_chunk in (("whole grid", None), (f"chunks of {chunk}", chunk)):
        rows[f"BrownianTree, {label}"] = (tree, queries(ts, query_chunk))
        rows[f"BrownianTree + Levy area, {label}"] = (tree, queries(ts, query_chunk, levy_area=True))
        if not dyadic(steps):   # align=steps makes this grid dyadic
            rows[f"BrownianTree(align={steps}), {label}"] = (aligned, queries(ts, query_chunk))
            rows[f"BrownianTree(align={steps}) + Levy area, {label}"] = (
                aligned, queries(ts, query_chunk, levy_area=True))
        rows[f"GeneratorNoise, {label}"] = (generator, queries(ts, query_chunk))
        rows[f"GeneratorNoise + Levy area, {label}"] = (generator, queries(ts, query_chunk, levy_area=True))
    rows[f"PerSampleNoise, chunks of {chunk}"] = (
        lambda: PerSampleNoise(shape, seed=0, dtype=dtype), queries(ts, chunk))
    try:
        import torchsde
    except ImportError:  # pragma: no cover - torchsde is a core dependency
        torchsde = None
    if torchsde is not None:
        times = ts.tolist()

        def per_step(source):
            for i in range(steps):
                source(times[i], times[i + 1])
        rows["torchsde.BrownianInterval, per step"] = (
            lambda: torchsde.BrownianInterval(t0=0.0, t1=1.0, size=shape, dtype=dtype, entropy=0),
            per_step)
    return {name: seconds / steps for name, seconds in best_times(rows, repeats, clock).items()}


def dyadic(steps: int) -> bool:
    return steps & (steps - 1) == 0


def ratios(per_step: dict[str, float], chunk: int, steps: int) -> dict[str, float]:
    """Tree / GeneratorNoise per step (the target's ratio; also for the tree aligned to a
    non-dyadic grid) and torchsde / tree."""
    out = {}
    trees = [("tree", "BrownianTree")] + ([] if dyadic(steps) else
                                          [(f"tree(align={steps})", f"BrownianTree(align={steps})")])
    for label in ("whole grid", f"chunks of {chunk}"):
        for short, name in trees:
            out[f"{short} / generator, {label}"] = (per_step[f"{name}, {label}"]
                                                    / per_step[f"GeneratorNoise, {label}"])
            out[f"{short} / generator with Levy area, {label}"] = (
                per_step[f"{name} + Levy area, {label}"]
                / per_step[f"GeneratorNoise + Levy area, {label}"])
    torchsde_row = per_step.get("torchsde.BrownianInterval, per step")
    if torchsde_row is not None:
        out["torchsde / tree (chunks)"] = torchsde_row / per_step[f"BrownianTree, chunks of {chunk}"]
        out["torchsde / tree (whole grid)"] = torchsde_row / per_step["BrownianTree, whole grid"]
    return out


def plot(results: list[dict], path: str) -> None:
    """Bars of microseconds per step, one panel per case (log scale)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.8 * len(results), 4.8), squeeze=False)
    for axis, result in zip(axes[0], results):
        names = list(result["us_per_step"])
        axis.barh(range(len(names)), [result["us_per_step"][n] for n in names])
        axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.set_xscale("log")
        axis.set_xlabel("us per step")
        axis.set_title(f"{tuple(result['shape'])}, {result['steps']} steps", fontsize=9)
        axis.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", type=parse_case, default=[parse_case(c) for c in DEFAULT_CASES],
                        help="SHAPE:STEPS, e.g. 64x2:1000 (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=32, help="steps per call, as sdekit.solve")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the CPU time of this thread (steadier on a shared machine)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--plot", default=None, help="write a bar chart to this file (needs matplotlib)")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    print(f"Brownian increments on [0, 1], {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock (best of {args.repeats})")
    results = []
    for shape, steps in args.cases:
        per_step = measure_case(shape, steps, args.chunk, args.repeats, dtype, CLOCKS[args.clock])
        ratio = ratios(per_step, args.chunk, steps)
        print(f"\nshape {shape}, {steps} steps{' (dyadic)' if dyadic(steps) else ''}")
        print(f"{'source':44s} {'us/step':>10s}")
        for name, seconds in per_step.items():
            print(f"{name:44s} {seconds * 1e6:10.1f}")
        for name, value in ratio.items():
            verdict = "" if not name.startswith("tree") else (
                "  (target <= 3x: met)" if value <= TARGET else "  (target <= 3x: missed)")
            print(f"{name:44s} {value:10.2f}{verdict}")
        results.append({"shape": list(shape), "steps": steps, "dtype": args.dtype, "clock": args.clock,
                        "threads": torch.get_num_threads(),
                        "us_per_step": {k: v * 1e6 for k, v in per_step.items()}, "ratios": ratio})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
