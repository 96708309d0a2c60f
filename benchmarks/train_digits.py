"""Train a small U-Net on scikit-learn's 8x8 digits within a CPU time budget, sample it, score the samples.

    python benchmarks/train_digits.py --budget 600 --output runs/digits --json runs/digits.json
    python benchmarks/train_digits.py --checkpoint runs/digits/model.pt   # score a trained model again

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
from sdekit_diffusion.data import digits_with_labels
from sdekit_diffusion.nets import UNet
from sdekit_diffusion.training import Trainer, plot_samples


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
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--output", default="runs/digits", help="folder for checkpoints and the sample grid")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images, labels = digits_with_labels()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    train, held_out = order[:1200], order[1200:]

    classifier = train_classifier(images[train], labels[train])
    with torch.no_grad():
        accuracy = (classifier(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
        reference = classifier.hidden(images[held_out]).numpy().astype(np.float64)

    samplers = [_parse_sampler(entry) for entry in args.solvers.split(",")]
    output = Path(args.output)
    if args.checkpoint:
        trainer, train_seconds = Trainer.load(args.checkpoint, device=args.device), 0.0
    else:
        torch.manual_seed(args.seed)
        net = UNet(1, base=args.base, channel_mults=(1, 2), attention_resolutions=(4,))
        trainer = Trainer(net, skd.VPSDE(), lr=args.lr, ema_decay=args.ema_decay, device=args.device,
                          checkpoint_dir=output, checkpoint_every=500, seed=args.seed, progress=False)
        start = time.perf_counter()
        while trainer.step < args.max_steps and time.perf_counter() - start < args.budget:
            trainer.fit(images[train], steps=min(args.max_steps, trainer.step + 50), batch_size=args.batch_size)
        train_seconds = time.perf_counter() - start
        trainer.save(output / "model.pt")
    parameters = sum(p.numel() for p in trainer.net.parameters())
    print(f"U-Net: {parameters:,} parameters, {trainer.step} steps (batch {args.batch_size}) in {train_seconds:.0f} s "
          f"on {trainer.device}; final loss {np.mean(trainer.losses[-100:]):.4f}; classifier test accuracy {accuracy:.3f}")

    noise = trainer.sde.prior_sample((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    rows = {"held-out real": scores(classifier, images[held_out][:args.samples], reference)}
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
                                               "classifier_accuracy": accuracy, "scores": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
