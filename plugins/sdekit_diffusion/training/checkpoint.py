"""Trainer checkpoints on disk: atomic writes, finding and reading the newest, pruning, and the checks
that decide whether a run may resume from one.

Files: ``checkpoint_dir/step_XXXXXXXX.pt`` (the step in the name), plus the ``model.pt`` that
``sdekit train`` writes at the end. :func:`atomic_save` writes a temporary ``.NAME.XXXX.tmp`` in the
same folder and ``os.replace``\\ s it onto ``NAME``, so a crash never leaves a half-written
checkpoint, only a temporary that :func:`remove_stale_temporaries` deletes at the next start.

Reading: :func:`newest_readable` walks the step files from the newest down and returns the first
that loads; an unreadable one (truncated, corrupted) is renamed ``step_XXXXXXXX.pt.corrupt`` (when
the caller writes to the folder) and a :class:`CheckpointWarning` says which one was used instead.
:func:`newest_of_run` also considers ``model.pt`` and picks the highest step (``sdekit sample``).

Resuming: a checkpoint records what it was trained with (the SDE, as its repr and its alpha and
sigma on a grid; the objective; a digest of the data); :func:`resume_differences` names what differs
from the run about to continue it, and the trainer refuses such a resume unless asked to start fresh.

Checkpoints are read with ``torch.load(weights_only=False)`` (they pickle the SDE): load only files
you trust.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..nets import ScoreNet, UNet, full_config

CHECKPOINT_FORMAT = "sdekit_diffusion.Trainer/1"
CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")
TEMPORARY_NAME = re.compile(r"^\.(step_\d+\.pt|model\.pt)\..+\.tmp$")   # atomic_save's temporaries
SDE_FINGERPRINT_POINTS = 17        # times at which alpha and sigma are recorded
DATA_FINGERPRINT_SAMPLES = 64      # evenly spaced samples hashed into the data digest


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and an older one was used instead."""


# -- files -----------------------------------------------------------------------------------------

