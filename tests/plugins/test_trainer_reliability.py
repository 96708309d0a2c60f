"""Issue 12, items 3, 4 and 10 for training: every numeric option range-checked up front; resuming another
run refused with the differences named (unless starting fresh); unreadable newest checkpoints, stale
temporaries of a killed save, and ``sdekit sample --checkpoint DIR`` choosing the newest checkpoint."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion import data as datasets
from sdekit_diffusion.nets import MLP
from sdekit_diffusion.training import CheckpointWarning, Trainer, checkpoint_files, latest_checkpoint


pytestmark = pytest.mark.usefixtures("float32_default")   # networks train in float32 (conftest)


def trainer(sde=None, **options):
    options = {"lr": 2e-3, "ema_decay": 0.99, "device": "cpu", "progress": False, **options}
    torch.manual_seed(0)
    return Trainer(MLP(2, hidden=16, depth=1), sde or skd.VPSDE(), **options)


def command_line():
    from sdekit_diffusion.cli import register
    parser = argparse.ArgumentParser(prog="sdekit")
    register(parser.add_subparsers(dest="command"))
    return lambda *argv: (lambda args: args.func(args))(parser.parse_args([str(a) for a in argv]))


# -- item 3: ranges up front ---------------------------------------------------------------------------

@pytest.mark.parametrize("option,value,message", [
    ("grad_clip", -1.0, r"grad_clip must be a finite number > 0 \(or None\), got -1.0"),
    ("grad_clip", 0.0, "grad_clip must be a finite number > 0"),
    ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
    ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
    ("lr", float("inf"), "lr must be a finite number > 0"),
    ("ema_decay", 1.0, r"ema_decay must be a finite number in \[0, 1\), got 1.0"),
    ("ema_decay", -0.5, r"ema_decay must be a finite number in \[0, 1\)"),
    ("warmup", -1, "warmup must be an integer >= 0, got -1"),
    ("warmup", 2.5, "warmup must be an integer >= 0, got 2.5"),
    ("checkpoint_every", 0, "checkpoint_every must be an integer >= 1"),
    ("keep_checkpoints", -1, "keep_checkpoints must be an integer >= 0"),
    ("callback_every", 0, "callback_every must be an integer >= 1"),
    ("seed", -3, "seed must be an integer >= 0"),
    ("seed", True, "seed must be an integer >= 0, got True"),
    ("sync_every", 0, r"sync_every must be an integer >= 1 \(or None\)"),
    ("vlb_weight", -0.1, "vlb_weight must be a finite number >= 0"),
    ("bits", 0, r"bits must be an integer in \[1, 16\]"),
    ("chain_steps", 1, "chain_steps must be an integer >= 2"),
    ("progress", "yes", "progress must be True or False"),
    ("loss", "kl", "loss must be one of 'dsm', 'simple', 'hybrid', 'vlb'"),
])
def test_every_trainer_option_has_a_range(option, value, message):
    extra = {"loss": "simple"} if option == "chain_steps" else {}
    with pytest.raises(ValueError, match=message):
        trainer(**{option: value, **extra})


def test_fit_arguments_are_checked_and_numpy_integers_accepted():
    t = trainer(warmup=np.int64(3), checkpoint_every=np.int64(5), sync_every=np.int32(2))
    assert (t.warmup, t.checkpoint_every, t.sync_every) == (3, 5, 2) and type(t.warmup) is int
    for steps, batch_size, message in ((-1, 8, "steps must be an integer >= 0"), (2.5, 8, "steps must be an integer"),
                                       (3, 0, "batch_size must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            t.fit(datasets.moons(64), steps=steps, batch_size=batch_size)
    assert t.step == 0 and t.losses == []
    t.fit(datasets.moons(64), steps=np.int64(2), batch_size=np.int64(8))
    assert t.step == 2


def test_gradient_ascent_is_impossible():
    """The reported probe: grad_clip=-1 trained by gradient ascent (loss 0.25 -> 3.9e7); it is refused."""
    with pytest.raises(ValueError, match="grad_clip"):
        trainer(grad_clip=-1.0)


@pytest.mark.parametrize("flag,value", [("--lr", "0"), ("--lr", "nan"), ("--grad-clip", "-1"), ("--ema-decay", "1"),
                                        ("--steps", "0"), ("--batch-size", "0"), ("--n", "-3"), ("--hidden", "0"),
                                        ("--depth", "0"), ("--base", "0"), ("--warmup", "-1"),
                                        ("--checkpoint-every", "0"), ("--plot-every", "-1"), ("--seed", "-1"),
                                        ("--vlb-weight", "-1"), ("--chain-steps", "1"), ("--bits", "17"),
                                        ("--channel-mults", "1,0")])
def test_every_numeric_train_flag_is_checked_before_any_work(tmp_path, capsys, flag, value):
    """The data file does not exist: the flag's range is checked before the data are read."""
    run = command_line()
    assert run("train", "--data", tmp_path / "missing.npy", flag, value, "--output", tmp_path / "run", "--quiet") == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and flag in error and "missing.npy" not in error, error


