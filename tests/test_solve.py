"""solve(): bad input gives clear errors; grids, dtype, progress, registry."""
import pytest
import torch

import sdekit


class OU(sdekit.SDE):
    noise_type = "diagonal"

    def drift(self, t, x):
        return -x

    def diffusion(self, t, x):
        return torch.ones_like(x)


class Decay(sdekit.ODE):
    def drift(self, t, x):
        return -x


X0 = torch.ones(4, 2, dtype=torch.float64)


def test_wrong_drift_shape_names_expected_and_actual():
    class Bad(sdekit.ODE):
        def drift(self, t, x):
            return x.sum(-1)

    with pytest.raises(sdekit.ShapeError, match=r"shape \(4,\).*expected \(4, 2\)"):
        sdekit.solve(Bad(), X0, 0.0, 1.0, solver="euler", steps=4)
    with pytest.raises(ValueError):  # ShapeError is also a ValueError
        sdekit.solve(Bad(), X0, 0.0, 1.0, solver="euler", steps=4)


def test_wrong_diffusion_shape():
    class Bad(OU):
        def diffusion(self, t, x):
            return torch.ones(x.shape[0])

    with pytest.raises(sdekit.ShapeError, match=r"diffusion returned shape \(4,\).*expected \(4, 2\)"):
        sdekit.solve(Bad(), X0, 0.0, 1.0, solver="euler_maruyama", steps=4)


def test_nan_drift_names_step_and_time():
    class Explodes(sdekit.ODE):
        def drift(self, t, x):
            return torch.where(t > 0.55, torch.full_like(x, float("nan")), -x)

    with pytest.raises(sdekit.NonFiniteError, match=r"step 57 of 100 \(t=0.57"):
        sdekit.solve(Explodes(), X0, 0.0, 1.0, solver="euler", steps=100)


def test_nonfinite_x0():
    with pytest.raises(sdekit.NonFiniteError, match="x0"):
        sdekit.solve(Decay(), X0 * float("inf"), 0.0, 1.0, solver="euler", steps=4)


def test_bad_times_and_steps():
    with pytest.raises(ValueError, match="t0 == t1"):
        sdekit.solve(Decay(), X0, 1.0, 1.0, solver="euler", steps=4)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        sdekit.solve(Decay(), X0, 0.0, 1.0, solver="euler", steps=0)
    with pytest.raises(ValueError, match="give steps="):
        sdekit.solve(Decay(), X0, 0.0, 1.0, solver="euler")
    with pytest.raises(ValueError, match="start at t0"):
        sdekit.solve(Decay(), X0, 0.0, 1.0, solver="euler", ts=[0.1, 1.0])
    with pytest.raises(ValueError, match="monotone"):
        sdekit.solve(Decay(), X0, 0.0, 1.0, solver="euler", ts=[0.0, 0.6, 0.5, 1.0])
    with pytest.raises(ValueError, match="save_at"):
        sdekit.solve(Decay(), X0, 0.0, 1.0, solver="euler", steps=4, save_at=[2.0])


def test_unknown_solver_lists_known_ones():
    with pytest.raises(sdekit.SolverError, match="unknown solver 'rk5'.*dopri5.*euler_maruyama"):
        sdekit.solve(Decay(), X0, 0.0, 1.0, solver="rk5", steps=4)


def test_solver_problem_mismatch_names_a_solver_that_can():
    with pytest.raises(sdekit.SolverError, match="is an SDE.*euler_maruyama"):
        sdekit.solve(OU(), X0, 0.0, 1.0, solver="rk4", steps=4)
    with pytest.raises(sdekit.SolverError, match="is an ODE.*rk4"):
        sdekit.solve(Decay(), X0, 0.0, 1.0, solver="euler_maruyama", steps=4)
    with pytest.raises(ValueError, match="takes fixed steps.*dopri5"):
        sdekit.solve(Decay(), X0, 0.0, 1.0, solver="rk4", rtol=1e-3)


