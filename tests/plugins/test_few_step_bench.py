"""benchmarks/few_step.py --quick runs every code path in-process (both problems, the optimized grid,
the peers and their twin checks, the digits' Fréchet distance, JSON and plot) and its numbers hold
together: honest NFE, a tight reference, peers equal to their sdekit twins on the same grid."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import sdekit_diffusion as skd

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "few_step.py"


@pytest.fixture(scope="module")
def few_step():
    spec = importlib.util.spec_from_file_location("few_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(few_step, tmp_path_factory):
    folder = tmp_path_factory.mktemp("few_step")
    previous = torch.get_default_dtype()
    result = few_step.main(["--quick", "--json", str(folder / "few_step.json"), "--plot", str(folder / "few_step.png")])
    assert torch.get_default_dtype() == previous   # main restores the default dtype
    return result, json.loads((folder / "few_step.json").read_text()), folder


def test_quick_run_writes_json_and_plot(quick):
    result, data, folder = quick
    assert (folder / "few_step.png").stat().st_size > 10_000
    assert data["budgets"] == [5, 10] and set(data["problems"]) == {"mixture", "digits"}
    for name, problem in data["problems"].items():
        methods = {row["method"] for row in problem["rows"]}
        assert {"sdekit dpm_solver++_3m (logsnr)", "sdekit ipndm (quadratic)", "sdekit rk4 (logsnr)"} <= methods
        assert ("sdekit dpm_solver++_3m (optimized)" in methods) == hasattr(skd, "optimize_time_grid")
        learned = {"mixture": "sdekit ipndm[order=4, afs] (learned)", "digits": "sdekit ipndm[order=2] (learned)"}
        assert (learned[name] in methods) == hasattr(skd, "optimize_coefficients")
        assert [t["nfe"] for t in problem["targets"]] == ([10] if name == "mixture" else [5, 10])
        for row in problem["rows"]:
            assert set(row["errors"]) == {"5", "10"}, row["method"]
            for budget, nfe in row["nfe"].items():
                assert nfe <= int(budget)                          # honest budgets
                assert 0 < row["errors"][budget] < math.inf
        rk4 = next(r for r in problem["rows"] if r["method"] == "sdekit rk4 (logsnr)")
        assert rk4["nfe"] == {"5": 4, "10": 8}                     # one, two RK4 steps
        multistep = next(r for r in problem["rows"] if r["method"] == "sdekit dpm_solver++_3m (logsnr)")
        assert multistep["nfe"] == {"5": 5, "10": 10}
        assert multistep["errors"]["10"] < multistep["errors"]["5"]        # more steps, smaller error
        best = problem["best"]["10"]
        assert best["sdekit"]["error"] == min(r["errors"]["10"] for r in problem["rows"] if r["library"] == "sdekit")


def test_learned_rows_store_a_grid_and_coefficients_that_reproduce_their_error(few_step, quick):
    """The JSON's learned grid and coefficients, run again on the mixture's scored draws, give the
    row's error: the row is the sampler the library returns, not a number computed elsewhere."""
    if not hasattr(skd, "optimize_coefficients"):
        pytest.skip("no optimize_coefficients")
    _, data, _ = quick
    row = next(r for r in data["problems"]["mixture"]["rows"] if r["grid"] == "learned")
    args = few_step.parse_args(["--quick"])
    problem = few_step.mixture_problem(args)
    for budget in ("5", "10"):
        coefficients = torch.tensor(row["coefficients"][budget], dtype=torch.float64)
        torch.testing.assert_close(coefficients.sum(1), torch.ones(len(coefficients), dtype=torch.float64))
        x, nfe = few_step.run_learned(problem, problem.x_T, dict(row["options"], solver=row["sampler"],
                                                                 ts=torch.tensor(row["ts"][budget]),
                                                                 coefficients=coefficients))
        assert nfe == row["nfe"][budget] == int(budget)
        assert few_step.l2_error(x, problem.reference) == pytest.approx(row["errors"][budget], rel=1e-9)
        assert row["calibration"][budget]["max_evaluations"] == args.learn_evaluations


