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
    assert set(targets["families"]) == {"shark", "adaptive_sde"}
    assert isinstance(targets["strong_met"], bool) and isinstance(targets["distribution_met"], bool)
    assert 0 <= data["reference"]["kl_prior"] < 0.01                    # the prior is close to p_t_max
    printed = capsys.readouterr().out
    assert "E log p gap" in printed and "targets against euler_maruyama 200 steps" in printed


def test_nfe_to_reach_interpolates_log_log(bench):
    sweep = [(100.0, 1e-1), (400.0, 1e-2), (1600.0, 1e-3)]
    assert bench.nfe_to_reach(sweep, 1e-2) == pytest.approx(400.0)
    assert bench.nfe_to_reach(sweep, 10 ** -1.5) == pytest.approx(200.0)   # halfway on log-log
    assert bench.nfe_to_reach(sweep, 1e-4) is None                          # beyond the sweep
    assert bench.nfe_to_reach(sweep, 1.0) == 100.0                          # the cheapest row already does
