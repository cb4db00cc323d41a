"""Seed statistics for `flood compare`: is a difference larger than seed noise?

Pure functions on plain floats: the mean and spread of one value per seed, Student's t
quantile for any real degrees of freedom, and the interval of a difference of means
(Welch's, or pooled when one side has a single seed). Pure Python on purpose: scipy and
numpy would cost more to import than a thousand runs take to compare.

When both groups ran the same seeds, each seed gives a *paired* difference (same data
order, same initialisation); Student's t on those differences (`paired_interval`) takes
out the part of the seed noise that the two settings share.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CI_LEVEL = 0.95
# A difference is a verdict ("lower", "higher") when the p of its test is below this:
# the same as its 95 % interval leaving out 0, before any adjustment for many comparisons.
ALPHA = 0.05

# The verdicts, in words a reader can act on. Lower loss is better.
LOWER = "lower (better)"
HIGHER = "higher (worse)"
WITHIN_NOISE = "within seed noise"
ONE_SEED = "one seed per group: no noise estimate"
# One side has a single seed: an interval can borrow the other side's spread, but that
# side's own noise is unmeasured, so no better/worse rests on it.
ONE_SEED_GROUP = "one seed: no noise estimate of its own"
ONE_SEED_BASELINE = "one baseline seed: no noise estimate of its own"
NO_SPREAD = "no seed spread to estimate noise"
OUT_OF_RANGE = "losses beyond float range: no interval"


@dataclass(frozen=True)
class Sample:
    """One value per seed (a seed group's best validation losses)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    # statistics computes in exact fractions: equal values have a mean equal to each of
    # them and an sd of exactly 0, never a rounding residue that passes for seed spread.
    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (n − 1); None for a single seed; inf when it is
        beyond a float (losses near 1e308, which no real run reaches)."""
        if self.n < 2:
            return None
        try:
            return statistics.stdev(self.values)
        except OverflowError:
            return math.inf


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # "welch", "pooled" or "paired"
    df: float
    # Two-sided p of the t test that the difference is 0 (same t, same df as the
    # interval): below ALPHA exactly when the 95 % interval leaves out 0.
    p: float | None = None


def two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom (any real df > 0)."""
    return min(1.0, 2.0 * student_t_cdf(-abs(t), df))


def difference_interval(group: Sample, baseline: Sample, level: float = CI_LEVEL) -> Interval | None:
    """Interval for mean(group) − mean(baseline); None when there is no noise estimate.

    Welch's t when both groups have two or more seeds (no equal-variance assumption).
    When one side has a single seed, its spread is unknown, so the other side's spread
    stands in for it (Student's pooled interval, which assumes equal spread).

    None with one seed on both sides, and None when the seeds that are there show no
    spread at all (sd 0): a zero-width interval would read as certainty, when it only
    means the noise could not be measured (see `verdict_for`). None too when the
    figures leave the range of a float (losses near 1e308: products, never powers,
    so that they become inf rather than raise).
    """
    if group.n < 2 and baseline.n < 2:
        return None
    if group.n >= 2 and baseline.n >= 2:
        var_g, var_b = group.sd * group.sd / group.n, baseline.sd * baseline.sd / baseline.n  # type: ignore[operator]
        standard_error = math.sqrt(var_g + var_b)
        # Welch–Satterthwaite degrees of freedom (0/0 when the variances underflow).
        denominator = var_g * var_g / (group.n - 1) + var_b * var_b / (baseline.n - 1)
        df = (var_g + var_b) * (var_g + var_b) / denominator if denominator > 0.0 else math.nan
        method = "welch"
    else:
        spread_from = group if group.n >= 2 else baseline
        standard_error = spread_from.sd * math.sqrt(1.0 / group.n + 1.0 / baseline.n)  # type: ignore[operator]
        df = float(spread_from.n - 1)
        method = "pooled"
    if standard_error == 0.0 or not (math.isfinite(standard_error) and math.isfinite(df)):
        return None
    difference = group.mean - baseline.mean
    half_width = student_t_quantile(0.5 + level / 2.0, df) * standard_error
    low, high = difference - half_width, difference + half_width
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return Interval(low, high, method, df, two_sided_p(difference / standard_error, df))


# Differences of losses that agree to this fraction of the losses' size are equal up to
# float rounding: 0.79 − 0.80 and 0.81 − 0.82 differ in the 17th digit.
ROUNDING = 1e-9


def same_up_to_rounding(differences: Sequence[float], scale: float) -> bool:
    """Whether differences of losses of size ``scale`` are all equal but for rounding."""
    return max(differences) - min(differences) <= ROUNDING * abs(scale)


def paired_interval(differences: Sequence[float], level: float = CI_LEVEL, scale: float = 0.0) -> Interval | None:
    """Interval for the mean of per-seed differences (group − baseline at the same seed):
    Student's t with n − 1 degrees of freedom on the differences themselves.

    None with fewer than two differences, when they have no spread (all equal, or equal
    up to float rounding for losses of size ``scale``: a zero-width interval would read
    as certainty) and when they leave the float range.
    """
    sample = Sample(tuple(differences))
    if sample.n < 2 or not all(math.isfinite(d) for d in sample.values):
        return None
    if same_up_to_rounding(sample.values, scale):
        return None
    try:
        mean, sd = sample.mean, sample.sd
    except OverflowError:
        return None
    if sd is None or sd == 0.0 or not (math.isfinite(sd) and math.isfinite(mean)):
        return None
    standard_error = sd / math.sqrt(sample.n)
    half_width = student_t_quantile(0.5 + level / 2.0, sample.n - 1) * standard_error
    low, high = mean - half_width, mean + half_width
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return Interval(low, high, "paired", float(sample.n - 1), two_sided_p(mean / standard_error, sample.n - 1))


def interval_verdict(interval: Interval) -> str:
    """Within seed noise when the interval holds 0; otherwise which way the difference goes."""
    if interval.low <= 0.0 <= interval.high:
        return WITHIN_NOISE
    return LOWER if interval.high < 0.0 else HIGHER


def p_verdict(p: float, difference: float) -> str:
    """Lower or higher when ``p`` (raw or adjusted) is below ALPHA, which way by the sign
    of the difference tested; else within seed noise."""
    if p < ALPHA and difference != 0.0:
        return LOWER if difference < 0.0 else HIGHER
    return WITHIN_NOISE


def verdict_for(interval: Interval | None, group: Sample, baseline: Sample) -> str:
    """What the interval says; without one, why there is none. A pooled interval (one
    side with a single seed) gives no verdict: that side's noise is not measured, and the
    interval only borrows the other side's spread."""
    if interval is None:
        if group.n < 2 and baseline.n < 2:
            return ONE_SEED
        if all(sample.sd == 0.0 for sample in (group, baseline) if sample.sd is not None):
            return NO_SPREAD
        return OUT_OF_RANGE
    if group.n < 2:
        return ONE_SEED_GROUP
    if baseline.n < 2:
        return ONE_SEED_BASELINE
    return interval_verdict(interval)


# ---------------------------------------------------------------------------
# Student's t distribution


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (Numerical Recipes §6.4, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast only on this side of the mean; use symmetry.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def student_t_cdf(t: float, df: float) -> float:
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_pdf(t: float, df: float) -> float:
    log_density = (
        math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        - (df + 1) / 2 * math.log1p(t * t / df)
    )
    return math.exp(log_density)


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T ≤ t) = p, for any real df > 0 (Welch's df is not an integer)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 2.0
    while student_t_cdf(high, df) < p:
        low, high = high, high * 2.0
    # Newton steps on the cdf, falling back to bisection when a step leaves the bracket.
    t = (low + high) / 2.0
    for _ in range(100):
        error = student_t_cdf(t, df) - p
        if error > 0:
            high = t
        else:
            low = t
        step = error / max(student_t_pdf(t, df), 1e-300)
        candidate = t - step
        if not low < candidate < high:
            candidate = (low + high) / 2.0
        if abs(candidate - t) <= 1e-12 * max(1.0, abs(t)):
            return candidate
        t = candidate
    return t


# ---------------------------------------------------------------------------
# Many settings against one baseline


def paired_p_value(differences: Sequence[float]) -> float | None:
    """Two-sided p of the paired t test that the mean per-seed difference is 0.

    None with fewer than two differences or none of them spread (no test is possible).
    """
    sample = Sample(tuple(differences))
    if sample.n < 2 or not all(math.isfinite(d) for d in sample.values):
        return None
    sd = sample.sd
    if not sd:
        return None
    t = sample.mean / (sd / math.sqrt(sample.n))
    return min(1.0, 2.0 * student_t_cdf(-abs(t), sample.n - 1))


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the given order (None stays None and is not
    counted). Comparing k settings with one baseline at 5 % each finds a "difference"
    somewhere far more often than 5 % of the time; an adjusted p below 0.05 keeps the
    chance of any false "difference" in the family at 5 %."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted
