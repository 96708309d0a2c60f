"""Sample a pretrained diffusers model with sdekit's samplers, beside diffusers' own schedulers.

Without ``--model`` the model is the google/ddpm-cifar10-32 UNet architecture (its config is
written below: 32x32 RGB, channels 128-256-256-256, attention at 16x16, 35.7M parameters) with
random weights and DDPM's linear table, so the script runs offline; ``--small`` shrinks it to a
tiny 8x8 UNet (0.16M parameters: the table's 2000 or so evaluations take about a minute on a
CPU). ``--model DIR`` loads a local diffusers model directory instead (a pipeline with
``model_index.json``, or ``unet/`` + ``scheduler/`` subfolders, or a bare ``UNet2DModel``
directory with its ``scheduler_config.json``), offline.

Every run starts from the same noise x_T at timestep 999 and ends at timestep 0 (diffusers'
schedulers with ``timestep_spacing="trailing"``, ``final_sigmas_type="sigma_min"``,
``set_alpha_to_one=False``, ``clip_sample=False``). The error of a run is the relative L2
distance ``||x - x_ref|| / ||x_ref||`` to a 999-step reference from x_T: sdekit's
``dpm_solver++_3m`` through every integer timestep, the discrete model's probability-flow ODE
solved to far below the errors shown. NFE counts model evaluations; seconds are wall time.

    python examples/pretrained.py [--model DIR] [--small] [--batch 4] [--nfe 5 10 20]
                                  [--device cpu|cuda] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import sdekit_diffusion as skd

# google/ddpm-cifar10-32, config.json (Ho et al. 2020's CIFAR-10 model, ported by diffusers)
CIFAR10_UNET = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    act_fn="silu", attention_head_dim=None, center_input_sample=False, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1, norm_eps=1e-6,
    norm_num_groups=32, time_embedding_type="positional",
)
SMALL_UNET = dict(
    sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
# its scheduler_config.json: DDPM's linear betas
CIFAR10_SCHEDULER = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                         beta_schedule="linear", variance_type="fixed_small", clip_sample=True)
REFERENCE = ("dpm_solver++_3m", 1000, "trailing")      # 999 steps through every timestep
SDEKIT_GRIDS = ("trailing", "logsnr")


def load(args):
    """``(unet, scheduler, description)``."""
    from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel

    if args.model is None:
        torch.manual_seed(args.seed)
        config = SMALL_UNET if args.small else CIFAR10_UNET
        unet = UNet2DModel(**config)
        name = "tiny 8x8 UNet" if args.small else "google/ddpm-cifar10-32 architecture"
        return unet, DDPMScheduler(**CIFAR10_SCHEDULER), f"{name}, random weights"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(args.model)
    if not path.is_dir():
        raise SystemExit(f"--model {args.model}: not a directory (give a local diffusers model "
                         "directory, e.g. one saved with pipeline.save_pretrained)")
    if (path / "model_index.json").exists():
        pipeline = DiffusionPipeline.from_pretrained(path, local_files_only=True)
        if not hasattr(pipeline, "unet") or not hasattr(pipeline, "scheduler"):
            raise SystemExit(f"{path}: the pipeline has no unet and scheduler")
        unet, scheduler = pipeline.unet, pipeline.scheduler
    else:
        sub = "unet" if (path / "unet").is_dir() else None
        unet = UNet2DModel.from_pretrained(path, subfolder=sub, local_files_only=True)
        sub = "scheduler" if (path / "scheduler").is_dir() else None
        scheduler = DDPMScheduler.from_pretrained(path, subfolder=sub, local_files_only=True)
    return unet, scheduler, str(path)


class Counted:
    """The model with its evaluations counted (diffusers' loops)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def diffusers_schedulers(config):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = dict(timestep_spacing="trailing")
    return {
        "DDIMScheduler": DDIMScheduler.from_config(config, set_alpha_to_one=False,
                                                   clip_sample=False, **common),
        "DPMSolverMultistep(2M)": DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="sigma_min",
            **common),
        "DPMSolverMultistep(3M)": DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=3, final_sigmas_type="sigma_min",
            **common),
        "UniPCMultistep(bh2)": UniPCMultistepScheduler.from_config(
            config, final_sigmas_type="sigma_min", **common),
    }


def run_diffusers(model, scheduler, steps, x):
    scheduler.set_timesteps(steps, device=x.device)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t).sample, t, x).prev_sample
    return x


