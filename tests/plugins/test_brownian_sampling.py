"""``skd.sample(..., brownian=tree)``: one given ``sdekit.BrownianTree`` drives any stochastic
sampler (core solvers through ``sdekit.solve``'s ``brownian=``, the plugin's through
``Context.step_normal``), so samplers can be compared on one path; deterministic samplers and
trees that do not fit the samples are refused."""
from __future__ import annotations

import math

import pytest
import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion.samplers._common import PathNoise

MIXTURE = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, 0.0]], stds=[0.5, 0.65])
BATCH = 8

# every stochastic family: core fixed-step and adaptive SDE solvers, and the plugin's samplers
STOCHASTIC = [
    ("euler_maruyama", {}), ("sra1", {}), ("shark", dict(rtol=0.1, atol=0.1)),
    ("reverse_diffusion", {}), ("ancestral", {}), ("pc", {}),
    ("pc", dict(predictor="euler_maruyama", n_corrector_steps=2)), ("ddim", dict(eta=1.0)),
    ("edm_heun", dict(S_churn=10.0)), ("dpm_solver++_2m_sde", {}), ("dpm_solver++_3m_sde", {}),
    ("adaptive_sde", dict(rtol=0.1, atol=0.1)),
]


def problem(batch: int = BATCH):
    sde = skd.VPSDE()
    data = skd.GaussianMixture(MIXTURE["weights"], torch.tensor(MIXTURE["means"]), MIXTURE["stds"])
    x_T = sde.prior_std * torch.randn(batch, 2, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64)
    return sde, data.score_fn(sde), x_T


def tree(sde, seed: int, batch: int = BATCH, **kwargs) -> sdekit.BrownianTree:
    return sdekit.BrownianTree(sde.t_min, sde.t_max, (batch, 2), seed=seed, dtype=torch.float64, **kwargs)


def run(sde, score, x_T, solver, options, brownian, steps=16, **more):
    grid = {} if skd.samplers.registry.get(solver).adaptive else dict(steps=steps)
    return skd.sample(sde, score, x_T=x_T, solver=solver, brownian=brownian, **grid, **options, **more).x


@pytest.mark.parametrize("solver, options", STOCHASTIC, ids=[f"{s}{o or ''}" for s, o in STOCHASTIC])
def test_a_tree_drives_every_stochastic_sampler(solver, options):
    """The samples are a function of the tree: the same tree gives the same samples whatever the
    seed (no noise comes from the seed's streams), another tree other samples."""
    sde, score, x_T = problem()
    first = run(sde, score, x_T, solver, options, tree(sde, 3), seed=1)
    again = run(sde, score, x_T, solver, options, tree(sde, 3), seed=2)
    other = run(sde, score, x_T, solver, options, tree(sde, 4), seed=1)
    assert torch.equal(first, again)
    assert (first - other).norm(dim=1).mean().item() > 0.3     # measured 1.4 to 9.1


def test_euler_maruyama_on_a_tree_is_sdekit_solve_on_it():
    """Through sample() the core solvers are sdekit.solve on the reverse SDE with that tree, to the
    bit (with and without a callback, which solves step by step); the plugin's pc with the
    Euler-Maruyama predictor and no corrector takes the same increments, dW / sqrt(h) * sqrt(h)."""
    sde, score, x_T = problem()
    path = tree(sde, 5)
    ts = skd.time_grid(sde, 32, "uniform")
    reverse = sde.reverse(score)
    for solver in ("euler_maruyama", "sra1"):
        core = sdekit.solve(reverse, x_T, sde.t_max, sde.t_min, solver=solver, ts=ts, brownian=path).x
        assert torch.equal(run(sde, score, x_T, solver, {}, path, steps=32), core)
        seen = []
        stepped = run(sde, score, x_T, solver, {}, path, steps=32, callback=lambda *a: seen.append(1))
        assert len(seen) == 32 and torch.allclose(stepped, core, rtol=0, atol=1e-12)
    core = sdekit.solve(reverse, x_T, sde.t_max, sde.t_min, solver="euler_maruyama", ts=ts, brownian=path).x
    plugin = run(sde, score, x_T, "pc", dict(predictor="euler_maruyama", corrector="none"), path, steps=32)
    assert torch.allclose(plugin, core, rtol=0, atol=1e-12), (plugin - core).abs().max()


