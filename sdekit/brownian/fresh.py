r"""Fresh-noise sources (no replay): :class:`GeneratorNoise` and :class:`PerSampleNoise`."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..problems import time_dtype
from .generator import counter_normal
from .source import Increments, as_times, check_shape, serial


class GeneratorNoise:
    r"""Fresh Gaussian increments from a ``torch.Generator``, for fixed grids (no replay).

    ``increments(ts, levy_area)`` draws, with one ``torch.randn`` call per chunk,
    :math:`dW = \sqrt{|\Delta t|} N` and, if asked, an independent :math:`H = \sqrt{|\Delta t|/12} N'`.
    Querying the same interval twice gives different values: this is not a path.
    """

    def __init__(self, shape: Sequence[int], generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.shape = check_shape(shape)
        self.generator = generator
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else (
            generator.device if generator is not None else torch.device("cpu"))

    def increments(self, ts: torch.Tensor, levy_area: bool = False) -> Increments:
        ts = as_times(ts, self.device).to(time_dtype(self.dtype, self.device))  # distinct times
        dt = (ts[1:] - ts[:-1]).abs().reshape(-1, *([1] * len(self.shape)))
        count = ts.shape[0] - 1
        normals = torch.randn((2 if levy_area else 1, count, *self.shape), generator=self.generator,
                              dtype=self.dtype, device=self.device)
        dW = dt.sqrt().to(self.dtype) * normals[0]
        return dW, (dt / 12.0).sqrt().to(self.dtype) * normals[1] if levy_area else None


class PerSampleNoise:
    r"""Fresh Gaussian increments where sample ``b``'s normals depend only on
    ``(seed, b + sample_offset, step, element)`` (via :func:`counter_normal`).

    A diffusion sampler therefore produces the same sample ``i`` whatever the batch size or the
    batch it sits in (``sample_offset`` places a batch inside a larger run). An internal step
    counter advances by ``k`` with each ``increments`` call of ``k`` intervals, so a solve must
    query each step exactly once, in order. Like :class:`GeneratorNoise` it is **not a path** (no
    replay, no consistency between step sizes): it exists for reproducibility only.

    ``dW = sqrt(|dt|) Z_1`` and, if asked, ``H = sqrt(|dt|/12) Z_2`` (independent), where
    ``(Z_1, Z_2)`` are the two normals of key ``step * 2**32 + sample`` and element ``e`` (the
    index inside the sample). ``shape[0]`` is the batch.
    """

    def __init__(self, shape: Sequence[int], seed: int = 0, sample_offset: int = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.shape = check_shape(shape)
        self.seed = int(seed)
        self.sample_offset = int(sample_offset)
        if self.sample_offset < 0:
            raise ValueError(f"sample_offset must be >= 0, got {self.sample_offset}")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.step = 0
        self._normal_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def reset(self, step: int = 0) -> None:
        """Set the step counter (``reset()`` replays the noise from the first step)."""
        self.step = int(step)

    def increments(self, ts: torch.Tensor, levy_area: bool = False) -> Increments:
        ts = as_times(ts, self.device).to(time_dtype(self.dtype, self.device))  # distinct times
        count = ts.shape[0] - 1
        batch = self.shape[0]
        per_sample = math.prod(self.shape[1:])
        steps = torch.arange(self.step, self.step + count, device=self.device, dtype=torch.int64)
        samples = torch.arange(batch, device=self.device, dtype=torch.int64) + self.sample_offset
        keys = (steps[:, None] << 32) + samples[None, :]  # (k, batch)
        with serial(self.device, batch * per_sample):
            normals = counter_normal(self.seed, keys, per_sample, self._normal_dtype).to(self.dtype)
        self.step += count
        dt = (ts[1:] - ts[:-1]).abs().reshape(-1, *([1] * len(self.shape)))
        dW = dt.sqrt().to(self.dtype) * normals[:, :, 0].reshape(count, *self.shape)
        if not levy_area:
            return dW, None
        return dW, (dt / 12.0).sqrt().to(self.dtype) * normals[:, :, 1].reshape(count, *self.shape)
