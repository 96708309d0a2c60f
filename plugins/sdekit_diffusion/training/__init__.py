"""Training score networks, one concern per module:

- :mod:`.trainer`: :class:`Trainer`, the loop (device, optimiser, deferred loss read-back, NaN
  policy, callbacks, distributed hooks);
- :mod:`.objective`: what it minimises (``loss="dsm" | "simple" | "hybrid" | "vlb"``);
- :mod:`.checkpoint`: atomic saves, finding, reading, pruning and resume checks;
- :mod:`.ema`: the moving average of the weights;
- :mod:`.batches`: data checks and random batches;
- :mod:`.options`: the range checks of every numeric option;
- :mod:`.plotting`: sample plots and the plotting callback.

Every name is importable from here, as from the single ``training`` module of earlier versions.
"""
from __future__ import annotations

from .batches import Batches, check_data, item_tensor
from .checkpoint import (CHECKPOINT_FORMAT, CheckpointWarning, atomic_save, checkpoint_files, latest_checkpoint,
                         newest_of_run, newest_readable, read_checkpoint, remove_stale_temporaries)
from .ema import decay_at, update_average
from .objective import LOSSES, Objective
from .options import check_number
from .plotting import plot_samples, reverse_sde_sample, sample_plot_callback
from .trainer import Trainer, resolve_device

__all__ = ["Trainer", "Objective", "LOSSES", "latest_checkpoint", "newest_readable", "newest_of_run",
           "read_checkpoint", "checkpoint_files", "atomic_save", "remove_stale_temporaries", "CheckpointWarning",
           "CHECKPOINT_FORMAT", "check_data", "Batches", "item_tensor", "resolve_device", "decay_at",
           "update_average", "check_number", "plot_samples", "reverse_sde_sample", "sample_plot_callback"]
