"""The sampler registry: one record per sampler, read by sample(), the CLI and the bench; records
agree with what the samplers do (score calls, noise, step counts)."""
import pytest
import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion import samplers


def mixture():
    return skd.GaussianMixture([0.4, 0.6], torch.tensor([[-1.0, 0.5], [1.2, -0.3]]), [0.3, 0.5])


def test_every_name_has_one_record_and_the_core_is_included():
    names = samplers.available()
    assert names == sorted(names) and len(set(names)) == len(names)
    for name in ("ddim", "dpm_solver++_2m", "edm_heun", "pc", "ancestral", "adaptive_sde", "core_pc",
                 "dopri5", "euler_maruyama", "sra1", "rk4"):
        assert name in names
    core = {row["name"] for row in sdekit.solvers.available()}
    assert core - {"pc"} <= set(names)   # the core's pc is core_pc here
    for record in samplers.records():
        assert samplers.get(record.name) is record
        assert record.min_steps >= 1 and record.summary


@pytest.mark.parametrize("name", [r.name for r in samplers.records() if not r.adaptive])
def test_fixed_grid_samplers_make_the_declared_score_calls(name):
    """nfe = calls_per_step * steps for every fixed-grid sampler, counted at the score function."""
    sde = skd.VPSDE()
    record = samplers.get(name)
    calls = []
    score = mixture().score_fn(sde)
    counted = lambda t, x: calls.append(1) or score(t, x)   # noqa: E731
    steps = max(4, record.min_steps)
    solution = skd.sample(sde, counted, (8, 2), solver=name, steps=steps, time_grid="logsnr", seed=0)
    assert solution.nfe == len(calls) == record.calls_per_step({}) * steps
    assert solution.n_steps == steps and solution.n_rejected == 0
    assert solution.grid.shape == (steps + 1,)
    assert torch.isfinite(solution.x).all()


def test_stochastic_flags_follow_the_options():
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    for name, options, noisy in [("ddim", {}, False), ("ddim", {"eta": 1.0}, True),
                                 ("edm_heun", {}, False), ("edm_heun", {"S_churn": 10.0}, True),
                                 ("dpm_solver++_2m", {}, False), ("pc", {}, True),
                                 ("euler_maruyama", {}, True), ("heun", {}, False)]:
        record = samplers.get(name)
        assert record.stochastic(options) is noisy, (name, options)
        # from one x_T, a sampler that says it draws noise gives different samples for other seeds
        x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0))
        a, b = (skd.sample(sde, score, x_T=x_T, solver=name, steps=6, seed=s, **options).x
                for s in (0, 1))
        assert bool((a != b).any()) is noisy, (name, options)


def test_pc_calls_per_step_follow_its_options():
    record = samplers.get("pc")
    assert record.calls_per_step({}) == 2
    assert record.calls_per_step({"n_corrector_steps": 3}) == 4
    assert record.calls_per_step({"corrector": "none"}) == 1
    assert record.calls_per_step({"predictor": "none", "n_corrector_steps": 2}) == 2


def test_adaptive_samplers_pass_the_core_step_counts_through():
    sde = skd.VPSDE()
    data = mixture()
    score = data.score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0))
    through_sample = skd.sample(sde, score, x_T=x_T, solver="dopri5", rtol=1e-5, atol=1e-5)
    direct = sdekit.solve(sde.probability_flow(score), x_T, sde.t_max, sde.t_min, solver="dopri5",
                          rtol=1e-5, atol=1e-5)
    assert through_sample.n_steps == direct.n_steps > 1
    assert through_sample.n_rejected == direct.n_rejected
    assert through_sample.nfe == direct.nfe
    torch.testing.assert_close(through_sample.grid, direct.grid)
    torch.testing.assert_close(through_sample.x, direct.x)
    gotta_go_fast = skd.sample(sde, score, x_T=x_T, solver="adaptive_sde", rtol=0.05, atol=0.01, seed=0)
    assert gotta_go_fast.n_steps > 1 and gotta_go_fast.nfe >= 2 * gotta_go_fast.n_steps


def test_bench_lists_and_runs_every_sampler():
    from sdekit import bench
    from sdekit_diffusion.bench_problems import bench_sampler_names

    from sdekit_diffusion.bench_problems import register_bench_problems
    register_bench_problems()
    names = set(bench.solver_names())
    for record in samplers.records():
        assert record.name in names, record.name
    for name in bench_sampler_names():
        info = bench.solver_info(name)
        problem = "vp_reverse_mixture" if info["kind"] == "sde" else "vp_flow_gaussian"
        options = {"rtols": [0.05]} if info["adaptive"] else {"steps": [4]}
        result = bench.run(problem, [name], samples=8, **options)
        assert result.rows and all(row["nfe"] > 0 for row in result.rows), name


def test_sample_checks_times_dtypes_and_counts_up_front():
    import numpy as np

    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    for solver in ("adaptive_sde", "dopri5", "ddim"):
        for t_min in (2.0, 0.5 * sde.t_min, float("nan")):
            options = {} if samplers.get(solver).adaptive else {"steps": 4}
            with pytest.raises(ValueError, match="t_min"):
                skd.sample(sde, score, (4, 2), solver=solver, t_min=t_min, **options)
    with pytest.raises(TypeError, match="floating-point dtype"):
        skd.sample(sde, score, (4, 2), solver="ddim", steps=4, dtype=torch.int64)
    with pytest.raises(ValueError, match="zero length in torch.bfloat16"):
        skd.sample(sde, score, (4, 2), solver="ddim", steps=1000, dtype=torch.bfloat16)
    solution = skd.sample(sde, score, (np.int64(4), 2), solver="ddim", steps=np.int64(5))
    assert solution.n_steps == 5 and solution.x.shape == (4, 2)
