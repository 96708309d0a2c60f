"""Data-parallel training and sharded sampling with ``torch.distributed`` (run under ``torchrun``).

Training: :class:`DistributedTrainer` is a :class:`~sdekit_diffusion.training.Trainer` whose processes
start from rank 0's weights, draw batches from disjoint shards of the data (indices ``rank, rank + W,
...``) with rank-dependent noise, average their gradients with one all-reduce per step (a flat buffer;
equivalent to ``DistributedDataParallel`` for these small models, without its wrapping of ``net``), and
average the reported loss. Only rank 0 writes checkpoints and plots. The effective batch is
``world_size * batch_size``. Backend: NCCL on CUDA, Gloo on CPU.

With Improved DDPM's importance sampling of timesteps (``loss="vlb"``/``"hybrid"``,
``importance_sampling=True``) every rank records the terms of every rank's batch (one all-gather per
step), so their samplers stay identical.

Sampling: :func:`seeded_sample` is :func:`sdekit_diffusion.sample` with ``sample_offset``: sample ``i``
(its prior draw and every Brownian increment) depends on ``(seed, i)`` only, not on which process
computes it or on the batch it is in; :func:`sample_sharded` splits ``0..n-1`` into contiguous blocks,
one per rank, and all-gathers them. The result equals single-process ``seeded_sample`` up to
floating-point reassociation in batched matrix products.

Launch, e.g. ``torchrun --nproc_per_node=2 train.py``, with ``train.py`` building a
``DistributedTrainer(net, sde, ...)`` and calling ``fit``; call :func:`shutdown` at the end.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .losses import LossSecondMomentSampler
from .sampling import sample
from .training import Trainer


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(backend: str | None = None) -> Context:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Without those variables: a single process, no group.

    ``backend`` defaults to NCCL when CUDA is available (and selects ``cuda:LOCAL_RANK``), else Gloo.
    """
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Context()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank)


def shutdown() -> None:
    """Leave the process group (if any), after every rank got here: a rank that destroys its group
    while another still finishes a collective makes Gloo abort the process at exit ("terminate called
    without an active exception", seen in 2 of 10 two-rank runs without the barrier, 0 of 10 with it)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class DistributedTrainer(Trainer):
    """A :class:`Trainer` for one process of a data-parallel job (module docstring).

    Takes the :class:`Trainer` arguments; ``device="auto"`` means ``cuda:LOCAL_RANK`` when CUDA is
    available. The process group is joined from the environment on construction.
    """

    def __init__(self, net, sde, *, device="auto", backend: str | None = None, **options):
        self.context = init_from_env(backend)
        if device == "auto":
            device = f"cuda:{self.context.local_rank}" if torch.cuda.is_available() else "cpu"
        super().__init__(net, sde, device=device, **options)
        self.rank, self.world_size = self.context.rank, self.context.world_size
        self._seed_generators()
        sampler = self.objective.importance_sampler
        if sampler is not None and self.context.distributed:
            self.objective.importance_sampler = GatheredLossSecondMomentSampler(
                sampler.T, sampler.history_size, sampler.uniform, device=self.device)

    def load_state(self, checkpoint: dict) -> None:
        """Restore a checkpoint (written by rank 0), then give each rank its own generators again, seeded
        from ``(seed, rank, step)``: a resumed data-parallel run is not bitwise the uninterrupted one."""
        super().load_state(checkpoint)
        if self.context.distributed:
            offset = self.seed + 7919 * self.rank + 104729 * self.step
            self.batch_generator = torch.Generator().manual_seed(offset)
            self.noise_generator = torch.Generator(device=self.device).manual_seed(offset + 1)

    def _average_loss(self, loss: torch.Tensor) -> torch.Tensor:
        if not self.context.distributed:
            return loss
        loss = loss.clone()
        dist.all_reduce(loss)
        return loss / self.world_size

    def _synchronize_start(self) -> None:
        if not self.context.distributed:
            return
        with torch.no_grad():
            for tensor in [*self.net.parameters(), *self.net.buffers(), *self.ema.parameters(), *self.ema.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def _synchronize_gradients(self) -> None:
        if not self.context.distributed:
            return
        parameters = [p for p in self.net.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for parameter in parameters:
            count = parameter.numel()
            parameter.grad = flat[offset:offset + count].view_as(parameter).clone()
            offset += count

    def save_checkpoint(self):
        path = super().save_checkpoint()
        if self.context.distributed:
            dist.barrier()
        return path


class GatheredLossSecondMomentSampler(LossSecondMomentSampler):
    """:class:`~sdekit_diffusion.losses.LossSecondMomentSampler` whose :meth:`update` records the terms of
    every rank's batch, in rank order (one all-gather), so that all ranks keep the same history."""

    def update(self, n: torch.Tensor, losses: torch.Tensor) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            steps = [torch.empty_like(n) for _ in range(world)]
            values = [torch.empty_like(losses.detach()) for _ in range(world)]
            dist.all_gather(steps, n.contiguous())
            dist.all_gather(values, losses.detach().contiguous())
            n, losses = torch.cat(steps), torch.cat(values)
        super().update(n, losses)


def _runs(indices: list[int]) -> list[list[int]]:
    """``indices`` cut into maximal runs of consecutive integers, in order."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def seeded_sample(sde, score_fn, indices, sample_shape: tuple[int, ...], *, seed: int = 0, steps: int = 500,
                  device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Samples ``indices`` (a sequence of ints) by Euler–Maruyama on the reverse SDE, from ``t_max`` to
    ``t_min`` in ``steps`` equal steps: ``skd.sample(..., solver="euler_maruyama", seed=seed,
    sample_offset=first)`` on each run of consecutive indices, so that sample ``i`` is the ``i``-th
    sample of one large run whatever the batch. Returns ``(len(indices), *sample_shape)``.
    """
    dtype = dtype or torch.get_default_dtype()
    indices = [int(i) for i in indices]
    sample_shape = tuple(sample_shape)
    if not indices:
        return torch.empty((0, *sample_shape), dtype=dtype, device=device)
    with torch.no_grad():
        blocks = [sample(sde, score_fn, (len(run), *sample_shape), solver="euler_maruyama", steps=steps,
                         seed=seed, sample_offset=run[0], dtype=dtype, device=device).x
                  for run in _runs(indices)]
    return torch.cat(blocks)


def sample_sharded(sde, score_fn, n: int, sample_shape: tuple[int, ...], *, seed: int = 0, steps: int = 500,
                   device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """All ``n`` samples of :func:`seeded_sample`, computed in contiguous blocks (one per rank) and gathered
    on every rank; in a single process it is ``seeded_sample(..., range(n), ...)``."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return seeded_sample(sde, score_fn, range(n), sample_shape, seed=seed, steps=steps, device=device, dtype=dtype)
    rank, block = dist.get_rank(), math.ceil(n / world)
    mine = range(rank * block, min(n, (rank + 1) * block))
    local = seeded_sample(sde, score_fn, mine, sample_shape, seed=seed, steps=steps, device=device, dtype=dtype)
    padded = torch.zeros((block, *sample_shape), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat(gathered)[:n]
