"""sdekit_diffusion: score-based diffusion models as sdekit problems.

``import sdekit_diffusion as skd``: forward SDEs from marginals (:class:`DiffusionSDE`, presets
:class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`CosineVPSDE`), their reverse SDEs and
probability-flow ODEs, score parameterizations (:func:`as_score`, :func:`guided`,
:func:`transform_score`), pretrained models (:func:`adapters.from_diffusers`), exact test problems
(:mod:`sdekit_diffusion.problems`), samplers (:func:`sample`), likelihoods (:func:`log_likelihood`),
networks (:mod:`sdekit_diffusion.nets`) and training (:func:`dsm_loss`, :class:`Trainer`).
"""
from . import adapters, data, nets, problems, schedules
from .coefficient_optimization import optimize_coefficients
from .grid_optimization import optimize_time_grid
from .likelihood import bits_per_dim, log_likelihood
from .losses import ddpm_loss, dsm_loss, hybrid_loss, smld_loss, vlb_loss
from .problems import GaussianMixture
from .sampling import sample
from .score import (PREDICTIONS, as_score, guided, prediction_to_score, score_to_prediction,
                    transform_score)
from .sde import (CosineVPSDE, DiffusionSDE, LinearSDESchedule, ProbabilityFlowODE, ReverseSDE,
                  SubVPSDE, VESDE, VPSDE)
from .schedules import DiscreteSchedule, Schedule
from .time_grids import GRIDS, SPACINGS, time_grid
from .training import Trainer
from .vlb import vlb_bits_per_dim

__all__ = ["DiffusionSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "ReverseSDE",
           "ProbabilityFlowODE", "LinearSDESchedule", "Schedule", "DiscreteSchedule", "schedules", "as_score", "guided",
           "transform_score", "adapters",
           "prediction_to_score", "score_to_prediction", "PREDICTIONS", "problems",
           "GaussianMixture", "sample", "time_grid", "GRIDS", "SPACINGS", "log_likelihood", "bits_per_dim",
           "dsm_loss", "ddpm_loss", "smld_loss", "Trainer", "nets", "data",
           "vlb_loss", "hybrid_loss", "vlb_bits_per_dim", "optimize_time_grid",
           "optimize_coefficients"]
