r"""Stochastic Runge–Kutta methods for additive noise, as tableaux, and their one stepper.

For :math:`dx = f(t, x)\,dt + g(t)\,dW` over :math:`[t_0, t_1]`, :math:`h = t_1 - t_0`, with the
Brownian increment :math:`W = W(t_1) - W(t_0)` and its space-time Lévy area :math:`H` (see
:class:`sdekit.solvers.Increment`), the diffusion is evaluated at :math:`m` times
:math:`\tau_k = t_0 + \theta_k h` and a method of :math:`s` stages is

.. math::
    X_i &= x_0 + h \sum_{j<i} a_{ij} f_j + \sum_k g(\tau_k)\,(p_{ik} W + q_{ik} H),
    \qquad f_i = f(t_0 + c_i h, X_i), \\
    x_1 &= x_0 + h \sum_i b_i f_i + \sum_k g(\tau_k)\,(\beta_k W + \gamma_k H), \\
    e   &= h \sum_i \hat b_i f_i + \sum_k g(\tau_k)\,(\hat\beta_k W + \hat\gamma_k H),

where :math:`e = x_1 - \hat x_1` is the difference to an embedded lower-order solution
:math:`\hat x_1` built from the same stages (no extra drift evaluation). :class:`AdditiveSRKTableau`
holds these coefficients; the two literature forms convert to it exactly:

* Rößler's SRA form (A. Rößler, SIAM J. Numer. Anal. 48(3), 2010, eq. (6.1); the tableaux of
  StochasticDiffEq.jl's ``RosslerSRA``), with :math:`I_{(1,0)}/h = \Delta Z/h = H + W/2`:
  stage noise :math:`\sum_j B^{(0)}_{ij} g(t_0 + c^{(1)}_j h)\, I_{(1,0)}/h`, update noise
  :math:`\sum_i g(t_0 + c^{(1)}_i h)\,(\beta^{(1)}_i W + \beta^{(2)}_i I_{(1,0)}/h)`
  (:meth:`AdditiveSRKTableau.from_rossler`).
* diffrax's additive ``StochasticButcherTableau`` (``diffrax/_solver/srk.py``): stage noise
  :math:`g(t_0)(a^W_i W + a^H_i H)`, update noise :math:`g(t_0)(b^W W + b^H H)` plus the
  correction :math:`(g(t_1) - g(t_0))(W/2 - H)` for a time-dependent :math:`g`
  (:meth:`AdditiveSRKTableau.from_diffrax`). diffrax's :math:`H` is the same space-time Lévy area
  as sdekit's, :math:`H = \frac1h \int_{t_0}^{t_1} (W_r - W_{t_0} - \frac{r - t_0}{h} W)\,dr`,
  variance :math:`h/12` (no rescaling).

Solvers built on :class:`AdditiveSRK` take additive noise only, need the Lévy area, and are
adaptive: ``error_order`` is the strong order of the embedded solution (1.0 for the methods here:
its local error is :math:`O(h^{3/2})` from the noise and :math:`O(h^2)` from the drift).
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Solver

Row = tuple[float, ...]


@dataclass(frozen=True)
class AdditiveSRKTableau:
    """Coefficients of an additive-noise SRK method (symbols of the module docstring).

    ``a``: strictly lower-triangular drift coefficients, one row per stage (row ``i`` has ``i``
    entries); ``c``: stage times; ``b``: drift weights; ``b_error``: drift weights of the error
    :math:`x_1 - \\hat x_1`; ``theta``: the times of the diffusion evaluations; ``stage_w``,
    ``stage_h``: per stage, the coefficients ``p``, ``q`` of :math:`g(\\tau_k) W`,
    :math:`g(\\tau_k) H`; ``update_w``, ``update_h``: :math:`\\beta, \\gamma`; ``error_w``,
    ``error_h``: :math:`\\hat\\beta, \\hat\\gamma`.
    """

    a: tuple[Row, ...]
    c: Row
    b: Row
    b_error: Row
    theta: Row
    stage_w: tuple[Row, ...]
    stage_h: tuple[Row, ...]
    update_w: Row
    update_h: Row
    error_w: Row
    error_h: Row

    @classmethod
    def from_rossler(cls, *, c0, c1, A0, B0, alpha, beta1, beta2, alpha_embedded) -> "AdditiveSRKTableau":
        r"""Rößler's SRA coefficients (``c0``, ``c1``, ``A0``, ``B0``, ``alpha``, ``beta1``, ``beta2``:
        square ``A0``, ``B0`` as nested rows) with the natural embedding of Rackauckas & Nie
        (2017, §3): the strong order 1.0 method that keeps the :math:`W` terms and drops the
        :math:`I_{(1,0)}` terms of the update, with drift weights ``alpha_embedded``."""
        theta = tuple(dict.fromkeys(float(x) for x in c1))  # distinct diffusion times, in order
        where = [theta.index(float(x)) for x in c1]
        s, m = len(c0), len(theta)

        def per_time(weights):
            row = [0.0] * m
            for j, weight in enumerate(weights):
                row[where[j]] += float(weight)
            return tuple(row)

        z_terms = [per_time(B0[i][:s]) for i in range(s)]          # coefficients of g(tau_k) I10/h
        update_z, update_w = per_time(beta2), per_time(beta1)
        return cls(
            a=tuple(tuple(float(x) for x in A0[i][:i]) for i in range(s)),
            c=tuple(float(x) for x in c0),
            b=tuple(float(x) for x in alpha),
            b_error=tuple(float(x) - float(y) for x, y in zip(alpha, alpha_embedded)),
            theta=theta,
            stage_w=tuple(tuple(0.5 * z for z in row) for row in z_terms),
            stage_h=tuple(z_terms),
            update_w=tuple(w + 0.5 * z for w, z in zip(update_w, update_z)),
            update_h=update_z,
            error_w=tuple(0.5 * z for z in update_z),
            error_h=update_z,
        )

    @classmethod
    def from_diffrax(cls, *, a, b_sol, b_error, c, a_w, a_hh, b_w, b_hh) -> "AdditiveSRKTableau":
        """diffrax's additive ``StochasticButcherTableau`` (``a``: rows of the lower triangle from
        stage 2, ``c``: times from stage 2, ``b_error`` used as given, i.e. as the error weights;
        ``a_w``, ``a_hh``, ``b_w``, ``b_hh``: its ``coeffs_w``/``coeffs_hh``), diffusion at
        ``t0`` and ``t1``."""
        s = len(b_sol)
        return cls(
            a=((),) + tuple(tuple(float(x) for x in row) for row in a),
            c=(0.0,) + tuple(float(x) for x in c),
            b=tuple(float(x) for x in b_sol),
            b_error=tuple(float(x) for x in b_error),
            theta=(0.0, 1.0),
            stage_w=tuple((float(a_w[i]), 0.0) for i in range(s)),
            stage_h=tuple((float(a_hh[i]), 0.0) for i in range(s)),
            # g0 (b_w W + b_hh H) + (g1 - g0)(W/2 - H)
            update_w=(float(b_w) - 0.5, 0.5),
            update_h=(float(b_hh) + 1.0, -1.0),
            error_w=(0.0, 0.0),
            error_h=(0.0, 0.0),
        )

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Refuse (``ValueError``) coefficients of the wrong shapes or that break consistency:
        sum(b) = 1, A 1 = c, sum(b_error) = 0, and for a constant g an update noise g W and an error
        without noise."""
        s, m = len(self.c), len(self.theta)
        shapes = (len(self.a) == s and all(len(row) == i for i, row in enumerate(self.a))
                  and len(self.b) == len(self.b_error) == s and len(self.stage_w) == len(self.stage_h) == s
                  and all(len(row) == m for row in self.stage_w + self.stage_h)
                  and len(self.update_w) == len(self.update_h) == len(self.error_w) == len(self.error_h) == m)
        if not shapes:
            raise ValueError(f"tableau coefficients of inconsistent shapes for {s} stages and {m} diffusion times")
        close = lambda x, y: abs(x - y) <= 1e-12 * max(1.0, abs(y))  # noqa: E731
        conditions = {"sum(b) = 1": close(sum(self.b), 1.0), "sum(b_error) = 0": close(sum(self.b_error), 0.0),
                      "A 1 = c": all(close(sum(row), ci) for row, ci in zip(self.a, self.c)),
                      "sum(update_w) = 1": close(sum(self.update_w), 1.0),
                      "sum(update_h) = 0": close(sum(self.update_h), 0.0),
                      "sum(error_w) = 0": close(sum(self.error_w), 0.0),
                      "sum(error_h) = 0": close(sum(self.error_h), 0.0)}
        broken = [name for name, holds in conditions.items() if not holds]
        if broken:
            raise ValueError(f"inconsistent additive SRK tableau: {', '.join(broken)} fails")


