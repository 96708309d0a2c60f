"""sdekit_diffusion: score-based diffusion models as sdekit problems.

``import sdekit_diffusion as skd``: forward SDEs from marginals (:class:`DiffusionSDE`, presets
:class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`CosineVPSDE`), their reverse SDEs and
probability-flow ODEs, score parameterizations (:func:`as_score`, :func:`transform_score`) and
exact test problems (:mod:`sdekit_diffusion.problems`).
"""
from . import problems
from .problems import GaussianMixture
from .score import PREDICTIONS, as_score, prediction_to_score, score_to_prediction, transform_score
from .sde import (CosineVPSDE, DiffusionSDE, LinearSDESchedule, ProbabilityFlowODE, ReverseSDE,
                  SubVPSDE, VESDE, VPSDE)

__all__ = ["DiffusionSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "ReverseSDE",
           "ProbabilityFlowODE", "LinearSDESchedule", "as_score", "transform_score",
           "prediction_to_score", "score_to_prediction", "PREDICTIONS", "problems",
           "GaussianMixture"]

from .sampling import sample  # noqa: E402  (samplers: sdekit_diffusion.samplers)
from .time_grids import GRIDS, time_grid  # noqa: E402
__all__ += ["sample", "time_grid", "GRIDS"]
from .likelihood import bits_per_dim, log_likelihood  # noqa: E402
__all__ += ["log_likelihood", "bits_per_dim"]
