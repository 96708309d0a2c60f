"""benchmarks/adaptive_sde.py --quick runs in-process and writes the promised table, JSON and plot."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "adaptive_sde.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("adaptive_sde_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_table_json_and_plot(bench, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, figure = tmp_path / "adaptive_sde.json", tmp_path / "adaptive_sde.png"
    result = bench.main(["--quick", "--json", str(out), "--plot", str(figure)])
    data = json.loads(out.read_text())
    assert set(data) >= {"config", "reference", "rows", "targets", "seconds"}
    assert data["targets"] == result["targets"] and figure.stat().st_size > 0
    rows = {row["label"]: row for row in data["rows"]}
    em = [rows[f"euler_maruyama {steps} steps"] for steps in (50, 100, 200)]
    assert [row["nfe"] for row in em] == [50, 100, 200]                  # one drift call per step
    assert [rows[f"sra1 {s} steps"]["nfe"] for s in (25, 50)] == [50, 100]
    assert em[0]["strong_error"] > em[1]["strong_error"] > em[2]["strong_error"]
    # the reference on the same path is far more accurate than the finest fixed grid
    assert data["reference"]["strong_error"] < em[2]["strong_error"] / 10
    shark = [rows[f"shark rtol={tol} atol={tol}"] for tol in ("0.1", "0.03")]
    assert shark[0]["nfe"] < shark[1]["nfe"] and shark[1]["strong_error"] < shark[0]["strong_error"]
    assert all(row["n_steps"] > 0 and row["adaptive"] for row in shark)
    # adaptive_sde ran on the batch's tree: near the reference path (another path is O(1) away)
    assert rows["adaptive_sde rtol=0.1 atol=0.0078"]["strong_median"] < 0.3
    targets = data["targets"]
    assert targets["baseline"] == "euler_maruyama 200 steps"             # --quick's finest grid
    assert targets["strong_nfe_limit"] == pytest.approx(40.0)
    assert set(targets["families"]) == {"shark", "shark, one step for the batch", "adaptive_sde"}
    # shark with one step size for the batch: its own sweep, a 1-D grid shared by every sample
    shared = [rows[f"shark, one step for the batch rtol={tol} atol={tol}"] for tol in ("0.1", "0.03")]
    assert shared[0]["nfe"] < shared[1]["nfe"] and all(row["adaptive"] for row in shared)
    assert [row["strong_error"] for row in shared] != [row["strong_error"] for row in shark]
    uniform = rows["shark, uniform grid 25 steps"]
    assert uniform["nfe"] == 50 and not uniform["adaptive"]       # two drift calls per step
    fixed = targets["strong_fixed_best"]
    assert fixed is None or fixed["strong_error"] <= targets["baseline_strong_error"]
    assert isinstance(targets["strong_met"], bool) and isinstance(targets["distribution_met"], bool)
    # the distribution target judged within the Monte Carlo floor: EM-200 against itself differs by 0
    assert rows["euler_maruyama 200 steps"]["log_p_gap_difference_stderr"] == 0.0
    assert all(row["log_p_gap_difference_stderr"] > 0 for row in shark)
    floor_rows = [row["nfe"] for row in shark + shared if bench.within_floor(row, rows["euler_maruyama 200 steps"])]
    assert targets["distribution_floor_best_nfe"] == (min(floor_rows) if floor_rows else None)
    assert targets["distribution_floor_met"] == (bool(floor_rows) and min(floor_rows) <= 200)
    assert data["controller"]["pcoeff"] == 0.4 and data["controller"]["icoeff"] == 0.3   # PIDController's defaults
    assert 0 <= data["reference"]["kl_prior"] < 0.01                    # the prior is close to p_t_max
    printed = capsys.readouterr().out
    assert "E log p gap" in printed and "targets against euler_maruyama 200 steps" in printed


def test_controller_flags_build_the_srk_controller(bench):
    args = bench.parse(["--pcoeff", "0", "--icoeff", "1", "--factor-max", "1.125", "--combine", "max"])
    assert bench.controller_options(args) == {"pcoeff": 0.0, "icoeff": 1.0, "factor_max": 1.125, "combine": "max"}
    row = next(r for r in bench.methods(args) if r["family"] == "shark")
    controller = row["controller"]                                # the one its run solves with
    assert (controller.pcoeff, controller.icoeff, controller.factor_max, controller.combine) == (0.0, 1.0, 1.125, "max")
    assert (controller.rtol, controller.atol, controller.safety) == (row["rtol"], row["atol"], 0.9)


def test_within_floor_allows_one_standard_error_of_the_difference(bench):
    """EM's gap -0.001: a gap of 0.005 with a paired standard error of the difference 0.004 is not
    resolved as worse (0.005 <= 0.001 + 0.004); with 0.003 it is; the sign of a gap does not count."""
    em = {"log_p_gap": -0.001}
    assert bench.within_floor({"log_p_gap": 0.005, "log_p_gap_difference_stderr": 0.004}, em)
    assert not bench.within_floor({"log_p_gap": 0.005, "log_p_gap_difference_stderr": 0.003}, em)
    assert bench.within_floor({"log_p_gap": -0.0045, "log_p_gap_difference_stderr": 0.004}, em)


def test_nfe_to_reach_interpolates_log_log(bench):
    sweep = [(100.0, 1e-1), (400.0, 1e-2), (1600.0, 1e-3)]
    assert bench.nfe_to_reach(sweep, 1e-2) == pytest.approx(400.0)
    assert bench.nfe_to_reach(sweep, 10 ** -1.5) == pytest.approx(200.0)   # halfway on log-log
    assert bench.nfe_to_reach(sweep, 1e-4) is None                          # beyond the sweep
    assert bench.nfe_to_reach(sweep, 1.0) == 100.0                          # the cheapest row already does


def test_sample_passes_a_controller_to_the_adaptive_core_solvers():
    """skd.sample(..., solver="shark", controller=c) is sdekit.solve on the reverse SDE with c, to
    the bit; the controller carries its own tolerances, so rtol= beside it is refused."""
    import torch

    import sdekit
    import sdekit_diffusion as skd

    sde = skd.VPSDE()
    data = skd.GaussianMixture([0.4, 0.6], torch.tensor([[-1.0, 0.5], [1.5, 0.0]]), [0.3, 0.5])
    score = data.score_fn(sde)
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tree = sdekit.BrownianTree(sde.t_min, sde.t_max, (6, 2), seed=4, dtype=torch.float64)
    controller = sdekit.PIDController(3e-2, 3e-2, error_order=1.0, pcoeff=0.1, icoeff=0.3)
    sampled = skd.sample(sde, score, x_T=x_T, solver="shark", controller=controller, brownian=tree)
    solved = sdekit.solve(sde.reverse(score), x_T, sde.t_max, sde.t_min, solver="shark", controller=controller,
                          brownian=tree)
    assert torch.equal(sampled.x, solved.x) and sampled.nfe == solved.nfe
    default = skd.sample(sde, score, x_T=x_T, solver="shark", brownian=tree)      # rtol = atol = 1e-2
    assert default.nfe != sampled.nfe
    with pytest.raises(ValueError, match="not both"):
        skd.sample(sde, score, x_T=x_T, solver="shark", controller=controller, rtol=1e-3, brownian=tree)
    # per_sample_steps=False: one step size for the batch, as sdekit.solve's option
    shared = skd.sample(sde, score, x_T=x_T, solver="shark", controller=controller, brownian=tree,
                        per_sample_steps=False)
    solved = sdekit.solve(sde.reverse(score), x_T, sde.t_max, sde.t_min, solver="shark", controller=controller,
                          brownian=tree, per_sample_steps=False)
    assert torch.equal(shared.x, solved.x) and shared.nfe == solved.nfe and not torch.equal(shared.x, sampled.x)
    with pytest.raises(TypeError, match="unknown option 'per_sample_steps'"):
        skd.sample(sde, score, x_T=x_T, solver="dopri5", per_sample_steps=False)
