"""Shared test helpers."""
import math


def fitted_slope(step_sizes, errors) -> float:
    """Least-squares slope of log(error) against log(step size)."""
    xs = [math.log(h) for h in step_sizes]
    ys = [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
