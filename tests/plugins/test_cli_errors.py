"""`sdekit sample` refuses bad input up front: one line on stderr, exit 2, before any work."""
import argparse

import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion.nets import MLP


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    trainer = skd.Trainer(MLP(2, hidden=16, depth=1), skd.VPSDE(), device="cpu", progress=False)
    trainer.fit(torch.randn(64, 2), steps=2, batch_size=16)
    trainer.save(folder / "model.pt")
    return folder


def run(*argv):
    """``sdekit`` as the console script runs it (the core's parser, its one-line usage errors)."""
    from sdekit.cli import main
    return main([str(a) for a in argv])


@pytest.mark.parametrize("extra, message", [
    (["--n", "-3"], "--n must be a positive"),
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], "CUDA|cuda:0"),
    (["--solver", "dopri5", "--steps", "5"], "adaptive"),
    (["--solver", "dopri5", "--atol", "nan"], "--atol must be a finite number >= 0, got nan"),
    (["--solver", "adaptive_sde", "--rtol", "-1"], "--rtol must be a finite number >= 0"),
    (["--seed", "-1"], "--seed must be a non-negative integer"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--shape", "0,3"], "--shape must be positive sizes"),
    (["--shape", "3", "--steps", "3"], r"--shape 3 does not match the model's samples of shape \(2,\)"),
    (["--time-grid", "trailing"], "invalid choice: 'trailing'"),   # argparse: one line, no usage block
    (["--stpes", "3"], "unrecognized arguments: --stpes 3"),
])
def test_bad_sample_options_exit_2_with_one_line(checkpoint, tmp_path, capsys, extra, message):
    assert run("sample", "--checkpoint", checkpoint, "--output", tmp_path / "x.npy", "--quiet", *extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_unwritable_or_wrong_kind_of_output_is_refused_before_sampling(checkpoint, tmp_path, capsys,
                                                                       monkeypatch):
    import sdekit_diffusion.sampling as sampling
    called = []
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: called.append(1))
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "a_file").write_text("x")
    for output, message in [(tmp_path / "a_directory", "is a directory"),
                            (tmp_path / "samples.txt", "write .npy (the samples) or a plot as"),
                            (tmp_path / "a_file" / "x.npy", "cannot be written"),
                            ("/proc/sdekit/x.npy", "cannot be written")]:
        assert run("sample", "--checkpoint", checkpoint, "--output", output, "--quiet",
                   "--steps", "3") == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert called == []   # refused before any sampling


@pytest.fixture(scope="module")
def learned_checkpoint(tmp_path_factory):
    """A two-step hybrid run of a learned-variance MLP on a 10-step chain (8-bit data)."""
    from sdekit_diffusion.vlb import quantize
    folder = tmp_path_factory.mktemp("learned")
    torch.manual_seed(0)
    sde = skd.DiffusionSDE.from_betas(torch.linspace(0.01, 0.3, 10))
    trainer = skd.Trainer(MLP(2, hidden=16, depth=1, learn_variance=True), sde, loss="hybrid", device="cpu",
                          progress=False)
    trainer.fit(quantize(torch.rand(64, 2) * 2 - 1, 8), steps=2, batch_size=16)
    trainer.save(folder / "model.pt")
    return folder


@pytest.mark.parametrize("extra, message", [
    (["--solver", "ddim", "--variance", "beta"], "--variance is an option of ancestral; --solver ddim does not"),
    (["--solver", "euler", "--clip-denoised"], "--clip-denoised is an option of ancestral; --solver euler"),
    (["--solver", "ddim", "--afs"], "--afs is an option of deis, dpm_solver++_2m, dpm_solver++_3m, ipndm, unipc; "
                                    "--solver ddim does not"),
    (["--solver", "ancestral", "--variance", "learned"], "--variance learned needs a model that learns"),
])
def test_ancestral_flags_are_refused_where_they_do_not_apply(checkpoint, tmp_path, capsys, extra, message):
    assert run("sample", "--checkpoint", checkpoint, "--output", tmp_path / "x.npy", "--quiet", "--steps", "3",
               *extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_sample_flags_choose_ancestrals_variance_and_clipping(learned_checkpoint, tmp_path):
    """--variance and --clip-denoised reach ancestral: the samples equal skd.sample's with the
    same options, and each choice gives different samples."""
    import numpy as np
    trainer = skd.Trainer.load(learned_checkpoint / "model.pt", device="cpu", progress=False)
    results = {}
    for variance in ("beta_tilde", "beta", "learned"):
        for clip in (False, True):
            output = tmp_path / f"{variance}_{clip}.npy"
            assert run("sample", "--checkpoint", learned_checkpoint, "--solver", "ancestral", "--steps", "9",
                       "--n", "32", "--variance", variance, *(["--clip-denoised"] if clip else []),
                       "--output", output, "--quiet") == 0
            results[variance, clip] = torch.from_numpy(np.load(output))
            expected = skd.sample(trainer.sde, trainer.score_fn(), (32, 2), solver="ancestral", steps=9, seed=0,
                                  variance=variance, clip_denoised=clip, dtype=trainer.dtype).x
            assert torch.equal(results[variance, clip], expected), (variance, clip)
    values = list(results.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])


def test_train_refuses_a_missing_device_or_an_unwritable_output_before_any_work(tmp_path, capsys, monkeypatch):
    import sdekit_diffusion.data as data
    loaded = []
    monkeypatch.setattr(data, "load_data", lambda *a, **k: loaded.append(1))
    bad_device = "cuda:7" if torch.cuda.is_available() else "cuda"
    (tmp_path / "a_file").write_text("x")
    for extra, message in [(["--device", bad_device, "--output", tmp_path / "r"], "CUDA|cuda:0"),
                           (["--output", "/dev/null/run"], "cannot be written"),
                           (["--output", tmp_path / "a_file"], "is an existing file")]:
        assert run("train", "--data", "moons", "--quiet", *extra) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and __import__("re").search(message, err), err
    assert loaded == []   # refused before the data were loaded


def test_sample_afs_flag_reaches_the_sampler(checkpoint, tmp_path):
    """--afs: the samples equal skd.sample's with afs=True (one score call fewer), not the plain ones."""
    import numpy as np
    trainer = skd.Trainer.load(checkpoint / "model.pt", device="cpu", progress=False)
    output = tmp_path / "afs.npy"
    assert run("sample", "--checkpoint", checkpoint, "--solver", "unipc", "--steps", "5", "--n", "16", "--afs",
               "--output", output, "--quiet") == 0
    kwargs = dict(solver="unipc", steps=5, seed=0, dtype=trainer.dtype)
    expected = skd.sample(trainer.sde, trainer.score_fn(), (16, 2), afs=True, **kwargs)
    assert expected.nfe == 4
    assert torch.equal(torch.from_numpy(np.load(output)), expected.x)
    assert not torch.equal(expected.x, skd.sample(trainer.sde, trainer.score_fn(), (16, 2), **kwargs).x)
