r"""Standard benchmark problems with exact solutions, and the registry that names them.

A :class:`BenchProblem` bundles an :class:`sdekit.SDE` or :class:`sdekit.ODE` with its initial
state, time span and what is known exactly about its solution:

- ``exact(t1, bm, x0)``: the exact state at ``t1`` on the Brownian path ``bm`` (anything callable as
  ``bm(ta, tb)`` returning the increment ``W(tb) - W(ta)``, e.g. :class:`sdekit.BrownianTree` or
  ``torchsde.BrownianInterval``) — enables the strong error;
- ``exact_moments(t1)``: exact ``E[f(x_{t1})]`` for the weak test functions ``f`` in
  :data:`WEAK_FUNCTIONS` — enables the weak error when no pathwise solution is known.

Plugins add problems with :func:`register_problem`; :func:`problems` lists the names and
:func:`get_problem` builds one.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..problems import ODE, SDE, brownian_shape, is_sde

#: Weak test functions ``f(x)``, applied elementwise; weak errors are ``max_i |E f(X_N)_i - E f(X)_i|``.
WEAK_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "x": lambda x: x,
    "x^2": lambda x: x * x,
}


def brownian_increment(bm, ta: float, tb: float) -> torch.Tensor:
    """``W(tb) - W(ta)`` from a Brownian object called as ``bm(ta, tb)`` (a tuple's first entry)."""
    increment = bm(min(ta, tb), max(ta, tb))
    if isinstance(increment, (tuple, list)):
        increment = increment[0]
    return increment if tb >= ta else -increment


class BenchProblem:
    """A problem to benchmark solvers on. Subclass and set the attributes; override
    :meth:`exact` (pathwise solution) and/or :meth:`exact_moments` (law at ``t1``).

    Attributes:
        name, description: how tables and ``--help`` name it.
        problem: the :class:`sdekit.SDE` or :class:`sdekit.ODE`.
        x0: one initial state, shape ``dims`` (expanded to ``(samples, *dims)``), unless
            :meth:`initial` is overridden (random initial states: set ``random_initial = True``).
        t0, t1: the time span (``t1 < t0`` integrates backwards).
        solvers, steps: defaults for the CLI and quick runs.
    """

    name: str = ""
    description: str = ""
    problem: SDE | ODE
    x0: torch.Tensor
    t0: float = 0.0
    t1: float = 1.0
    random_initial: bool = False
    solvers: tuple[str, ...] = ()
    steps: tuple[int, ...] = (8, 16, 32, 64)

    @property
    def is_sde(self) -> bool:
        return is_sde(self.problem)

    @property
    def has_exact(self) -> bool:
        return type(self).exact is not BenchProblem.exact

    @property
    def has_exact_moments(self) -> bool:
        return type(self).exact_moments is not BenchProblem.exact_moments

    def initial(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64,
                device="cpu") -> torch.Tensor:
        """``n`` initial states, shape ``(n, *dims)``."""
        x0 = torch.as_tensor(self.x0, dtype=dtype, device=device)
        return x0.expand(n, *x0.shape).clone()

    def noise_shape(self, n: int) -> tuple[int, ...]:
        """Shape of the Brownian motion driving ``n`` samples (``()`` for an ODE)."""
        if not self.is_sde:
            return ()
        dims = tuple(torch.as_tensor(self.x0).shape)
        return brownian_shape(self.problem, (n, *dims))

    def exact(self, t1: float, bm=None, x0: torch.Tensor | None = None) -> torch.Tensor:
        """The exact state at ``t1`` from ``x0`` (default: :meth:`initial`) on the path ``bm``."""
        raise NotImplementedError(f"problem {self.name!r} has no pathwise exact solution")

    def exact_moments(self, t1: float) -> dict[str, torch.Tensor]:
        """Exact ``E[f(x_{t1})]`` (shape ``dims``) for the functions in :data:`WEAK_FUNCTIONS`."""
        raise NotImplementedError(f"problem {self.name!r} has no exact moments")

    def __repr__(self) -> str:
        return f"<BenchProblem {self.name!r}: {self.description}>"


def _default_x0(problem: BenchProblem, x0, like: torch.Tensor) -> torch.Tensor:
    if x0 is None:
        return problem.initial(like.shape[0] if like.dim() else 1, dtype=like.dtype, device=like.device)
    return x0


# --- geometric Brownian motion -------------------------------------------------------------------

class _LinearMultiplicative(SDE):
    """``dx = mu x dt + sigma x dW`` (diagonal or scalar noise)."""

    def __init__(self, mu: float, sigma: float, noise_type: str):
        self.mu, self.sigma, self.noise_type = mu, sigma, noise_type

    def drift(self, t, x):
        return self.mu * x

    def diffusion(self, t, x):
        return self.sigma * x


class GeometricBrownianMotion(BenchProblem):
    r"""Geometric Brownian motion, diagonal noise: :math:`dx = \mu x\,dt + \sigma x\,dW`,
    :math:`x_t = x_0 \exp((\mu - \sigma^2/2) t + \sigma W_t)`. Itô; Milstein is strong order 1."""

    name = "gbm"
    description = "geometric Brownian motion dx = mu x dt + sigma x dW (diagonal noise, 2-d)"
    solvers = ("euler_maruyama", "milstein")

    def __init__(self, mu: float = 0.5, sigma: float = 0.8, x0=(1.0, 0.5), t1: float = 1.0):
        self.mu, self.sigma, self.t1 = mu, sigma, t1
        self.x0 = torch.tensor(x0, dtype=torch.float64)
        self.problem = _LinearMultiplicative(mu, sigma, "diagonal")

    def exact(self, t1, bm=None, x0=None):
        W = brownian_increment(bm, self.t0, t1)
        x0 = _default_x0(self, x0, W)
        return x0 * torch.exp((self.mu - self.sigma ** 2 / 2) * (t1 - self.t0) + self.sigma * W)

    def exact_moments(self, t1):
        x0, dt = self.x0, t1 - self.t0
        return {"x": x0 * math.exp(self.mu * dt),
                "x^2": x0 ** 2 * math.exp((2 * self.mu + self.sigma ** 2) * dt)}


class ScalarNoiseLinear(GeometricBrownianMotion):
    r"""Rackauckas & Nie (2017), §6 'scalar noise' test: :math:`du = 1.01\,u\,dt + 0.87\,u\,dW` for
    a 4-d :math:`u` driven by ONE Brownian motion; :math:`u_t = u_0 \exp((1.01 - 0.87^2/2)t + 0.87 W_t)`.
    Reference: C. Rackauckas, Q. Nie, Discrete Contin. Dyn. Syst. B 22(7), 2017."""

    name = "rn_scalar"
    description = "Rackauckas-Nie 2017 scalar noise: du = 1.01 u dt + 0.87 u dW, 4-d u, one W"
    solvers = ("euler_maruyama", "milstein")

    def __init__(self, mu: float = 1.01, sigma: float = 0.87, x0=(1.0, 0.5, 0.25, 0.125), t1: float = 1.0):
        super().__init__(mu, sigma, x0, t1)
        self.problem = _LinearMultiplicative(mu, sigma, "scalar")

    def exact(self, t1, bm=None, x0=None):
        W = brownian_increment(bm, self.t0, t1)  # shape (n,)
        x0 = _default_x0(self, x0, W)
        W = W.reshape(-1, *([1] * (x0.dim() - 1)))
        return x0 * torch.exp((self.mu - self.sigma ** 2 / 2) * (t1 - self.t0) + self.sigma * W)


# --- Rackauckas & Nie additive noise -------------------------------------------------------------

class _AdditiveRN(SDE):
    noise_type = "additive"

    def __init__(self, alpha: torch.Tensor, beta: torch.Tensor, shift: float = 1.0, batched_time: bool = False):
        self.alpha, self.beta, self.shift, self.batched_time = alpha, beta, shift, batched_time

    def _clock(self, t, x):
        """``shift + t``, one time per sample broadcast over the state when ``t`` is ``(batch,)``."""
        return self.shift + (t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t)

    def drift(self, t, x):
        clock = self._clock(t, x)
        return self.beta.to(x) / torch.sqrt(clock) - x / (2 * clock)

    def diffusion(self, t, x):
        return (self.alpha * self.beta).to(x) / torch.sqrt(self._clock(t, x)) * torch.ones_like(x)


class AdditiveNoise(BenchProblem):
    r"""Rackauckas & Nie (2017) additive-noise system (DiffEqProblemLibrary ``prob_sde_additivesystem``),
    with the clock :math:`1 + t` generalised to :math:`s + t` (``shift`` :math:`s`, 1 in the original):

    .. math:: dx = \Bigl(\frac{\beta}{\sqrt{s+t}} - \frac{x}{2(s+t)}\Bigr) dt + \frac{\alpha\beta}{\sqrt{s+t}} dW,
              \qquad x_t = \frac{\sqrt s\, x_0 + \beta (t + \alpha W_t)}{\sqrt{s+t}}

    (:math:`d(\sqrt{s+t}\, x) = \beta\, dt + \alpha\beta\, dW`), with :math:`\alpha = 0.1`,
    :math:`\beta = (0.5, 0.25, 0.125, 0.1115)`, :math:`x_0 = 1`. SRA1 is strong order 1.5,
    Euler–Maruyama 1.0 on it. A small ``shift`` makes drift and noise vary on the time scale
    :math:`s` near :math:`t = 0` (where adaptive steps pay); ``batched_time=True`` accepts one
    time per sample (per-sample adaptive steps)."""

    name = "rn_additive"
    description = "Rackauckas-Nie 2017 additive noise, 4-d, exact x0/sqrt(1+t) + b(t + a W)/sqrt(1+t)"
    solvers = ("euler_maruyama", "sra1")

    def __init__(self, alpha: float = 0.1, beta=(0.5, 0.25, 0.125, 0.1115), x0=(1.0, 1.0, 1.0, 1.0),
                 t1: float = 1.0, shift: float = 1.0, batched_time: bool = False):
        if not shift > 0:
            raise ValueError(f"shift must be positive (the clock shift + t must stay positive), got {shift}")
        self.t1, self.shift = t1, float(shift)
        self.alpha = torch.full((len(beta),), alpha, dtype=torch.float64)
        self.beta = torch.tensor(beta, dtype=torch.float64)
        self.x0 = torch.tensor(x0, dtype=torch.float64)
        self.problem = _AdditiveRN(self.alpha, self.beta, self.shift, batched_time)

    def exact(self, t1, bm=None, x0=None):
        W = brownian_increment(bm, self.t0, t1)
        x0 = _default_x0(self, x0, W)
        # the formula is for t0 = 0
        noise_free = math.sqrt(self.shift) * x0 + self.beta.to(W) * t1
        return (noise_free + (self.alpha * self.beta).to(W) * W) / math.sqrt(self.shift + t1)


class AdditiveTransient(AdditiveNoise):
    r""":class:`AdditiveNoise` with ``shift = 0.01`` and :math:`\alpha = 1`: drift and noise change on
    the time scale 0.01 at :math:`t = 0` and on the scale 1 at :math:`t = 1`, so adaptive steps pay.
    Exact solution as for :class:`AdditiveNoise`."""

    name = "additive_transient"
    description = "additive noise with a transient: Rackauckas-Nie system, clock 0.01 + t, alpha = 1, 4-d, exact"
    solvers = ("euler_maruyama", "sra1", "sra3", "sosra", "shark", "shark_t")

    def __init__(self, batched_time: bool = False):
        super().__init__(alpha=1.0, shift=0.01, batched_time=batched_time)


# --- Ornstein–Uhlenbeck (weak only) --------------------------------------------------------------

class _OU(SDE):
    noise_type = "additive"

    def __init__(self, theta, mean, sigma):
        self.theta, self.mean, self.sigma = theta, mean, sigma

    def drift(self, t, x):
        return self.theta * (self.mean - x)

    def diffusion(self, t, x):
        return self.sigma * torch.ones_like(x)


class OrnsteinUhlenbeck(BenchProblem):
    r"""Ornstein–Uhlenbeck :math:`dx = \theta(\mu - x)\,dt + \sigma\,dW` (additive noise). Its law at
    ``t`` is Gaussian with mean :math:`\mu + (x_0 - \mu)e^{-\theta t}` and variance
    :math:`\sigma^2 (1 - e^{-2\theta t}) / (2\theta)`: weak errors only (the pathwise solution needs
    the whole stochastic integral :math:`\int e^{-\theta(t-s)} dW_s`)."""

    name = "ou"
    description = "Ornstein-Uhlenbeck dx = theta (mu - x) dt + sigma dW, weak error only (Gaussian law)"
    solvers = ("euler_maruyama",)

    def __init__(self, theta: float = 2.0, mean: float = 0.5, sigma: float = 0.8, x0=(1.5, -1.0),
                 t1: float = 1.0):
        self.theta, self.mean, self.sigma, self.t1 = theta, mean, sigma, t1
        self.x0 = torch.tensor(x0, dtype=torch.float64)
        self.problem = _OU(theta, mean, sigma)

    def exact_moments(self, t1):
        decay = math.exp(-self.theta * (t1 - self.t0))
        mean = self.mean + (self.x0 - self.mean) * decay
        var = self.sigma ** 2 * (1 - decay ** 2) / (2 * self.theta)
        return {"x": mean, "x^2": mean ** 2 + var}


# --- ODEs ----------------------------------------------------------------------------------------

class _Linear(ODE):
    def __init__(self, A: torch.Tensor):
        self.A = A

    def drift(self, t, x):
        return x @ self.A.to(x).T


class LinearSystem(BenchProblem):
    r"""Linear ODE system :math:`\dot x = A x`, :math:`x(t) = e^{A t} x_0` (``torch.linalg.matrix_exp``);
    :math:`A` a damped rotation coupled to a decaying mode."""

    name = "linear"
    description = "linear ODE system dx/dt = A x (4-d), exact expm(A t) x0"
    solvers = ("euler", "heun", "rk4")
    steps = (16, 32, 64, 128)

    def __init__(self, A=None, x0=(1.0, 0.0, 0.5, -0.5), t1: float = 2.0):
        if A is None:
            A = [[-0.3, 2.0, 0.0, 0.0],
                 [-2.0, -0.3, 0.5, 0.0],
                 [0.0, 0.0, -1.0, 1.0],
                 [0.0, 0.0, -1.0, -0.2]]
        self.A = torch.tensor(A, dtype=torch.float64)
        self.x0 = torch.tensor(x0, dtype=torch.float64)
        self.t1 = t1
        self.problem = _Linear(self.A)

    def exact(self, t1, bm=None, x0=None):
        x0 = self.initial(1) if x0 is None else x0
        propagator = torch.linalg.matrix_exp(self.A.to(x0) * (t1 - self.t0))
        return x0 @ propagator.T


class _VanDerPol(ODE):
    def __init__(self, mu: float):
        self.mu = mu

    def drift(self, t, x):
        position, velocity = x[..., 0], x[..., 1]
        return torch.stack([velocity, self.mu * (1 - position ** 2) * velocity - position], dim=-1)


class VanDerPol(BenchProblem):
    r"""Van der Pol oscillator :math:`\ddot y = \mu (1 - y^2) \dot y - y` (non-stiff, :math:`\mu = 1`);
    reference: scipy's DOP853 at ``rtol = atol = 1e-13``."""

    name = "van_der_pol"
    description = "Van der Pol oscillator (mu=1, t in [0, 10]); reference DOP853 at rtol=atol=1e-13"
    solvers = ("midpoint", "rk4")
    steps = (64, 128, 256, 512)

    def __init__(self, mu: float = 1.0, x0=(2.0, 0.0), t1: float = 10.0):
        self.mu, self.t1 = mu, t1
        self.x0 = torch.tensor(x0, dtype=torch.float64)
        self.problem = _VanDerPol(mu)
        self._reference: dict = {}

    def exact(self, t1, bm=None, x0=None):
        import numpy as np
        from scipy.integrate import solve_ivp
        x0 = self.initial(1) if x0 is None else x0
        key = (float(t1), tuple(x0.flatten().tolist()))
        if key not in self._reference:
            rows = []
            for state in x0.detach().cpu().double().numpy():
                sol = solve_ivp(lambda t, y: [y[1], self.mu * (1 - y[0] ** 2) * y[1] - y[0]],
                                (self.t0, t1), state, method="DOP853", rtol=1e-13, atol=1e-13)
                rows.append(sol.y[:, -1])
            self._reference[key] = torch.tensor(np.array(rows), dtype=torch.float64)
        return self._reference[key].to(x0)


# --- registry ------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[[], BenchProblem]] = {}


def check_registration(kind: str, name: str, factory) -> None:
    """Refuse a registry entry (``kind``: "problem" or "solver") without a name or a callable factory."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a {kind} name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for {kind} {name!r} must be callable, got {type(factory).__name__}")


def register_problem(name: str, factory: Callable[[], BenchProblem]) -> None:
    """Register ``factory`` (called with no arguments, returning a :class:`BenchProblem`) as ``name``.
    Registering a name again replaces it (plugins may be loaded twice)."""
    check_registration("problem", name, factory)
    _REGISTRY[name] = factory


def problem_names() -> list[str]:
    """Names of the registered benchmark problems, sorted."""
    return sorted(_REGISTRY)


def get_problem(name: str | BenchProblem) -> BenchProblem:
    """A fresh :class:`BenchProblem` by name (a problem instance is returned as is); an unknown
    name raises ``ValueError`` listing the valid ones."""
    if isinstance(name, BenchProblem):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown problem {name!r}; valid problems: {', '.join(problem_names())}")
    problem = _REGISTRY[name]()
    if not problem.name:
        problem.name = name
    return problem


for _cls in (GeometricBrownianMotion, ScalarNoiseLinear, AdditiveNoise, AdditiveTransient, OrnsteinUhlenbeck,
             LinearSystem, VanDerPol):
    register_problem(_cls.name, _cls)
