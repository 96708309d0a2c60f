"""Convergence and work–precision plots of a :class:`~sdekit.bench.BenchResult` (matplotlib, Agg).

Both functions return the matplotlib ``Figure`` and write it to ``path`` when given (format from the
suffix, e.g. ``.png``, ``.pdf``).
"""
from __future__ import annotations

import math

from .result import METRICS


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _metrics(result) -> list[str]:
    return [m for m in METRICS if any(r[f"{m}_error"] is not None for r in result.rows)]


def _points(rows, x_key: str, metric: str):
    pairs = [(r[x_key], r[f"{metric}_error"]) for r in rows]
    pairs = [(x, e) for x, e in pairs if x is not None and e is not None and x > 0 and e > 0
             and math.isfinite(x) and math.isfinite(e)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _stderr_bars(rows, metric: str, errors):
    """Monte Carlo standard errors as asymmetric bars that stay positive on a log axis."""
    stderr = [r.get(f"{metric}_stderr") or 0.0 for r in rows if r[f"{metric}_error"] is not None
              and r[f"{metric}_error"] > 0]
    if len(stderr) != len(errors) or not any(stderr):
        return None
    return [[min(s, 0.9 * e) for s, e in zip(stderr, errors)], stderr]


def _label(metric: str, kind: str) -> str:
    if kind == "ode":
        return "error |x_N - x(t1)|"
    return "strong error E|X_N - X(t1)|" if metric == "strong" else "weak error max|E f(X_N) - E f(X(t1))|"


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_convergence(result, path=None):
    """Error against step size ``h`` (log–log), one panel per available metric, each solver with
    Monte Carlo standard-error bars and a dashed reference slope ``C h^p`` at its declared order ``p``
    through its coarsest point."""
    plt = _pyplot()
    metrics = _metrics(result) or ["strong"]
    kind = result.meta.get("kind", "sde")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for index, name in enumerate(result.solvers):
            h, errors = _points(result.rows_of(name), "h", metric)
            if not h:
                continue
            color = f"C{index % 10}"
            fit = result.fit(name, metric)
            label = name if math.isnan(fit.order) else f"{name} (fit {fit.order:.2f})"
            ax.errorbar(h, errors, yerr=_stderr_bars(result.rows_of(name), metric, errors), fmt="o-",
                        color=color, label=label, capsize=2)
            theory = result.theory(name, metric)
            if theory:
                anchor = max(range(len(h)), key=lambda i: h[i])
                ref = [errors[anchor] * (x / h[anchor]) ** theory for x in h]
                ax.plot(h, ref, "--", color=color, alpha=0.6, label=f"O(h^{theory:g})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step size h")
        ax.set_ylabel(_label(metric, kind))
        ax.set_title(f"{result.meta.get('problem')}: {metric if kind == 'sde' else 'global'} convergence")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_work_precision(result, path=None):
    """Error against NFE and against wall-clock seconds per solve (log–log), for the strong error
    (the weak error when no pathwise solution is known)."""
    plt = _pyplot()
    metrics = _metrics(result) or ["strong"]
    metric = "strong" if "strong" in metrics else metrics[0]
    kind = result.meta.get("kind", "sde")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    for ax, (x_key, x_label) in zip(axes[0], [("nfe", "NFE (drift evaluations per solve)"),
                                              ("seconds", "wall time per solve (s)")]):
        for index, name in enumerate(result.solvers):
            x, errors = _points(result.rows_of(name), x_key, metric)
            if x:
                ax.loglog(x, errors, "o-", color=f"C{index % 10}", label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(_label(metric, kind))
        ax.set_title(f"{result.meta.get('problem')}: work-precision")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, path)
