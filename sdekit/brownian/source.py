"""The noise-source protocol and the helpers every source shares (argument checks, the CPU
threading policy, the accumulation dtype)."""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

__all__ = ["BrownianSource", "Increments"]  # the rest: helpers for the sources of this package

Increments = tuple[torch.Tensor, "torch.Tensor | None"]


class BrownianSource(Protocol):
    """The protocol every noise source implements (see :mod:`sdekit.brownian`)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def increments(self, ts: torch.Tensor, levy_area: bool = False) -> Increments:
        ...


def check_shape(shape: Sequence[int] | int) -> tuple[int, ...]:
    """A non-empty tuple of positive ints, or a ValueError naming the problem."""
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}") from None
    if len(shape) == 0 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                  for n in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    return shape


def as_times(ts, device: torch.device) -> torch.Tensor:
    """``ts`` as a 1-D tensor of at least two times on ``device``."""
    ts = torch.as_tensor(ts, device=device)
    if ts.dim() != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    return ts


class SerialOnCPU:
    """Run PyTorch's intra-op work on one thread (CPU only, and only for small work).

    The sources cut their work into pieces of a few 10**4 elements, below PyTorch's grain for
    intra-op parallelism (at::internal::GRAIN_SIZE = 32768), yet the VML-backed ops (log, cos, sin,
    sqrt) split work across threads from 2048 elements and batched matmul uses MKL's threads: at
    these sizes the thread hand-off costs more than it gives (measured 10x slower with 2 threads on
    a loaded 2-core machine). The thread count is per calling thread in the OpenMP backend
    (setting it costs ~0.1 us) and is restored on exit.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.threads = 0

    def __enter__(self):
        if self.enabled:
            self.threads = torch.get_num_threads()
            if self.threads > 1:
                torch.set_num_threads(1)
        return self

    def __exit__(self, *exc_info):
        if self.enabled and self.threads > 1:
            torch.set_num_threads(self.threads)
        return False


# Elements per time point up to which CPU work runs on one thread (half of PyTorch's intra-op
# grain, at::internal::GRAIN_SIZE = 32768).
SMALL_STATE = 16383


def serial(device: torch.device, n_elements: int) -> SerialOnCPU:
    """One thread for CPU work on states of at most ``SMALL_STATE`` elements."""
    return SerialOnCPU(device.type == "cpu" and n_elements <= SMALL_STATE)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64, except on MPS (no float64 there)."""
    return torch.float32 if device.type == "mps" else torch.float64
