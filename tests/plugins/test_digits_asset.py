"""The trained 8x8-digits U-Net shipped for benchmarks (``benchmarks/assets/digits_unet16.pt``, made
by the command in ``benchmarks/assets/README.md``): it loads through the library's checkpoint
loader (``skd.Trainer.load``, and ``sdekit sample --checkpoint``), samples finite digits of the
right shape, and is really trained: its denoising score-matching loss on the 597 held-out digits
(the same split as ``benchmarks/train_digits.py``) is well below that of the same network
untrained, and close to its training loss."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import sdekit_diffusion as skd
from sdekit.cli import main as sdekit_main
from sdekit_diffusion.nets import build_net

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "benchmarks" / "assets" / "digits_unet16.pt"
MAX_BYTES = 2_000_000          # "a few MB at most": this one stays under 2 MB


@pytest.fixture(scope="module")
def trainer():
    return skd.Trainer.load(ASSET, device="cpu", progress=False)


def held_out_digits() -> torch.Tensor:
    spec = importlib.util.spec_from_file_location("train_digits_bench", ROOT / "benchmarks" / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.split_digits(0)[2]


def test_the_asset_is_small_and_records_what_it_is(trainer):
    assert ASSET.stat().st_size < MAX_BYTES
    assert type(trainer.net).__name__ == "UNet" and trainer.net.config["base"] == 16
    assert isinstance(trainer.sde, skd.VPSDE) and trainer.sample_shape == (1, 8, 8)
    assert trainer.step >= 1000


def test_it_samples_finite_digits_of_the_right_shape(trainer):
    solution = skd.sample(trainer.sde, trainer.score_fn(), (64, 1, 8, 8), solver="dpm_solver++_2m", steps=10,
                          time_grid="logsnr", seed=0, dtype=trainer.dtype)
    assert solution.x.shape == (64, 1, 8, 8) and solution.nfe == 10
    assert bool(torch.isfinite(solution.x).all())
    # near the digits' range [-1, 1]: measured max |x| 1.84, 80% of samples within 1.25 (the same U-Net
    # trained to predict eps instead of v: max 13, 33% -- its x0 = (x - sigma eps)/alpha blows up at
    # high noise and the probability-flow ODE leaves the data)
    peak = solution.x.flatten(1).abs().max(1).values
    assert float(peak.max()) < 3.0 and float((peak < 1.25).double().mean()) > 0.6


def test_sdekit_sample_reads_it(tmp_path, capsys):
    output = tmp_path / "digits.npy"
    assert sdekit_main(["sample", "--checkpoint", str(ASSET), "--solver", "ddim", "--steps", "5", "--n", "4",
                        "--output", str(output), "--quiet"]) == 0
    samples = np.load(output)
    assert samples.shape == (4, 1, 8, 8) and np.isfinite(samples).all()


def test_it_is_trained_its_held_out_loss_is_far_below_an_untrained_nets(trainer):
    digits = held_out_digits().to(trainer.dtype)
    untrained = build_net("UNet", dict(trainer.net.config)).to(trainer.dtype).eval()
    t = torch.linspace(trainer.sde.t_min, trainer.sde.t_max, len(digits), dtype=trainer.dtype)  # one t per digit
    losses = {}
    with torch.no_grad():
        for name, net in (("trained", trainer.ema.eval()), ("untrained", untrained)):
            losses[name] = float(skd.dsm_loss(trainer.sde, net, digits, prediction=trainer.prediction, t=t,
                                              generator=torch.Generator().manual_seed(0)))
    # measured: trained 0.084, untrained 0.254 (a v-prediction of about 0 already gets eps = sigma x
    # right at high noise; most of the trained loss is the irreducible part of denoising)
    assert losses["trained"] < 0.4 * losses["untrained"], losses
    # and it generalises: on digits it never saw, about the loss of its last 100 training steps (0.081)
    assert losses["trained"] < 1.2 * float(np.mean(trainer.losses[-100:])), losses
