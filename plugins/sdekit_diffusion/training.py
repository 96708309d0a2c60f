"""Training a score network: :class:`Trainer`.

One :meth:`Trainer.fit` step draws a batch, evaluates :func:`dsm_loss` (bf16 autocast on CUDA only),
back-propagates, clips the gradient norm, takes an Adam step (learning rate warmed up linearly over
``warmup`` steps, as in Ho et al. 2020 and score_sde) and updates an exponential moving average (EMA)
of the weights. :meth:`Trainer.score_fn` serves the EMA weights, which is what samples should use.

Checkpoints hold the model, the EMA, the optimizer and scheduler, the step, every RNG state, the loss
history and the configuration needed to rebuild the network (:mod:`sdekit_diffusion.nets`) and the
SDE. They are written atomically (a temporary file in the same folder, then ``os.replace``), so a
crash never leaves a half-written checkpoint. ``fit`` resumes from the newest checkpoint in
``checkpoint_dir``: the step count and the loss curve continue where they stopped.

Checkpoints are read with ``torch.load(weights_only=False)`` (they pickle the SDE): load only files
you trust.
"""
from __future__ import annotations

import copy
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import sdekit

from .losses import PREDICTIONS, WEIGHTINGS, dsm_loss
from .nets import NETWORKS, ScoreNet, build_net
from .score import as_score