# -- item 4: resuming another run ----------------------------------------------------------------------

def first_run(directory, sde=None, data=None, **options):
    run = trainer(sde, checkpoint_dir=directory, checkpoint_every=5, **options)
    run.fit(datasets.moons(256) if data is None else data, steps=10, batch_size=32)
    return run


@pytest.mark.parametrize("change,message", [
    (dict(sde=skd.VESDE()), r"sde: VPSDE\(beta_min=0.1.*\) there, VESDE\(sigma_min=0.01.*\) here"),
    (dict(prediction="v"), "prediction: 'eps' there, 'v' here"),
    (dict(weighting="likelihood"), "weighting: 'sigma2' there, 'likelihood' here"),
    (dict(loss="simple"), "loss: 'dsm' there, 'simple' here"),
    (dict(data=datasets.checkerboard(256)), "data: 256 samples of shape \\(2,\\) on both sides, but different values"),
    (dict(data=datasets.moons(512)), "data: 256 samples there, 512 here"),
])
def test_resuming_a_different_run_is_refused_with_the_difference_named(tmp_path, change, message):
    first_run(tmp_path)
    change = dict(change)
    data = change.pop("data", datasets.moons(256))
    other = trainer(change.pop("sde", None), checkpoint_dir=tmp_path, **change)
    with pytest.raises(ValueError, match=f"cannot resume from .*step_00000010.pt.*{message}.*fresh=True"):
        other.fit(data, steps=20, batch_size=32)
    assert other.step == 0 and latest_checkpoint(tmp_path).name == "step_00000010.pt"   # nothing relabelled


def test_sdes_with_the_same_repr_are_told_apart_by_their_marginals(tmp_path):
    def sde(rate):
        return skd.DiffusionSDE.from_marginal(lambda t: torch.exp(-rate * t), lambda t: torch.sqrt(-torch.expm1(-2 * rate * t)))
    first_run(tmp_path, sde(2.0))
    assert repr(sde(2.0)) == repr(sde(3.0))
    with pytest.raises(ValueError, match=r"sde: .* \(alpha\(0.001\) = 0.998002 there, 0.997004 here\)"):
        trainer(sde(3.0), checkpoint_dir=tmp_path).fit(datasets.moons(256), steps=20, batch_size=32)
    resumed = trainer(sde(2.0), checkpoint_dir=tmp_path)   # the same functions rebuilt: resumes
    resumed.fit(datasets.moons(256), steps=12, batch_size=32)
    assert resumed.step == 12 and len(resumed.losses) == 12


def test_fresh_starts_over(tmp_path):
    first_run(tmp_path)
    fresh = trainer(skd.VESDE(), checkpoint_dir=tmp_path, checkpoint_every=5, fresh=True)
    fresh.fit(datasets.moons(256), steps=5, batch_size=32)
    straight = trainer(skd.VESDE())
    straight.fit(datasets.moons(256), steps=5, batch_size=32)
    assert fresh.losses == straight.losses and [p.name for _, p in checkpoint_files(tmp_path)] == ["step_00000005.pt"]
    assert Trainer.load(tmp_path / "step_00000005.pt", device="cpu").sde.sigma_max == 50.0
    fresh.fit(datasets.moons(256), steps=10, batch_size=32)      # fresh applies once: later fits continue
    assert fresh.step == 10 and len(fresh.losses) == 10


def test_cli_refuses_to_resume_with_another_sde_unless_fresh(tmp_path, capsys):
    run = command_line()
    common = ("--data", "gaussians8", "--n", "256", "--steps", "10", "--hidden", "16", "--depth", "1",
              "--batch-size", "16", "--checkpoint-every", "5", "--output", tmp_path, "--quiet")
    assert run("train", "--sde", "vp", *common) == 0
    capsys.readouterr()
    assert run("train", "--sde", "ve", *common[:5], "20", *common[6:]) == 2
    error = capsys.readouterr().err
    assert "sde: VPSDE" in error and "VESDE" in error and "--fresh" in error and error.count("\n") == 1
    assert run("train", "--sde", "ve", "--fresh", *common) == 0
    assert Trainer.load(tmp_path / "model.pt", device="cpu").sde.sigma_max == 50.0


# -- item 10: unreadable checkpoints, stale temporaries, the newest for sampling ------------------------

