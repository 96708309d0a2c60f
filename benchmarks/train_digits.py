"""Train a small U-Net on scikit-learn's 8x8 digits within a CPU time budget, sample it, score the samples.

    PYTHONPATH=.:plugins python benchmarks/train_digits.py --budget 600 --output runs/digits

Scores come from an MLP classifier trained on the real training digits (its test accuracy is reported):
the mean top-class confidence on samples, the entropy of the predicted-class histogram (log 10 = 2.303
for perfectly balanced classes), a "digits score" exp(E_x KL(p(y|x) || p(y))) (the Inception score of
Salimans et al. 2016 with this classifier; at most 10), and the Fréchet distance between the classifier's
hidden features of samples and of held-out real digits (FID of Heusel et al. 2017, in this feature space).
The same scores for held-out real digits and for pure prior noise bracket the result. Prints a table,
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

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "plugins")]

import sdekit_diffusion as skd  # noqa: E402
from sdekit_diffusion.data import digits_with_labels  # noqa: E402
from sdekit_diffusion.nets import UNet  # noqa: E402
from sdekit_diffusion.sampling import sample  # noqa: E402
from sdekit_diffusion.training import Trainer, plot_samples  # noqa: E402


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
    return {"confidence": probabilities.max(1).values.mean().item(),
            "class_entropy": -(marginal * marginal.clamp_min(1e-12).log()).sum().item(),
            "digits_score": math.exp(kl.mean().item()),
            "frechet_distance": frechet_distance(features, reference_features)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mean_a, mean_b = a.mean(0), b.mean(0)
    ridge = 1e-6 * np.eye(a.shape[1])  # dead ReLU features make the covariances singular
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600, help="training wall-clock budget in seconds (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--base", type=int, default=32, help="U-Net base channels")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--solver", default="euler_maruyama")
    parser.add_argument("--sample-steps", type=int, default=200)
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

    torch.manual_seed(args.seed)
    net = UNet(1, base=args.base, channel_mults=(1, 2), attention_resolutions=(4,))
    output = Path(args.output)
    trainer = Trainer(net, skd.VPSDE(), lr=args.lr, ema_decay=args.ema_decay, device=args.device,
                      checkpoint_dir=output, checkpoint_every=500, seed=args.seed, progress=False)
    start = time.perf_counter()
    while trainer.step < args.max_steps and time.perf_counter() - start < args.budget:
        trainer.fit(images[train], steps=min(args.max_steps, trainer.step + 50), batch_size=args.batch_size)
    train_seconds = time.perf_counter() - start
    trainer.save(output / "model.pt")

    start = time.perf_counter()
    solution = sample(trainer.sde, trainer.score_fn(), (args.samples, 1, 8, 8), solver=args.solver,
                      steps=args.sample_steps, seed=args.seed, dtype=trainer.dtype, device=trainer.device)
    sample_seconds = time.perf_counter() - start
    generated = solution.x.detach().float().cpu()
    plot_samples(generated[:100], output / "samples.png", title=f"{trainer.step} steps, {args.solver} {solution.nfe} NFE")
    noise = trainer.sde.prior_sample((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(1))

    rows = {"held-out real": scores(classifier, images[held_out][:args.samples], reference),
            "samples": scores(classifier, generated, reference),
            "prior noise": scores(classifier, noise, reference)}
    print(f"U-Net base {args.base}: {sum(p.numel() for p in net.parameters()):,} parameters, {trainer.step} steps "
          f"(batch {args.batch_size}) in {train_seconds:.0f} s on {trainer.device}; final loss "
          f"{np.mean(trainer.losses[-100:]):.4f}; sampling {args.samples} with {args.solver} ({solution.nfe} NFE) "
          f"in {sample_seconds:.1f} s; classifier test accuracy {accuracy:.3f}")
    print(f"{'':15s} {'confidence':>10s} {'class entropy':>13s} {'digits score':>12s} {'Frechet dist.':>13s}")
    for name, row in rows.items():
        print(f"{name:15s} {row['confidence']:10.3f} {row['class_entropy']:13.3f} {row['digits_score']:12.2f} "
              f"{row['frechet_distance']:13.2f}")
    print(f"sample grid: {output / 'samples.png'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "steps": trainer.step, "train_seconds": train_seconds,
                                               "sample_seconds": sample_seconds, "nfe": solution.nfe,
                                               "classifier_accuracy": accuracy, "scores": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
