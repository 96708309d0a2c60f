"""The sdekit command line: help, usage errors (exit 2, no traceback), a small bench run, plugins."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdekit import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_explains_every_bench_option(capsys):
    assert cli.main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--problem", "--solvers", "--steps", "--rtol", "--atol", "--nfe", "--samples", "--seed",
                   "--json", "--plot", "--work-plot", "--list"):
        assert option in out
    assert "gbm" in out  # the problem names are listed


def test_unknown_problem_exits_2_listing_valid(capsys):
    assert cli.main(["bench", "--problem", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown problem 'nope'" in err and "gbm" in err and "rn_additive" in err
    assert "Traceback" not in err


def test_unknown_solver_exits_2_listing_valid(capsys):
    assert cli.main(["bench", "--problem", "gbm", "--solvers", "euler_maruyama,bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown solver 'bogus'" in err and "euler_maruyama" in err and "rk4" in err
    assert "Traceback" not in err


def test_malformed_list_and_missing_command_exit_2(capsys):
    assert cli.main(["bench", "--steps", "8,x"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_list_shows_problems_and_solvers(capsys):
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "gbm" in out and "linear" in out and "euler_maruyama" in out and "dopri5" in out


def test_small_bench_writes_json_and_plots(tmp_path, capsys):
    out_json, out_png, out_work = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "w.png"
    code = cli.main(["bench", "--problem", "linear", "--solvers", "euler,rk4,dopri5", "--steps", "8,16,32",
                     "--rtol", "1e-4,1e-6", "--json", str(out_json), "--plot", str(out_png),
                     "--work-plot", str(out_work)])
    assert code == 0
    out = capsys.readouterr().out
    assert "rk4" in out and "fitted" in out
    data = json.loads(out_json.read_text())
    assert {r["solver"] for r in data["rows"]} == {"euler", "rk4", "dopri5"}
    assert abs(data["orders"]["rk4"]["strong"]["order"] - 4) < 0.3
    for png in (out_png, out_work):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_sde_bench(tmp_path, capsys):
    out_json = tmp_path / "gbm.json"
    assert cli.main(["bench", "--problem", "gbm", "--solvers", "euler_maruyama", "--steps", "4,8",
                     "--samples", "16", "--seed", "3", "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert data["meta"]["samples"] == 16 and data["meta"]["seed"] == 3
    assert all(r["strong_error"] > 0 for r in data["rows"])


def test_solver_refusing_problem_exits_2(capsys):
    import sdekit
    if "sra1" not in {i["name"] for i in sdekit.solvers.available()}:
        pytest.skip("sra1 not registered yet")
    assert cli.main(["bench", "--problem", "gbm", "--solvers", "sra1", "--samples", "4"]) == 2
    err = capsys.readouterr().err
    assert "noise" in err and "Traceback" not in err


class _EntryPoint:
    def __init__(self, name, loader):
        self.name, self.value, self._loader = name, f"fake:{name}", loader

    def load(self):
        return self._loader()


def test_plugins_add_commands_and_broken_ones_warn(monkeypatch, capsys):
    def register(subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.set_defaults(func=lambda args: print("hello from plugin") or 0)

    def broken():
        raise ImportError("missing dependency")

    monkeypatch.setattr(cli, "entry_points",
                        lambda group: [_EntryPoint("good", lambda: register), _EntryPoint("bad", broken)])
    with pytest.warns(UserWarning, match="'bad'.*missing dependency"):
        assert cli.main(["hello"]) == 0
    assert "hello from plugin" in capsys.readouterr().out


def test_python_dash_m_sdekit_help():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins")]))
    done = subprocess.run([sys.executable, "-m", "sdekit", "--help"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bench" in done.stdout


def test_plugin_bench_problems_reach_the_cli(monkeypatch, capsys, tmp_path):
    """What the diffusion plugin's entry point does: register its bench problems when loaded."""
    bench_problems = pytest.importorskip("sdekit_diffusion.bench_problems")

    def register(subparsers):
        bench_problems.register_bench_problems()

    monkeypatch.setattr(cli, "entry_points", lambda group: [_EntryPoint("diffusion", lambda: register)])
    out_json = tmp_path / "vp.json"
    assert cli.main(["bench", "--problem", "ve_flow_gaussian", "--solvers", "euler,rk4", "--steps", "4,8,16",
                     "--samples", "4", "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert data["meta"]["problem"] == "ve_flow_gaussian" and data["meta"]["samples"] == 4
    assert "ve_flow_gaussian" in capsys.readouterr().out


def test_diffusion_samplers_at_nfe_budgets_from_the_cli(monkeypatch, capsys, tmp_path):
    """The diffusion form: plugin samplers and NFE budgets."""
    bench_problems = pytest.importorskip("sdekit_diffusion.bench_problems")
    monkeypatch.setattr(cli, "entry_points",
                        lambda group: [_EntryPoint("diffusion", lambda: lambda sub: bench_problems.register_bench_problems())])
    out_json = tmp_path / "samplers.json"
    assert cli.main(["bench", "--problem", "vp_flow_mixture", "--solvers", "ddim,dpm_solver++_2m,heun",
                     "--nfe", "10,20", "--samples", "8", "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())["rows"]
    assert {(r["solver"], r["steps"]) for r in rows} == {("ddim", 10), ("ddim", 20), ("dpm_solver++_2m", 10),
                                                          ("dpm_solver++_2m", 20), ("heun", 5), ("heun", 10)}
    capsys.readouterr()
    assert cli.main(["bench", "--problem", "vp_reverse_mixture", "--solvers", "ddim", "--nfe", "10"]) == 2
    assert "deterministic" in capsys.readouterr().err


def test_bench_refuses_an_unwritable_output_before_running(capsys, tmp_path, monkeypatch):
    from sdekit import bench
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("bench ran before the path check"))
    (tmp_path / "d").mkdir()
    for option, path in [("--json", "/proc/sdekit/r.json"), ("--plot", str(tmp_path / "d")),
                         ("--work-plot", "/proc/sdekit/w.png")]:
        assert cli.main(["bench", "--problem", "gbm", "--steps", "4,8", option, path]) == 2
        err = capsys.readouterr().err
        assert option in err and "Traceback" not in err


def test_interop_is_available_after_import_sdekit():
    code = "import sdekit; print(callable(sdekit.interop.to_torchsde), callable(sdekit.interop.to_torchdiffeq))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