def test_max_steps_exhausted():
    with pytest.raises(sdekit.MaxStepsError, match="max_steps=5"):
        sdekit.solve(Decay(), X0, 0.0, 10.0, solver="dopri5", rtol=1e-12, atol=1e-12, max_steps=5)


def test_x0_must_be_batched_float_tensor():
    with pytest.raises(ValueError, match="batch dimension"):
        sdekit.solve(Decay(), torch.tensor(1.0), 0.0, 1.0, solver="euler", steps=4)
    with pytest.raises(TypeError, match="floating-point"):
        sdekit.solve(Decay(), torch.ones(2, 2, dtype=torch.long), 0.0, 1.0, solver="euler", steps=4)


def test_explicit_grid_and_progress_bar(capsys):
    ts = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    sol = sdekit.solve(Decay(), X0, 0.0, 1.0, solver="euler", ts=ts, progress=True)
    assert torch.allclose(sol.grid, ts) and sol.n_steps == 3
    assert torch.allclose(sol.x, X0 * 0.9 * 0.6 * 0.5)


def test_sde_reproducible_with_generator_and_dtype_follows_x0():
    x0 = torch.ones(8, 3)
    a = sdekit.solve(OU(), x0, 0.0, 1.0, solver="euler_maruyama", steps=50, generator=torch.Generator().manual_seed(3))
    b = sdekit.solve(OU(), x0, 0.0, 1.0, solver="euler_maruyama", steps=50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and a.x.dtype == torch.float32
    assert a.nfe == 50


def test_available_lists_solvers_with_orders():
    rows = {r["name"]: r for r in sdekit.solvers.available()}
    assert rows["rk4"]["order"] == 4 and rows["rk4"]["kind"] == "ode"
    assert rows["euler_maruyama"]["strong_order"] == 0.5 and rows["euler_maruyama"]["weak_order"] == 1.0
    assert rows["dopri5"]["adaptive"]


def test_core_does_not_import_the_plugin():
    import pathlib

    root = pathlib.Path(sdekit.__file__).parent
    for path in root.rglob("*.py"):
        assert "sdekit_diffusion" not in path.read_text(), path


def test_a_tree_is_queried_in_blocks_of_chunks_with_the_values_of_chunked_queries(monkeypatch):
    """A fixed-step solve queries a BrownianTree in blocks of many 32-step chunks (grid_block):
    the same solution, bit for bit, as one query per chunk, in fewer queries."""
    from sdekit.solve import CHUNK

    assert sdekit.BrownianTree(0.0, 1.0, (64, 2)).grid_block(CHUNK) == 8192
    assert sdekit.BrownianTree(0.0, 1.0, (64, 3, 32, 32)).grid_block(CHUNK) == CHUNK
    assert sdekit.BrownianTree(0.0, 1.0, (1000, 10)).grid_block(CHUNK) == 96
    with pytest.raises(ValueError, match="chunk"):
        sdekit.BrownianTree(0.0, 1.0, (64, 2)).grid_block(0)

    class Additive(OU):
        noise_type = "additive"

    calls = []
    original = sdekit.BrownianTree.increments

    def counted(self, ts, levy_area=False):
        calls.append(ts.shape[0] - 1)
        return original(self, ts, levy_area)

    monkeypatch.setattr(sdekit.BrownianTree, "increments", counted)
    for problem, solver in ((OU(), "euler_maruyama"), (Additive(), "sra1")):
        def solve():
            tree = sdekit.BrownianTree(0.0, 1.0, X0.shape, seed=5)
            return sdekit.solve(problem, X0, 0.0, 1.0, solver=solver, steps=100, brownian=tree).x

        calls.clear()
        blocks = solve()
        assert calls == [100]
        monkeypatch.setattr(sdekit.BrownianTree, "grid_block", lambda self, chunk: chunk)
        calls.clear()
        chunks = solve()
        assert calls == [32, 32, 32, 4]
        assert torch.equal(blocks, chunks)
        monkeypatch.undo()
        monkeypatch.setattr(sdekit.BrownianTree, "increments", counted)
