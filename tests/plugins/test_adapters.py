"""from_diffusers, guided and as_score's model_time, with stand-in models and schedulers (no
diffusers needed; tests/plugins/test_diffusers.py runs the real ones)."""
from types import SimpleNamespace

import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion.problems import GaussianMixture

N = 1000


def ddpm_alphas_cumprod():
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, N), 0)      # Ho et al. (2020)


def scheduler(**config):
    """What from_diffusers reads of a diffusers scheduler: alphas_cumprod and config."""
    return SimpleNamespace(alphas_cumprod=ddpm_alphas_cumprod().float(), config=dict(config))


class Recorder:
    """A model returning a fixed function of (x, timestep) in a chosen wrapping, recording calls."""

    def __init__(self, wrap=lambda out: SimpleNamespace(sample=out), channels_factor=1):
        self.wrap, self.factor, self.calls = wrap, channels_factor, []

    @staticmethod
    def prediction(x, timestep):
        return torch.sin(x) * (1 + timestep[:, None, None, None] / N)

    def __call__(self, x, timestep, **kwargs):
        self.calls.append((x, timestep, kwargs))
        out = self.prediction(x, timestep)
        if self.factor == 2:
            out = torch.cat([out, torch.full_like(out, 7.0)], 1)   # learned variance channels
        return self.wrap(out)


def state():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 2, 4, 4, generator=g), torch.tensor([1.0 / N, 0.5004, 1.0])


@pytest.mark.parametrize("prediction_type, name", [("epsilon", "eps"), ("v_prediction", "v"),
                                                   ("sample", "x0")])
def test_from_diffusers_reads_the_prediction_type_and_calls_at_integer_timesteps(prediction_type, name):
    model = Recorder()
    sde, score = skd.adapters.from_diffusers(model, scheduler(prediction_type=prediction_type),
                                             encoder_hidden_states="text")
    assert isinstance(sde.schedule, skd.DiscreteSchedule) and sde.schedule.N == N
    torch.testing.assert_close(sde.schedule.alphas_cumprod, ddpm_alphas_cumprod().float().double())
    x, t = state()
    s = score(t, x)
    _, timestep, kwargs = model.calls[-1]
    assert torch.equal(timestep, torch.tensor([0.0, 499.4, 999.0]))    # N t - 1, on-grid exact
    assert kwargs == {"encoder_hidden_states": "text"}
    expected = skd.prediction_to_score(name, Recorder.prediction(x, timestep), sde, t, x)
    torch.testing.assert_close(s, expected)


@pytest.mark.parametrize("wrap", [lambda out: out, lambda out: (out,),
                                  lambda out: SimpleNamespace(sample=out)],
                         ids=["tensor", "tuple", "sample"])
def test_model_outputs_are_unwrapped(wrap):
    x, t = state()
    _, reference = skd.adapters.from_diffusers(Recorder(), scheduler())
    _, score = skd.adapters.from_diffusers(Recorder(wrap), scheduler())
    torch.testing.assert_close(score(t, x), reference(t, x))


def test_learned_variance_keeps_the_first_channels():
    x, t = state()
    _, reference = skd.adapters.from_diffusers(Recorder(), scheduler())
    _, score = skd.adapters.from_diffusers(Recorder(channels_factor=2), scheduler(
        variance_type="learned_range"))
    torch.testing.assert_close(score(t, x), reference(t, x))


def test_adapter_errors_say_what_to_do():
    x, t = state()
    _, score = skd.adapters.from_diffusers(lambda x, t: x[:, :1], scheduler())
    with pytest.raises(ValueError, match="out_channels"):
        score(t, x)
    _, score = skd.adapters.from_diffusers(lambda x, t: {"sample": x}, scheduler())
    with pytest.raises(TypeError, match=r"\.sample"):
        score(t, x)
    with pytest.raises(ValueError, match="'epsilon', 'v_prediction', 'sample'"):
        skd.adapters.from_diffusers(Recorder(), scheduler(prediction_type="flow_prediction"))
    with pytest.raises(TypeError, match="alphas_cumprod"):
        skd.adapters.from_diffusers(Recorder(), SimpleNamespace(config={}))
    with pytest.raises(TypeError, match="callable"):
        skd.adapters.from_diffusers("unet", scheduler())


def test_zero_terminal_snr_config_marks_the_table():
    """diffusers' multistep schedulers store 2^-24 for the last 0 of a rescaled table; with
    rescale_betas_zero_snr in the config the adapter hands DiscreteSchedule the 0 itself."""
    table = ddpm_alphas_cumprod().clone()
    table[-1] = 2.0 ** -24
    sched = SimpleNamespace(alphas_cumprod=table, config={"rescale_betas_zero_snr": True})
    sde, _ = skd.adapters.from_diffusers(Recorder(), sched)
    assert sde.schedule.zero_terminal_snr
    assert not skd.adapters.from_diffusers(Recorder(), scheduler())[0].schedule.zero_terminal_snr


