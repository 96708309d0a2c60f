"""Learned reverse variances (Improved DDPM): networks with 2C outputs, ancestral sampling with the learned,
beta and beta~ variances on full and respaced chains (against diffusers' learned_range), the trainer's
hybrid and VLB objectives, and the U-Net's per-site attention with old-layout checkpoints."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion.chain import DiscreteChain, respaced_timesteps
from sdekit_diffusion.nets import MLP, SelfAttention, UNet
from sdekit_diffusion.samplers.ancestral import step_log_variances, transition
from sdekit_diffusion.training import Trainer, latest_checkpoint
from sdekit_diffusion.variance import LearnedVarianceScore, interpolated_log_variance
from sdekit_diffusion.vlb import quantize, vlb_bits_per_dim


pytestmark = pytest.mark.usefixtures("float32_default")   # networks train in float32 (conftest)


def table_sde(N=100):
    return skd.DiffusionSDE.from_betas(skd.VPSDE().ddpm_betas(N))


class FixedModel(torch.nn.Module):
    """eps = 0.3 x + 0.1 sin(timestep), v = c (a constant) or a function of the timestep."""
    learn_variance = True

    def __init__(self, c=None):
        super().__init__()
        self.c = c

    def forward(self, x, model_time):
        n = model_time[:, None].to(x.dtype)
        eps = 0.3 * x + 0.1 * torch.sin(n)
        v = torch.full_like(x, self.c) if self.c is not None else torch.cos(0.05 * n).expand_as(x)
        return torch.cat([eps, v], dim=1)


# -- the variance parameterization -------------------------------------------------------------------

def test_networks_output_the_variance_channels():
    x, t = torch.randn(4, 3), torch.rand(4)
    assert MLP(3, hidden=16, depth=1, learn_variance=True)(x, t).shape == (4, 6)
    net = UNet(2, base=8, learn_variance=True, image_size=8)
    assert net(torch.randn(3, 2, 8, 8), torch.rand(3)).shape == (3, 4, 8, 8)
    score = LearnedVarianceScore(net, skd.VPSDE())
    assert score(torch.rand(3), torch.randn(3, 2, 8, 8)).shape == (3, 2, 8, 8) and score.last_v.shape == (3, 2, 8, 8)
    assert torch.equal(score.last_v, torch.zeros(3, 2, 8, 8))   # zero-initialised: the geometric mean of beta, beta~
    with pytest.raises(ValueError, match=r"shape \(3, 4, 8, 8\)"):
        LearnedVarianceScore(UNet(2, base=8), skd.VPSDE())(torch.rand(3), torch.randn(3, 2, 8, 8))
    log_beta, log_beta_tilde = torch.tensor(-2.0), torch.tensor(-6.0)
    assert interpolated_log_variance(torch.tensor(1.0), log_beta, log_beta_tilde) == -2.0
    assert interpolated_log_variance(torch.tensor(-1.0), log_beta, log_beta_tilde) == -6.0
    assert interpolated_log_variance(torch.tensor(0.0), log_beta, log_beta_tilde) == -4.0


def test_ancestral_learned_variance_matches_diffusers_learned_range_on_a_respaced_chain():
    """Each step of the respaced chain (diffusers DDPMScheduler with custom timesteps): the same mean and
    the same log-variance, exp(v' log beta_S + (1 - v') log beta~_S), from beta_S = 1 - abar_S/abar_S'."""
    diffusers = pytest.importorskip("diffusers")
    torch.set_default_dtype(torch.float64)
    betas = skd.VPSDE().ddpm_betas(100)
    sde = skd.DiffusionSDE.from_betas(betas)
    S = respaced_timesteps(100, 10)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, trained_betas=betas.numpy(),
                                        variance_type="learned_range", clip_sample=False)
    scheduler.set_timesteps(timesteps=S[::-1].tolist())
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, 0)   # float64, as the table here (diffusers keeps float32)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    grid = DiscreteChain.from_sde(sde).respace(S).sampling_grid()
    alpha_ts, sigma2_ts, (_, sigma, _) = transition(SimpleNamespace(sde=sde), grid)
    log_beta, log_beta_tilde = step_log_variances(sigma2_ts, sigma)
    model = FixedModel()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    for i, timestep in enumerate(S[::-1][:-1].tolist()):
        out = model(x, torch.full((5,), float(timestep)))
        eps, v = out.chunk(2, dim=1)
        expected_log_variance = scheduler._get_variance(timestep, predicted_variance=v)
        generator = torch.Generator().manual_seed(i)
        stepped = scheduler.step(out, timestep, x, generator=generator).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        expected_mean = stepped - torch.exp(0.5 * expected_log_variance) * noise
        score = -eps / sigma[i]
        mean = (x + sigma2_ts[i] * score) / alpha_ts[i]                       # ancestral_step's mean
        log_variance = interpolated_log_variance(v, log_beta[i], log_beta_tilde[i])
        torch.testing.assert_close(mean, expected_mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(log_variance, expected_log_variance.expand_as(x), rtol=1e-9, atol=1e-9)
        x = stepped


def test_learned_variance_reaches_the_ancestral_sampler():
    """v = -1 samples exactly as variance='beta_tilde', v = 1 as 'beta' (same seed, same noise); a constant v
    in between scales the noise of a step by exp(v' log beta + (1 - v') log beta~)^(1/2)."""
    sde = table_sde()
    grid = DiscreteChain.from_sde(sde).respace(respaced_timesteps(100, 25)).sampling_grid()

    def run(score, variance, ts=grid, **options):
        return skd.sample(sde, score, (64, 2), solver="ancestral", ts=ts, seed=3, variance=variance, **options)

    fixed = skd.as_score(lambda x, t: FixedModel(0.0)(x, t)[:, :2], sde)
    for c, variance in ((-1.0, "beta_tilde"), (1.0, "beta")):
        learned = run(LearnedVarianceScore(FixedModel(c), sde), "learned", denoise=True)
        reference = run(fixed, variance, denoise=True)
        torch.testing.assert_close(learned.x, reference.x, rtol=1e-5, atol=1e-6)
        assert learned.nfe == reference.nfe == 25       # 24 steps and the final data prediction
    step = grid[-2:]   # the last step, where beta and beta~ differ most
    low, high, middle = (run(LearnedVarianceScore(FixedModel(c), sde), "learned", ts=step).x for c in (-1.0, 1.0, 0.3))
    _, sigma2_ts, (_, sigma, _) = transition(SimpleNamespace(sde=sde), step.double())
    log_beta, log_beta_tilde = step_log_variances(sigma2_ts, sigma)
    std = lambda c: math.exp(0.5 * interpolated_log_variance(torch.tensor(c, dtype=torch.float64), log_beta[0],
                                                           log_beta_tilde[0]).item())
    ratio = ((middle - low) / (high - low)).flatten()
    torch.testing.assert_close(ratio, torch.full_like(ratio, (std(0.3) - std(-1.0)) / (std(1.0) - std(-1.0))),
                               rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="LearnedVarianceScore"):
        run(fixed, "learned")
    # clip_denoised: the same step while x0_hat stays in [-1, 1]; the posterior mean of the clamped x0_hat otherwise
    calm = skd.as_score(lambda x, t: torch.zeros_like(x), sde)            # eps = 0: x0_hat = x / alpha
    start = torch.full((4, 2), 0.01)
    same = [skd.sample(sde, calm, x_T=start, solver="ancestral", ts=step, seed=1, clip_denoised=c).x for c in (False, True)]
    torch.testing.assert_close(same[0], same[1], rtol=1e-5, atol=1e-6)
    wild = torch.full((4, 2), 5.0)                                          # x0_hat = 5 / alpha_t > 1
    clipped, unclipped = (skd.sample(sde, calm, x_T=wild, solver="ancestral", ts=step, seed=1, clip_denoised=c).x
                          for c in (True, False))
    chain = DiscreteChain.from_sde(sde)
    n_t, n_s = (int(round(float(t) * 100)) - 1 for t in step)
    a_t, a_s, s_t, s_s = chain.alpha[n_t], chain.alpha[n_s], chain.sigma[n_t], chain.sigma[n_s]
    coef_x = (a_t / a_s) * s_s ** 2 / s_t ** 2
    coef_x0 = a_s * (s_t ** 2 - (a_t / a_s) ** 2 * s_s ** 2) / s_t ** 2
    expected = (coef_x * 5.0 + coef_x0 * 1.0 - 5.0 * a_s / a_t).item()    # clamped mean minus x / alpha_{t|s}
    torch.testing.assert_close(clipped - unclipped, torch.full_like(clipped, expected), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="variance must be one of"):
        run(fixed, "large")


# -- training with learned variances ------------------------------------------------------------------

def eight_bit_blobs(n=2048, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-0.5, -0.5], [0.5, 0.5]])
    return quantize(centers[torch.randint(2, (n,), generator=generator)] + 0.1 * torch.randn(n, 2, generator=generator))


