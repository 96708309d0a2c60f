"""benchmarks/train_digits.py trains, writes model.pt and an ``--export`` checkpoint without Adam's
moments that ``skd.Trainer.load`` reads back with the same weights, prediction and SDE."""
import importlib.util
import sys
from pathlib import Path

import torch

import sdekit_diffusion as skd

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_digits.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_digits_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_export_is_a_smaller_checkpoint_with_the_same_model(tmp_path):
    script = load_script()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)   # the script trains in float32, as from the command line
    try:
        assert script.main(["--base", "8", "--prediction", "v", "--max-steps", "4", "--batch-size", "16",
                            "--solvers", "", "--samples", "16", "--output", str(tmp_path / "run"),
                            "--export", str(tmp_path / "small.pt")]) == 0
    finally:
        torch.set_default_dtype(previous)
    full, small = tmp_path / "run" / "model.pt", tmp_path / "small.pt"
    assert small.stat().st_size < 0.75 * full.stat().st_size        # no optimizer moments
    a, b = (skd.Trainer.load(path, device="cpu", progress=False) for path in (full, small))
    assert b.prediction == "v" and b.step == a.step == 4 and b.sample_shape == (1, 8, 8)
    for x, y in zip(a.ema.state_dict().values(), b.ema.state_dict().values()):
        assert torch.equal(x, y)
    assert not b.optimizer.state_dict()["state"] and a.optimizer.state_dict()["state"]


def test_split_is_the_seeded_1200_597_split():
    script = load_script()
    train, train_labels, held_out, held_out_labels = script.split_digits(0)
    assert train.shape == (1200, 1, 8, 8) and held_out.shape == (597, 1, 8, 8)
    assert len(train_labels) == 1200 and len(held_out_labels) == 597
    assert float(train.min()) == -1.0 and float(train.max()) == 1.0
    again = script.split_digits(0)[2]
    assert torch.equal(held_out, again) and not torch.equal(held_out, script.split_digits(1)[2])
