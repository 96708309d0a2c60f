"""Training a score network: :class:`Trainer`, the loop.

One :meth:`Trainer.fit` step draws a batch, evaluates the objective (:mod:`.objective`; bf16
autocast on CUDA only), back-propagates, clips the gradient norm, takes an Adam step (learning rate
warmed up linearly over ``warmup`` steps, as in Ho et al. 2020 and score_sde) and updates the
exponential moving average of the weights (:mod:`.ema`). :meth:`Trainer.score_fn` serves the EMA
weights, which is what samples should use.

Checkpoints (:mod:`.checkpoint`) hold the model, the EMA, the optimizer and scheduler, the step,
every RNG state, the loss history, the objective's state and the configuration needed to rebuild
the network and the SDE, and what the run was trained with (SDE, objective, a digest of the data).
``fit`` resumes from the newest readable checkpoint in ``checkpoint_dir`` (falling back past an
unreadable one, with a warning): the step count and the loss curve continue where they stopped. A
checkpoint from a different run (another SDE, prediction, weighting, objective or data) is refused
with the differences named, unless the trainer was built with ``fresh=True``.
"""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import sdekit
from sdekit.paths import check_output_path
from sdekit.validation import device as check_device

from ..losses import HYBRID_WEIGHT
from ..nets import NETWORKS, UNet, build_net
from ..score import as_score
from ..variance import LearnedVarianceScore
from ..vlb import declared_learn_variance
from . import checkpoint as files
from .batches import Batches, check_data
from .ema import averaged_copy, decay_at, update_average
from .objective import Objective
from .options import check_flag, check_number


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; any other device is checked
    (:func:`sdekit.validation.device`: :class:`ValueError` for one this machine does not have)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device)


