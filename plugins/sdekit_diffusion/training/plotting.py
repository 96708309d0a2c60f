"""Sample plots during and after training: Euler–Maruyama samples of a trainer's model, scatter plots
of 2-D samples, image grids, and the :class:`Trainer` callback that writes them. Plots need matplotlib
(the ``plots`` extra).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

import sdekit


def reverse_sde_sample(sde, score_fn, n: int, sample_shape: tuple[int, ...], *, steps: int = 500,
                       generator: torch.Generator | None = None, device=None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    """``n`` samples by Euler–Maruyama on the reverse SDE from ``sde.t_max`` to ``sde.t_min``."""
    x_T = sde.prior_sample((n, *sample_shape), generator=generator, dtype=dtype, device=device)
    with torch.no_grad():
        return sdekit.solve(sde.reverse(score_fn), x_T, sde.t_max, sde.t_min, solver="euler_maruyama",
                            steps=steps, generator=generator).x


def plot_samples(samples: torch.Tensor, path: str | os.PathLike, *, title: str | None = None,
                 reference: torch.Tensor | None = None) -> None:
    """A scatter plot of 2-D samples ``(N, 2)`` or a grid of images ``(N, C, H, W)`` in [-1, 1], as PNG.
    Needs matplotlib (the ``plots`` extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    samples = samples.detach().float().cpu()
    if samples.ndim == 2 and samples.shape[1] == 2:
        figure, axes = plt.subplots(figsize=(5, 5))
        if reference is not None:
            reference = reference.detach().float().cpu()
            axes.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, color="gray", label="data")
        axes.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.6, label="samples")
        axes.set_aspect("equal")
        if reference is not None:
            axes.legend(loc="upper right")
    elif samples.ndim == 4 and samples.shape[1] in (1, 3):
        count = samples.shape[0]
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        channels, height, width = samples.shape[1:]
        grid = torch.ones(channels, rows * (height + 1) + 1, columns * (width + 1) + 1)
        images = ((samples.clamp(-1, 1) + 1) / 2)
        for index in range(count):
            r, c = divmod(index, columns)
            grid[:, 1 + r * (height + 1):1 + r * (height + 1) + height,
                 1 + c * (width + 1):1 + c * (width + 1) + width] = images[index]
        figure, axes = plt.subplots(figsize=(min(12, 0.5 + 0.35 * columns * max(1, width / 8)),) * 2)
        axes.imshow(grid.permute(1, 2, 0).squeeze(-1), cmap="gray" if channels == 1 else None, vmin=0, vmax=1,
                    interpolation="nearest")
        axes.axis("off")
    else:
        raise ValueError(f"can plot samples of shape (N, 2) or (N, C, H, W) with C in (1, 3), got {tuple(samples.shape)}")
    if title:
        axes.set_title(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def sample_plot_callback(directory: str | os.PathLike, sample_shape: tuple[int, ...], *, n: int = 512,
                         steps: int = 200, seed: int = 0, reference: torch.Tensor | None = None):
    """A :class:`Trainer` callback writing ``directory/samples_XXXXXXXX.png`` (scatter or image grid)."""
    def callback(trainer) -> None:
        generator = torch.Generator(device=trainer.device).manual_seed(seed)
        samples = reverse_sde_sample(trainer.sde, trainer.score_fn(), n, tuple(sample_shape), steps=steps,
                                     generator=generator, device=trainer.device, dtype=trainer.dtype)
        plot_samples(samples, Path(directory) / f"samples_{trainer.step:08d}.png", title=f"step {trainer.step}",
                     reference=reference)
    return callback