def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_readable(tmp_path):
    data = datasets.moons(256)
    first_run(tmp_path)
    newest = tmp_path / "step_00000010.pt"
    newest.write_bytes(newest.read_bytes()[:1000])       # truncated, as by a full disk
    resumed = trainer(checkpoint_dir=tmp_path, checkpoint_every=5)
    with pytest.warns(CheckpointWarning, match=r"step_00000010.pt could not be read .*renamed to "
                                               r"step_00000010.pt.corrupt.*using .*step_00000005.pt \(step 5\)"):
        resumed.fit(data, steps=15, batch_size=32)
    straight = trainer()
    straight.fit(data, steps=15, batch_size=32)
    assert resumed.losses == straight.losses                          # continued from step 5, exactly
    assert (tmp_path / "step_00000010.pt.corrupt").is_file()
    assert [p.name for _, p in checkpoint_files(tmp_path)] == ["step_00000010.pt", "step_00000015.pt"]


def test_no_readable_checkpoint_starts_from_scratch_and_says_so(tmp_path):
    first_run(tmp_path)
    for _, path in checkpoint_files(tmp_path):
        path.write_bytes(b"garbage")
    again = trainer(checkpoint_dir=tmp_path, checkpoint_every=5)
    with pytest.warns(CheckpointWarning, match="no readable checkpoint is left"):
        again.fit(datasets.moons(256), steps=5, batch_size=32)
    assert again.step == 5 and len(again.losses) == 5


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    first_run(tmp_path)
    stale = [tmp_path / ".step_00000015.pt.k3j2h1.tmp", tmp_path / ".model.pt.a8f9.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".notes.tmp"
    unrelated.write_text("mine")
    trainer(checkpoint_dir=tmp_path, checkpoint_every=5).fit(datasets.moons(256), steps=12, batch_size=32)
    assert not any(path.exists() for path in stale) and unrelated.read_text() == "mine"


def test_sample_uses_the_newest_checkpoint_of_a_folder_and_says_which(tmp_path, capsys):
    run = command_line()
    assert run("train", "--data", "gaussians8", "--n", "256", "--steps", "10", "--hidden", "16", "--depth", "1",
               "--batch-size", "16", "--checkpoint-every", "5", "--output", tmp_path, "--quiet") == 0
    later = Trainer.load(tmp_path / "model.pt", device="cpu", checkpoint_dir=tmp_path, progress=False)
    later.fit(datasets.load_data("gaussians8", n=256, seed=0), steps=15, batch_size=16)   # step_15 newer than model.pt
    capsys.readouterr()
    sample = ("sample", "--checkpoint", tmp_path, "--steps", "5", "--n", "8", "--output", tmp_path / "x.npy", "--quiet")
    assert run(*sample) == 0
    out = capsys.readouterr().out
    assert f"using {tmp_path / 'step_00000015.pt'} (step 15; model.pt is at step 10)" in out
    (tmp_path / "step_00000015.pt").write_bytes(b"garbage")
    assert run(*sample) == 0
    out = capsys.readouterr().out
    assert f"using {tmp_path / 'model.pt'} (step 10; step_00000010.pt is at step 10)" in out
    assert "skipped unreadable step_00000015.pt" in out
    assert math.isfinite(float(np.load(tmp_path / "x.npy").sum()))


def test_an_unwritable_checkpoint_dir_or_a_missing_device_is_refused_before_training(tmp_path):
    """Issue 12 item 9 and the fresh probe: fit checks checkpoint_dir before the first step (the CLI
    trained 5000 steps into /dev/null/x before failing); a device this machine lacks is a ValueError."""
    run = trainer(checkpoint_dir="/dev/null/run")
    with pytest.raises(ValueError, match="checkpoint_dir '/dev/null/run' cannot be written"):
        run.fit(torch.randn(64, 2), steps=5, batch_size=16)
    assert run.step == 0 and run.losses == []
    bad = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ValueError, match="CUDA"):
        trainer(device=bad)


def test_a_loaded_trainer_builds_its_optimizer_only_when_it_trains(tmp_path):
    """Sampling a checkpoint needs no optimizer (building one imports torch._dynamo, seconds); the
    optimizer's state is kept through a load and a save without one, and applied when training goes on:
    resuming equals training straight through."""
    data = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    first = trainer()
    first.fit(data, steps=6, batch_size=16)
    first.save(tmp_path / "a.pt")
    loaded = Trainer.load(tmp_path / "a.pt", device="cpu", progress=False)
    loaded.score_fn()(torch.full((4,), 0.5), torch.zeros(4, 2))
    assert loaded._optimizer is None
    loaded.save(tmp_path / "b.pt")   # the optimizer's state passes through unbuilt
    again = Trainer.load(tmp_path / "b.pt", device="cpu", progress=False)
    moments = again.optimizer.state_dict()["state"]
    original = first.optimizer.state_dict()["state"]
    assert all(torch.equal(moments[k]["exp_avg_sq"], original[k]["exp_avg_sq"]) for k in original)
    again.fit(data, steps=10, batch_size=16)
    straight = trainer()
    straight.fit(data, steps=10, batch_size=16)
    assert again.losses == straight.losses
