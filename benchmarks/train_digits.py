"""Train a small U-Net on scikit-learn's 8x8 digits within a CPU time budget, sample it, score the samples.

    python benchmarks/train_digits.py --budget 600 --output runs/digits --json runs/digits.json
    python benchmarks/train_digits.py --checkpoint runs/digits/model.pt   # score a trained model again

The shipped benchmark model ``benchmarks/assets/digits_unet16.pt`` (see ``benchmarks/assets/README.md``
for the exact command) is ``--base 16 --prediction v`` trained for a fixed number of steps and written
with ``--export``: a trainer checkpoint without the optimizer's moments (half the size; it samples and
scores like the full one, and resuming from it restarts Adam's moments).

Improved DDPM (Nichol & Dhariwal 2021) on a discrete table, 8-bit digits:

    python benchmarks/train_digits.py --table cosine --loss hybrid --learn-variance --budget 300 --output runs/hybrid
    python benchmarks/train_digits.py --checkpoint runs/hybrid/model.pt --solvers "" --vlb-samples 128 --respaced 25,50

``--table linear|cosine`` trains on the DDPM chain of ``--timesteps`` steps (``DiffusionSDE.from_betas``;
the U-Net then sees the timestep, scaled by ``1/timesteps``) with the digits rounded to 8 bits;
``--loss simple|hybrid|vlb`` picks the objective (``dsm``, the default, is continuous-time denoising
score matching on the VP SDE). ``--vlb-samples K`` reports the discrete variational bound
(``skd.vlb_bits_per_dim``, every term) on ``K`` held-out digits for each variance the model offers
(learned; beta~; beta); ``--respaced 25,50`` samples the respaced chains of those many steps with
``ancestral`` and each variance, and scores them like the other samplers.

Scores come from an MLP classifier trained on the real training digits (its test accuracy is reported):
the mean top-class confidence on samples, the entropy of the predicted-class histogram (log 10 = 2.303
for perfectly balanced classes), a "digits score" exp(E_x KL(p(y|x) || p(y))) (the Inception score of
Salimans et al. 2016 with this classifier; at most 10), the share of samples classified with
confidence above 0.9, and the Fréchet distance between the classifier's
hidden features of samples and of held-out real digits (FID of Heusel et al. 2017, in this feature space).
Every sampler of ``--solvers`` (``name:steps[:grid]``) is scored on the same
model; the same scores for held-out real digits and for pure prior noise bracket the result. Prints a table,
writes a sample grid PNG and optionally JSON. Needs scikit-learn (the digits) and matplotlib.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

import sdekit_diffusion as skd
from sdekit_diffusion.chain import DiscreteChain, respaced_timesteps
from sdekit_diffusion.data import digits_with_labels
from sdekit_diffusion.nets import UNet
from sdekit_diffusion.training import Trainer, atomic_save, plot_samples
from sdekit_diffusion.vlb import quantize


TRAIN_DIGITS = 1200   # the first 1200 of the seeded permutation train; the other 597 are held out


def split_digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train images, train labels, held-out images, held-out labels)`` of the 1797 8x8 digits
    (in [-1, 1], shape ``(n, 1, 8, 8)``), split by a permutation seeded with ``seed``."""
    images, labels = digits_with_labels()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, held_out = order[:TRAIN_DIGITS], order[TRAIN_DIGITS:]
    return images[train], labels[train], images[held_out], labels[held_out]


def export_checkpoint(trainer: Trainer, path: str | Path) -> None:
    """Write ``trainer`` to ``path`` as :meth:`Trainer.save` does, less the optimizer's moments:
    :meth:`Trainer.load` reads it (weights, EMA, SDE, options, step, losses); resuming from it starts
    Adam's moments afresh."""
    state = trainer.state_dict()
    state["optimizer"] = {"state": {}, "param_groups": state["optimizer"]["param_groups"]}
    atomic_save(state, path)


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                          torch.nn.Linear(128, 64), torch.nn.ReLU())
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.hidden(x))