def test_hybrid_training_lowers_the_bound_and_samples_with_its_variance(tmp_path):
    data = eight_bit_blobs()
    sde = table_sde()
    torch.manual_seed(0)
    trainer = Trainer(MLP(2, hidden=32, depth=2, learn_variance=True, time_scale=0.01), sde, loss="hybrid",
                      lr=3e-3, ema_decay=0.99, device="cpu", progress=False)
    held_out = eight_bit_blobs(512, seed=1)
    before = vlb_bits_per_dim(sde, trainer.ema, held_out, generator=torch.Generator().manual_seed(0)).mean().item()
    trainer.fit(data, steps=150, batch_size=128)
    after = vlb_bits_per_dim(sde, trainer.ema, held_out, generator=torch.Generator().manual_seed(0)).mean().item()
    print(f"VLB bits/dim on held-out 8-bit blobs: untrained {before:.2f}, after 150 hybrid steps {after:.2f}")
    assert after < before - 2
    score = trainer.score_fn()
    assert isinstance(score, LearnedVarianceScore)
    samples = skd.sample(sde, score, (256, 2), solver="ancestral", time_grid="trailing", steps=20, seed=0,
                         variance="learned", final_step="zero").x
    assert torch.isfinite(samples).all() and (samples.abs().mean(0) > 0.2).all()
    with pytest.raises(ValueError, match="--loss hybrid|loss='hybrid'"):
        Trainer(MLP(2, hidden=8, depth=1, learn_variance=True), sde, device="cpu")
    with pytest.raises(ValueError, match="learn_variance=True"):
        Trainer(MLP(2, hidden=8, depth=1), sde, loss="hybrid", device="cpu")
    with pytest.raises(ValueError, match="8-bit data"):
        Trainer(MLP(2, hidden=8, depth=1), sde, loss="vlb", device="cpu", progress=False).fit(data + 0.001, steps=1)


