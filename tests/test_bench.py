"""sdekit.bench: fitted orders match theory on the standard problems; registry, JSON, text, plots."""
import json
import math

import pytest
import torch

import sdekit
from sdekit import bench

from sdekit.bench import problems as bench_problems

TOLERANCE = 0.3  # |fitted - theory| allowed, as diffrax's tests


def registered(*names):
    known = {info["name"] for info in sdekit.solvers.available()}
    missing = [n for n in names if n not in known]
    if missing:
        pytest.skip(f"solver(s) {missing} not registered yet")


@pytest.fixture(scope="module")
def gbm_result():
    names = [n for n in ("euler_maruyama", "milstein") if n in {i["name"] for i in sdekit.solvers.available()}]
    return bench.run("gbm", names, steps=[8, 16, 32, 64], samples=200, seed=1)


@pytest.fixture(scope="module")
def linear_result():
    return bench.run("linear", ["euler", "heun", "rk4", "dopri5"], steps=[16, 32, 64, 128],
                     rtols=[1e-4, 1e-6, 1e-8])


# --- orders --------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver, theory", [("euler", 1.0), ("heun", 2.0), ("rk4", 4.0)])
def test_ode_orders_on_linear_system(linear_result, solver, theory):
    fit = linear_result.fit(solver)
    assert abs(fit.order - theory) < TOLERANCE, fit
    assert fit.low <= fit.order <= fit.high and fit.points == 4
    assert linear_result.theory(solver) == theory


def test_euler_maruyama_strong_half_on_gbm(gbm_result):
    fit = gbm_result.fit("euler_maruyama", "strong")
    assert abs(fit.order - 0.5) < TOLERANCE, fit


def test_milstein_strong_one_on_gbm(gbm_result):
    registered("milstein")
    fit = gbm_result.fit("milstein", "strong")
    assert abs(fit.order - 1.0) < TOLERANCE, fit


def test_milstein_strong_one_on_scalar_noise():
    registered("milstein")
    result = bench.run("rn_scalar", ["milstein"], steps=[8, 16, 32, 64], samples=200, seed=2)
    assert abs(result.fit("milstein").order - 1.0) < TOLERANCE


def test_additive_noise_orders():
    """Additive noise: Euler-Maruyama is strong (and weak) order 1; SRA1 at least its 1.5 (the noise of
    this problem is small, so the deterministic order 2 of SRA1 shows)."""
    registered("sra1")
    result = bench.run("rn_additive", ["euler_maruyama", "sra1"], steps=[8, 16, 32, 64], samples=64)
    assert abs(result.fit("euler_maruyama").order - 1.0) < TOLERANCE
    assert abs(result.fit("euler_maruyama", "weak").order - 1.0) < TOLERANCE
    assert result.fit("sra1").order > 1.5 - TOLERANCE


def test_weak_only_problem_uses_exact_moments():
    result = bench.run("ou", ["euler_maruyama"], steps=[2, 4, 8], samples=4000)
    rows = result.rows_of("euler_maruyama")
    assert all(r["strong_error"] is None for r in rows)
    errors = [r["weak_error"] for r in rows]
    assert errors[0] > errors[1] > errors[2]  # weak bias shrinks well above the MC noise here
    assert rows[0]["weak_error"] > 5 * rows[0]["weak_stderr"]
    assert math.isnan(result.fit("euler_maruyama", "strong").order)


def test_adaptive_rows_use_tolerances(linear_result):
    rows = linear_result.rows_of("dopri5")
    assert [r["rtol"] for r in rows] == [1e-4, 1e-6, 1e-8] and all(r["steps"] is None for r in rows)
    errors = [r["strong_error"] for r in rows]
    assert errors[0] > errors[1] > errors[2]
    assert rows[-1]["nfe"] > rows[0]["nfe"]


def test_exact_solutions_agree_with_a_fine_solve():
    linear = bench.get_problem("linear")
    x = sdekit.solve(linear.problem, linear.initial(1), linear.t0, linear.t1, solver="rk4", steps=2000).x
    torch.testing.assert_close(x, linear.exact(linear.t1), rtol=0, atol=1e-11)
    gbm = bench.get_problem("gbm")
    from sdekit.brownian import BrownianTree
    bm = BrownianTree(0.0, 1.0, gbm.noise_shape(8), seed=3)
    x = sdekit.solve(gbm.problem, gbm.initial(8), 0.0, 1.0, solver="euler_maruyama", steps=1024, brownian=bm).x
    assert (x - gbm.exact(1.0, bm)).abs().max() < 0.15


# --- fits ----------------------------------------------------------------------------------------

def test_fit_order_recovers_slope_with_interval():
    h = [0.1, 0.05, 0.025, 0.0125, 0.00625]
    wobble = [1.02, 0.97, 1.01, 0.99, 1.0]
    fit = bench.fit_order(h, [3 * x ** 2 * w for x, w in zip(h, wobble)])
    assert abs(fit.order - 2) < 0.05 and fit.low < 2 < fit.high and fit.points == 5
    two = bench.fit_order([0.1, 0.05], [1e-2, 2.5e-3])
    assert abs(two.order - 2) < 1e-12 and math.isnan(two.low)
    floor = bench.fit_order([0.1, 0.05, 0.025], [1e-2, 2.5e-3, 1e-17])
    assert floor.points == 2  # round-off below min_error is left out