def checkpoint_files(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_XXXXXXXX.pt`` in ``directory``, by increasing step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The ``step_XXXXXXXX.pt`` file with the highest step in ``directory`` (None if there is none)."""
    found = checkpoint_files(directory)
    return found[-1][1] if found else None


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


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries :func:`atomic_save` left behind when its process was killed mid-write
    (``.step_XXXXXXXX.pt.*.tmp``, ``.model.pt.*.tmp``); returns them. Call it only where no other
    process is saving into ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if TEMPORARY_NAME.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def prune(directory: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` newest step files (``keep = 0``: delete none)."""
    if keep > 0:
        for _, old in checkpoint_files(directory)[:-keep]:
            old.unlink(missing_ok=True)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at ``path``; :class:`FileNotFoundError` or :class:`ValueError` (unreadable,
    or not a trainer checkpoint)."""
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


def _scan(directory, newer_than: int, quarantine: bool):
    """``(path, checkpoint, failures)``: the newest readable step file above ``newer_than`` (or
    ``None, None``) and the ``(path, reason)`` of the newer ones that did not read."""
    failures = []
    for step, path in reversed(checkpoint_files(directory)):
        if step <= newer_than:
            break
        try:
            return path, read_checkpoint(path), failures
        except (ValueError, FileNotFoundError) as error:
            reason = str(error).split(": ", 1)[-1]
            if quarantine and path.exists():
                corrupt = path.with_name(path.name + ".corrupt")
                os.replace(path, corrupt)
                reason += f"; renamed to {corrupt.name}"
            failures.append((path, reason))
    return None, None, failures


def newest_readable(directory: str | os.PathLike, *, newer_than: int = -1,
                    quarantine: bool = False) -> tuple[Path, dict] | tuple[None, None]:
    """The newest step file of ``directory`` with a step above ``newer_than`` that reads, and its
    contents; ``(None, None)`` if there is none. Unreadable newer ones are skipped with a
    :class:`CheckpointWarning` naming them and the one used, and renamed ``*.corrupt`` when
    ``quarantine`` (so that pruning and later resumes do not take them for the newest)."""
    path, checkpoint, failures = _scan(directory, newer_than, quarantine)
    if failures:
        skipped = "; ".join(f"{bad} could not be read ({reason})" for bad, reason in failures)
        where = f"using {path} (step {checkpoint['step']}) instead" if path is not None else \
            "no readable checkpoint is left"
        warnings.warn(f"{skipped}; {where}", CheckpointWarning, stacklevel=2)
    return path, checkpoint


def newest_of_run(directory: str | os.PathLike) -> tuple[Path, str]:
    """The checkpoint of a training folder with the highest step among ``model.pt`` and the readable
    ``step_XXXXXXXX.pt`` (``model.pt`` on a tie: it is the final save), and a sentence saying which was
    chosen and why. :class:`FileNotFoundError` if the folder has none; unreadable files are passed over
    (and named in the sentence), never renamed."""
    directory = Path(directory)
    candidates, unreadable = [], []
    model = directory / "model.pt"
    if model.is_file():
        try:
            candidates.append((int(read_checkpoint(model)["step"]), 1, model))
        except ValueError as error:
            unreadable.append(f"{model.name} ({str(error).split(': ', 1)[-1]})")
    path, checkpoint, failures = _scan(directory, -1, False)
    unreadable += [f"{bad.name} ({reason})" for bad, reason in failures]
    if path is not None:
        candidates.append((int(checkpoint["step"]), 0, path))
    if not candidates:
        detail = f" (unreadable: {'; '.join(unreadable)})" if unreadable else ""
        raise FileNotFoundError(f"no readable checkpoint (model.pt or step_*.pt) in {directory}{detail}")
    step, _, chosen = max(candidates)
    others = [f"{p.name} is at step {s}" for s, _, p in candidates if p != chosen]
    note = f"using {chosen} (step {step}" + (f"; {', '.join(others)}" if others else "") + ")"
    if unreadable:
        note += f"; skipped unreadable {'; '.join(unreadable)}"
    return chosen, note


# -- what a checkpoint was trained with ------------------------------------------------------------

def sde_fingerprint(sde) -> dict:
    """``t_min``, ``t_max`` and ``alpha``, ``sigma`` on :data:`SDE_FINGERPRINT_POINTS` times: two SDEs
    with the same fingerprint have the same marginals (to the resolution of the grid)."""
    t = torch.linspace(sde.t_min, sde.t_max, SDE_FINGERPRINT_POINTS, dtype=torch.float64)
    with torch.no_grad():
        alpha, sigma = sde.schedule.alpha(t), sde.schedule.sigma(t)
    return {"t_min": sde.t_min, "t_max": sde.t_max, "t": t.tolist(), "alpha": alpha.tolist(),
            "sigma": sigma.tolist()}


def _fingerprints_differ(a: dict, b: dict) -> str | None:
    """Where two SDE fingerprints differ, in words (``None`` if they agree)."""
    if not (math.isclose(a["t_min"], b["t_min"], rel_tol=1e-9, abs_tol=1e-12)
            and math.isclose(a["t_max"], b["t_max"], rel_tol=1e-9, abs_tol=1e-12)):
        return f"time range [{a['t_min']:.6g}, {a['t_max']:.6g}] there, [{b['t_min']:.6g}, {b['t_max']:.6g}] here"
    for name in ("alpha", "sigma"):
        for t, x, y in zip(a["t"], a[name], b[name]):
            if not math.isclose(x, y, rel_tol=1e-7, abs_tol=1e-12):
                return f"{name}({t:.4g}) = {x:.6g} there, {y:.6g} here"
    return None


def data_fingerprint(data, sample_shape: tuple[int, ...]) -> dict:
    """The number of samples, their shape and a SHA-256 digest of :data:`DATA_FINGERPRINT_SAMPLES`
    evenly spaced samples (as float64): different data sets, sizes or seeds give different
    fingerprints, at the cost of reading those samples only."""
    count = len(data)
    indices = sorted({round(i * (count - 1) / max(DATA_FINGERPRINT_SAMPLES - 1, 1))
                      for i in range(min(count, DATA_FINGERPRINT_SAMPLES))})
    if isinstance(data, torch.Tensor):
        chosen = data[indices]
    else:
        from .batches import item_tensor
        chosen = torch.stack([item_tensor(data[i]) for i in indices])
    digest = hashlib.sha256(chosen.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()).hexdigest()
    return {"count": count, "shape": list(sample_shape), "digest": digest}


# options that define what is being learned: resuming with another value would continue a different run
OBJECTIVE_OPTIONS = ("loss", "prediction", "weighting", "importance_sampling", "vlb_weight", "chain_steps",
                     "bits")
_OPTION_DEFAULTS = {"loss": "dsm", "vlb_weight": 0.001, "chain_steps": None, "bits": 8}


def resume_differences(checkpoint: dict, *, sde, options: dict, data: dict | None) -> list[str]:
    """What differs between the run recorded in ``checkpoint`` and the one about to continue it
    (``options``: the trainer's objective options; ``data``: :func:`data_fingerprint`), one phrase
    each; empty when it may resume. Fields an older checkpoint lacks are not compared, except the
    objective options, whose defaults then stand for them."""
    differences = []
    stored = checkpoint.get("sde_fingerprint")
    if stored is not None:
        where = _fingerprints_differ(stored, sde_fingerprint(sde))
        if where is not None:
            differences.append(f"sde: {checkpoint.get('sde_repr')} there, {sde!r} here ({where})")
    elif checkpoint.get("sde_repr") not in (None, repr(sde)):
        differences.append(f"sde: {checkpoint['sde_repr']} there, {sde!r} here")
    trainer = checkpoint.get("trainer", {})
    for name in OBJECTIVE_OPTIONS:
        if name not in trainer and name not in _OPTION_DEFAULTS:
            continue
        there = trainer.get(name, _OPTION_DEFAULTS.get(name))
        if there != options[name]:
            differences.append(f"{name}: {there!r} there, {options[name]!r} here")
    recorded = checkpoint.get("data")
    if recorded is not None and data is not None:
        if recorded["shape"] != data["shape"]:
            differences.append(f"data: samples of shape {tuple(recorded['shape'])} there, {tuple(data['shape'])} here")
        elif recorded["count"] != data["count"]:
            differences.append(f"data: {recorded['count']} samples there, {data['count']} here")
        elif recorded["digest"] != data["digest"]:
            differences.append(f"data: {recorded['count']} samples of shape {tuple(data['shape'])} on both sides, "
                               "but different values")
    return differences


# -- networks --------------------------------------------------------------------------------------

def net_identity(net: nn.Module) -> tuple[str, dict | None]:
    """``(class name, full configuration)`` of a :class:`ScoreNet`, ``(qualified name, None)`` otherwise."""
    if isinstance(net, ScoreNet):
        kind = type(net).__name__
        return kind, full_config(kind, dict(net.config))
    return f"{type(net).__module__}.{type(net).__qualname__}", None


def describe_net(kind: str, config: dict | None) -> str:
    return f"{kind}({', '.join(f'{k}={v!r}' for k, v in (config or {}).items())})"


def check_same_net(checkpoint: dict, net: nn.Module) -> None:
    """:class:`ValueError` unless ``checkpoint`` was written for a network like ``net``."""
    kind, config = net_identity(net)
    stored = (checkpoint["net_class"], full_config(checkpoint["net_class"], checkpoint["net_config"]))
    if (kind, config) != stored:
        hint = ""
        if isinstance(net, UNet) and any(key.startswith("attention.") for key in checkpoint["net"]):
            hint = (" (the checkpoint has the earlier UNet layout with one attention module per width; it "
                    "loads into a UNet without image_size)")
        raise ValueError(f"the checkpoint was written for {describe_net(*stored)} but the network is "
                         f"{describe_net(kind, config)}{hint}; build the same network, or use Trainer.load(path) "
                         "without net= to rebuild it")


def upgrade_optimizer_state(state: dict, old_net_state: dict, net: nn.Module, sources: dict[str, str]) -> dict:
    """An optimizer state dict written for the earlier shared-attention UNet layout, rewritten for
    ``net`` (one parameter group): each parameter takes the moments of the parameter it was copied
    from (:meth:`UNet.legacy_parameter_sources`)."""
    buffers = {name for name, _ in net.named_buffers()}
    old_index = {name: i for i, name in enumerate(k for k in old_net_state if k not in buffers)}
    names = [name for name, _ in net.named_parameters()]
    if len(state["param_groups"]) != 1 or len(state["param_groups"][0]["params"]) != len(old_index):
        raise ValueError("the checkpoint's optimizer state does not match its network (earlier UNet layout); "
                         "load the weights with Trainer.load(path) and train with a fresh optimizer")
    moments = {}
    for index, name in enumerate(names):
        old = old_index[sources[name]]
        if old in state["state"]:
            moments[index] = copy.deepcopy(state["state"][old])
    group = dict(state["param_groups"][0], params=list(range(len(names))))
    return {"state": moments, "param_groups": [group]}