def test_vlb_training_with_importance_sampling_resumes_exactly(tmp_path):
    """The importance sampler's history is part of the checkpoint: an interrupted run continues bit for bit."""
    data, sde = eight_bit_blobs(256), skd.DiffusionSDE.from_betas(torch.linspace(0.01, 0.3, 10))

    def trainer(**options):
        torch.manual_seed(0)
        return Trainer(MLP(2, hidden=16, depth=1, learn_variance=True), sde, loss="vlb", importance_sampling=True,
                       lr=1e-3, device="cpu", progress=False, **options)

    interrupted = trainer(checkpoint_dir=tmp_path, checkpoint_every=40)
    interrupted.fit(data, steps=40, batch_size=32)
    assert bool(interrupted.objective.importance_sampler.warmed_up())   # 1280 draws over 10 timesteps
    resumed = trainer(checkpoint_dir=tmp_path, checkpoint_every=40)
    resumed.fit(data, steps=60, batch_size=32)
    straight = trainer()
    straight.fit(data, steps=60, batch_size=32)
    assert resumed.losses == straight.losses
    assert torch.equal(resumed.objective.importance_sampler.history, straight.objective.importance_sampler.history)


def command_line():
    import argparse
    from sdekit_diffusion.cli import register
    parser = argparse.ArgumentParser(prog="sdekit")
    register(parser.add_subparsers(dest="command"))
    return lambda *argv: (lambda args: args.func(args))(parser.parse_args([str(a) for a in argv]))


def test_cli_trains_a_learned_variance_model(tmp_path, capsys):
    run = command_line()
    assert run("train", "--data", "gaussians8", "--n", "256", "--steps", "6", "--hidden", "16", "--depth", "1",
               "--batch-size", "16", "--loss", "hybrid", "--learn-variance", "--chain-steps", "50",
               "--output", tmp_path / "run", "--quiet") == 0
    assert "rounded the data to 8-bit" in capsys.readouterr().out
    loaded = Trainer.load(tmp_path / "run" / "model.pt", device="cpu")
    assert loaded.loss_kind == "hybrid" and loaded.learn_variance and loaded.objective.chain.T == 50
    assert run("train", "--data", "gaussians8", "--learn-variance", "--output", tmp_path / "bad", "--quiet") == 2
    assert "--learn-variance needs --loss hybrid or --loss vlb" in capsys.readouterr().err
    assert run("train", "--data", "gaussians8", "--loss", "hybrid", "--output", tmp_path / "bad", "--quiet") == 2
    assert "add --learn-variance" in capsys.readouterr().err


# -- U-Net attention sites -----------------------------------------------------------------------------

