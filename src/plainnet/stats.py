"""The few statistics the report needs, written out (no scipy): mean and sample standard
deviation over seeds, and Welch's confidence interval for a difference of means, with the
Student-t quantile found by bisection on the regularised incomplete beta function."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); std is NaN for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes)."""
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 300):
        # Each step applies the even term, then the odd term, of the fraction.
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for term in (even, odd):
            d = 1.0 / guard(1.0 + term * d)
            c = guard(1.0 + term / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function with ``df`` (real, > 0) degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on `t_cdf`; |error| < 1e-9)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


@dataclass
class Interval:
    """An estimate with its two-sided confidence interval (``low``/``high`` NaN if unknown)."""

    estimate: float
    low: float
    high: float
    df: float
    n: tuple[int, ...]

    @property
    def known(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


def welch(terms: Sequence[tuple[float, Sequence[float]]], level: float = 0.95) -> Interval:
    """Confidence interval of ``sum(c * mean(values))`` over independent groups (Welch).

    The variance is ``sum(c^2 s^2 / n)``, the degrees of freedom Welch-Satterthwaite's. With two
    groups and coefficients +1, -1 this is the usual Welch interval of a difference of means.
    Groups with fewer than two values leave the interval unknown (NaN).
    """
    estimate = sum(c * mean_std(v)[0] for c, v in terms)
    n = tuple(len(v) for _, v in terms)
    if min(n, default=0) < 2:
        return Interval(estimate, math.nan, math.nan, math.nan, n)
    parts = [c * c * mean_std(v)[1] ** 2 / len(v) for c, v in terms]
    var = sum(parts)
    if var == 0:
        return Interval(estimate, estimate, estimate, math.inf, n)
    df = var**2 / sum(p * p / (len(v) - 1) for p, (_, v) in zip(parts, terms, strict=True))
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(var)
    return Interval(estimate, estimate - half, estimate + half, df, n)
