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
    from sdekit_diffusion.cli import register
    parser = argparse.ArgumentParser(prog="sdekit")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.mark.parametrize("extra, message", [
    (["--n", "-3"], "--n must be a positive"),
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], "CUDA|cuda:0"),
    (["--solver", "dopri5", "--steps", "5"], "adaptive"),
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
                            (tmp_path / "a_file" / "x.npy", "cannot be written"),
                            ("/proc/sdekit/x.npy", "cannot be written")]:
        assert run("sample", "--checkpoint", checkpoint, "--output", output, "--quiet",
                   "--steps", "3") == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert called == []   # refused before any sampling
