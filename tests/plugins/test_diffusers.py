"""sdekit on diffusers models equals diffusers' own schedulers (float64, small random UNets built
from a config: no download).

diffusers' DPMSolverMultistepScheduler keeps its sigmas and the state of each update in float32
whatever the model's dtype (``sigmas.astype(np.float32)``, ``sample.to(torch.float32)`` in
``step``), and DDIMScheduler's ``alphas_cumprod`` is a float32 table: so "equal" here means to
float32 rounding, measured 7e-9 (DDIM, 1000 steps) to 4e-7 (DPM-Solver++(2M)); the bound is
1e-6. A systematic difference (a grid off by one timestep, a lower-order rule on the wrong step,
the wrong final sigma) moves these figures to 1e-3 or more.
"""
import pytest
import torch

import sdekit_diffusion as skd

diffusers = pytest.importorskip("diffusers")

from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       UNet2DConditionModel, UNet2DModel)

TOL = 1e-6


def tiny_unet(channels=2, out_channels=None, seed=0, **config):
    """A random UNet2DModel small enough for 1000 evaluations in a few seconds (about 2 ms each)."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=4, in_channels=channels, out_channels=out_channels or channels,
                       layers_per_block=1, block_out_channels=(8,), down_block_types=("DownBlock2D",),
                       up_block_types=("UpBlock2D",), norm_num_groups=4, mid_block_type=None,
                       **config).double().eval()


MODEL = None


def model():
    global MODEL
    if MODEL is None:
        MODEL = tiny_unet()
    return MODEL


def noise(shape=(2, 2, 4, 4), seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def relative_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


def run_diffusers(net, scheduler, steps, x, **model_kwargs):
    """diffusers' own sampling loop (what its pipelines do, without guidance)."""
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t, **model_kwargs).sample, t, x).prev_sample
    return x


def test_ddim_on_the_trailing_1000_step_grid_equals_diffusers_ddim():
    """DDIMScheduler's 1000 trailing steps go 999 -> 998 -> ... -> 0 -> final_alpha_cumprod =
    alphas_cumprod[0] (set_alpha_to_one=False): a last step of length zero. sdekit's trailing grid of
    1000 steps is timesteps 999..0, so 999 score calls for diffusers' 1000."""
    scheduler = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)
    x_T = noise()
    reference = run_diffusers(model(), scheduler, 1000, x_T)
    sde, score = skd.adapters.from_diffusers(model(), scheduler)
    solution = skd.sample(sde, score, x_T=x_T, solver="ddim", steps=1000, time_grid="trailing")
    assert solution.nfe == 999 and len(solution.ts) == 1000
    assert relative_l2(solution.x, reference) <= TOL
    assert relative_l2(x_T, reference) > 1e-2          # the model moved the state


@pytest.mark.parametrize("table", [
    dict(),                                               # DDPM's linear betas, eps-prediction
    dict(beta_schedule="squaredcos_cap_v2"),              # Improved DDPM's cosine table
    dict(prediction_type="v_prediction"),
])
@pytest.mark.parametrize("final", ["sigma_min", "zero"])
@pytest.mark.parametrize("steps", [10, 25])
def test_dpm_solver_pp_2m_equals_diffusers(table, final, steps):
    """DPMSolverMultistepScheduler (dpmsolver++, order 2) on its default linspace grid: sdekit on
    time_grid(steps, "linspace") with final_step = diffusers' final_sigmas_type. At 10 steps the
    last step is first order (lower_order_final below 15 steps), at 25 it is not (with "sigma_min");
    with "zero" the last step is always the first-order step to sigma = 0."""
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type=final, **table)
    x_T = noise()
    reference = run_diffusers(model(), scheduler, steps, x_T)
    sde, score = skd.adapters.from_diffusers(model(), scheduler)
    solution = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_2m", steps=steps,
                          time_grid="linspace", final_step="zero" if final == "zero" else "none")
    assert solution.nfe == steps
    assert relative_l2(solution.x, reference) <= TOL


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_dpm_solver_pp_2m_equals_diffusers_on_other_spacings(spacing):
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type="sigma_min", timestep_spacing=spacing,
                                            steps_offset=1 if spacing == "leading" else 0)
    x_T = noise()
    reference = run_diffusers(model(), scheduler, 12, x_T)
    sde, score = skd.adapters.from_diffusers(model(), scheduler)
    # steps_offset is a grid option: the explicit grid carries it
    ts = skd.time_grid(sde, 12, spacing, steps_offset=1 if spacing == "leading" else 0)
    x = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_2m", ts=ts).x
    assert relative_l2(x, reference) <= TOL


