"""Training: networks, losses (against closed forms), Trainer (learning, checkpoints, resume, errors), data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion import data as datasets
from sdekit_diffusion.losses import ddpm_loss, dsm_loss, importance_sampler, smld_loss
from sdekit_diffusion.nets import MLP, UNet
from sdekit_diffusion.training import Trainer, latest_checkpoint, plot_samples, reverse_sde_sample, sample_plot_callback

DATA_STD = 0.5  # data ~ N(0, DATA_STD^2 I) for the closed-form tests


pytestmark = pytest.mark.usefixtures("float32_default")   # networks train in float32 (conftest)


def gaussian_score(sde, std):
    """Exact score of p_t for data N(0, std^2 I): -x / (alpha^2 std^2 + sigma^2)."""
    def score_fn(t, x):
        alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return -x / (alpha ** 2 * std ** 2 + sigma ** 2)
    return score_fn


def integral_over_t(sde, integrand, points=200001):
    t = torch.linspace(sde.t_min, sde.t_max, points, dtype=torch.float64)
    return (torch.trapezoid(integrand(t), t) / (sde.t_max - sde.t_min)).item()


def energy_distance(a, b):
    return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()).item()


# -- networks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_mlp_shape_and_time_dependence(embedding):
    net = MLP(3, hidden=32, depth=2, time_embedding=embedding)
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(5, 3)
    assert net(x, torch.rand(5)).shape == (5, 3)
    assert net(x, torch.tensor(0.5)).shape == (5, 3)
    assert not torch.allclose(net(x, torch.full((5,), 0.1)), net(x, torch.full((5,), 0.9)))


@pytest.mark.parametrize("channels,size,mults,attention", [(1, 8, (1, 2), (4,)), (1, 28, (1, 2, 2), (7,)),
                                                           (3, 32, (1, 2, 2), (8,))])
def test_unet_shapes(channels, size, mults, attention):
    net = UNet(channels, base=16, channel_mults=mults, attention_resolutions=attention)
    assert net(torch.randn(2, channels, size, size), torch.rand(2)).shape == (2, channels, size, size)
    with pytest.raises(ValueError, match="divisible"):
        net.check_sample_shape((channels, size + 1, size))


# -- losses against closed forms --------------------------------------------------------------------

def test_dsm_loss_of_exact_score_is_the_irreducible_constant():
    """For data N(0, s^2 I) and the exact score, E|sigma s + eps|^2 / D = alpha^2 s^2 / (alpha^2 s^2 + sigma^2)."""
    sde = skd.VPSDE()
    generator = torch.Generator().manual_seed(0)
    x0 = DATA_STD * torch.randn(100_000, 2, dtype=torch.float64, generator=generator)

    def per_time(t):
        a2 = sde.alpha(t) ** 2 * DATA_STD ** 2
        return a2 / (a2 + sde.sigma(t) ** 2)

    cases = [("sigma2", False, per_time), ("sigma2", True, per_time),
             ("likelihood", True, lambda t: per_time(t) * sde.g2(t) / sde.sigma(t) ** 2)]
    for weighting, importance, integrand in cases:
        losses = dsm_loss(sde, gaussian_score(sde, DATA_STD), x0, weighting=weighting,
                          importance_sampling=importance, generator=generator, reduction="none")
        expected = integral_over_t(sde, integrand)
        error = losses.std().item() / math.sqrt(len(losses))
        print(f"{weighting:10s} importance={importance}: {losses.mean().item():.4f} ± {error:.4f}, exact {expected:.4f}")
        assert abs(losses.mean().item() - expected) < 4 * error


def test_importance_sampling_is_unbiased_and_reduces_variance():
    """Same likelihood-weighted loss of an imperfect score, uniform t vs t ~ g^2/sigma^2."""
    sde = skd.VPSDE()
    generator = torch.Generator().manual_seed(1)
    x0 = DATA_STD * torch.randn(100_000, 2, dtype=torch.float64, generator=generator)
    wrong = gaussian_score(sde, 0.8)
    uniform = dsm_loss(sde, wrong, x0, weighting="likelihood", generator=generator, reduction="none")
    weighted = dsm_loss(sde, wrong, x0, weighting="likelihood", importance_sampling=True, generator=generator,
                        reduction="none")
    error = math.hypot(uniform.std().item(), weighted.std().item()) / math.sqrt(len(x0))
    print(f"uniform {uniform.mean().item():.4f} (std {uniform.std().item():.2f}), importance "
          f"{weighted.mean().item():.4f} (std {weighted.std().item():.2f})")
    assert abs(uniform.mean().item() - weighted.mean().item()) < 4 * error
    assert weighted.std() < 0.5 * uniform.std()


def test_importance_sampler_matches_its_density():
    sampler = importance_sampler(skd.VESDE())
    t = sampler.sample(200_000, generator=torch.Generator().manual_seed(2))
    assert t.min() >= 1e-5 and t.max() <= 1.0
    # VE: g^2/sigma^2 = 2 log(sigma_max/sigma_min) is constant, so t is uniform
    assert abs(t.mean().item() - 0.5) < 0.005
    assert torch.allclose(sampler.density(t[:10]), torch.full((10,), 1 / (1 - 1e-5), dtype=torch.float64), rtol=1e-3)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_dsm_loss_is_zero_for_the_true_noise_in_every_parameterization(prediction):
    """A 'network' that knows the noise makes the residual vanish in its own parameterization."""
    sde = skd.VPSDE()
    x0 = torch.randn(64, 3, dtype=torch.float64)

    class Oracle(torch.nn.Module):
        def forward(self, x, t):
            alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
            noise = (x - alpha * x0) / sigma
            return {"eps": noise, "x0": x0, "v": alpha * noise - sigma * x0, "score": -noise / sigma}[prediction]

    loss = dsm_loss(sde, Oracle(), x0, prediction=prediction, generator=torch.Generator().manual_seed(3))
    assert loss.item() < 1e-20 if prediction != "score" else loss.item() < 1e-12


def test_ddpm_and_smld_losses_of_exact_predictors():
    generator = torch.Generator().manual_seed(4)
    x0 = DATA_STD * torch.randn(100_000, 2, dtype=torch.float64, generator=generator)
    betas = skd.VPSDE().ddpm_betas(100)
    alpha_bar = torch.cumprod(1 - betas, 0)

    class ExactEps(torch.nn.Module):
        def forward(self, x, t):
            a = alpha_bar[(t * 100).round().long() - 1][:, None]
            return (1 - a).sqrt() * x / (a * DATA_STD ** 2 + 1 - a)

    losses = ddpm_loss(ExactEps(), x0, betas, generator=generator, reduction="none")
    expected = (alpha_bar * DATA_STD ** 2 / (alpha_bar * DATA_STD ** 2 + 1 - alpha_bar)).mean().item()
    assert abs(losses.mean().item() - expected) < 4 * losses.std().item() / math.sqrt(len(x0))

    sigmas = skd.VESDE().smld_sigmas(10)

    class ExactScore(torch.nn.Module):
        def forward(self, x, t):
            sigma = sigmas[(t * 9).round().long()][:, None]
            return -x / (DATA_STD ** 2 + sigma ** 2)

    losses = smld_loss(ExactScore(), x0, sigmas, generator=generator, reduction="none")
    expected = (DATA_STD ** 2 / (DATA_STD ** 2 + sigmas ** 2)).mean().item()
    assert abs(losses.mean().item() - expected) < 4 * losses.std().item() / math.sqrt(len(x0))


# -- training -----------------------------------------------------------------------------------------

def small_trainer(**options):
    options = {"lr": 2e-3, "ema_decay": 0.99, "device": "cpu", "progress": False, **options}
    torch.manual_seed(0)  # the same initial weights every time
    return Trainer(MLP(2, hidden=64, depth=2), skd.VPSDE(), **options)


def test_training_moves_samples_to_the_data():
    """Trained on moons for 1000 steps (CPU, ~10 s): samples near held-out data, untrained ones far."""
    train, held_out = datasets.moons(4000, seed=0), datasets.moons(1000, seed=1)
    trainer = small_trainer()

    def distance():
        samples = reverse_sde_sample(trainer.sde, trainer.score_fn(), 1000, (2,), steps=100,
                                     generator=torch.Generator().manual_seed(5))
        return energy_distance(samples, held_out)

    before = distance()
    trainer.fit(train, steps=1000, batch_size=256)
    after = distance()
    floor = energy_distance(datasets.moons(1000, seed=2), held_out)
    print(f"energy distance to held-out moons: untrained {before:.4f}, trained {after:.4f}, "
          f"fresh data {floor:.4f}; loss {np.mean(trainer.losses[:50]):.3f} -> {np.mean(trainer.losses[-50:]):.3f}")
    assert after < 0.05 * before
    assert after < 0.05
    assert np.mean(trainer.losses[-50:]) < np.mean(trainer.losses[:50])


def test_save_load_gives_identical_samples(tmp_path):
    trainer = small_trainer()
    trainer.fit(datasets.moons(512), steps=20, batch_size=64)
    trainer.save(tmp_path / "model.pt")
    loaded = Trainer.load(tmp_path / "model.pt", device="cpu")
    assert loaded.step == 20 and loaded.losses == trainer.losses and repr(loaded.sde) == repr(trainer.sde)
    samples = [reverse_sde_sample(t.sde, t.score_fn(), 64, (2,), steps=20, generator=torch.Generator().manual_seed(6))
               for t in (trainer, loaded)]
    assert torch.equal(samples[0], samples[1])


def test_unet_trains_and_is_rebuilt_from_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = UNet(1, base=8, channel_mults=(1, 2), attention_resolutions=(4,), time_embedding="sinusoidal")
    trainer = Trainer(net, skd.VESDE(), prediction="x0", weighting="likelihood", importance_sampling=True,
                      device="cpu", progress=False)
    trainer.fit(torch.rand(32, 1, 8, 8) * 2 - 1, steps=3, batch_size=8)
    trainer.save(tmp_path / "unet.pt")
    loaded = Trainer.load(tmp_path / "unet.pt", device="cpu")
    assert isinstance(loaded.net, UNet) and loaded.sample_shape == (1, 8, 8) and loaded.prediction == "x0"
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(loaded.ema(x, t), trainer.ema(x, t))
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        trainer.fit(torch.rand(32, 3, 8, 8), steps=4, batch_size=8)


def test_resume_continues_step_count_and_loss_curve(tmp_path):
    data = datasets.moons(512)
    interrupted = small_trainer(checkpoint_dir=tmp_path, checkpoint_every=10)
    interrupted.fit(data, steps=20, batch_size=64)
    assert latest_checkpoint(tmp_path).name == "step_00000020.pt"
    resumed = small_trainer(checkpoint_dir=tmp_path, checkpoint_every=10)
    resumed.fit(data, steps=30, batch_size=64)
    assert resumed.step == 30 and len(resumed.losses) == 30
    assert resumed.losses[:20] == interrupted.losses
    straight = small_trainer()
    straight.fit(data, steps=30, batch_size=64)
    assert resumed.losses == straight.losses  # RNG states restored: the same run as without interruption
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_00000020.pt", "step_00000030.pt"]
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("sync_every", [1, 4])
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, sync_every):
    """Step 7's loss is NaN. Losses read every step (the CPU default): the run stops before that step
    touches the weights. Read in blocks (the default off the CPU, no host sync per step): it stops at
    the next read, still naming step 7; in both cases no checkpoint holds spoiled weights."""
    trainer = small_trainer(checkpoint_dir=tmp_path, checkpoint_every=5, sync_every=sync_every)
    good_loss = trainer.loss

    def loss(x0):
        return good_loss(x0) * (float("nan") if trainer.step >= 6 else 1.0)

    trainer.loss = loss
    with pytest.raises(sdekit.NonFiniteError, match=r"step 7.*step_00000005\.pt"):
        trainer.fit(datasets.moons(256), steps=20, batch_size=32)
    assert latest_checkpoint(tmp_path).name == "step_00000005.pt" and len(trainer.losses) == 6
    if sync_every == 1:
        assert trainer.step == 6 and all(torch.isfinite(p).all() for p in trainer.net.parameters())


def test_losses_read_back_in_blocks_are_all_kept():
    trainer = small_trainer(sync_every=3)
    trainer.fit(datasets.moons(256), steps=7, batch_size=32)
    assert len(trainer.losses) == 7 and all(math.isfinite(v) for v in trainer.losses)


def test_dataset_input_and_plot_callback(tmp_path):
    points = datasets.gaussians8(256)
    trainer = small_trainer(callback=sample_plot_callback(tmp_path, (2,), n=64, steps=10, reference=points),
                            callback_every=5)
    trainer.fit(torch.utils.data.TensorDataset(points, torch.zeros(256)), steps=5, batch_size=32)
    assert (tmp_path / "samples_00000005.png").stat().st_size > 0
    plot_samples(torch.rand(10, 1, 8, 8) * 2 - 1, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize("bad,message", [
    (torch.randint(0, 5, (100, 2)), "floating point"),
    (torch.randn(100, 3), r"shape \(2,\)"),
    (torch.randn(100), r"\(N, \*sample_shape\)"),
    (np.zeros((100, 2)), "torch.from_numpy"),
    (torch.full((100, 2), float("nan")), "NaN"),
    (torch.randn(0, 2), "no samples"),
])
def test_bad_data_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        small_trainer().fit(bad, steps=1, batch_size=4)


def test_loading_into_a_different_network_is_refused(tmp_path):
    trainer = small_trainer(checkpoint_dir=tmp_path)
    trainer.fit(datasets.moons(64), steps=2, batch_size=8)
    path = latest_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"written for MLP\(dim=2, hidden=64.*but the network is MLP\(dim=2, hidden=32"):
        Trainer.load(path, net=MLP(2, hidden=32, depth=2), device="cpu")
    other = Trainer(MLP(2, hidden=32, depth=2), skd.VPSDE(), device="cpu", checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="written for"):
        other.fit(datasets.moons(64), steps=5, batch_size=8)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Trainer.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        Trainer.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="prediction"):
        small_trainer(prediction="noise")


# -- data ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", datasets.TOY_SETS)
def test_toy_sets(name):
    points = datasets.toy(name, 500, seed=3)
    assert points.shape == (500, 2) and points.dtype == torch.float32
    assert torch.equal(points, datasets.toy(name, 500, seed=3))
    assert 0.3 < points.std().item() < 3


def test_npy_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npy"):
        datasets.load_data(str(tmp_path / "nowhere.npy"))
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.int64).reshape(6, 2))
    loaded = datasets.load_data(str(tmp_path / "x.npy"))
    assert loaded.dtype == torch.float32 and loaded.shape == (6, 2)


def test_digits():
    pytest.importorskip("sklearn")
    images, labels = datasets.digits_with_labels()
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert images.min() == -1 and images.max() == 1


# -- command line -------------------------------------------------------------------------------------

def command_line():
    import argparse
    from sdekit_diffusion.cli import register
    parser = argparse.ArgumentParser(prog="sdekit")
    register(parser.add_subparsers(dest="command"))

    def run(*argv):
        args = parser.parse_args([str(a) for a in argv])
        return args.func(args)
    return parser, run


def test_cli_train_then_sample(tmp_path, capsys):
    parser, run = command_line()
    assert run("train", "--data", "gaussians8", "--n", "500", "--steps", "30", "--hidden", "32", "--depth", "1",
               "--batch-size", "32", "--checkpoint-every", "20", "--output", tmp_path / "run", "--quiet") == 0
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "step_00000030.pt").is_file()
    assert run("sample", "--checkpoint", tmp_path / "run", "--solver", "euler_maruyama", "--steps", "10", "--n", "50",
               "--output", tmp_path / "x.npy", "--quiet") == 0
    samples = np.load(tmp_path / "x.npy")
    assert samples.shape == (50, 2) and np.isfinite(samples).all()
    assert run("sample", "--checkpoint", tmp_path / "run" / "model.pt", "--solver", "ddim", "--steps", "5", "--n", "64",
               "--output", tmp_path / "x.png", "--quiet") == 0
    assert (tmp_path / "x.png").stat().st_size > 0
    # every adaptive sampler runs from the command line with --rtol/--atol (read from the registry)
    for solver in ("dopri5", "adaptive_sde", "adaptive_em"):
        assert run("sample", "--checkpoint", tmp_path / "run", "--solver", solver, "--rtol", "0.05", "--atol",
                   "0.05", "--n", "16", "--output", tmp_path / f"{solver}.npy", "--quiet") == 0, solver
        assert np.isfinite(np.load(tmp_path / f"{solver}.npy")).all()
    capsys.readouterr()
    assert run("sample", "--checkpoint", tmp_path / "run", "--solver", "dopri5", "--steps", "10",
               "--output", tmp_path / "y.npy") == 2
    assert "adaptive: give --rtol/--atol" in capsys.readouterr().err
    assert run("sample", "--checkpoint", tmp_path / "run", "--solver", "ddim", "--rtol", "0.1",
               "--output", tmp_path / "y.npy") == 2
    assert "need an adaptive sampler" in capsys.readouterr().err
    assert run("sample", "--checkpoint", tmp_path / "run", "--solver", "ddimm", "--output", tmp_path / "y.npy") == 2
    assert "unknown sampler 'ddimm'" in capsys.readouterr().err
    assert run("train", "--data", tmp_path / "missing.npy", "--output", tmp_path / "bad", "--quiet") == 2
    assert run("sample", "--checkpoint", tmp_path / "nothing", "--output", tmp_path / "y.npy") == 2
    assert "missing.npy" in capsys.readouterr().err
    for command in ("train", "sample"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "example" in capsys.readouterr().out
