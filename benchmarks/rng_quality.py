"""Statistical quality of the counter-based generator: raw 32-bit words into dieharder.

Streams the words ``sdekit.brownian.counter_words`` gives (the two words each ``(key, element)``
turns into its two normals, see ``sdekit.brownian.generator``), as raw binary, into
``dieharder -g 200`` (dieharder's "raw binary on stdin" generator) and reports the summary: how
many test results were PASSED, WEAK and FAILED, and the p-values.

Layouts of the stream (``--layout``):

* ``tree`` (default): keys ``0, 1, 2, ...`` (heap node ids), ``--elements`` elements each, key by
  key; neighbouring keys' streams follow one another, so relations between keys (the collision of
  issue 11) show up as they did in a tree of that state size;
* ``keys``: element 0 of keys ``0, 1, 2, ...``, i.e. one word pair per key: a stream across keys only;
* ``elements``: one key, elements ``0, 1, 2, ...``.

By default a quick subset of dieharder's tests runs (about a few minutes on one core), each test
on a fresh stream from the start of the layout and bounded by ``--timeout`` seconds; ``--all``
runs ``dieharder -a`` (hours). Without dieharder on PATH the script says so and stops, unless
``--stdout`` is given: then it writes the raw words to stdout for any battery, e.g.

    python benchmarks/rng_quality.py --stdout | dieharder -a -g 200
    python benchmarks/rng_quality.py [--tests 0 2 100 ...] [--all] [--seed 0] [--layout tree]
        [--elements 3072] [--psamples N] [--timeout 600] [--json out.json] [--plot p_values.png]

dieharder: Debian/Ubuntu package ``dieharder`` (``apt-get install dieharder``).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time

import torch

from sdekit.brownian import counter_words

# Diehard birthdays, 32x32 rank, bitstream, count-the-1s (stream), runs, craps; STS monobit, runs,
# serial; RGB bit distribution, lagged sums, KS; byte distribution; DAB DCT, monobit 2.
QUICK_TESTS = [0, 2, 4, 8, 15, 16, 100, 101, 102, 200, 203, 204, 205, 206, 209]
WORDS_PER_BATCH = 1 << 21
RESULT_LINE = re.compile(r"^\s*(?P<test>[\w\-]+)\|\s*(?P<ntup>\d+)\|\s*(?P<tsamples>\d+)\|"
                         r"\s*(?P<psamples>\d+)\|\s*(?P<p>[0-9.eE+\-]+)\|\s*(?P<verdict>PASSED|WEAK|FAILED)")


def word_batches(seed: int, layout: str, elements: int):
    """Endless batches of uint32 words (as numpy arrays) in the chosen layout."""
    start = 0
    while True:
        if layout == "tree":
            keys_per_batch = max(1, WORDS_PER_BATCH // (2 * elements))
            keys = torch.arange(start, start + keys_per_batch, dtype=torch.int64)
            words = counter_words(seed, keys, elements).transpose(1, 2)  # (key, element, word)
            start += keys_per_batch
        elif layout == "keys":
            keys = torch.arange(start, start + WORDS_PER_BATCH // 2, dtype=torch.int64)
            words = counter_words(seed, keys, 1)[:, :, 0]  # (key, word)
            start += WORDS_PER_BATCH // 2
        else:
            pairs = WORDS_PER_BATCH // 2
            span = torch.arange(start, start + pairs, dtype=torch.int64)
            words = counter_words(seed, torch.zeros((), dtype=torch.int64), span)[0].T  # (element, word)
            start += pairs
            if start + pairs > 1 << 33:
                raise RuntimeError("the elements layout covers 2**33 elements only")
        yield words.reshape(-1).to(torch.int32).numpy().view("uint32")


def write_stream(handle, seed: int, layout: str, elements: int) -> None:
    """Write words to a binary handle until it closes."""
    try:
        for batch in word_batches(seed, layout, elements):
            handle.write(batch.tobytes())
    except (BrokenPipeError, ValueError, OSError):
        pass


def run_dieharder(arguments: list[str], seed: int, layout: str, elements: int, timeout: float):
    """Run dieharder on the stream; returns (result rows, seconds, timed_out)."""
    command = ["dieharder", *arguments, "-g", "200"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    timed_out = False
    try:
        for batch in word_batches(seed, layout, elements):
            if process.poll() is not None:
                break
            if time.perf_counter() - start > timeout:
                timed_out = True
                process.kill()
                break
            try:
                process.stdin.write(batch.tobytes())
            except (BrokenPipeError, OSError):
                break
    finally:
        try:
            process.stdin.close()
        except OSError:
            pass
    output = process.stdout.read().decode(errors="replace")
    process.wait()
    rows = [match.groupdict() for match in map(RESULT_LINE.match, output.splitlines()) if match]
    return rows, time.perf_counter() - start, timed_out


def plot_p_values(rows: list[dict], path: str) -> None:
    """Histogram of the p-values (uniform on [0, 1] for a good generator)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 3.5))
    axis.hist([float(row["p"]) for row in rows], bins=20, range=(0, 1))
    axis.set_xlabel("p-value")
    axis.set_ylabel("tests")
    axis.set_title(f"dieharder on counter_words ({len(rows)} results)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, nargs="+", default=QUICK_TESTS,
                        help="dieharder test numbers (dieharder -l lists them; default: a quick subset)")
    parser.add_argument("--all", action="store_true", help="run dieharder -a (all tests: hours)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["tree", "keys", "elements"], default="tree")
    parser.add_argument("--elements", type=int, default=3072, help="elements per key in the tree layout")
    parser.add_argument("--psamples", type=int, default=None, help="dieharder -p (p-value samples per test)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per dieharder run")
    parser.add_argument("--stdout", action="store_true", help="write the raw words to stdout instead")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="histogram of p-values (needs matplotlib)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    if args.stdout:
        write_stream(sys.stdout.buffer, args.seed, args.layout, args.elements)
        return {}
    if shutil.which("dieharder") is None:
        print("dieharder is not on PATH: nothing was tested. Install it (Debian/Ubuntu: "
              "apt-get install dieharder), or pipe the raw words into another battery with\n"
              "    python benchmarks/rng_quality.py --stdout | dieharder -a -g 200")
        result = {"status": "dieharder not found"}
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(result, handle, indent=2)
        return result

    extra = [] if args.psamples is None else ["-p", str(args.psamples)]
    runs = [["-a", *extra]] if args.all else [["-d", str(test), *extra] for test in args.tests]
    print(f"dieharder -g 200 on sdekit.brownian.counter_words (Philox4x32-10), seed {args.seed}, "
          f"layout {args.layout}" + (f" ({args.elements} elements per key)" if args.layout == "tree" else ""))
    rows, timeouts, seconds = [], [], 0.0
    for arguments in runs:
        found, elapsed, timed_out = run_dieharder(arguments, args.seed, args.layout, args.elements, args.timeout)
        seconds += elapsed
        if timed_out:
            timeouts.append(" ".join(arguments))
        for row in found:
            print(f"  {row['test']:>28s} ntup {row['ntup']:>2s}  p = {float(row['p']):.6f}  {row['verdict']}")
        rows += found
    counts = {verdict: sum(row["verdict"] == verdict for row in rows) for verdict in ("PASSED", "WEAK", "FAILED")}
    print(f"summary: {counts['PASSED']} PASSED, {counts['WEAK']} WEAK, {counts['FAILED']} FAILED "
          f"of {len(rows)} results in {seconds:.0f} s"
          + (f"; stopped at the time limit: {', '.join(timeouts)}" if timeouts else ""))
    print("(WEAK: a p-value below 0.005 or above 0.995; among ~100 results about one is expected "
          "from a perfect generator)")
    result = {"status": "ran", "seed": args.seed, "layout": args.layout, "elements": args.elements,
              "counts": counts, "results": rows, "timed_out": timeouts, "seconds": seconds}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    if args.plot and rows:
        plot_p_values(rows, args.plot)
    return result


if __name__ == "__main__":
    main()