# --- registry ------------------------------------------------------------------------------------

def test_registry_lists_and_rejects_unknown():
    names = bench.problem_names()
    for name in ("gbm", "rn_additive", "rn_scalar", "ou", "linear"):
        assert name in names
        assert bench.get_problem(name).description
    with pytest.raises(ValueError, match="valid problems: .*gbm"):
        bench.get_problem("no_such_problem")


def test_register_problem_from_outside(monkeypatch):
    monkeypatch.setattr(bench_problems, "_REGISTRY", dict(bench_problems._REGISTRY))

    class Decay(sdekit.ODE):
        def drift(self, t, x):
            return -x

    class DecayProblem(bench.BenchProblem):
        description = "dx/dt = -x"
        problem = Decay()
        x0 = torch.tensor([1.0], dtype=torch.float64)

        def exact(self, t1, bm=None, x0=None):
            return (self.initial(1) if x0 is None else x0) * math.exp(-(t1 - self.t0))

    bench.register_problem("decay", DecayProblem)
    assert "decay" in bench.problem_names()
    result = bench.run("decay", ["euler"], steps=[10, 20, 40])
    assert result.meta["problem"] == "decay"
    assert abs(result.fit("euler").order - 1) < 0.1


def test_solver_that_refuses_the_problem_is_reported():
    registered("sra1")
    with pytest.raises(sdekit.SolverError, match="noise"):
        bench.run("gbm", ["sra1"], steps=[4, 8], samples=4)


# --- table, JSON, plots --------------------------------------------------------------------------

def test_table_is_readable(gbm_result):
    text = str(gbm_result)
    assert "gbm" in text and "euler_maruyama" in text and "fitted strong" in text
    assert len(text.splitlines()) >= len(gbm_result.rows) + 6


def test_json_round_trip(gbm_result, tmp_path):
    path = tmp_path / "gbm.json"
    gbm_result.to_json(path)
    data = json.loads(path.read_text())
    assert set(data) >= {"meta", "solvers", "rows", "orders"}
    loaded = bench.BenchResult.from_json(path)
    assert loaded.to_dict() == gbm_result.to_dict()
    assert str(loaded) == str(gbm_result)
    assert loaded.fit("euler_maruyama") == gbm_result.fit("euler_maruyama")


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_convergence_plot(gbm_result, tmp_path):
    path = tmp_path / "conv.png"
    fig = gbm_result.plot_convergence(path)
    assert _is_png(path)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels[0] == "step size h" and "strong error" in fig.axes[0].get_ylabel()
    assert any("O(h^0.5)" in text.get_text() for text in fig.axes[0].get_legend().get_texts())


def test_work_precision_plot(linear_result, tmp_path):
    path = tmp_path / "work.png"
    fig = linear_result.plot_work_precision(path)
    assert _is_png(path)
    assert [ax.get_xlabel() for ax in fig.axes] == ["NFE (drift evaluations per solve)", "wall time per solve (s)"]


def test_nfe_budgets_give_each_solver_its_own_step_count():
    result = bench.run("linear", ["euler", "rk4", "dopri5"], nfe=[16, 32, 64])
    steps = {name: [row["steps"] for row in result.rows_of(name)] for name in ("euler", "rk4", "dopri5")}
    assert steps == {"euler": [16, 32, 64], "rk4": [4, 8, 16], "dopri5": [2, 5, 10]}
    assert all(row["nfe"] <= 64 + 1 for row in result.rows)  # + dopri5's first-same-as-last start


def test_registered_bench_solvers_are_accepted_and_listed(monkeypatch):
    monkeypatch.setattr(bench.measure, "_SOLVER_REGISTRY", dict(bench.measure._SOLVER_REGISTRY))

    class Halved(bench.SdekitSolver):
        """Heun registered under another name, as a plugin would bring its own method."""

        def __init__(self):
            super().__init__("heun")
            self.name = "my_heun"
            self.info = dict(self.info, name="my_heun")

    bench.register_solver("my_heun", Halved)
    assert "my_heun" in bench.solver_names() and bench.solver_info("my_heun")["evals_per_step"] == 2
    result = bench.run("linear", ["my_heun"], steps=[16, 32, 64])
    assert abs(result.fit("my_heun").order - 2.0) < TOLERANCE
    with pytest.raises(TypeError, match="callable"):
        bench.register_solver("broken", None)


# --- diffusion problems from the plugin ----------------------------------------------------------

@pytest.fixture(scope="module")
def diffusion_bench():
    module = pytest.importorskip("sdekit_diffusion.bench_problems")
    module.register_bench_problems()
    return module


