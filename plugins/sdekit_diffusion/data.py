"""Data sets for training: 2-D toy sets (generated with torch), sklearn's 8x8 digits, user arrays.

Every loader returns a float32 tensor ``(N, *sample_shape)``: ``(N, 2)`` for the toy sets,
``(N, 1, 8, 8)`` in ``[-1, 1]`` for the digits.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

TOY_SETS = ("moons", "swiss_roll", "checkerboard", "gaussians8", "gaussians25")


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(0 if seed is None else seed)


def moons(n: int, *, noise: float = 0.05, seed: int | None = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two interleaving half circles (as sklearn's ``make_moons``), centred and scaled to about unit std."""
    g = _generator(seed, generator)
    upper = torch.rand(n, generator=g) < 0.5
    angle = torch.rand(n, generator=g) * math.pi
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=g)
    return ((points - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])).float()


def swiss_roll(n: int, *, noise: float = 0.25, seed: int | None = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The 2-D Swiss roll ``(t cos t, t sin t)``, ``t ~ 1.5 pi (1 + 2u)``, scaled by 1/7 (about unit std)."""
    g = _generator(seed, generator)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + noise * torch.randn(n, 2, generator=g)
    return (points / 7.0).float()


def checkerboard(n: int, *, squares: int = 4, seed: int | None = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the dark squares of a ``squares x squares`` checkerboard on ``[-2, 2]^2``."""
    g = _generator(seed, generator)
    size = 4.0 / squares
    cells = torch.randint(0, squares * squares // 2, (n,), generator=g)
    row = cells // (squares // 2)
    column = 2 * (cells % (squares // 2)) + row % 2
    offset = torch.rand(n, 2, generator=g) * size
    return torch.stack([column * size - 2 + offset[:, 0], row * size - 2 + offset[:, 1]], 1).float()


def gaussian_mixture(n: int, means: torch.Tensor, std: float, *, seed: int | None = 0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Equal-weight mixture of ``N(means[k], std^2 I)``."""
    g = _generator(seed, generator)
    means = torch.as_tensor(means, dtype=torch.float32)
    k = torch.randint(0, len(means), (n,), generator=g)
    return means[k] + std * torch.randn(n, means.shape[1], generator=g, dtype=torch.float32)


def gaussians8(n: int, *, radius: float = 2.0, std: float = 0.1, seed: int | None = 0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Eight Gaussians on a circle of ``radius``."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return gaussian_mixture(n, means, std, seed=seed, generator=generator)


def gaussians25(n: int, *, std: float = 0.05, seed: int | None = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """25 Gaussians on the grid ``{-2, -1, 0, 1, 2}^2``."""
    grid = torch.arange(-2, 3, dtype=torch.float32)
    means = torch.cartesian_prod(grid, grid)
    return gaussian_mixture(n, means, std, seed=seed, generator=generator)


_TOY = {"moons": moons, "swiss_roll": swiss_roll, "checkerboard": checkerboard,
        "gaussians8": gaussians8, "gaussians25": gaussians25}


def toy(name: str, n: int, *, seed: int | None = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 2-D toy set by name (one of :data:`TOY_SETS`), shape ``(n, 2)``."""
    if name not in _TOY:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {TOY_SETS}")
    return _TOY[name](n, seed=seed, generator=generator)


def digits() -> torch.Tensor:
    """scikit-learn's 1797 handwritten 8x8 digits as ``(1797, 1, 8, 8)`` float32 in ``[-1, 1]``
    (pixel values 0..16 mapped linearly). Needs scikit-learn (``ImportError`` with the install command)."""
    images, _ = digits_with_labels()
    return images


def digits_with_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits (see :func:`digits`) and their labels ``(1797,)`` int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the 8x8 digits ship with scikit-learn: pip install scikit-learn "
                          "(or the sdekit extra that includes it)") from None
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32)).reshape(-1, 1, 8, 8)
    return images / 8.0 - 1.0, torch.from_numpy(bunch.target.astype(np.int64))


def load_array(path: str | os.PathLike) -> torch.Tensor:
    """A ``.npy`` file of shape ``(N, *sample_shape)`` as float32; ``FileNotFoundError`` naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path.resolve()}")
    array = np.load(path, allow_pickle=False)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path} holds dtype {array.dtype}; expected numbers")
    return torch.from_numpy(np.ascontiguousarray(array)).float()


def load_data(source, n: int = 10000, *, seed: int = 0) -> torch.Tensor:
    """Resolve ``source``: a tensor (returned as float), a toy set name (``n`` samples), ``"digits"``, or a
    path to a ``.npy`` file."""
    if isinstance(source, torch.Tensor):
        return source.float()
    if isinstance(source, np.ndarray):
        return torch.from_numpy(source).float()
    name = str(source)
    if name in _TOY:
        return toy(name, n, seed=seed)
    if name == "digits":
        return digits()
    if name.endswith(".npy") or os.sep in name or Path(name).suffix:
        return load_array(name)
    raise ValueError(f"unknown data {name!r}: give a toy set {TOY_SETS}, 'digits' or a path to a .npy file")
