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
    solution = skd.sample(sde, score, (np.int64(4), 2), solver="ddim", steps=np.int64(5))
    assert solution.n_steps == 5 and solution.x.shape == (4, 2)


def test_a_low_precision_state_steps_through_distinct_times_in_the_time_dtype():
    """Issue 12 item 6: a bfloat16 state on a 128-step grid steps through 128 distinct float64
    times (a bfloat16 grid of 1000 steps has 507), the score sees them as float32, the state stays
    bfloat16 and near a float32 run on the same noise; more steps than the state's 1/eps are
    refused, since the state's own rounding then dominates (measured: sample means off by 0.06-0.2
    at 1000 bfloat16 steps, 0.02 at 128)."""
    sde = skd.VPSDE()
    exact = mixture().score_fn(sde)
    seen = []

    def score(t, x):
        seen.append((t.dtype, x.dtype))
        return exact(t, x)

    low = skd.sample(sde, score, (256, 2), solver="ddim", steps=128, seed=3, dtype=torch.bfloat16)
    assert low.x.dtype == torch.bfloat16 and low.ts.dtype == torch.float64
    assert low.ts.unique().numel() == 129 and low.nfe == 128
    assert set(seen) == {(torch.float32, torch.bfloat16)}
    seen.clear()   # a float32 state: a float64 grid, the score called with float32 times as before
    high = skd.sample(sde, score, (256, 2), solver="ddim", steps=128, seed=3, dtype=torch.float32)
    assert high.ts.dtype == torch.float64 and set(seen) == {(torch.float32, torch.float32)}
    assert (low.x.float() - high.x).abs().mean() < 0.05   # measured 0.020
    for dtype, limit in ((torch.bfloat16, 128), (torch.float16, 1024)):
        with pytest.raises(ValueError, match=f"{limit + 1} steps are too many for a {dtype} state"):
            skd.sample(sde, exact, (4, 2), solver="ddim", steps=limit + 1, dtype=dtype)


@pytest.mark.parametrize("name", samplers.available())
def test_every_sampler_keeps_a_half_precision_state_in_its_dtype(name):
    """Times and coefficients in float64 (CPU), the state in float16 throughout: no sampler
    promotes it (coefficients are cast where they meet the state); the score sees float32 times."""
    sde = skd.VPSDE()
    record = samplers.get(name)
    exact, seen = mixture().score_fn(sde), set()

    def score(t, x):   # every call sees the state's dtype and float32 times
        seen.add((t.dtype, x.dtype))
        return exact(t, x)

    options = {"rtol": 0.05, "atol": 0.05} if record.adaptive else {"steps": max(8, record.min_steps)}
    solution = skd.sample(sde, score, (8, 2), solver=name, seed=1, dtype=torch.float16, **options)
    assert solution.x.dtype == torch.float16 and bool(torch.isfinite(solution.x).all())
    assert solution.ts.dtype == torch.float64 and seen == {(torch.float32, torch.float16)}


def test_bad_devices_generators_tolerances_and_churn_are_refused_up_front():
    """Issue 12 fresh probe: each of these ran (or failed in torch) before."""
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    bad_device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda:0"
    cases = [
        (dict(solver="ddim", steps=4, device=bad_device), ValueError, "CUDA"),
        (dict(solver="ddim", steps=4, device="tpu"), ValueError, "must be a device"),
        (dict(solver="ddim", steps=4, generator=42), TypeError, "generator must be a torch.Generator"),
        (dict(solver="dopri5", atol=float("inf")), ValueError, "tolerances must be finite"),
        (dict(solver="adaptive_sde", rtol=float("inf")), ValueError, "tolerances must be finite"),
        (dict(solver="edm_heun", steps=4, S_churn=-1.0), ValueError, "S_churn must be a finite number >= 0"),
        (dict(solver="edm_heun", steps=4, S_churn=1.0, S_noise=float("nan")), ValueError, "S_noise"),
        (dict(solver="edm_heun", steps=4, S_min=2.0, S_max=1.0), ValueError, "S_max must be a number >= S_min"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            skd.sample(sde, score, (4, 2), **options)
    with pytest.raises(sdekit.ShapeError, match=r"the mixture's samples have shape \(2,\)"):
        skd.sample(sde, score, (4,), solver="ddim", steps=4)
