"""Bad input to sdekit.solve gets a clear, typed error at once (issue: reliability)."""
import numpy as np
import pytest
import torch

import sdekit


class Decay(sdekit.ODE):
    def drift(self, t, x):
        return -x


class Noisy(sdekit.SDE):
    noise_type = "diagonal"

    def drift(self, t, x):
        return -x

    def diffusion(self, t, x):
        return 0.1 * torch.ones_like(x)


def test_steps_and_ts_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        sdekit.solve(Decay(), torch.ones(2, 1), 0.0, 1.0, solver="euler", steps=4,
                     ts=torch.linspace(0, 1, 9))


def test_numpy_integers_are_integers():
    sol = sdekit.solve(Decay(), torch.ones(2, 1), 0.0, 1.0, solver="rk4", steps=np.int64(10))
    assert sol.n_steps == 10
    for bad in (True, 2.5, "10", 0):
        with pytest.raises(ValueError, match="steps must be an integer"):
            sdekit.solve(Decay(), torch.ones(2, 1), 0.0, 1.0, solver="rk4", steps=bad)


def test_output_dtype_must_be_the_state_dtype():
    class Promotes(sdekit.ODE):
        def drift(self, t, x):
            return -x * torch.ones(1, dtype=torch.float64)   # a float64 table promotes x
    with pytest.raises(TypeError, match="returned torch.float64 for a state of dtype torch.float32"):
        sdekit.solve(Promotes(), torch.ones(2, 1), 0.0, 1.0, solver="euler", steps=4)


def test_shape_is_checked_on_every_call_not_only_the_first():
    class LaterWrong(sdekit.ODE):
        calls = 0

        def drift(self, t, x):
            self.calls += 1
            return -x if self.calls < 3 else (-x).sum(1, keepdim=True).expand(x.shape[0], 1)
    with pytest.raises(sdekit.ShapeError, match=r"returned shape \(8, 1\); expected \(8, 2\)"):
        sdekit.solve(LaterWrong(), torch.ones(8, 2), 0.0, 1.0, solver="euler", steps=6)


def test_solver_option_typo_names_the_option():
    with pytest.raises(TypeError, match="solver 'dopri5' got unknown option 'rtoll'.*no options"):
        sdekit.solve(Decay(), torch.ones(2, 1), 0.0, 1.0, solver="dopri5", rtoll=1e-3)
    with pytest.raises(TypeError, match="unknown option 'derivativ'.*derivative"):
        sdekit.solve(Noisy(), torch.ones(2, 1), 0.0, 1.0, solver="milstein", steps=4, derivativ="jvp")


def test_wrong_brownian_shape_is_a_shape_error_and_generator_must_be_a_generator():
    tree = sdekit.BrownianTree(0.0, 1.0, (3, 1), seed=0)
    with pytest.raises(sdekit.ShapeError, match="brownian has shape"):
        sdekit.solve(Noisy(), torch.ones(2, 1), 0.0, 1.0, solver="euler_maruyama", steps=4, brownian=tree)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sdekit.solve(Noisy(), torch.ones(2, 1), 0.0, 1.0, solver="euler_maruyama", steps=4, generator=42)