class Trainer:
    """Train ``net`` (called ``net(x, model_time)``, predicting ``prediction``) on ``sde``.

    Args:
        net: an ``nn.Module``; :class:`~sdekit_diffusion.nets.MLP` and :class:`~sdekit_diffusion.nets.UNet`
            are rebuilt from checkpoints by themselves, other modules need ``net=`` in :meth:`load`.
        sde: a :class:`DiffusionSDE`.
        prediction: ``"eps" | "x0" | "v" | "score"``; weighting: ``"sigma2" | "likelihood"``;
            importance_sampling: see :func:`dsm_loss` (``loss="dsm"``) and
            :class:`~sdekit_diffusion.losses.LossSecondMomentSampler` (``"hybrid"``, ``"vlb"``).
        loss: ``"dsm"`` (default) ``| "simple" | "hybrid" | "vlb"`` (:mod:`.objective`).
        learn_variance: whether ``net`` outputs the variance channels (default: what a
            network declares in its ``learn_variance`` attribute, as a :class:`ScoreNet` does, else False). vlb_weight: :math:`\\lambda` of ``"hybrid"`` (0.001).
            chain_steps: timesteps of a continuous SDE's chain (default 1000). bits: bit depth of the
            data for the decoder term (8; ``None``: continuous data).
        lr: Adam learning rate after ``warmup`` steps of linear warm-up; grad_clip: max gradient norm
            (None: no clipping). Defaults 2e-4, 5000 warm-up, clip 1.0 are score_sde's (CIFAR-10);
            here warm-up defaults to 100 steps, suited to small problems.
        ema_decay: EMA decay in ``[0, 1)`` (:mod:`.ema`).
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ...
        checkpoint_dir: where ``fit`` writes ``step_XXXXXXXX.pt`` every ``checkpoint_every`` steps (and at the
            end), keeping the newest ``keep_checkpoints`` (0: all), and from which it resumes.
        fresh: start over even if ``checkpoint_dir`` holds another run: its ``step_*.pt`` are deleted when
            ``fit`` starts. Without it, resuming from a run with another SDE, prediction, weighting,
            objective or data raises ``ValueError`` naming the differences.
        callback: ``callback(trainer)`` called every ``callback_every`` steps (e.g. :func:`sample_plot_callback`).
        seed: seeds the batch and noise generators (offset by the rank in distributed training).
        sync_every: read the losses back to the host (and check them) every this many steps; default 1
            on the CPU (a non-finite loss then stops before its step changes the weights) and 10 on
            other devices (no host-device sync per step; a non-finite loss stops at the next read with
            the weights possibly spoiled, never a checkpoint: losses are read before every save).

    Every numeric option is range-checked here, before any work (``ValueError`` naming the option).
    """

    def __init__(self, net: nn.Module, sde, *, prediction: str = "eps", weighting: str = "sigma2",
                 importance_sampling: bool = False, loss: str = "dsm", learn_variance: bool | None = None,
                 vlb_weight: float = HYBRID_WEIGHT, chain_steps: int | None = None, bits: int | None = 8,
                 lr: float = 2e-4, ema_decay: float = 0.999, warmup: int = 100, grad_clip: float | None = 1.0,
                 device: str | torch.device = "auto", checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_every: int = 1000, keep_checkpoints: int = 2,
                 callback: Callable[["Trainer"], None] | None = None, callback_every: int = 1000,
                 seed: int = 0, progress: bool = True, sync_every: int | None = None, fresh: bool = False):
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module called net(x, t), got {type(net).__name__}")
        self.lr = check_number("lr", lr, minimum=0, exclusive=True)
        self.ema_decay = check_number("ema_decay", ema_decay, minimum=0, maximum=1, exclusive_maximum=True)
        self.warmup = check_number("warmup", warmup, integer=True, minimum=0)
        self.grad_clip = check_number("grad_clip", grad_clip, minimum=0, exclusive=True, optional=True)
        self.checkpoint_every = check_number("checkpoint_every", checkpoint_every, integer=True, minimum=1)
        self.keep_checkpoints = check_number("keep_checkpoints", keep_checkpoints, integer=True, minimum=0)
        self.callback_every = check_number("callback_every", callback_every, integer=True, minimum=1)
        self.seed = check_number("seed", seed, integer=True, minimum=0)
        self.progress, self.fresh = check_flag("progress", progress), check_flag("fresh", fresh)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a callable callback(trainer), got {type(callback).__name__}")
        declared = declared_learn_variance(net, None)
        if learn_variance is not None and hasattr(net, "learn_variance") and bool(learn_variance) != declared:
            raise ValueError(f"learn_variance={learn_variance} but the network was built with "
                             f"learn_variance={declared}; build it with the variance channels you want")
        self.learn_variance = declared if learn_variance is None else check_flag("learn_variance", learn_variance)
        self.device = resolve_device(device)
        self.sync_every = check_number("sync_every", sync_every, integer=True, minimum=1, optional=True)
        if self.sync_every is None:
            self.sync_every = 1 if self.device.type == "cpu" else 10
        self.objective = Objective(sde, loss=loss, prediction=prediction, weighting=weighting,
                                   importance_sampling=importance_sampling, learn_variance=self.learn_variance,
                                   vlb_weight=vlb_weight, chain_steps=chain_steps, bits=bits, device=self.device)
        self.prediction, self.weighting, self.importance_sampling = prediction, weighting, importance_sampling
        self.net, self.sde = net.to(self.device), sde
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.callback = callback
        self.ema = averaged_copy(self.net)
        self._optimizer = self._scheduler = None   # built on first use (the optimizer property)
        self._pending_optimizer_state = None       # (optimizer, scheduler) states of a loaded checkpoint
        self.step = 0
        self.losses: list[float] = []
        self._pending_losses: list[torch.Tensor] = []  # on the device, not yet read back
        self.rank, self.world_size = 0, 1
        self.sample_shape: tuple[int, ...] | None = None  # of the data last given to fit
        self._data_fingerprint: dict | None = None
        self._fresh_pending = self.fresh
        self._seed_generators()

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype of the network's parameters (data are cast to it)."""
        return next((p.dtype for p in self.net.parameters() if p.is_floating_point()), torch.get_default_dtype())

    @property
    def loss_kind(self) -> str:
        """The objective: ``"dsm"``, ``"simple"``, ``"hybrid"`` or ``"vlb"``."""
        return self.objective.loss

    # -- hooks for data-parallel training (sdekit_diffusion.distributed) ---------------------------
    def _seed_generators(self) -> None:
        self.batch_generator = torch.Generator().manual_seed(self.seed + 7919 * self.rank)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(self.seed + 7919 * self.rank + 1)

    def _synchronize_gradients(self) -> None:
        """Average gradients over processes (no-op in a single process)."""

    def _average_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss averaged over processes (identity in a single process); every process sees the same
        value, so all of them stop together on a non-finite loss."""
        return loss

    def _synchronize_start(self) -> None:
        """Make every process start from the same weights (no-op in a single process)."""

    @property
    def is_writer(self) -> bool:
        """Whether this process writes checkpoints and plots (rank 0)."""
        return self.rank == 0

    # -- training ----------------------------------------------------------------------------------
    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """The training loss on a batch ``x0`` (no backward)."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.objective(self.net, x0, self.noise_generator)

    def fit(self, data, steps: int, batch_size: int = 128) -> list[float]:
        """Train until the step counter reaches ``steps`` (a total: a resumed run continues to it).

        ``data``: a floating-point tensor ``(N, *sample_shape)`` or a Dataset of such samples (a
        ``(sample, label)`` item keeps the sample; ``bits``-bit values for ``loss="hybrid"``/``"vlb"``).
        Resumes from the newest readable checkpoint in ``checkpoint_dir`` if it is ahead of this
        trainer. Returns the loss history (one per step).

        Raises ``ValueError`` for bad data or a checkpoint of another run, and
        :class:`sdekit.NonFiniteError` when the loss is not finite (weights untouched by that step; the
        last good checkpoint stays the newest on disk).
        """
        steps = check_number("steps", steps, integer=True, minimum=0)
        batch_size = check_number("batch_size", batch_size, integer=True, minimum=1)
        self.sample_shape = check_data(data, self.net)
        self.objective.check_data(data)
        self._data_fingerprint = files.data_fingerprint(data, self.sample_shape)
        if self.checkpoint_dir is not None:
            check_output_path(self.checkpoint_dir, directory=True, what="checkpoint_dir")   # before any work
            self._resume()
        self._synchronize_start()
        batches = Batches(data, self.device, self.dtype, (self.rank, self.world_size))
        self.net.train()
        bar = None
        if self.progress and self.is_writer and steps > self.step:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True)
        try:
            while self.step < steps:
                self._train_step(batches.draw(batch_size, self.batch_generator))
                if self.step % self.sync_every == 0:
                    self._read_losses()
                if bar is not None:
                    bar.update(1)
                    if self.losses:
                        bar.set_postfix(loss=f"{self.losses[-1]:.4g}", refresh=False)
                if self.checkpoint_dir is not None and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.callback is not None and self.step % self.callback_every == 0 and self.is_writer:
                    self._read_losses()
                    self.callback(self)
            self._read_losses()
        finally:
            if bar is not None:
                bar.close()
        if self.checkpoint_dir is not None and files.latest_checkpoint(self.checkpoint_dir) != self._checkpoint_path():
            self.save_checkpoint()
        return self.losses

    def _resume(self) -> None:
        """Clean up after a killed save, honour ``fresh``, and load the newest readable checkpoint of
        ``checkpoint_dir`` that is ahead of this trainer, after checking it belongs to this run."""
        if self.is_writer:
            files.remove_stale_temporaries(self.checkpoint_dir)
        if self._fresh_pending:   # every rank starts over; the writer deletes the other run's checkpoints
            self._fresh_pending = False
            if self.is_writer:
                for _, path in files.checkpoint_files(self.checkpoint_dir):
                    path.unlink(missing_ok=True)
            return
        path, checkpoint = files.newest_readable(self.checkpoint_dir, newer_than=self.step,
                                                 quarantine=self.is_writer)
        if checkpoint is None:
            return
        differences = files.resume_differences(checkpoint, sde=self.sde, options=self.objective.options(),
                                               data=self._data_fingerprint)
        if differences:
            raise ValueError(
                f"cannot resume from {path}: that run was trained differently — {'; '.join(differences)}. "
                "Resume with the same settings and data, train into another checkpoint_dir, or start over "
                "with fresh=True (sdekit train --fresh), which deletes that run's step_*.pt")
        self.load_state(checkpoint)

    def _read_losses(self) -> None:
        """Move the pending device losses to ``self.losses`` (one host sync); raise on a non-finite one."""
        if not self._pending_losses:
            return
        values = torch.stack(self._pending_losses).tolist()
        self._pending_losses.clear()
        first_step = self.step - len(values) + 1 if self.sync_every > 1 else self.step + 1
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                newest = None if self.checkpoint_dir is None else files.latest_checkpoint(self.checkpoint_dir)
                kept = f"; the last good checkpoint is {newest}" if newest else ""
                raise sdekit.NonFiniteError(
                    f"training loss is {value} at step {first_step + offset}{kept}. Lower lr, check the data "
                    f"for outliers, or use weighting='sigma2'")
            self.losses.append(value)

    def _train_step(self, x0: torch.Tensor) -> None:
        loss = self.loss(x0)
        self._pending_losses.append(self._average_loss(loss.detach()))
        if self.sync_every == 1:  # check before the step touches the weights
            self._read_losses()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._synchronize_gradients()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        update_average(self.ema, self.net, decay_at(self.ema_decay, self.step))

    def score_fn(self, ema: bool = True):
        """``score_fn(t, x)`` of the EMA weights (``ema=False``: the live weights); a
        :class:`~sdekit_diffusion.variance.LearnedVarianceScore` when the network learns its variance
        (then ``ancestral`` can sample with ``variance="learned"``)."""
        net = self.ema if ema else self.net
        if self.learn_variance:
            return LearnedVarianceScore(net, self.sde, self.prediction)
        return as_score(net, self.sde, self.prediction)

    # -- checkpoints -------------------------------------------------------------------------------
    def options(self) -> dict:
        """The constructor options a checkpoint records (and :meth:`load` passes back)."""
        return dict(self.objective.options(), learn_variance=self.learn_variance, lr=self.lr,
                    ema_decay=self.ema_decay, warmup=self.warmup, grad_clip=self.grad_clip,
                    checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints,
                    seed=self.seed)

    def state_dict(self) -> dict:
        kind, config = files.net_identity(self.net)
        try:
            sde_bytes = pickle.dumps(self.sde)
        except Exception:  # an SDE built from lambdas: load() then needs sde=
            sde_bytes = None
        rng = {"batch": self.batch_generator.get_state(), "noise": self.noise_generator.get_state(),
               "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        optimizer_state, scheduler_state = self._optimizer_states()
        return {
            "format": files.CHECKPOINT_FORMAT, "step": self.step, "losses": list(self.losses),
            "net_class": kind, "net_config": config, "net": self.net.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": optimizer_state, "scheduler": scheduler_state, "rng": rng,
            "sde": sde_bytes, "sde_repr": repr(self.sde), "sde_fingerprint": files.sde_fingerprint(self.sde),
            "sample_shape": None if self.sample_shape is None else list(self.sample_shape),
            "data": self._data_fingerprint, "objective": self.objective.state_dict(),
            "trainer": self.options(),
        }

    # -- the optimizer, built on first use -----------------------------------------------------------
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Adam on the network's parameters, with the warm-up schedule :attr:`scheduler`, built on first
        use with the state of a loaded checkpoint: building a torch optimizer imports torch._dynamo
        (1.5-3.5 s on a small CPU), which sampling a loaded checkpoint does not need."""
        if self._optimizer is None:
            optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            warm = self.warmup
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (step + 1) / warm) if warm else 1.0)
            if self._pending_optimizer_state is not None:
                optimizer_state, scheduler_state = self._pending_optimizer_state
                optimizer.load_state_dict(optimizer_state)
                scheduler.load_state_dict(scheduler_state)
                self._pending_optimizer_state = None
            self._optimizer, self._scheduler = optimizer, scheduler
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer, self._pending_optimizer_state = optimizer, None

    @property
    def scheduler(self):
        """The learning-rate schedule of :attr:`optimizer` (linear warm-up over ``warmup`` steps)."""
        self.optimizer
        return self._scheduler

    @scheduler.setter
    def scheduler(self, scheduler) -> None:
        self._scheduler = scheduler

    def _optimizer_states(self) -> tuple[dict, dict]:
        """The optimizer's and scheduler's states, without building them for a loaded, unused trainer."""
        if self._optimizer is None and self._pending_optimizer_state is not None:
            return self._pending_optimizer_state
        return self.optimizer.state_dict(), self.scheduler.state_dict()

    def load_state(self, checkpoint: dict) -> None:
        """Restore weights, EMA, optimizer, step, RNG states, loss history and the objective's state from a
        checkpoint dict; ``ValueError`` if it was written for a different network. A UNet checkpoint of
        the earlier shared-attention layout is converted (:meth:`UNet.legacy_parameter_sources`)."""
        files.check_same_net(checkpoint, self.net)
        optimizer_state = checkpoint["optimizer"]
        try:
            if isinstance(self.net, UNet):
                sources = self.net.legacy_parameter_sources(checkpoint["net"])
                if sources is not None:
                    optimizer_state = files.upgrade_optimizer_state(optimizer_state, checkpoint["net"], self.net,
                                                                    sources)
            self.net.load_state_dict(checkpoint["net"])
            self.ema.load_state_dict(checkpoint["ema"])
        except RuntimeError as error:
            raise ValueError(f"the checkpoint's weights do not fit this network: {error}") from None
        self._optimizer = self._scheduler = None   # rebuilt with these states on first use
        self._pending_optimizer_state = (optimizer_state, checkpoint["scheduler"])
        self.step, self.losses = int(checkpoint["step"]), list(checkpoint["losses"])
        if checkpoint.get("sample_shape") is not None:
            self.sample_shape = tuple(checkpoint["sample_shape"])
        self.objective.load_state_dict(checkpoint.get("objective", {}))
        rng = checkpoint["rng"]
        self.batch_generator.set_state(rng["batch"])
        if rng["noise"].numel() == self.noise_generator.get_state().numel():
            self.noise_generator.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _checkpoint_path(self) -> Path:
        return self.checkpoint_dir / f"step_{self.step:08d}.pt"

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint_dir/step_XXXXXXXX.pt`` (rank 0 only) and prune old ones."""
        if self.checkpoint_dir is None:
            raise ValueError("this trainer has no checkpoint_dir; use save(path)")
        self._read_losses()  # a checkpoint only after its losses were checked
        path = self._checkpoint_path()
        if self.is_writer:
            self.save(path)
            files.prune(self.checkpoint_dir, self.keep_checkpoints)
        return path

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint to ``path`` atomically."""
        self._read_losses()
        files.atomic_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, net: nn.Module | None = None, sde=None,
             device: str | torch.device = "auto", **overrides) -> "Trainer":
        """Rebuild a trainer from a checkpoint written by :meth:`save` or ``fit``.

        The network is rebuilt from the stored class and configuration (give ``net=`` for networks that
        are not in :mod:`sdekit_diffusion.nets`; it must match the checkpoint's), the SDE is unpickled
        (give ``sde=`` if it could not be pickled). ``overrides`` change trainer options
        (e.g. ``checkpoint_dir=``).
        """
        device = resolve_device(device)
        checkpoint = files.read_checkpoint(path)
        if net is None:
            if checkpoint["net_class"] not in NETWORKS:
                raise ValueError(f"{path} holds a {checkpoint['net_class']} network, which sdekit_diffusion cannot "
                                 "rebuild; pass net= an instance of it")
            net = build_net(checkpoint["net_class"], checkpoint["net_config"])
            stored = next((v.dtype for v in checkpoint["net"].values() if v.is_floating_point()), None)
            if stored is not None:
                net = net.to(stored)  # rebuild in the dtype it was trained in, whatever the default dtype
        if sde is None:
            if checkpoint["sde"] is None:
                raise ValueError(f"{path} does not hold a picklable SDE ({checkpoint['sde_repr']}); pass sde=")
            sde = pickle.loads(checkpoint["sde"])
        options = {**checkpoint["trainer"], **overrides}
        trainer = cls(net, sde, device=device, **options)
        trainer.load_state(checkpoint)
        return trainer
