"""The ``sdekit train`` and ``sdekit sample`` sub-commands (added by :func:`register`).

``sdekit train --data moons --steps 5000 --output runs/moons`` trains a score network and writes
checkpoints (``runs/moons/step_XXXXXXXX.pt``, resumed automatically) and ``runs/moons/model.pt``.
``sdekit sample --checkpoint runs/moons --solver dpm_solver++_2m --steps 20 --n 2000 --output moons.png``
samples it (``.npy`` for the array, ``.png`` for a scatter plot or an image grid).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from sdekit.paths import check_output_path

SDES = ("vp", "subvp", "ve", "cosine")
DEFAULT_SAMPLE_STEPS = 500
COMMANDS = ("train", "sample")


class CommandError(Exception):
    """Bad input to a sub-command: reported on stderr with exit code 2."""


def check_device(name: str) -> None:
    """:class:`CommandError` unless ``name`` is ``auto``, ``cpu`` or a CUDA device this machine has."""
    if name in ("auto", "cpu"):
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CommandError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {name}: CUDA is not available on this machine; use --device cpu "
                               "(or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                               f"device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise CommandError(f"--device {name}: only cpu and cuda devices are supported")


def _build_sde(name: str):
    from . import sde as sdes
    return {"vp": sdes.VPSDE, "subvp": sdes.SubVPSDE, "ve": sdes.VESDE, "cosine": sdes.CosineVPSDE}[name]()


def _build_net(args, sample_shape: tuple[int, ...]):
    from .nets import MLP, UNet
    kind = args.net
    if kind == "auto":
        kind = "mlp" if len(sample_shape) == 1 else "unet"
    if kind == "mlp":
        if len(sample_shape) != 1:
            raise CommandError(f"--net mlp needs vector data (N, D); the data has samples of shape {sample_shape}")
        return MLP(sample_shape[0], hidden=args.hidden, depth=args.depth, time_embedding=args.time_embedding,
                   learn_variance=args.learn_variance)
    if len(sample_shape) != 3:
        raise CommandError(f"--net unet needs images (N, C, H, W); the data has samples of shape {sample_shape}")
    size = min(sample_shape[1:])
    mults = args.channel_mults or ([1, 2] if size <= 16 else [1, 2, 2])
    return UNet(sample_shape[0], base=args.base, channel_mults=mults,
                attention_resolutions=[size // 2 ** (len(mults) - 1)], time_embedding=args.time_embedding,
                learn_variance=args.learn_variance, image_size=sample_shape[1:])


# every numeric flag of `sdekit train` and its range, checked before any work
TRAIN_RANGES = (("--n", "n", dict(integer=True, minimum=1)), ("--hidden", "hidden", dict(integer=True, minimum=1)),
                ("--depth", "depth", dict(integer=True, minimum=1)), ("--base", "base", dict(integer=True, minimum=1)),
                ("--steps", "steps", dict(integer=True, minimum=1)),
                ("--batch-size", "batch_size", dict(integer=True, minimum=1)),
                ("--lr", "lr", dict(minimum=0, exclusive=True)), ("--warmup", "warmup", dict(integer=True, minimum=0)),
                ("--ema-decay", "ema_decay", dict(minimum=0, maximum=1, exclusive_maximum=True)),
                ("--grad-clip", "grad_clip", dict(minimum=0, exclusive=True)),
                ("--vlb-weight", "vlb_weight", dict(minimum=0)),
                ("--chain-steps", "chain_steps", dict(integer=True, minimum=2, optional=True)),
                ("--bits", "bits", dict(integer=True, minimum=1, maximum=16)),
                ("--checkpoint-every", "checkpoint_every", dict(integer=True, minimum=1)),
                ("--plot-every", "plot_every", dict(integer=True, minimum=0)),
                ("--seed", "seed", dict(integer=True, minimum=0)))


def _check_train_flags(args) -> None:
    """:class:`CommandError` naming the first numeric flag of ``train`` out of its range."""
    from .training.options import check_number
    try:
        for flag, name, limits in TRAIN_RANGES:
            check_number(flag, getattr(args, name), **limits)
        for multiplier in args.channel_mults or []:
            check_number("every --channel-mults entry", multiplier, integer=True, minimum=1)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.learn_variance and args.loss not in ("hybrid", "vlb"):
        raise CommandError(f"--learn-variance needs --loss hybrid or --loss vlb (--loss {args.loss} does not train "
                           "the variance)")
    if args.loss == "hybrid" and not args.learn_variance:
        raise CommandError("--loss hybrid trains a learned variance: add --learn-variance (or use --loss simple)")


def _train(args) -> int:
    from .data import load_data
    from .training import Trainer, sample_plot_callback
    from .vlb import quantize
    _check_train_flags(args)
    check_device(args.device)
    try:
        check_output_path(args.output, directory=True, what="--output")   # before any work
    except ValueError as error:
        raise CommandError(str(error)) from None
    try:
        data = load_data(args.data, n=args.n, seed=args.seed)
        if data.ndim < 2:
            raise CommandError(f"data must have shape (N, *sample_shape), got {tuple(data.shape)}")
        if args.loss in ("hybrid", "vlb"):
            rounded = quantize(data, args.bits)
            if not torch.equal(rounded, data):
                print(f"rounded the data to {args.bits}-bit levels in [-1, 1] (the decoder term of --loss {args.loss} "
                      f"is for {args.bits}-bit data; largest change {(rounded - data).abs().max().item():.3g})")
            data = rounded
        torch.manual_seed(args.seed)
        net = _build_net(args, tuple(data.shape[1:]))
        output = Path(args.output)
        callback = None
        if args.plot_every:
            callback = sample_plot_callback(output / "plots", tuple(data.shape[1:]), n=min(len(data), 1024) if data.ndim == 2 else 64,
                                            steps=200, seed=args.seed, reference=data[:2000] if data.ndim == 2 else None)
        trainer = Trainer(net, _build_sde(args.sde), prediction=args.prediction, weighting=args.weighting,
                          importance_sampling=args.importance_sampling, loss=args.loss,
                          learn_variance=args.learn_variance, vlb_weight=args.vlb_weight,
                          chain_steps=args.chain_steps, bits=args.bits, lr=args.lr, ema_decay=args.ema_decay,
                          warmup=args.warmup, grad_clip=args.grad_clip, device=args.device, checkpoint_dir=output,
                          checkpoint_every=args.checkpoint_every, callback=callback,
                          callback_every=args.plot_every or 1, seed=args.seed, progress=not args.quiet,
                          fresh=args.fresh)
        if args.fresh and (output / "model.pt").is_file():
            (output / "model.pt").unlink()   # the previous run's final save
        losses = trainer.fit(data, steps=args.steps, batch_size=args.batch_size)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise CommandError(str(error)) from None
    trainer.save(output / "model.pt")
    tail = losses[-min(100, len(losses)):] if losses else [float("nan")]
    print(f"trained {type(net).__name__} on {tuple(data.shape)} for {trainer.step} steps on {trainer.device}; "
          f"mean loss of the last {len(tail)} steps {np.mean(tail):.4f}; wrote {output / 'model.pt'}")
    return 0


def _sample(args) -> int:
    from .sampling import sample
    from .training import Trainer, newest_of_run, plot_samples
    from .samplers import registry
    try:
        record = registry.get(args.solver)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.seed < 0:
        raise CommandError(f"--seed must be a non-negative integer, got {args.seed}")
    options = {"seed": args.seed}
    if record.adaptive:
        if args.steps is not None:
            raise CommandError(f"--solver {args.solver} is adaptive: give --rtol/--atol instead of --steps")
        for flag, value in (("--rtol", args.rtol), ("--atol", args.atol)):
            if value is not None and not 0 <= value < float("inf"):   # NaN too
                raise CommandError(f"{flag} must be a finite number >= 0, got {value}")
        options.update({k: v for k, v in (("rtol", args.rtol), ("atol", args.atol)) if v is not None})
    else:
        if args.rtol is not None or args.atol is not None:
            adaptive = ", ".join(r.name for r in registry.records() if r.adaptive)
            raise CommandError(f"--rtol/--atol need an adaptive sampler ({adaptive}); "
                               f"{args.solver} takes --steps")
        options["steps"] = DEFAULT_SAMPLE_STEPS if args.steps is None else args.steps
        if options["steps"] < record.min_steps:
            raise CommandError(f"--steps must be an integer >= {record.min_steps} for --solver {args.solver}, "
                               f"got {options['steps']}")
    options.update(_sampler_flags(args, record))
    if args.shape is not None and (not args.shape or min(args.shape) < 1):
        raise CommandError(f"--shape must be positive sizes, e.g. 2 or 1,8,8, got {args.shape}")
    if args.n < 1:
        raise CommandError(f"--n must be a positive number of samples, got {args.n}")
    check_device(args.device)
    try:
        output = check_output_path(args.output, what="--output")
    except ValueError as error:
        raise CommandError(str(error)) from None
    _check_output_format(output)
    path = Path(args.checkpoint)
    if path.is_dir():
        try:
            path, note = newest_of_run(path)   # the highest step of model.pt and step_*.pt
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        print(note)
    try:
        trainer = Trainer.load(path, device=args.device, progress=False)
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(str(error)) from None
    if args.variance == "learned" and not trainer.learn_variance:
        raise CommandError(f"--variance learned needs a model that learns its variance (sdekit train "
                           f"--learn-variance); {path} does not: use --variance beta_tilde or beta")
    shape = tuple(args.shape) if args.shape else trainer.sample_shape
    if shape is None:
        raise CommandError(f"{path} does not record the sample shape; give --shape, e.g. --shape 1,28,28")
    if trainer.sample_shape is not None and tuple(shape) != tuple(trainer.sample_shape):
        raise CommandError(f"--shape {','.join(map(str, shape))} does not match the model's samples of shape "
                           f"{tuple(trainer.sample_shape)} (from {path}); drop --shape")
    try:
        solution = sample(trainer.sde, trainer.score_fn(ema=not args.no_ema), (args.n, *shape), solver=args.solver,
                          time_grid=args.time_grid, denoise=args.denoise, progress=not args.quiet,
                          dtype=trainer.dtype, device=trainer.device, **options)
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from None
    samples = solution.x.detach().cpu()
    if output.suffix == ".npy":
        np.save(output, samples.numpy())
    else:
        plot_samples(samples, output, title=f"{args.solver}, {solution.nfe} NFE")
    print(f"{args.n} samples of shape {shape} from {path} with {args.solver} ({solution.nfe} NFE); wrote {output}")
    return 0


def _check_output_format(output: Path) -> None:
    """:class:`CommandError` unless ``output`` is ``.npy`` or an image format matplotlib writes
    (checked before sampling, so no samples are lost to a late error)."""
    if output.suffix.lower() == ".npy":
        return
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise CommandError(f"--output {output}: plots need matplotlib (pip install matplotlib); or write "
                           ".npy") from None
    formats = FigureCanvasBase.get_supported_filetypes()
    if output.suffix.lower().lstrip(".") not in formats:
        raise CommandError(f"--output {output}: write .npy (the samples) or a plot as "
                           f"{', '.join('.' + f for f in sorted(formats))}")


# flags of `sdekit sample` that are options of some samplers: (flag, attribute, option name)
SAMPLER_FLAGS = (("--variance", "variance", "variance"), ("--clip-denoised", "clip_denoised", "clip_denoised"),
                 ("--afs", "afs", "afs"))


def _sampler_flags(args, record) -> dict:
    """The sampler options given as flags (``--variance``, ``--clip-denoised``, ``--afs``); :class:`CommandError`
    for one that ``record``'s sampler does not take, naming the samplers that do."""
    from .samplers import registry
    options = {}
    for flag, attribute, option in SAMPLER_FLAGS:
        value = getattr(args, attribute)
        if value in (None, False):
            continue
        if option not in record.options:
            takers = ", ".join(r.name for r in registry.records() if option in r.options)
            raise CommandError(f"{flag} is an option of {takers}; --solver {record.name} does not take it")
        options[option] = value
    return options


