r"""Benchmark results: a table of rows, fitted convergence orders, text, JSON and plots.

The convergence order is the least-squares slope :math:`p` of :math:`\log e = \log C + p \log h`
over a solver's rows; its 95% confidence interval is :math:`p \pm t_{0.975,\,n-2}\,\mathrm{se}(p)`
with :math:`\mathrm{se}(p)^2 = \frac{\sum r_i^2/(n-2)}{\sum (\log h_i - \overline{\log h})^2}`
(ordinary regression; undefined for two points). Errors that are not finite or below ``min_error``
(round-off) are left out of the fit.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import NamedTuple

METRICS = ("strong", "weak")
MIN_ERROR = 1e-13


class Fit(NamedTuple):
    """A fitted convergence order: slope, its standard error, a 95% confidence interval, and the
    number of points fitted (``nan`` where undefined)."""

    order: float
    stderr: float
    low: float
    high: float
    points: int

    def __str__(self) -> str:
        if math.isnan(self.order):
            return "-"
        if math.isnan(self.low):
            return f"{self.order:.2f}"
        return f"{self.order:.2f} [{self.low:.2f}, {self.high:.2f}]"


def fit_order(steps: list[float], errors: list[float], min_error: float = MIN_ERROR,
              confidence: float = 0.95) -> Fit:
    """Least-squares slope of ``log(error)`` against ``log(step)`` with a t-distribution interval."""
    pairs = [(math.log(h), math.log(e)) for h, e in zip(steps, errors)
             if h is not None and e is not None and h > 0 and math.isfinite(e) and e > min_error]
    n = len(pairs)
    nan = float("nan")
    if n < 2:
        return Fit(nan, nan, nan, nan, n)
    mean_x = sum(x for x, _ in pairs) / n
    mean_y = sum(y for _, y in pairs) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in pairs)
    if sxx == 0:
        return Fit(nan, nan, nan, nan, n)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in pairs) / sxx
    if n == 2:
        return Fit(slope, nan, nan, nan, n)
    residual = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in pairs)
    stderr = math.sqrt(residual / (n - 2) / sxx)
    from scipy.stats import t as student_t
    half = student_t.ppf(0.5 + confidence / 2, n - 2) * stderr
    return Fit(slope, stderr, slope - half, slope + half, n)


def _clean(value):
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class BenchResult:
    """What :func:`sdekit.bench.run` returns.

    ``meta``: the problem, samples, seed, dtype, versions. ``solvers``: name -> declared
    capabilities (``sdekit.solvers.available`` style: kind, order, strong_order, weak_order, adaptive).
    ``rows``: one dict per (solver, resolution) with ``solver, steps, rtol, atol, h, strong_error,
    strong_stderr, weak_error, weak_stderr, weak_errors, nfe, n_steps, n_rejected, seconds, samples``.
    """

    meta: dict
    solvers: dict
    rows: list = field(default_factory=list)

    # --- orders ----------------------------------------------------------------------------------

    def rows_of(self, solver: str) -> list[dict]:
        return [row for row in self.rows if row["solver"] == solver]

    def fit(self, solver: str, metric: str = "strong", min_error: float = MIN_ERROR) -> Fit:
        """The fitted order of ``solver``'s ``metric`` ("strong": pathwise error, the global error
        for an ODE; "weak") against the (mean) step size."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if solver not in self.solvers:
            raise ValueError(f"no solver {solver!r} in this result; solvers: {', '.join(self.solvers)}")
        rows = self.rows_of(solver)
        return fit_order([r["h"] for r in rows], [r[f"{metric}_error"] for r in rows], min_error)

    def orders(self) -> dict[str, dict[str, Fit]]:
        """``{solver: {"strong": Fit, "weak": Fit}}``."""
        return {name: {metric: self.fit(name, metric) for metric in METRICS} for name in self.solvers}

    def theory(self, solver: str, metric: str = "strong") -> float | None:
        """The solver's declared order for ``metric`` (ODE solvers: ``order``)."""
        info = self.solvers[solver]
        if info.get("kind") == "ode":
            return info.get("order")
        return info.get(f"{metric}_order")

    # --- text ------------------------------------------------------------------------------------

    def table(self) -> str:
        """A readable text table: the rows, then the fitted orders against the declared ones."""
        meta = self.meta
        sde = meta.get("kind") == "sde"
        lines = [f"problem {meta['problem']}: {meta.get('description', '')}",
                 f"t in [{meta.get('t0')}, {meta.get('t1')}], samples {meta.get('samples')}, "
                 f"seed {meta.get('seed')}, {meta.get('dtype')} on {meta.get('device')}", ""]
        header = ["solver", "steps/rtol", "h", "strong err" if sde else "error", "± se"]
        if sde:
            header += ["weak err", "± se"]
        header += ["NFE", "steps", "rejected", "ms/solve"]
        body = []
        for r in self.rows:
            resolution = str(r["steps"]) if r["steps"] is not None else f"{r['rtol']:.0e}"
            cells = [r["solver"], resolution, _num(r["h"]), _num(r["strong_error"]), _num(r["strong_stderr"])]
            if sde:
                cells += [_num(r["weak_error"]), _num(r["weak_stderr"])]
            cells += [f"{r['nfe']:.0f}", f"{r['n_steps']:.0f}", f"{r['n_rejected']:.0f}",
                      f"{1e3 * r['seconds']:.2f}"]
            body.append(cells)
        lines += _format(header, body)
        lines.append("")
        header = ["solver", "theory strong" if sde else "theory", "fitted strong (95% CI)" if sde else "fitted (95% CI)"]
        if sde:
            header += ["theory weak", "fitted weak (95% CI)"]
        body = []
        for name in self.solvers:
            cells = [name, _num(self.theory(name, "strong"), "g"), str(self.fit(name, "strong"))]
            if sde:
                cells += [_num(self.theory(name, "weak"), "g"), str(self.fit(name, "weak"))]
            body.append(cells)
        lines += _format(header, body)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    # --- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        orders = {name: {m: fit._asdict() for m, fit in fits.items()} for name, fits in self.orders().items()}
        return _clean({"meta": self.meta, "solvers": self.solvers, "rows": self.rows, "orders": orders})

    @classmethod
    def from_dict(cls, data: dict) -> "BenchResult":
        """Inverse of :meth:`to_dict` (fitted orders are recomputed from the rows)."""
        return cls(meta=dict(data["meta"]), solvers=dict(data["solvers"]), rows=[dict(r) for r in data["rows"]])

    def to_json(self, path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=1)

    @classmethod
    def from_json(cls, path) -> "BenchResult":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    # --- plots -----------------------------------------------------------------------------------

    def plot_convergence(self, path=None):
        """Error against step size with reference slopes; see :func:`sdekit.bench.plots.plot_convergence`."""
        from .plots import plot_convergence
        return plot_convergence(self, path)

    def plot_work_precision(self, path=None):
        """Error against NFE and seconds; see :func:`sdekit.bench.plots.plot_work_precision`."""
        from .plots import plot_work_precision
        return plot_work_precision(self, path)


def _num(value, spec: str = ".3e") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _format(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), line(["-" * w for w in widths])] + [line(row) for row in body]