@pytest.mark.parametrize("config, options", [
    (dict(lower_order_final=False), dict(lower_order_final=False)),     # 10 steps, no lowering
    (dict(euler_at_final=True), dict(euler_at_final=True)),             # 25 steps, Euler last
])
def test_lower_order_final_and_euler_at_final_mean_what_diffusers_means(config, options):
    """On a v-prediction model (its data prediction alpha x - sigma v stays O(1), so the order of
    the last steps shows: measured 0.26 and 0.06 relative against 2e-7 of rounding)."""
    steps = 10 if "lower_order_final" in config else 25
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type="sigma_min",
                                            prediction_type="v_prediction", **config)
    x_T = noise()
    reference = run_diffusers(model(), scheduler, steps, x_T)
    sde, score = skd.adapters.from_diffusers(model(), scheduler)
    x = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_2m", steps=steps,
                   time_grid="linspace", **options).x
    default = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_2m", steps=steps,
                         time_grid="linspace").x
    assert relative_l2(x, reference) <= TOL
    assert relative_l2(default, reference) > 1000 * TOL      # the option changed the result


@pytest.mark.parametrize("final", ["sigma_min", "zero"])
def test_zero_terminal_snr_table_equals_diffusers(final):
    """rescale_betas_zero_snr=True with v-prediction and the trailing grid (Lin et al. 2024), on
    Stable Diffusion's scaled-linear table: diffusers stores 2^-24 for the last alpha_cumprod 0,
    and so does sdekit."""
    table = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 rescale_betas_zero_snr=True, prediction_type="v_prediction",
                 timestep_spacing="trailing")
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type=final, **table)
    x_T = noise()
    reference = run_diffusers(model(), scheduler, 10, x_T)
    sde, score = skd.adapters.from_diffusers(model(), scheduler)
    assert sde.schedule.zero_terminal_snr
    assert sde.schedule.alphas_cumprod[-1].item() == 2.0 ** -24
    x = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_2m", steps=10, time_grid="trailing",
                   final_step="zero" if final == "zero" else "none").x
    assert relative_l2(x, reference) <= TOL


@pytest.mark.parametrize("table", [dict(), dict(beta_schedule="scaled_linear", beta_start=0.00085,
                                                beta_end=0.012)])
def test_zero_terminal_snr_ddim_is_diffusers_up_to_the_stand_in(table):
    """DDIMScheduler keeps alpha_cumprod = 0 at timestep 999, where a v-model's data prediction
    is -v exactly; sdekit's score needs alpha > 0 and uses the stand-in alpha_cumprod (2^-24, or for
    the linear table, where 2^-24 is above alpha_cumprod[998] = 4e-9, the geometric extrapolation
    1e-9): the first data prediction differs by about alpha(t_max) <= 2^-12 = 2.4e-4 relative.
    Measured: 7.5e-6 (linear), 5.8e-5 (scaled linear)."""
    scheduler = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False,
                              rescale_betas_zero_snr=True, prediction_type="v_prediction", **table)
    assert scheduler.alphas_cumprod[-1] == 0
    x_T = noise()
    reference = run_diffusers(model(), scheduler, 10, x_T)
    sde, score = skd.adapters.from_diffusers(model(), scheduler)
    schedule = sde.schedule
    assert bool((schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1]).all())
    x = skd.sample(sde, score, x_T=x_T, solver="ddim", steps=10, time_grid="trailing").x
    assert relative_l2(x, reference) <= 2.0 ** -12


def test_the_model_sees_diffusers_integer_timesteps():
    scheduler = DPMSolverMultistepScheduler(timestep_spacing="trailing")
    seen = []

    def recording(x, t, **kwargs):
        seen.append(t.clone())
        return model()(x, t, **kwargs)

    sde, score = skd.adapters.from_diffusers(recording, scheduler)
    skd.sample(sde, score, x_T=noise(), solver="dpm_solver++_2m", steps=7, time_grid="trailing")
    scheduler.set_timesteps(7)
    assert torch.equal(torch.stack([t[0] for t in seen]), scheduler.timesteps.to(torch.float64))