def test_samplers_on_one_path_converge_to_one_another():
    """On one tree, two convergent discretisations of the reverse SDE approach each other as the
    grid refines (both tend to the solution driven by that path); on two trees they do not.
    Ancestral sampling is DDIM with eta = 1, and is so step by step on the path."""
    sde, score, x_T = problem(32)
    path, other_path = tree(sde, 5, 32), tree(sde, 6, 32)
    pairs = [(("reverse_diffusion", {}), ("euler_maruyama", {})),
             (("ancestral", {}), ("dpm_solver++_2m_sde", {}))]
    for (a, options_a), (b, options_b) in pairs:
        gaps = [(run(sde, score, x_T, a, options_a, path, steps=steps)
                 - run(sde, score, x_T, b, options_b, path, steps=steps)).norm(dim=1).mean().item()
                for steps in (16, 256)]
        apart = (run(sde, score, x_T, a, options_a, path, steps=256)
                 - run(sde, score, x_T, b, options_b, other_path, steps=256)).norm(dim=1).mean().item()
        # measured: reverse_diffusion/EM 0.42 -> 0.020, ancestral/2M SDE 0.74 -> 0.050; apart 1.8
        assert gaps[1] < gaps[0] / 5 and gaps[1] < 0.1 and apart > 0.5, (a, b, gaps, apart)
    ancestral = run(sde, score, x_T, "ancestral", {}, path, steps=64)
    ddim = run(sde, score, x_T, "ddim", dict(eta=1.0), path, steps=64)
    assert torch.allclose(ancestral, ddim, rtol=0, atol=1e-12)


def test_corrector_normals_of_a_tree_are_independent_standard_normals():
    """PathNoise: the step normals dW/sqrt(h) and the Lévy-area normals sqrt(12/h_k) H_k of the
    parts of each step are standard normal and uncorrelated with each other (n = 20000 elements,
    4-sigma bounds), and replay exactly."""
    n = 20_000
    path = sdekit.BrownianTree(0.0, 1.0, (n,), seed=9, dtype=torch.float64)
    ts = torch.tensor([1.0, 0.7, 0.31, 0.3, 0.0], dtype=torch.float64)   # decreasing, uneven
    noise = PathNoise(path, ts, splits=2)
    normals = torch.stack([noise(i) for i in range(4)] + [noise.split(i, k) for i in range(4)
                                                          for k in range(2)])   # (12, n)
    assert normals.mean(1).abs().max().item() < 4 / math.sqrt(n)
    assert (normals.var(1) - 1).abs().max().item() < 4 * math.sqrt(2 / n)
    correlation = torch.corrcoef(normals) - torch.eye(12, dtype=torch.float64)
    assert correlation.abs().max().item() < 4 / math.sqrt(n)
    replay = PathNoise(path, ts, splits=2)
    assert torch.equal(replay.split(3, 1), normals[-1]) and torch.equal(replay(0), normals[0])
    increments = path.increments(ts)[0]
    assert torch.allclose(normals[1], increments[1] / math.sqrt(0.7 - 0.31), rtol=1e-12, atol=0)


def test_brownian_that_cannot_drive_the_sampler_is_refused():
    sde, score, x_T = problem()
    path = tree(sde, 3)
    for solver, options in (("ddim", {}), ("edm_heun", {}), ("dpm_solver++_2m_sde", dict(eta=0.0)),
                            ("euler", {}), ("dpm_solver++_2m", {}), ("dopri5", {})):
        with pytest.raises(ValueError, match="deterministic with these options"):
            run(sde, score, x_T, solver, options, path)
    with pytest.raises(sdekit.ShapeError, match=r"shape \(4, 2\) but the samples have shape \(8, 2\)"):
        run(sde, score, x_T, "ancestral", {}, tree(sde, 3, batch=4))
    single = sdekit.BrownianTree(sde.t_min, sde.t_max, (BATCH, 2), seed=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="float32 on cpu but the samples are torch.float64"):
        run(sde, score, x_T, "euler_maruyama", {}, single)
    short = sdekit.BrownianTree(0.5, sde.t_max, (BATCH, 2), seed=3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"lives on \[0.5, 1.0\] but reverse_diffusion runs over"):
        run(sde, score, x_T, "reverse_diffusion", {}, short)
    with pytest.raises(TypeError, match="sdekit.BrownianTree"):
        run(sde, score, x_T, "ancestral", {}, sdekit.brownian.GeneratorNoise((BATCH, 2)))
    with pytest.raises(ValueError, match="noise='fresh'"):
        run(sde, score, x_T, "dpm_solver++_2m_sde", dict(noise="fresh"), path)
    with pytest.raises(ValueError, match="core_pc's Langevin corrector"):
        run(sde, score, x_T, "core_pc", {}, path)
    # a tree on a wider interval is fine: t_min above sde.t_min
    wide = run(sde, score, x_T, "ancestral", {}, path, t_min=0.1)
    assert wide.shape == x_T.shape


@pytest.mark.parametrize("solver, options", [("ddim", dict(eta=1.0)), ("dpm_solver++_2m_sde", {}),
                                             ("dpm_solver++_3m_sde", {})])
def test_path_noise_blocks_do_not_change_the_samples(solver, options, monkeypatch):
    """PathNoise queries the tree tree.grid_block(32) steps at a time (here the whole grid); with
    one query per 32 steps the samples are the same, bit for bit."""
    sde, score, x_T = problem()
    blocks = run(sde, score, x_T, solver, options, tree(sde, 3), steps=70)
    monkeypatch.setattr(sdekit.BrownianTree, "grid_block", lambda self, chunk: chunk)
    assert torch.equal(run(sde, score, x_T, solver, options, tree(sde, 3), steps=70), blocks)
