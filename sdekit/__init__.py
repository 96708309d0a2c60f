"""sdekit: numerical SDEs and ODEs in PyTorch."""
from . import interop, paths, solvers
from .brownian import BrownianTree
from .controller import PIDController
from .errors import MaxStepsError, NonFiniteError, SDEKitError, ShapeError, SolverError
from .problems import ODE, SDE
from .solution import Solution
from .solve import solve

__all__ = ["solve", "BrownianTree", "PIDController", "SDE", "ODE", "Solution", "solvers", "interop", "paths",
           "SDEKitError", "ShapeError", "NonFiniteError", "MaxStepsError", "SolverError"]
__version__ = "0.1.0"