CHECKPOINT_FORMAT = "sdekit_diffusion.Trainer/1"
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` means CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The ``step_XXXXXXXX.pt`` file with the highest step in ``directory`` (None if there is none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
    return max(found)[1] if found else None


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _describe_net(kind: str, config: dict | None) -> str:
    return f"{kind}({', '.join(f'{k}={v!r}' for k, v in (config or {}).items())})"


def _net_identity(net: nn.Module) -> tuple[str, dict | None]:
    if isinstance(net, ScoreNet):
        return type(net).__name__, dict(net.config)
    return f"{type(net).__module__}.{type(net).__qualname__}", None


class _Batches:
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
        return torch.stack([_item_tensor(self.dataset[int(i)]) for i in chosen]).to(self.device, self.dtype)


def _item_tensor(item) -> torch.Tensor:
    if isinstance(item, (tuple, list)):  # (sample, label) datasets: keep the sample
        item = item[0]
    return torch.as_tensor(item)


def check_data(data, net: nn.Module) -> tuple[int, ...]:
    """Validate ``data`` (a tensor ``(N, *shape)`` or a Dataset of tensors) against ``net``; returns the
    sample shape. Raises ``ValueError`` with the fix on a wrong type, dtype, shape or non-finite values."""
    if isinstance(data, torch.Tensor):
        sample, count = data, len(data) if data.ndim else 0
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
        sample = _item_tensor(data[0])
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


class Trainer:
    """Train ``net`` (called ``net(x, t)``, predicting ``prediction``) on ``sde`` by denoising score matching.

    Args:
        net: an ``nn.Module``; :class:`~sdekit_diffusion.nets.MLP` and :class:`~sdekit_diffusion.nets.UNet`
            are rebuilt from checkpoints by themselves, other modules need ``net=`` in :meth:`load`.
        sde: a :class:`DiffusionSDE`.
        prediction: ``"eps" | "x0" | "v" | "score"``; weighting: ``"sigma2" | "likelihood"``;
            importance_sampling: see :func:`dsm_loss`.
        lr: Adam learning rate after ``warmup`` steps of linear warm-up; grad_clip: max gradient norm
            (None: no clipping). Defaults 2e-4, 5000 warm-up, clip 1.0 are score_sde's (CIFAR-10);
            here warm-up defaults to 100 steps, suited to small problems.
        ema_decay: EMA decay (score_sde 0.9999; the effective decay is ``min(ema_decay, (1+n)/(10+n))`` at
            step ``n`` so that short runs are not dominated by the initial weights).
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ...
        checkpoint_dir: where ``fit`` writes ``step_XXXXXXXX.pt`` every ``checkpoint_every`` steps (and at the
            end), keeping the newest ``keep_checkpoints``, and from which it resumes.
        callback: ``callback(trainer)`` called every ``callback_every`` steps (e.g. :func:`sample_plot_callback`).
        seed: seeds the batch and noise generators (offset by the rank in distributed training).
        sync_every: read the losses back to the host (and check them) every this many steps; default 1
            on the CPU (a non-finite loss then stops before its step changes the weights) and 10 on
            other devices (no host-device sync per step; a non-finite loss stops at the next read with
            the weights possibly spoiled, never a checkpoint: losses are read before every save).
    """

    def __init__(self, net: nn.Module, sde, *, prediction: str = "eps", weighting: str = "sigma2",
                 importance_sampling: bool = False, lr: float = 2e-4, ema_decay: float = 0.999,
                 warmup: int = 100, grad_clip: float | None = 1.0, device: str | torch.device = "auto",
                 checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
                 keep_checkpoints: int = 2, callback: Callable[["Trainer"], None] | None = None,
                 callback_every: int = 1000, seed: int = 0, progress: bool = True, sync_every: int | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not (lr > 0 and 0 <= ema_decay < 1 and warmup >= 0 and checkpoint_every >= 1):
            raise ValueError(f"need lr > 0, 0 <= ema_decay < 1, warmup >= 0, checkpoint_every >= 1; got lr={lr}, "
                             f"ema_decay={ema_decay}, warmup={warmup}, checkpoint_every={checkpoint_every}")
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module called net(x, t), got {type(net).__name__}")
        self.device = resolve_device(device)
        self.sync_every = sync_every if sync_every is not None else (1 if self.device.type == "cpu" else 10)
        if not isinstance(self.sync_every, int) or self.sync_every < 1:
            raise ValueError(f"sync_every must be a positive int, got {sync_every!r}")
        self.net, self.sde = net.to(self.device), sde
        self.prediction, self.weighting, self.importance_sampling = prediction, weighting, importance_sampling
        self.lr, self.ema_decay, self.warmup, self.grad_clip = lr, ema_decay, warmup, grad_clip
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.callback, self.callback_every, self.progress, self.seed = callback, callback_every, progress, seed
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.step = 0
        self.losses: list[float] = []
        self._pending_losses: list[torch.Tensor] = []  # on the device, not yet read back
        self.rank, self.world_size = 0, 1
        self.sample_shape: tuple[int, ...] | None = None  # of the data last given to fit
        self._seed_generators()

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype of the network's parameters (data are cast to it)."""
        return next((p.dtype for p in self.net.parameters() if p.is_floating_point()), torch.get_default_dtype())

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
            return dsm_loss(self.sde, self.net, x0, prediction=self.prediction, weighting=self.weighting,
                            importance_sampling=self.importance_sampling, generator=self.noise_generator)

    def fit(self, data, steps: int, batch_size: int = 128) -> list[float]:
        """Train until the step counter reaches ``steps`` (a total: a resumed run continues to it).

        ``data``: a floating-point tensor ``(N, *sample_shape)`` or a Dataset of such samples (a
        ``(sample, label)`` item keeps the sample). Resumes from the newest checkpoint in
        ``checkpoint_dir`` if it is ahead of this trainer. Returns the loss history (one per step).

        Raises ``ValueError`` for bad data and :class:`sdekit.NonFiniteError` when the loss is not finite
        (weights untouched by that step; the last good checkpoint stays the newest on disk).
        """
        if not isinstance(steps, int) or steps < 0 or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"steps must be an int >= 0 and batch_size an int >= 1, got {steps!r}, {batch_size!r}")
        self.sample_shape = check_data(data, self.net)
        if self.checkpoint_dir is not None:
            newest = latest_checkpoint(self.checkpoint_dir)
            if newest is not None:
                checkpoint = _read_checkpoint(newest)
                if checkpoint["step"] > self.step:
                    self.load_state(checkpoint)
        self._synchronize_start()
        batches = _Batches(data, self.device, self.dtype, (self.rank, self.world_size))
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
        if self.checkpoint_dir is not None and latest_checkpoint(self.checkpoint_dir) != self._checkpoint_path():
            self.save_checkpoint()
        return self.losses

    def _read_losses(self) -> None:
        """Move the pending device losses to ``self.losses`` (one host sync); raise on a non-finite one."""
        if not self._pending_losses:
            return
        values = torch.stack(self._pending_losses).tolist()
        self._pending_losses.clear()
        first_step = self.step - len(values) + 1 if self.sync_every > 1 else self.step + 1
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                newest = None if self.checkpoint_dir is None else latest_checkpoint(self.checkpoint_dir)
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
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in zip(self.ema.parameters(), self.net.parameters()):
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in zip(self.ema.buffers(), self.net.buffers()):
            ema.copy_(live)

    def score_fn(self, ema: bool = True):
        """``score_fn(t, x)`` of the EMA weights (``ema=False``: the live weights)."""
        return as_score(self.ema if ema else self.net, self.sde, self.prediction)

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        kind, config = _net_identity(self.net)
        try:
            sde_bytes = pickle.dumps(self.sde)
        except Exception:  # an SDE built from lambdas: load() then needs sde=
            sde_bytes = None
        rng = {"batch": self.batch_generator.get_state(), "noise": self.noise_generator.get_state(),
               "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT, "step": self.step, "losses": list(self.losses),
            "net_class": kind, "net_config": config, "net": self.net.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng,
            "sde": sde_bytes, "sde_repr": repr(self.sde),
            "sample_shape": None if self.sample_shape is None else list(self.sample_shape),
            "trainer": dict(prediction=self.prediction, weighting=self.weighting,
                            importance_sampling=self.importance_sampling, lr=self.lr, ema_decay=self.ema_decay,
                            warmup=self.warmup, grad_clip=self.grad_clip, checkpoint_every=self.checkpoint_every,
                            keep_checkpoints=self.keep_checkpoints, seed=self.seed),
        }

    def load_state(self, checkpoint: dict) -> None:
        """Restore weights, EMA, optimizer, step, RNG states and loss history from a checkpoint dict;
        ``ValueError`` if it was written for a different network."""
        _check_same_net(checkpoint, self.net)
        try:
            self.net.load_state_dict(checkpoint["net"])
            self.ema.load_state_dict(checkpoint["ema"])
        except RuntimeError as error:
            raise ValueError(f"the checkpoint's weights do not fit this network: {error}") from None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.step, self.losses = int(checkpoint["step"]), list(checkpoint["losses"])
        if checkpoint.get("sample_shape") is not None:
            self.sample_shape = tuple(checkpoint["sample_shape"])
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
            found = sorted(p for p in self.checkpoint_dir.iterdir() if _CHECKPOINT_NAME.match(p.name))
            for old in found[:-self.keep_checkpoints] if self.keep_checkpoints > 0 else []:
                old.unlink()
        return path

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint to ``path`` atomically."""
        self._read_losses()
        atomic_save(self.state_dict(), path)

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
        checkpoint = _read_checkpoint(path)
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


def _read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # on the CPU: RNG states must stay CPU tensors; load_state_dict copies weights to their device
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an sdekit_diffusion Trainer checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


def _check_same_net(checkpoint: dict, net: nn.Module) -> None:
    kind, config = _net_identity(net)
    if (kind, config) != (checkpoint["net_class"], checkpoint["net_config"]):
        raise ValueError(f"the checkpoint was written for {_describe_net(checkpoint['net_class'], checkpoint['net_config'])}"
                         f" but the network is {_describe_net(kind, config)}; build the same network, or "
                         "use Trainer.load(path) without net= to rebuild it")


# -- sampling for plots ------------------------------------------------------------------------------

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
    def callback(trainer: Trainer) -> None:
        generator = torch.Generator(device=trainer.device).manual_seed(seed)
        samples = reverse_sde_sample(trainer.sde, trainer.score_fn(), n, tuple(sample_shape), steps=steps,
                                     generator=generator, device=trainer.device, dtype=trainer.dtype)
        plot_samples(samples, Path(directory) / f"samples_{trainer.step:08d}.png", title=f"step {trainer.step}",
                     reference=reference)
    return callback
