"""The ``sdekit`` console script (also ``python -m sdekit``).

The core provides the ``bench`` sub-command. Plugins add theirs through the entry-point group
``sdekit.plugins``: each entry point is loaded and called with the argparse sub-parsers object,
``ep.load()(subparsers)``; a plugin that fails to load is reported as a warning and skipped. A
sub-command parser sets ``func`` (``parser.set_defaults(func=...)``), called with the parsed
arguments; it returns an exit code (``None`` means 0).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from importlib.metadata import entry_points
from typing import Sequence

PLUGIN_GROUP = "sdekit.plugins"


class UsageError(Exception):
    """Bad command-line input: reported on stderr with exit code 2."""


def _list(kind, name: str):
    def parse(text: str):
        try:
            values = [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma-separated list of {kind.__name__}s, "
                                             f"got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"{name} is empty")
        return values
    return parse


def _problem_names() -> list[str]:
    from .bench import problem_names
    return problem_names()


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="discretization error, convergence orders and work-precision of solvers",
        description="Solve a problem with a known exact solution (or exact moments) at several step counts "
                    "or tolerances, on the same Brownian paths, and report strong and weak errors, fitted "
                    "convergence orders with 95% confidence intervals, NFE and wall time.",
        epilog="example: sdekit bench --problem gbm --solvers euler_maruyama,milstein --steps 8,16,32,64 "
               "--samples 500 --json gbm.json --plot gbm.png.  `sdekit bench --list` shows problems and solvers.",
    )
    parser.add_argument("--problem", default="gbm",
                        help="benchmark problem name, one of: " + ", ".join(_problem_names()) + " (default: %(default)s)")
    parser.add_argument("--solvers", type=_list(str, "--solvers"), default=None,
                        help="comma-separated solver names (default: the problem's suggested solvers)")
    parser.add_argument("--steps", type=_list(int, "--steps"), default=None,
                        help="comma-separated fixed step counts (default: the problem's)")
    parser.add_argument("--rtol", type=_list(float, "--rtol"), default=None,
                        help="comma-separated relative tolerances for adaptive solvers (dopri5, adaptive_em); "
                             "without it adaptive solvers take the fixed --steps")
    parser.add_argument("--atol", type=float, default=None,
                        help="absolute tolerance for adaptive solvers (default: equal to each rtol)")
    parser.add_argument("--nfe", type=_list(int, "--nfe"), default=None,
                        help="comma-separated evaluation budgets instead of --steps: each solver takes "
                             "budget // (its evaluations per step) steps, e.g. --nfe 5,10,20,50 to compare "
                             "diffusion samplers at equal work")
    parser.add_argument("--samples", type=int, default=256,
                        help="Monte Carlo samples for SDEs (ODEs with a fixed initial state use 1; default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per batch, one Brownian path per batch (default: all samples in one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Brownian paths and random initial states (batch b uses seed+b; default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each solve this many times and report the fastest (default: %(default)s)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="floating-point type (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the result table as JSON")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="write the convergence plot (error vs step size, reference slopes), e.g. out.png")
    parser.add_argument("--work-plot", metavar="PATH", default=None,
                        help="write the work-precision plot (error vs NFE and vs seconds)")
    parser.add_argument("--list", action="store_true", help="list the problems and solvers, then exit")
    parser.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    import torch

    from . import bench

    if args.list:
        print("problems:")
        for name in bench.problem_names():
            print(f"  {name:14s} {bench.get_problem(name).description}")
        print("solvers:")
        for name in bench.solver_names():
            info = bench.solver_info(name)
            orders = (f"order {info['order']}" if info["kind"] == "ode"
                      else f"strong {info['strong_order']}, weak {info['weak_order']}")
            print(f"  {name:16s} {info['kind']}  {orders}{'  adaptive' if info['adaptive'] else ''}")
        return 0
    if args.problem not in bench.problem_names():
        raise UsageError(f"unknown problem {args.problem!r}; valid problems: {', '.join(bench.problem_names())}")
    problem = bench.get_problem(args.problem)
    names = args.solvers or list(problem.solvers)
    known = bench.solver_names()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"unknown solver{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"valid solvers: {', '.join(sorted(known))}")
    if args.samples < 1:
        raise UsageError(f"--samples must be positive, got {args.samples}")
    if any(n < 1 for n in args.steps or []):
        raise UsageError(f"--steps must be positive, got {args.steps}")
    if any(n < 1 for n in args.nfe or []):
        raise UsageError(f"--nfe budgets must be positive, got {args.nfe}")
    from .paths import check_output_path
    for option in ("json", "plot", "work_plot"):
        if getattr(args, option):
            try:
                check_output_path(getattr(args, option), what="--" + option.replace("_", "-"))
            except ValueError as error:
                raise UsageError(str(error)) from None
    try:
        result = bench.run(problem, names, steps=args.steps or list(problem.steps), rtols=args.rtol,
                           atol=args.atol, nfe=args.nfe, samples=args.samples, batch_size=args.batch_size, seed=args.seed,
                           dtype=getattr(torch, args.dtype), repeats=args.repeats)
    except (ValueError, TypeError) as error:  # solver refuses the problem, bad tolerances, ...
        raise UsageError(str(error)) from None
    print(result)
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        result.plot_convergence(args.plot)
        print(f"wrote {args.plot}")
    if args.work_plot:
        result.plot_work_precision(args.work_plot)
        print(f"wrote {args.work_plot}")
    return 0


def _load_plugins(subparsers) -> None:
    try:
        found = entry_points(group=PLUGIN_GROUP)
    except Exception as error:  # a broken installation must not break the core commands
        warnings.warn(f"could not read the {PLUGIN_GROUP!r} entry points: {error}", stacklevel=2)
        return
    for ep in found:
        try:
            ep.load()(subparsers)
        except Exception as error:
            warnings.warn(f"sdekit plugin {ep.name!r} ({ep.value}) failed to load and is skipped: "
                          f"{type(error).__name__}: {error}", stacklevel=2)


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr, exit code 2 (no usage block;
    sub-command parsers made by ``add_subparsers`` are of the same class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``sdekit`` parser with the core sub-commands and every plugin's."""
    parser = OneLineParser(prog="sdekit", description="Numerical SDEs and ODEs in PyTorch.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"sdekit {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    _load_plugins(subparsers)  # first: plugins also register bench problems named in bench's --help
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sdekit`` command line; returns the exit code (0 success, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, argparse usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = args.func(args)
    except UsageError as error:
        print(f"sdekit {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
