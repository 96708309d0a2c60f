"""The diffusion plugin on a device: every fixed-grid sampler, the likelihood, a training step and a
checkpoint round trip stay on it and agree with the CPU.

The device is ``SDEKIT_TEST_DEVICE`` (default ``cpu``; the ``device`` fixture of
``tests/conftest.py``); see ``tests/test_devices.py``.
"""
from __future__ import annotations

import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion import data as datasets
from sdekit_diffusion import samplers
from sdekit_diffusion.nets import MLP

CPU = torch.device("cpu")
FIXED_GRID = [record.name for record in samplers.records() if not record.adaptive]
# samplers whose noise is not the counter-based per-sample stream (so it differs between devices)
DEVICE_DEPENDENT_NOISE = {"core_pc": "its Langevin corrector draws torch.randn from the device's generator"}
SDES = {"vp": skd.VPSDE, "discrete": lambda: skd.DiffusionSDE.from_betas(torch.linspace(1e-4, 0.02, 1000))}


def mixture(on: torch.device) -> skd.GaussianMixture:
    means = torch.tensor([[1.0, -0.5], [-1.0, 0.5]], dtype=torch.float64, device=on)
    return skd.GaussianMixture([0.3, 0.7], means, [0.3, 0.5])


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name", FIXED_GRID)
def test_fixed_grid_sampler_stays_on_the_device(name, sde_name, device):
    record = samplers.get(name)
    steps = max(4, record.min_steps)

    def run(on: torch.device):
        sde = SDES[sde_name]()
        return skd.sample(sde, mixture(on).score_fn(sde), (6, 2), solver=name, steps=steps, seed=7,
                          device=on, dtype=torch.float64)

    solution = run(device)
    assert solution.x.device.type == device.type and solution.x.dtype == torch.float64
    assert solution.x.shape == (6, 2) and bool(torch.isfinite(solution.x).all())
    assert solution.nfe == steps * record.calls_per_step({})
    if device != CPU and name not in DEVICE_DEPENDENT_NOISE:
        torch.testing.assert_close(solution.x.cpu(), run(CPU).x, rtol=1e-6, atol=1e-8)


def test_log_likelihood_on_the_device(device):
    sde, gm = skd.VPSDE(), mixture(device)
    x = torch.tensor([[0.8, -0.4], [-1.2, 0.3], [0.1, 0.1]], dtype=torch.float64, device=device)
    log_p = skd.log_likelihood(sde, gm.score_fn(sde), x, exact_trace=True, rtol=1e-5, atol=1e-5,
                               prior_logp=lambda z: gm.marginal_log_prob(sde, sde.t_max, z))
    assert log_p.device.type == device.type and log_p.shape == (3,)
    # exact for p_{t_min} up to the solver's tolerance (tests/plugins/test_likelihood.py)
    torch.testing.assert_close(log_p, gm.marginal_log_prob(sde, sde.t_min, x), rtol=0, atol=1e-3)


def _trainer(device, seed: int = 0) -> skd.Trainer:
    return skd.Trainer(MLP(2, hidden=16, depth=2).float(), skd.VPSDE(), lr=1e-3, device=device,
                   progress=False, seed=seed)


def test_training_step_on_the_device(device):
    trainer = _trainer(device)
    losses = trainer.fit(datasets.moons(64), steps=2, batch_size=16)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    for module in (trainer.net, trainer.ema):
        assert all(p.device.type == device.type for p in module.parameters())
    x = skd.sample(trainer.sde, trainer.score_fn(), (4, 2), solver="ddim", steps=3, seed=0,
                   device=device, dtype=torch.float32).x
    assert x.device.type == device.type and bool(torch.isfinite(x).all())


def test_checkpoint_round_trip_with_map_location(device, tmp_path):
    data = datasets.moons(64)
    trainer = _trainer(device, seed=1)
    trainer.fit(data, steps=3, batch_size=16)
    path = tmp_path / "model.pt"
    trainer.save(path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert all(tensor.device == CPU for tensor in raw["net"].values())
    on_cpu, back = skd.Trainer.load(path, device="cpu"), skd.Trainer.load(path, device=device)
    for key in ("net", "ema"):
        for (name, value), cpu_value, device_value in zip(getattr(trainer, key).state_dict().items(),
                                                          getattr(on_cpu, key).state_dict().values(),
                                                          getattr(back, key).state_dict().values()):
            assert torch.equal(value.cpu(), cpu_value), f"{key}.{name} differs after map_location='cpu'"
            assert device_value.device.type == device.type and torch.equal(value, device_value)
    assert back.step == 3 and back.losses == trainer.losses
    # resumed on the device (weights, optimizer and RNG states), it continues as if uninterrupted
    trainer.fit(data, steps=5, batch_size=16)
    back.fit(data, steps=5, batch_size=16)
    assert back.losses == trainer.losses