def test_spacings_are_diffusers_set_timesteps():
    """time_grid's spacings are the multistep schedulers' timesteps followed by timestep 0
    (final_sigmas_type="sigma_min"), for tables of 1000 and 999 timesteps; diffusers' extra
    timestep -1 of some trailing counts (float rounding in np.arange) is not copied."""
    for N in (1000, 999):
        sde = skd.DiffusionSDE.from_betas(torch.linspace(1e-4, 0.02, N))
        for spacing, offset in [("trailing", 0), ("leading", 0), ("leading", 1), ("linspace", 0)]:
            scheduler = DPMSolverMultistepScheduler(num_train_timesteps=N, timestep_spacing=spacing,
                                                    steps_offset=offset)
            for steps in (1, 2, 3, 7, 10, 25, 50, 61, 100, 333, 500, 998):
                scheduler.set_timesteps(steps)
                timesteps = scheduler.timesteps.tolist()
                if timesteps[-1] == -1:
                    timesteps = timesteps[:-1]
                if timesteps[-1] != 0:
                    timesteps.append(0)
                if timesteps[0] > N - 1:          # diffusers' offset leaves the table: refused
                    with pytest.raises(ValueError, match="beyond the last timestep"):
                        skd.time_grid(sde, steps, spacing, steps_offset=offset)
                    continue
                grid = skd.time_grid(sde, steps, spacing, steps_offset=offset)
                expected = (torch.tensor(timesteps, dtype=torch.float64) + 1) / N
                assert torch.equal(grid, expected), (N, spacing, offset, steps)


def test_learned_variance_keeps_the_mean_prediction():
    """A 2C-channel model (variance_type="learned_range"): diffusers' DPMSolverMultistepScheduler
    keeps the first 3 channels, so does the adapter."""
    net = tiny_unet(channels=3, out_channels=6, seed=2)
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            variance_type="learned_range",
                                            final_sigmas_type="sigma_min")
    x_T = noise((2, 3, 4, 4))
    reference = run_diffusers(net, scheduler, 8, x_T)
    sde, score = skd.adapters.from_diffusers(net, scheduler)
    x = skd.sample(sde, score, x_T=x_T, solver="dpm_solver++_2m", steps=8, time_grid="linspace").x
    assert relative_l2(x, reference) <= TOL


@pytest.mark.parametrize("clip", [False, True])
def test_learned_variance_ancestral_equals_diffusers_ddpm_on_the_same_noise(monkeypatch, clip):
    """A 2C-channel model with DDPMScheduler(variance_type="learned_range"): sdekit's ancestral with
    variance="learned" on the full chain (T - 1 steps, then the data prediction at timestep 0; with
    clip: clip_denoised=True and the final prediction clamped) equals diffusers' step loop, whose
    normals are replaced by sdekit's per-sample stream (the same noise, in the same order). The
    learned variance is not a fixed one: beta_tilde and beta differ by far more."""
    from diffusers.schedulers import scheduling_ddpm

    from sdekit_diffusion.chain import DiscreteChain
    from sdekit_diffusion.samplers._common import NormalStream
    from sdekit_diffusion.variance import LearnedVarianceScore

    T = 50
    net = tiny_unet(channels=2, out_channels=4, seed=4)
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type="learned_range", clip_sample=clip)
    # its float32 tables in float64 (the same numbers): diffusers' 1 - a_n / a_{n-1} in float32 has
    # a relative error of 1e-3 at beta = 1e-4, which log beta carries into the learned variance
    for name in ("betas", "alphas", "alphas_cumprod", "one"):
        setattr(scheduler, name, getattr(scheduler, name).double())
    x_T = noise((3, 2, 4, 4), seed=5)
    stream = NormalStream(x_T.shape, 7, 0, x_T.dtype, x_T.device)
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kwargs: stream())
    reference = run_diffusers(net, scheduler, T, x_T)
    sde, score = skd.adapters.from_diffusers(net, scheduler)
    assert isinstance(score, LearnedVarianceScore)
    ts = DiscreteChain.from_sde(sde).sampling_grid()
    samples = {}
    for variance in ("learned", "beta_tilde", "beta"):
        solution = skd.sample(sde, score, x_T=x_T, ts=ts, solver="ancestral", variance=variance, seed=7,
                              clip_denoised=clip, denoise=True)
        samples[variance] = solution.x.clamp(-1, 1) if clip else solution.x
    assert solution.nfe == T
    error = relative_l2(samples["learned"], reference)
    print(f"learned variance vs diffusers DDPM, clip={clip}: relative error {error:.2e}")
    assert error <= 1e-10
    assert min(relative_l2(samples[v], reference) for v in ("beta_tilde", "beta")) > 1e-3
    with pytest.raises(ValueError, match="twice the sample's channels"):
        skd.adapters.from_diffusers(model(), scheduler)[1](torch.full((2,), 0.5), noise())