def test_the_model_runs_in_its_dtype_and_returns_in_the_states():
    class Float32Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float32))
            self.seen = None

        def forward(self, x, timestep):
            self.seen = (x.dtype, timestep.dtype)
            return self.scale * x

    model = Float32Model()
    sde, score = skd.adapters.from_diffusers(model, scheduler())
    x, t = state()
    s = score(t, x)
    assert model.seen == (torch.float32, torch.float32) and s.dtype == torch.float64
    torch.testing.assert_close(s, -0.5 * x / sde.schedule.sigma(t)[:, None, None, None],
                               rtol=1e-6, atol=1e-6)
    # autograd: not through the parameters while sampling, through x when it requires grad
    assert not s.requires_grad
    x.requires_grad_(True)
    assert score(t, x).requires_grad
    _, always = skd.adapters.from_diffusers(model, scheduler(), grad=True)
    assert always(t, x.detach()).requires_grad


def test_guided_is_classifier_free_guidance_in_any_prediction():
    """guided(s_u, s_c, w) = s_u + w (s_c - s_u), the same as guiding the eps, v or x0 outputs."""
    sde = skd.VPSDE()
    x, t = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), torch.linspace(0.1, 0.9, 5)
    net_u = lambda x, t: torch.cos(x) + t[:, None]
    net_c = lambda x, t: torch.sin(2 * x) - t[:, None] ** 2
    for prediction in ("eps", "v", "x0"):
        guided = skd.guided(skd.as_score(net_u, sde, prediction), skd.as_score(net_c, sde, prediction),
                            4.0)
        net_guided = lambda x, t: net_u(x, t) + 4.0 * (net_c(x, t) - net_u(x, t))
        torch.testing.assert_close(guided(t, x), skd.as_score(net_guided, sde, prediction)(t, x))
    score_u, score_c = skd.as_score(net_u, sde), skd.as_score(net_c, sde)
    assert skd.guided(score_u, score_c, 1) is score_c and skd.guided(score_u, score_c, 0.0) is score_u
    for bad in (float("nan"), float("inf"), "7.5", True):
        with pytest.raises(ValueError, match="finite real number"):
            skd.guided(score_u, score_c, bad)


def test_guided_score_samples_the_guided_mixture():
    """With the exact scores of two Gaussians, s_u + w (s_c - s_u) is the score of a Gaussian of
    precision mixed the same way; DDIM on the probability flow then lands on its mean."""
    sde = skd.VPSDE()
    uncond = GaussianMixture.gaussian(torch.tensor([0.0]), 1.0)
    cond = GaussianMixture.gaussian(torch.tensor([2.0]), 1.0)
    guided = skd.guided(uncond.score_fn(sde), cond.score_fn(sde), 1.5)
    # equal variances: the guided score is that of N(0 + 1.5 (2 - 0), 1) at every t
    target = GaussianMixture.gaussian(torch.tensor([3.0]), 1.0)
    t, x = torch.full((4,), 0.3), torch.linspace(-2, 4, 4)[:, None]
    torch.testing.assert_close(guided(t, x), target.score_fn(sde)(t, x))
    solution = skd.sample(sde, guided, (2000, 1), solver="dpm_solver++_2m", steps=20,
                          time_grid="logsnr", seed=0)
    assert solution.nfe == 20
    assert abs(solution.x.mean().item() - 3.0) < 0.1


def test_as_score_model_time():
    seen = []
    net = lambda x, t: (seen.append(t), SimpleNamespace(sample=torch.zeros_like(x)))[1]
    x = torch.zeros(2, 3)
    skd.as_score(net, skd.VPSDE())(torch.tensor([0.25, 0.5]), x)     # continuous: identity
    discrete = skd.DiffusionSDE.from_alphas_cumprod(ddpm_alphas_cumprod())
    skd.as_score(net, discrete)(torch.tensor([0.25, 1.0]), x)          # discrete: N t - 1
    skd.as_score(net, discrete, model_time=lambda t: 2 * t)(torch.tensor([0.25, 1.0]), x)
    expected = [[0.25, 0.5], [249.0, 999.0], [0.5, 2.0]]
    assert [t.tolist() for t in seen] == expected
    with pytest.raises(TypeError, match="model_time must be a callable"):
        skd.as_score(net, discrete, model_time=1000)