def test_diffusion_problems_register(diffusion_bench):
    for name in diffusion_bench.bench_problem_names():
        assert name in bench.problem_names()
    assert {"vp_flow_gaussian", "subvp_flow_mixture", "ve_reverse_mixture", "linear_flow_gaussian"} <= set(bench.problem_names())


@pytest.mark.parametrize("solver, theory", [("heun", 2.0), ("rk4", 4.0)])
def test_probability_flow_orders_against_exact_flow_map(diffusion_bench, solver, theory):
    result = bench.run("vp_flow_gaussian", [solver], steps=[8, 16, 32, 64], samples=16)
    assert abs(result.fit(solver).order - theory) < TOLERANCE


@pytest.mark.parametrize("sampler, theory, nfe", [
    ("ddim", 1.0, [24, 48, 96, 192]), ("dpm_solver_2", 2.0, [24, 48, 96, 192]),
    ("dpm_solver_3", 3.0, [48, 96, 192, 384]), ("dpm_solver++_2m", 2.0, [24, 48, 96, 192]),
    ("edm_heun", 2.0, [24, 48, 96, 192])])
def test_samplers_as_bench_solvers_at_nfe_budgets(diffusion_bench, sampler, theory, nfe):
    result = bench.run("vp_flow_gaussian", [sampler], nfe=nfe, samples=16)
    assert abs(result.fit(sampler).order - theory) < TOLERANCE
    assert all(row["nfe"] <= budget for row, budget in zip(result.rows, nfe))


def test_samplers_refuse_the_wrong_problems(diffusion_bench):
    with pytest.raises(sdekit.SolverError, match="deterministic.*flow"):
        bench.run("vp_reverse_mixture", ["ddim"], steps=[4])
    with pytest.raises(sdekit.SolverError, match="stochastic.*reverse_mixture"):
        bench.run("vp_flow_mixture", ["ancestral"], steps=[4])
    with pytest.raises(sdekit.SolverError, match="diffusion problems"):
        bench.run("gbm", ["ddim"], steps=[4])


def test_reverse_mixture_moments_match_samples_of_the_marginal(diffusion_bench):
    problem = bench.get_problem("vp_reverse_mixture")
    generator = torch.Generator().manual_seed(0)
    n = 200_000
    x_data = problem.data.sample(n, generator=generator)
    t = torch.tensor(problem.t1, dtype=torch.float64)
    x = problem.sde.schedule.alpha(t) * x_data + problem.sde.schedule.sigma(t) * torch.randn(x_data.shape, generator=generator,
                                                                              dtype=torch.float64)
    moments = problem.exact_moments(problem.t1)
    for name, f in bench.WEAK_FUNCTIONS.items():
        values = f(x)
        stderr = values.std(0) / math.sqrt(n)
        assert ((values.mean(0) - moments[name]).abs() < 5 * stderr).all(), name


# --- the benchmark scripts run (tiny settings) ---------------------------------------------------

def _script(name):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_solver_orders_script(tmp_path, capsys):
    pytest.importorskip("torchsde")
    registered("sra1")
    threads = torch.get_num_threads()
    try:
        code = _script("solver_orders").main(["--problems", "rn_additive", "--samples", "8", "--steps", "4,8,16",
                                              "--repeats", "1", "--json", str(tmp_path / "o.json"),
                                              "--plot", str(tmp_path / "o.png")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    data = json.loads((tmp_path / "o.json").read_text())
    assert {"sra1", "torchsde.srk"} <= set(data["summary"]["rn_additive"]["solvers"])
    assert _is_png(tmp_path / "o.png")
    assert "equal accuracy" in capsys.readouterr().out


def test_adaptive_ode_script(tmp_path):
    pytest.importorskip("torchdiffeq")
    threads = torch.get_num_threads()
    try:
        code = _script("adaptive_ode").main(["--problems", "linear", "--rtol", "1e-3,1e-6", "--repeats", "1",
                                             "--json", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.png")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    rows = json.loads((tmp_path / "a.json").read_text())["linear"]["rows"]
    assert {r["solver"] for r in rows} == {"dopri5", "torchdiffeq.dopri5", "scipy.RK45"}
    assert all(r["strong_error"] < 1e-2 for r in rows)
    assert _is_png(tmp_path / "a.png")


def test_brownian_speed_script_times_the_aligned_tree(tmp_path, capsys):
    """A non-dyadic case gets the BrownianTree(align=steps) rows and their ratio to GeneratorNoise;
    a dyadic case does not (its grid already lies on the tree's)."""
    results = _script("brownian_speed").main(["--cases", "4x2:10", "4x2:8", "--repeats", "1", "--chunk", "4",
                                               "--json", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text()) == results
    non_dyadic, dyadic = results
    assert "BrownianTree(align=10), whole grid" in non_dyadic["us_per_step"]
    assert "tree(align=10) / generator with Levy area, chunks of 4" in non_dyadic["ratios"]
    assert not any("align" in name for name in dyadic["us_per_step"])
    assert all(value > 0 for value in non_dyadic["us_per_step"].values())
    assert "target <= 3x" in capsys.readouterr().out