def test_class_labels_pass_through():
    net = tiny_unet(seed=3, num_class_embeds=4)
    scheduler = DDIMScheduler()
    x, t = noise(), torch.tensor([0.5, 0.9])
    labels = torch.tensor([1, 3])
    sde, score = skd.adapters.from_diffusers(net, scheduler, class_labels=labels)
    timestep = 1000 * t - 1
    eps = net(x, timestep, class_labels=labels).sample
    torch.testing.assert_close(score(t, x), -eps / sde.schedule.sigma(t)[:, None, None, None])
    _, other = skd.adapters.from_diffusers(net, scheduler, class_labels=torch.tensor([0, 0]))
    assert relative_l2(other(t, x), score(t, x)) > 1e-3


def test_classifier_free_guidance_equals_diffusers_loop():
    """A UNet2DConditionModel with text-like conditioning: skd.guided of two adapted scores equals
    diffusers' pipelines' guidance, noise_uncond + w (noise_text - noise_uncond), then the
    scheduler's step."""
    torch.manual_seed(4)
    net = UNet2DConditionModel(sample_size=4, in_channels=2, out_channels=2, layers_per_block=1,
                               block_out_channels=(8,), down_block_types=("CrossAttnDownBlock2D",),
                               up_block_types=("CrossAttnUpBlock2D",), norm_num_groups=4,
                               cross_attention_dim=6, attention_head_dim=2,
                               mid_block_type=None).double().eval()
    text = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(5))
    empty = torch.zeros_like(text)
    scale = 3.0
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type="sigma_min")
    x = x_T = noise()
    scheduler.set_timesteps(8)
    with torch.no_grad():
        for t in scheduler.timesteps:
            uncond = net(x, t, encoder_hidden_states=empty).sample
            cond = net(x, t, encoder_hidden_states=text).sample
            x = scheduler.step(uncond + scale * (cond - uncond), t, x).prev_sample
    sde, score_uncond = skd.adapters.from_diffusers(net, scheduler, encoder_hidden_states=empty)
    _, score_text = skd.adapters.from_diffusers(net, scheduler, encoder_hidden_states=text)
    guided = skd.guided(score_uncond, score_text, scale)
    solution = skd.sample(sde, guided, x_T=x_T, solver="dpm_solver++_2m", steps=8,
                          time_grid="linspace")
    assert solution.nfe == 8
    assert relative_l2(solution.x, x) <= TOL
    unguided = skd.sample(sde, score_text, x_T=x_T, solver="dpm_solver++_2m", steps=8,
                          time_grid="linspace").x
    assert relative_l2(unguided, x) > 1e-3


def test_model_dtype_and_autograd():
    """A float32 model serves a float64 state (output back in float64, equal to the float64 model
    to float32 rounding); autograd runs through the model only when the state requires grad."""
    scheduler = DDIMScheduler()
    net32 = tiny_unet().float()
    sde, score32 = skd.adapters.from_diffusers(net32, scheduler)
    _, score64 = skd.adapters.from_diffusers(model(), scheduler)
    x, t = noise(), torch.tensor([0.3, 0.8])
    s32 = score32(t, x)
    assert s32.dtype == torch.float64
    assert relative_l2(s32, score64(t, x)) < 1e-5
    assert not score64(t, x).requires_grad        # the parameters require grad, the state not
    x.requires_grad_(True)
    s = score64(t, x)
    assert s.requires_grad
    (grad,) = torch.autograd.grad(s.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