def sdekit_samplers():
    """The deterministic fixed-grid samplers of the registry (one record each)."""
    return [record for record in skd.samplers.records()
            if not (record.core or record.adaptive or record.stochastic({}))]


def timed(device, function):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def relative_l2(x, reference):
    return ((x - reference).norm() / reference.norm()).item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local diffusers model directory (offline)")
    parser.add_argument("--small", action="store_true",
                        help="a tiny random UNet instead of the CIFAR-10 one (about a minute on a CPU)")
    parser.add_argument("--batch", type=int, default=4, help="samples per run")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20],
                        help="model-evaluation budgets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.small and args.model:
        parser.error("--small replaces the model: give --model or --small, not both")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise SystemExit('examples/pretrained.py needs diffusers: pip install -e ".[diffusers]"')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # float32 throughout: diffusers' UniPC fails under a float64 default dtype
    unet, scheduler, description = load(args)
    unet = unet.to(device).eval()
    if unet.dtype != torch.float32:
        unet = unet.to(dtype=torch.float32)
    config = unet.config
    shape = (args.batch, config.in_channels, config.sample_size, config.sample_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    counted = Counted(unet)
    sde, score = skd.adapters.from_diffusers(counted, scheduler)
    parameters = sum(p.numel() for p in unet.parameters())
    print(f"{description}: {parameters / 1e6:.1f}M parameters, samples {tuple(shape)}, "
          f"{sde.schedule!r}, prediction {scheduler.config.get('prediction_type', 'epsilon')}, "
          f"{device}")

    with torch.no_grad():
        name, steps, grid = REFERENCE
        solution, seconds = timed(device, lambda: skd.sample(sde, score, x_T=x_T, solver=name,
                                                              steps=steps, time_grid=grid))
        reference = solution.x
        print(f"reference: {name}, {solution.n_steps} steps on the {grid!r} grid, "
              f"{solution.nfe} NFE, {seconds:.1f} s\n")

        rows = []
        for record in sdekit_samplers():
            for grid in SDEKIT_GRIDS:
                cells = []
                for nfe in args.nfe:
                    steps = nfe // record.calls_per_step({})
                    if steps < record.min_steps:
                        cells.append(None)
                        continue
                    solution, seconds = timed(device, lambda: skd.sample(
                        sde, score, x_T=x_T, solver=record.name, steps=steps, time_grid=grid))
                    cells.append((relative_l2(solution.x, reference), solution.nfe, seconds,
                                  solution.x))
                rows.append((f"sdekit {record.name}", grid, cells))
        for label, diffusers_scheduler in diffusers_schedulers(scheduler.config).items():
            cells = []
            for nfe in args.nfe:
                counted.calls = 0
                x, seconds = timed(device, lambda: run_diffusers(counted, diffusers_scheduler, nfe,
                                                                 x_T))
                cells.append((relative_l2(x, reference), counted.calls, seconds, x))
            rows.append((f"diffusers {label}", "trailing", cells))

    header = f"{'sampler':34s} {'grid':9s} " + " ".join(
        f"{'NFE ' + str(n) + ': error  NFE  s':>26s}" for n in args.nfe)
    print(header)
    print("-" * len(header))
    for label, grid, cells in rows:
        text = [f"{'-':>26s}" if cell is None else
                f"{cell[0]:>14.2e} {cell[1]:4d} {cell[2]:6.2f}" for cell in cells]
        print(f"{label:34s} {grid:9s} " + " ".join(f"{c:>26s}" for c in text))

    # the same method on the same grid: sdekit and diffusers agree to float32 rounding
    by_label = {(label, grid): cells for label, grid, cells in rows}
    pairs = [("sdekit ddim", "diffusers DDIMScheduler"),
             ("sdekit dpm_solver++_2m", "diffusers DPMSolverMultistep(2M)")]
    print("\nsame method, same grid (trailing), relative L2 between sdekit and diffusers:")
    for ours, theirs in pairs:
        a, b = by_label.get((ours, "trailing")), by_label.get((theirs, "trailing"))
        if a is None or b is None:
            continue
        diffs = [f"NFE {n}: {relative_l2(ca[3], cb[3]):.1e}" for n, ca, cb in zip(args.nfe, a, b)
                 if ca is not None and cb is not None]
        print(f"  {ours} vs {theirs}: " + ", ".join(diffs))


if __name__ == "__main__":
    main()