def test_every_unet_attention_site_has_its_own_weights():
    net = UNet(1, base=8, channel_mults=(1, 2), attention_resolutions=(4,), image_size=8)
    assert sorted(net.attention_sites()) == ["down_attention.1", "up_attention.0", "up_attention.1"]
    sites = [module for path in ("down_attention", "up_attention") for module in getattr(net, path).values()]
    assert len({id(p) for site in sites for p in site.parameters()}) == 6 * len(sites)   # norm, qkv, proj
    for module in [*sites, net.out]:   # zero-initialised output layers would block every gradient
        torch.nn.init.normal_(module.proj.weight if module is not net.out else module.weight)
    net(torch.randn(2, 1, 8, 8), torch.rand(2)).square().sum().backward()
    assert all(site.qkv.weight.grad.abs().max() > 0 for site in sites)
    assert not any(name.startswith("attention.") for name, _ in net.named_parameters())
    with pytest.raises(ValueError, match="built for 8x8"):
        net(torch.randn(2, 1, 16, 16), torch.rand(2))
    # without image_size, every block has a site and the ones at a listed resolution are used
    assert len(UNet(1, base=8).attention_sites()) == 6


class SharedAttentionUNet(torch.nn.Module):
    """The earlier layout (sdekit <= 0.1): one SelfAttention per width, used at every site of that width,
    its parameters registered in that version's order."""

    def __init__(self, config):
        super().__init__()
        reference = UNet(**config)
        self.embed, self.inp = reference.embed, reference.inp
        self.down_blocks, self.down_attention, self.downsample = reference.down_blocks, torch.nn.ModuleList(), \
            reference.downsample
        self.middle = reference.middle
        self.up_blocks, self.upsample = reference.up_blocks, reference.upsample
        widths = sorted(set(reference.attention_sites().values()))
        self.attention = torch.nn.ModuleDict({str(w): SelfAttention(w) for w in widths})
        self.out_norm, self.out = reference.out_norm, reference.out
        for path in ("down_attention", "up_attention"):
            sites = getattr(reference, path)
            for key in list(sites):
                sites[key] = self.attention[str(sites[key].qkv.in_channels)]
        self._forward = reference.forward

    def forward(self, x, t):
        return self._forward(x, t)


def test_old_layout_checkpoints_load_and_resume(tmp_path):
    """A checkpoint of the shared-attention layout: the weights are copied to every site (the same function),
    the Adam moments follow them, and training resumes; a UNet built with image_size refuses it clearly."""
    config = dict(channels=1, base=8, channel_mults=[1, 2], attention_resolutions=[4], num_res_blocks=1,
                  dropout=0.0, time_embedding="fourier", time_scale=1.0)
    torch.manual_seed(0)
    legacy = SharedAttentionUNet(config)
    for p in legacy.parameters():
        p.data.normal_(0, 0.1)
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    host = Trainer(UNet(**config), skd.VPSDE(), device="cpu", progress=False)   # to write the file format
    host.net, host.ema = legacy, SharedAttentionUNet(config)
    host.ema.load_state_dict(legacy.state_dict())
    host.optimizer = torch.optim.Adam(legacy.parameters(), lr=1e-3)
    host.scheduler = torch.optim.lr_scheduler.LambdaLR(host.optimizer, lambda step: 1.0)
    host.fit(data, steps=2, batch_size=4)
    checkpoint = host.state_dict()
    checkpoint.update(net_class="UNet", net_config=config)
    assert any(key.startswith("attention.8.") for key in checkpoint["net"])
    torch.save(checkpoint, tmp_path / "old.pt")

    loaded = Trainer.load(tmp_path / "old.pt", device="cpu", progress=False)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    torch.testing.assert_close(loaded.ema(x, t), host.ema(x, t), rtol=0, atol=0)
    torch.testing.assert_close(loaded.net(x, t), legacy(x, t), rtol=0, atol=0)
    moments = loaded.optimizer.state_dict()["state"]
    names = [name for name, _ in loaded.net.named_parameters()]
    old_moments = host.optimizer.state_dict()["state"]
    old_index = {name: i for i, (name, _) in enumerate(legacy.named_parameters())}
    for site in ("down_attention.1", "up_attention.0", "up_attention.1"):   # the 4x4 sites, width 16
        torch.testing.assert_close(moments[names.index(f"{site}.qkv.weight")]["exp_avg"],
                                   old_moments[old_index["attention.16.qkv.weight"]]["exp_avg"])
    # the 8x8 sites never ran (no attention at that resolution): no moments on either side
    assert names.index("down_attention.0.qkv.weight") not in moments
    assert old_index["attention.8.qkv.weight"] not in old_moments
    loaded.fit(data, steps=4, batch_size=4)
    assert loaded.step == 4 and len(loaded.losses) == 4
    with pytest.raises(ValueError, match="earlier UNet layout.*without image_size"):
        Trainer.load(tmp_path / "old.pt", net=UNet(**config, image_size=8), device="cpu")