def test_the_digits_reference_is_tight_and_the_frechet_distances_are_ordered(quick):
    _, data, _ = quick
    digits = data["problems"]["digits"]
    reference = digits["reference"]
    assert reference["check_relative"] < 5e-3                     # 200-step 3M vs dopri5 at 1e-4
    best_error = min(e for row in digits["rows"] for e in row["errors"].values())
    assert reference["check_error"] < best_error / 10              # the reference is not the error floor
    frechet = digits["frechet"]
    noise = frechet["prior noise"]["frechet_distance"]
    assert frechet["converged"]["frechet_distance"] < noise / 10    # the trained U-Net makes digits
    for budget in (5, 10):
        for side in ("sdekit", "peer"):
            entry = frechet[f"NFE {budget} {side}"]
            assert entry["nfe"] <= budget and entry["frechet_distance"] < noise / 5
            assert entry["method"] == digits["best"][str(budget)][side]["method"]


def test_peers_equal_their_sdekit_twins_on_the_same_grid(quick):
    pytest.importorskip("diffusers")
    _, data, _ = quick
    for problem in data["problems"].values():
        peers = [row for row in problem["rows"] if row["library"] == "diffusers"]
        assert {row["method"] for row in peers} == {"diffusers DPMSolverMultistep 3M (trailing)",
                                                    "diffusers UniPCMultistep bh2 order 2 (trailing)",
                                                    "diffusers IPNDM (quadratic)"}
        twins = {check["peer"]: check for check in problem["twins"]}
        assert set(twins) == {"diffusers UniPCMultistep bh2 order 2 (trailing)", "diffusers IPNDM (quadratic)"}
        # UniPC runs in float64 here; IPNDM keeps its noise levels in float32 (measured 4e-5 on the
        # mixture, 4e-5 through the float32 U-Net)
        assert twins["diffusers UniPCMultistep bh2 order 2 (trailing)"]["relative_difference"] < 1e-12
        assert twins["diffusers IPNDM (quadratic)"]["relative_difference"] < 5e-4
        ipndm = next(r for r in problem["rows"] if r["method"] == "sdekit ipndm (quadratic)")
        peer = next(r for r in peers if r["method"] == "diffusers IPNDM (quadratic)")
        assert abs(ipndm["errors"]["10"] / peer["errors"]["10"] - 1) < 1e-3
        unipc = twins["diffusers UniPCMultistep bh2 order 2 (trailing)"]
        assert unipc["twin_error"] == pytest.approx(unipc["peer_error"], rel=1e-9)


def test_fit_budget_takes_the_most_steps_that_fit(few_step):
    calls = []

    def run(steps):                                  # an EDM-Heun-like count: 2 calls a step, 1 on the last
        calls.append(steps)
        return None, 2 * steps - 1

    assert few_step.fit_budget(run, 10, calls_per_step=2)[1:] == (9, 5)
    assert few_step.fit_budget(run, 5, calls_per_step=2)[1:] == (5, 3)
    assert few_step.fit_budget(lambda steps: (None, 4 * steps), 3, calls_per_step=4) is None


def test_replot_draws_the_plot_from_the_json(few_step, quick, tmp_path):
    _, _, folder = quick
    few_step.main(["--replot", str(folder / "few_step.json"), "--plot", str(tmp_path / "again.png")])
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_peer_adapters_refuse_what_they_cannot_compare(few_step):
    import peers   # benchmarks/ is on sys.path once few_step.py is loaded
    with pytest.raises(ValueError, match="variance-preserving"):
        peers.check_variance_preserving(skd.VESDE())
    sde = skd.VPSDE()
    levels = peers.sigma_ve(sde, torch.tensor([sde.t_max, 0.5, sde.t_min]))
    exact = peers._exact_ends(sde, levels * (1 + 1e-5))            # float32-table rounding: snapped
    assert float(exact[0]) == float(levels[0]) and float(exact[-1]) == float(levels[-1])
    with pytest.raises(ValueError, match="end at"):                 # a grid that ends elsewhere: refused
        peers._exact_ends(sde, torch.cat([levels[:-1], levels[-1:] * 1.01]))