def train_classifier(images, labels, epochs: int = 300, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):  # full batch: 1200 images
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images + 0.05 * torch.randn_like(images)), labels).backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def scores(classifier: Classifier, images: torch.Tensor, reference_features: np.ndarray) -> dict:
    images = images.clamp(-1, 1)
    probabilities = classifier(images).softmax(1)
    marginal = probabilities.mean(0)
    kl = (probabilities * (probabilities.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
    features = classifier.hidden(images).numpy().astype(np.float64)
    confidence = probabilities.max(1).values
    return {"confidence": confidence.mean().item(),
            "share_confident": (confidence > 0.9).double().mean().item(),
            "class_entropy": -(marginal * marginal.clamp_min(1e-12).log()).sum().item(),
            "digits_score": math.exp(kl.mean().item()),
            "frechet_distance": frechet_distance(features, reference_features)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mean_a, mean_b = a.mean(0), b.mean(0)
    ridge = 1e-6 * np.eye(a.shape[1])  # dead ReLU features make the covariances singular
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def _parse_sampler(entry: str) -> tuple[str, int, str]:
    parts = entry.strip().split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise SystemExit(f"--solvers entries are name:steps[:grid], got {entry!r}")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "uniform"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600, help="training wall-clock budget in seconds (default: %(default)s)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what --budget counts: wall-clock seconds, or this process's CPU seconds (equal work on "
                             "a machine shared with other jobs; with --threads 1 about the wall time alone) "
                             "(default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--base", type=int, default=32, help="U-Net base channels")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--solvers", default="dpm_solver++_3m:10:logsnr,dpm_solver++_2m:20:logsnr,ddim:50:quadratic,"
                        "euler_maruyama:200:uniform",
                        help="samplers to score, name:steps[:time grid], comma-separated (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None, help="score this trained model (model.pt) instead of training")
    parser.add_argument("--loss", choices=("dsm", "simple", "hybrid", "vlb"), default="dsm",
                        help="training objective (default: %(default)s; simple/hybrid/vlb need --table)")
    parser.add_argument("--prediction", choices=("eps", "x0", "v"), default="eps",
                        help="what the U-Net predicts (default: %(default)s). With eps on the VP SDE, "
                             "alpha(1) = 0.0066 makes the data prediction x0 = (x - sigma eps)/alpha amplify the "
                             "network's eps error 150-fold at t = 1; v (Salimans & Ho 2022) has eps = sigma x + alpha v "
                             "built in and keeps x0 = alpha x - sigma v bounded")
    parser.add_argument("--learn-variance", action="store_true", help="the U-Net also outputs the reverse variance")
    parser.add_argument("--table", choices=("linear", "cosine"), default=None,
                        help="train on this DDPM table of --timesteps steps, the digits rounded to 8 bits "
                             "(default: the continuous VP SDE)")
    parser.add_argument("--timesteps", type=int, default=1000, help="steps of --table (default: %(default)s)")
    parser.add_argument("--vlb-samples", type=int, default=0,
                        help="report the variational bound (bits/dim) on this many held-out digits (0: no)")
    parser.add_argument("--respaced", default="",
                        help="comma-separated step counts: ancestral sampling on respaced chains, every variance")
    parser.add_argument("--clip-denoised", action="store_true",
                        help="clamp the data prediction to [-1, 1] in --respaced sampling and --vlb-samples "
                             "(improved-diffusion's default for both)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--output", default="runs/digits", help="folder for checkpoints and the sample grid")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--export", default=None, metavar="PATH",
                        help="also write the model here without the optimizer's moments (a small checkpoint "
                             "for sampling, e.g. benchmarks/assets/digits_unet16.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-seed", type=int, default=None,
                        help="seed of the --respaced samples (default: --seed, which also splits the digits)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_images, train_labels, held_out_images, held_out_labels = split_digits(args.seed)

    classifier = train_classifier(train_images, train_labels)
    with torch.no_grad():
        accuracy = (classifier(held_out_images).argmax(1) == held_out_labels).float().mean().item()
        reference = classifier.hidden(held_out_images).numpy().astype(np.float64)

    samplers = [_parse_sampler(entry) for entry in args.solvers.split(",") if entry.strip()]
    respaced = [int(entry) for entry in args.respaced.split(",") if entry.strip()]
    output = Path(args.output)
    if args.checkpoint:
        trainer, train_seconds, train_wall_seconds = Trainer.load(args.checkpoint, device=args.device), 0.0, 0.0
    else:
        torch.manual_seed(args.seed)
        if args.table is None:
            sde, time_scale, data = skd.VPSDE(), 1.0, train_images
        else:
            betas = (skd.VPSDE() if args.table == "linear" else skd.CosineVPSDE()).ddpm_betas(args.timesteps)
            sde, time_scale, data = skd.DiffusionSDE.from_betas(betas), 1.0 / args.timesteps, quantize(train_images, 8)
        net = UNet(1, base=args.base, channel_mults=(1, 2), attention_resolutions=(4,), image_size=8,
                   learn_variance=args.learn_variance, time_scale=time_scale)
        trainer = Trainer(net, sde, loss=args.loss, prediction=args.prediction, lr=args.lr, ema_decay=args.ema_decay, device=args.device,
                          checkpoint_dir=output, checkpoint_every=500, seed=args.seed, progress=False)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        start, wall_start = clock(), time.perf_counter()
        while trainer.step < args.max_steps and clock() - start < args.budget:
            trainer.fit(data, steps=min(args.max_steps, trainer.step + 50), batch_size=args.batch_size)
        train_seconds, train_wall_seconds = clock() - start, time.perf_counter() - wall_start
        trainer.save(output / "model.pt")
    if args.export:
        export_checkpoint(trainer, args.export)
        print(f"wrote {args.export} ({Path(args.export).stat().st_size / 1e6:.2f} MB)")
    parameters = sum(p.numel() for p in trainer.net.parameters())
    print(f"U-Net: {parameters:,} parameters, {trainer.step} steps (batch {args.batch_size}, loss {trainer.loss_kind}, "
          f"{trainer.prediction}-prediction"
          f"{', learned variance' if trainer.learn_variance else ''}) in {train_seconds:.0f} {args.clock} s "
          f"({train_wall_seconds:.0f} s wall) on {trainer.device}; "
          f"final loss {np.mean(trainer.losses[-100:]):.4f}; classifier test accuracy {accuracy:.3f}")
    variances = (["learned"] if trainer.learn_variance else []) + ["beta_tilde", "beta"]
    bounds = {}
    if args.vlb_samples:
        held_out_8bit = quantize(held_out_images[:args.vlb_samples], 8).to(trainer.device, trainer.dtype)
        for variance in variances:
            start = time.perf_counter()
            bits = skd.vlb_bits_per_dim(trainer.sde, trainer.ema, held_out_8bit, prediction=trainer.prediction,
                                        variance=variance, clip_denoised=args.clip_denoised,
                                        generator=torch.Generator(trainer.device).manual_seed(args.seed))
            bounds[variance] = {"bits_per_dim": bits.mean().item(),
                                "standard_error": bits.std().item() / math.sqrt(len(bits)),
                                "seconds": time.perf_counter() - start}
            print(f"VLB, variance {variance}{', clipped x0' if args.clip_denoised else ''}: "
                  f"{bounds[variance]['bits_per_dim']:.3f} ± "
                  f"{bounds[variance]['standard_error']:.3f} bits/dim on {len(bits)} held-out 8-bit digits "
                  f"({bounds[variance]['seconds']:.0f} s)")

    noise = trainer.sde.prior_sample((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    rows = {"held-out real": scores(classifier, held_out_images[:args.samples], reference)}
    output.mkdir(parents=True, exist_ok=True)
    for name, steps, grid in samplers:
        start = time.perf_counter()
        solution = skd.sample(trainer.sde, trainer.score_fn(), (args.samples, 1, 8, 8), solver=name, steps=steps,
                              time_grid=grid, seed=args.seed, dtype=trainer.dtype, device=trainer.device)
        seconds = time.perf_counter() - start
        generated = solution.x.detach().float().cpu()
        label = f"{name} {solution.nfe} NFE ({grid})"
        rows[label] = dict(scores(classifier, generated, reference), nfe=solution.nfe, seconds=seconds)
        grid_path = output / f"samples_{name}_{solution.nfe}.png"
        plot_samples(generated[:100], grid_path, title=f"{trainer.step} training steps, {label}")
    for steps in respaced:
        chain = DiscreteChain.from_sde(trainer.sde)
        grid = chain.respace(respaced_timesteps(chain.T, steps)).sampling_grid()
        for variance in variances:
            start = time.perf_counter()
            solution = skd.sample(trainer.sde, trainer.score_fn(), (args.samples, 1, 8, 8), solver="ancestral", ts=grid,
                                  denoise=True, variance=variance, clip_denoised=args.clip_denoised,
                                  seed=args.seed if args.sample_seed is None else args.sample_seed,
                                  dtype=trainer.dtype,
                                  device=trainer.device)
            seconds = time.perf_counter() - start
            generated = solution.x.detach().float().cpu()
            label = f"ancestral {variance}, respaced {steps}"
            rows[label] = dict(scores(classifier, generated, reference), nfe=solution.nfe, seconds=seconds)
            plot_samples(generated[:100], output / f"samples_respaced{steps}_{variance}.png",
                         title=f"{trainer.step} training steps, {label}")
    rows["prior noise"] = scores(classifier, noise, reference)
    print(f"{'':34s} {'conf>0.9':>8s} {'confidence':>10s} {'class entropy':>13s} {'digits score':>12s} "
          f"{'Frechet dist.':>13s} {'seconds':>8s}")
    for name, row in rows.items():
        seconds = f"{row['seconds']:8.1f}" if "seconds" in row else f"{'':8s}"
        print(f"{name:34s} {row['share_confident']:8.3f} {row['confidence']:10.3f} {row['class_entropy']:13.3f} "
              f"{row['digits_score']:12.2f} {row['frechet_distance']:13.2f} {seconds}")
    print(f"sample grids: {output}/samples_*.png")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "steps": trainer.step, "train_seconds": train_seconds,
                                               "train_clock": args.clock, "train_wall_seconds": train_wall_seconds,
                                               "classifier_accuracy": accuracy, "loss": trainer.loss_kind,
                                               "learn_variance": trainer.learn_variance, "vlb": bounds,
                                               "scores": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
