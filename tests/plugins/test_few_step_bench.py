"""benchmarks/few_step.py runs in-process on a tiny configuration and writes the promised JSON."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "few_step.py"


@pytest.fixture(scope="module")
def few_step():
    spec = importlib.util.spec_from_file_location("few_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_json(few_step, tmp_path, capsys):
    out = tmp_path / "few_step.json"
    previous = torch.get_default_dtype()
    result = few_step.main(["--dim", "2", "--components", "2", "--batch", "8", "--budgets", "5,10",
                            "--methods", "ddim,dpm_solver++_2m,rk4", "--grids", "uniform,logsnr",
                            "--no-peers", "--adaptive-samples", "200", "--em-steps", "10,40",
                            "--rel-tols", "0.2", "--json", str(out)])
    assert torch.get_default_dtype() == previous   # main restores the default dtype
    data = json.loads(out.read_text())
    assert set(data) >= {"config", "budgets", "rows", "best", "notes", "adaptive_sde", "seconds"}
    assert data["budgets"] == [5, 10]
    methods = {row["method"] for row in data["rows"]}
    assert "sdekit ddim (uniform)" in methods and "sdekit rk4 (logsnr)" in methods
    assert all(row["library"] == "sdekit" for row in data["rows"])
    for row in data["rows"]:
        for budget, nfe in row["nfe"].items():
            assert nfe <= int(budget)                         # honest budgets
            assert row["errors"][budget] > 0
    assert data["rows"][0]["nfe"]["5"] == 5                   # DDIM: one evaluation per step
    rk4 = next(r for r in data["rows"] if r["sampler"] == "rk4")
    assert rk4["nfe"]["5"] == 4                               # one RK4 step fits in 5
    assert data["best"]["10"]["sdekit"]["error"] > 0 and data["best"]["10"]["peer"] is None
    assert any("peers skipped" in note for note in data["notes"])
    adaptive = data["adaptive_sde"]
    if adaptive is not None:
        assert [r["steps"] for r in adaptive["euler_maruyama"]] == [10, 40]
        assert adaptive["adaptive_sde"][0]["nfe"] > 0
    assert "best sdekit" in capsys.readouterr().out
    assert result["budgets"] == [5, 10]


def test_more_steps_reduce_the_error_of_a_second_order_sampler(few_step, tmp_path):
    result = few_step.main(["--dim", "2", "--components", "2", "--batch", "8", "--budgets",
                            "10,50", "--methods", "dpm_solver++_2m", "--grids", "logsnr",
                            "--no-peers", "--no-adaptive"])
    errors = result["rows"][0]["errors"]
    assert errors[50] < errors[10] / 4
