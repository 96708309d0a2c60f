"""Training data: the check of what ``Trainer.fit`` is given, and random batches drawn from it."""
from __future__ import annotations

import torch
from torch import nn

from ..nets import ScoreNet


def item_tensor(item) -> torch.Tensor:
    """A dataset item as a tensor (``(sample, label)`` items keep the sample)."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    return torch.as_tensor(item)


class Batches:
    """Random batches (with replacement) from a tensor or a ``Dataset``, drawn from ``generator``.

    ``shard = (rank, world_size)`` restricts the draws to indices ``rank, rank + world_size, ...``.
    """

    def __init__(self, data, device: torch.device, dtype: torch.dtype, shard: tuple[int, int] = (0, 1)):
        self.tensor = data.to(device, dtype) if isinstance(data, torch.Tensor) else None
        self.dataset = None if isinstance(data, torch.Tensor) else data
        self.device, self.dtype = device, dtype
        rank, world = shard
        self.indices = torch.arange(rank, len(data), world)
        if len(self.indices) == 0:
            raise ValueError(f"rank {rank} of {world} gets no data from a data set of {len(data)} samples")

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        chosen = self.indices[torch.randint(len(self.indices), (batch_size,), generator=generator)]
        if self.tensor is not None:
            return self.tensor[chosen.to(self.device)]
        return torch.stack([item_tensor(self.dataset[int(i)]) for i in chosen]).to(self.device, self.dtype)


def check_data(data, net: nn.Module) -> tuple[int, ...]:
    """Validate ``data`` (a tensor ``(N, *shape)`` or a Dataset of tensors) against ``net``; returns the
    sample shape. Raises ``ValueError`` with the fix on a wrong type, dtype, shape or non-finite values."""
    if isinstance(data, torch.Tensor):
        count = len(data) if data.ndim else 0
        if data.ndim < 2:
            raise ValueError(f"data must have shape (N, *sample_shape) with N samples, got shape {tuple(data.shape)}; "
                             "for N scalars use data[:, None]")
        if not torch.is_floating_point(data):
            raise ValueError(f"data must be floating point, got dtype {data.dtype}; convert with data.float()")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data contains NaN or infinite values")
        shape = tuple(data.shape[1:])
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        count = len(data)
        if count == 0:
            raise ValueError("the dataset is empty")
        sample = item_tensor(data[0])
        if not torch.is_floating_point(sample):
            raise ValueError(f"dataset items must be floating-point tensors, got dtype {sample.dtype}")
        shape = tuple(sample.shape)
    else:
        raise ValueError(f"data must be a torch.Tensor of samples or a sized torch Dataset, got {type(data).__name__}"
                         + ("; convert a NumPy array with torch.from_numpy(array).float()"
                            if type(data).__module__ == "numpy" else ""))
    if count == 0:
        raise ValueError("data holds no samples")
    if isinstance(net, ScoreNet):
        net.check_sample_shape(shape)
    return shape