def _combine(weights, terms):
    """sum_k weights[k] * terms[k] over the nonzero weights (None if all are zero)."""
    total = None
    for weight, term in zip(weights, terms):
        if weight != 0.0:
            part = term if weight == 1.0 else weight * term
            total = part if total is None else total + part
    return total


class AdditiveSRK(Solver):
    """An additive-noise SRK method defined by ``tableau`` (see the module docstring)."""

    kind = "sde"
    noise_types = ("additive",)
    suggest = {"diagonal": "milstein", "scalar": "milstein", "general": "euler_maruyama"}
    needs_levy_area = True
    adaptive = True
    error_order = 1.0
    tableau: AdditiveSRKTableau

    @property
    def evals_per_step(self) -> int:
        return len(self.tableau.c)

    def step(self, problem, t0, t1, x0, increment, state):
        tab = self.tableau
        h, W, H = increment.dt, increment.dW, increment.H
        if H is None:
            raise ValueError(f"{self.name} needs the space-time Lévy area H of each increment; the Brownian "
                             "source returned none (build it with levy_area=True)")
        span = t1 - t0  # 0-d, or (batch,) for per-sample steps (h is then shaped to broadcast)
        g = [problem.diffusion(t0 if theta == 0.0 else t1 if theta == 1.0 else t0 + theta * span, x0)
             for theta in tab.theta]
        gW, gH = [gk * W for gk in g], [gk * H for gk in g]
        f = []
        for i in range(len(tab.c)):
            x_stage = x0
            drift = _combine(tab.a[i], f)
            if drift is not None:
                x_stage = x_stage + h * drift
            for weights, terms in ((tab.stage_w[i], gW), (tab.stage_h[i], gH)):
                noise = _combine(weights, terms)
                if noise is not None:
                    x_stage = x_stage + noise
            f.append(problem.drift(t0 if tab.c[i] == 0.0 else t1 if tab.c[i] == 1.0 else t0 + tab.c[i] * span,
                                   x_stage))
        x1 = x0 + h * _combine(tab.b, f) + _combine(tab.update_w, gW)
        update_h = _combine(tab.update_h, gH)
        if update_h is not None:
            x1 = x1 + update_h
        error = h * _combine(tab.b_error, f)
        for weights, terms in ((tab.error_w, gW), (tab.error_h, gH)):
            noise = _combine(weights, terms)
            if noise is not None:
                error = error + noise
        return x1, error, None