def _guarded(function):
    def run(args) -> int:
        try:
            return function(args)
        except CommandError as error:
            print(f"sdekit {args.command}: error: {error}", file=sys.stderr)
            return 2
    return run


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    """Add ``train`` and ``sample`` to an argparse ``subparsers`` object (the ``sdekit`` console script's)."""
    from .data import TOY_SETS
    from .samplers import available
    from .time_grids import GRIDS
    from .variance import VARIANCES
    train = subparsers.add_parser(
        "train", help="train a score network by denoising score matching",
        description="Train an MLP (vector data) or a U-Net (images) on a diffusion SDE. Checkpoints go to "
                    "--output every --checkpoint-every steps; rerunning the same command resumes from the newest.",
        epilog="examples: sdekit train --data moons --steps 5000 --output runs/moons;  "
               "sdekit train --data digits --sde vp --steps 20000 --batch-size 128 --output runs/digits "
               "(digits need scikit-learn);  sdekit train --data my_points.npy --output runs/mine")
    train.add_argument("--data", required=True,
                       help=f"a toy set ({', '.join(TOY_SETS)}), 'digits' (sklearn 8x8, scaled to [-1, 1]) or a .npy "
                            "file of shape (N, D) or (N, C, H, W)")
    train.add_argument("--n", type=int, default=20000, help="samples drawn from a toy set (default: %(default)s)")
    train.add_argument("--sde", choices=SDES, default="vp", help="forward SDE preset (default: %(default)s)")
    train.add_argument("--net", choices=("auto", "mlp", "unet"), default="auto",
                       help="network; auto: MLP for vectors, U-Net for images (default: %(default)s)")
    train.add_argument("--hidden", type=int, default=256, help="MLP width (default: %(default)s)")
    train.add_argument("--depth", type=int, default=3, help="MLP residual blocks (default: %(default)s)")
    train.add_argument("--base", type=int, default=32, help="U-Net base channels (default: %(default)s)")
    train.add_argument("--channel-mults", type=_int_list, default=None,
                       help="U-Net channel multipliers per level, e.g. 1,2,2 (default: 1,2 up to 16 px, else 1,2,2)")
    train.add_argument("--time-embedding", choices=("fourier", "sinusoidal"), default="fourier",
                       help="time embedding (default: %(default)s)")
    train.add_argument("--prediction", choices=("eps", "x0", "v", "score"), default="eps",
                       help="what the network predicts (default: %(default)s)")
    train.add_argument("--weighting", choices=("sigma2", "likelihood"), default="sigma2",
                       help="loss weighting: sigma2 (DDPM) or likelihood (g^2) (default: %(default)s)")
    train.add_argument("--importance-sampling", action="store_true",
                       help="--loss dsm: draw t with density proportional to g^2/sigma^2 (for --weighting likelihood); "
                            "--loss vlb/hybrid: Improved DDPM's sampler of timesteps by their history of L_t^2")
    train.add_argument("--loss", choices=("dsm", "simple", "hybrid", "vlb"), default="dsm",
                       help="dsm: continuous-time denoising score matching; simple: L_simple on the discrete chain; "
                            "hybrid: L_simple + VLB_WEIGHT * L_vlb (Improved DDPM, needs --learn-variance); vlb: the "
                            "variational bound (default: %(default)s)")
    train.add_argument("--learn-variance", action="store_true",
                       help="the network also outputs the reverse variance (Improved DDPM; --loss hybrid or vlb)")
    train.add_argument("--vlb-weight", type=float, default=0.001,
                       help="lambda of --loss hybrid (default: %(default)s, the paper's)")
    train.add_argument("--chain-steps", type=int, default=None,
                       help="timesteps of the discrete chain of --loss simple/hybrid/vlb (default: 1000)")
    train.add_argument("--bits", type=int, default=8,
                       help="bit depth of the data for the decoder term of --loss hybrid/vlb; the data are rounded "
                            "to it (default: %(default)s)")
    train.add_argument("--steps", type=int, default=5000, help="total optimizer steps (default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=256, help="(default: %(default)s)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    train.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default: %(default)s)")
    train.add_argument("--ema-decay", type=float, default=0.999, help="(default: %(default)s)")
    train.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (default: %(default)s)")
    train.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ... (default: %(default)s)")
    train.add_argument("--output", required=True, help="output folder for checkpoints, model.pt and plots")
    train.add_argument("--checkpoint-every", type=int, default=1000, help="(default: %(default)s)")
    train.add_argument("--plot-every", type=int, default=0,
                       help="write a sample plot to OUTPUT/plots every this many steps (0: never; needs matplotlib)")
    train.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    train.add_argument("--fresh", action="store_true",
                       help="start over: delete the step_*.pt and model.pt of another run in --output instead of "
                            "resuming it (a run with another --sde, --prediction, --weighting, --loss or --data is "
                            "refused otherwise)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_guarded(_train), command="train")

    sample = subparsers.add_parser(
        "sample", help="sample a trained score network",
        description="Load a checkpoint written by `sdekit train` (a file, or its output folder) and sample it with "
                    "any sampler; write the samples as .npy or a PNG (scatter for 2-D, image grid otherwise).",
        epilog="example: sdekit sample --checkpoint runs/moons --solver dpm_solver++_2m --steps 20 --n 2000 "
               "--output moons.png")
    sample.add_argument("--checkpoint", required=True,
                        help="checkpoint file, or a folder: the highest step of its model.pt and step_*.pt")
    sample.add_argument("--solver", default="euler_maruyama", metavar="NAME",
                        help=f"sampler: {', '.join(available())} (default: %(default)s)")
    sample.add_argument("--steps", type=int, default=None,
                        help=f"grid steps of a fixed-step sampler (default: {DEFAULT_SAMPLE_STEPS})")
    sample.add_argument("--rtol", type=float, default=None, help="relative tolerance of an adaptive sampler")
    sample.add_argument("--atol", type=float, default=None, help="absolute tolerance of an adaptive sampler")
    sample.add_argument("--time-grid", choices=GRIDS, default="uniform", help="(default: %(default)s)")
    sample.add_argument("--n", type=int, default=1000, help="number of samples (default: %(default)s)")
    sample.add_argument("--shape", type=_int_list, default=None,
                        help="sample shape, e.g. 2 or 1,8,8 (default: the training data's, from the checkpoint)")
    sample.add_argument("--denoise", action="store_true", help="finish with a Tweedie denoising step")
    sample.add_argument("--variance", choices=VARIANCES, default=None,
                        help="--solver ancestral: the reverse step's variance, beta_tilde (the posterior's, "
                             "default), beta, or learned (a model trained with --learn-variance; Improved DDPM)")
    sample.add_argument("--clip-denoised", action="store_true",
                        help="--solver ancestral: clamp the data prediction to [-1, 1] (data scaled to [-1, 1])")
    sample.add_argument("--afs", action="store_true",
                        help="--solver ipndm, deis, unipc, dpm_solver++_2m/3m: the analytical first step (the "
                             "model's output at t_max taken from standard normal data: one score call fewer)")
    sample.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA")
    sample.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    sample.add_argument("--device", default="auto", help="(default: %(default)s)")
    sample.add_argument("--output", required=True, help="samples.npy or a .png plot")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.set_defaults(func=_guarded(_sample), command="sample")
