"""flood_cli.compare.stats: Student's t against tables and scipy, Welch and pooled intervals, verdicts."""

from __future__ import annotations

import math
import statistics

import pytest

from flood_cli.compare.stats import (
    HIGHER,
    LOWER,
    NO_SPREAD,
    ONE_SEED,
    ONE_SEED_BASELINE,
    ONE_SEED_GROUP,
    WITHIN_NOISE,
    Interval,
    Sample,
    difference_interval,
    holm_adjust,
    interval_verdict,
    p_verdict,
    paired_interval,
    paired_p_value,
    regularized_incomplete_beta,
    student_t_quantile,
    two_sided_p,
    verdict_for,
)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 5, 2.571),
        (0.975, 10, 2.228),
        (0.975, 30, 2.042),
        (0.95, 10, 1.812),
        (0.995, 3, 5.841),
        (0.975, 1e7, 1.960),
    ],
)
def test_student_t_quantile_matches_tables(p, df, expected):
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [  # Welch's df is not an integer; values from scipy.stats.t.ppf
        (0.975, 2.5, 3.5746548420036817),
        (0.975, 3.7, 2.8675207071911895),
        (0.95, 1.5, 3.70518082009675),
        (0.975, 17.3, 2.1070320037534676),
        (0.999, 4, 7.173182219782307),
    ],
)
def test_student_t_quantile_matches_scipy_for_any_df(p, df, expected):
    assert student_t_quantile(p, df) == pytest.approx(expected, rel=1e-9)


def test_student_t_quantile_is_exact_for_one_degree_of_freedom_and_symmetric():
    # With df = 1, t is Cauchy: the quantile is tan(pi (p - 1/2)).
    assert student_t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    assert student_t_quantile(0.025, 7) == pytest.approx(-student_t_quantile(0.975, 7), rel=1e-12)
    assert student_t_quantile(0.5, 3) == 0.0


@pytest.mark.parametrize(("p", "df"), [(0.0, 3), (1.0, 3), (0.5, 0)])
def test_student_t_quantile_rejects_impossible_input(p, df):
    with pytest.raises(ValueError):
        student_t_quantile(p, df)


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [
        (1, 1, 0.3, 0.3),  # uniform
        (3, 1, 0.5, 0.125),  # I_x(a, 1) = x^a
        (4, 4, 0.5, 0.5),  # symmetric
        (2, 3, 0.0, 0.0),
        (2, 3, 1.0, 1.0),
        (2, 3, 0.4, 0.5248),  # 1 - (1-x)^4 - 4x(1-x)^3
    ],
)
def test_regularized_incomplete_beta(a, b, x, expected):
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize(
    ("values", "mean", "sd"),
    [((0.8,), 0.8, None), ((0.8, 0.9), 0.85, math.sqrt(0.005)), ((0.5, 0.5, 0.5), 0.5, 0.0)],
)
def test_sample_mean_and_sd(values, mean, sd):
    sample = Sample(values)
    assert (sample.n, sample.mean) == (len(values), pytest.approx(mean))
    assert sample.sd == (None if sd is None else pytest.approx(sd))


def test_welch_interval_by_hand():
    group, baseline = Sample((0.7968, 0.7990)), Sample((0.8100, 0.8142, 0.8200))
    interval = difference_interval(group, baseline)
    var_g, var_b = group.sd**2 / 2, baseline.sd**2 / 3
    df = (var_g + var_b) ** 2 / (var_g**2 / 1 + var_b**2 / 2)
    half = student_t_quantile(0.975, df) * math.sqrt(var_g + var_b)
    difference = group.mean - baseline.mean
    assert interval.method == "welch"
    assert interval.df == pytest.approx(df)
    assert (interval.low, interval.high) == pytest.approx((difference - half, difference + half))


def test_welch_with_one_side_without_spread_uses_the_other_sides():
    interval = difference_interval(Sample((0.8, 0.8)), Sample((0.81, 0.82, 0.83)))
    half = student_t_quantile(0.975, 2) * 0.01 / math.sqrt(3)
    assert interval.method == "welch" and interval.df == pytest.approx(2)
    assert (interval.low, interval.high) == pytest.approx((-0.02 - half, -0.02 + half))


def test_one_seed_against_several_borrows_their_spread():
    interval = difference_interval(Sample((0.80,)), Sample((0.81, 0.82, 0.83)))
    half = student_t_quantile(0.975, 2) * 0.01 * math.sqrt(1 + 1 / 3)
    assert interval.method == "pooled" and interval.df == 2
    assert (interval.low, interval.high) == pytest.approx((-0.02 - half, -0.02 + half))


@pytest.mark.parametrize(
    ("group", "baseline", "verdict"),
    [
        ((0.80,), (0.81,), ONE_SEED),
        ((0.8, 0.8), (0.9, 0.9), NO_SPREAD),  # Welch with sd 0 on both sides
        ((0.8,), (0.9, 0.9), NO_SPREAD),  # pooled, borrowing a spread of 0
        ((0.8, 0.8, 0.8), (0.9,), NO_SPREAD),
    ],
)
def test_no_interval_without_a_noise_estimate(group, baseline, verdict):
    """Never a zero-width interval: it would read as certainty, not as missing noise."""
    group, baseline = Sample(group), Sample(baseline)
    interval = difference_interval(group, baseline)
    assert interval is None
    assert verdict_for(interval, group, baseline) == verdict


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [((-0.01, 0.02), WITHIN_NOISE), ((-0.03, -0.01), LOWER), ((0.01, 0.03), HIGHER)],
)
def test_verdicts(interval, verdict):
    two = Sample((0.8, 0.9))
    assert verdict_for(Interval(*interval, "welch", 3.0), two, two) == verdict


def test_paired_interval_by_hand():
    """The README's seeds: flooding b = 0.1 − baseline at seeds 1, 2, 3."""
    differences = (0.1970 - 0.1665, 0.1632 - 0.1268, 0.2021 - 0.2261)
    interval = paired_interval(differences)
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * sd / math.sqrt(3)  # t quantile for df 2: (2p − 1) / sqrt(2p(1 − p))
    assert (interval.method, interval.df) == ("paired", 2.0)
    assert (interval.low, interval.high) == pytest.approx((mean - half, mean + half), rel=1e-9)
    assert (round(interval.low, 4), round(interval.high, 4)) == (-0.0684, 0.0970)
    assert interval_verdict(interval) == WITHIN_NOISE


@pytest.mark.parametrize(
    ("differences", "scale"),
    [
        ((0.01,), 0.8),  # one shared seed
        ((-0.02, -0.02), 0.8),  # the same difference on every seed
        ((0.79 - 0.80, 0.81 - 0.82), 0.82),  # the same but for float rounding (17th digit)
        ((math.inf, 0.1), 1.0),
        ((1e308, -1.7e308, 1e308), 1.7e308),
    ],
)
def test_no_paired_interval_without_spread_or_beyond_a_float(differences, scale):
    assert paired_interval(differences, scale=scale) is None


def test_a_consistent_paired_difference_is_lower_where_welch_sees_noise():
    group, baseline = Sample((0.79, 0.888, 0.985)), Sample((0.80, 0.90, 1.00))
    assert verdict_for(difference_interval(group, baseline), group, baseline) == WITHIN_NOISE
    paired = paired_interval([g - b for g, b in zip(group.values, baseline.values, strict=True)], scale=1.0)
    assert paired.high < 0 and interval_verdict(paired) == LOWER


def test_paired_p_value_against_closed_forms():
    # df = 1: t is Cauchy, two-sided p = 1 − 2·atan|t|/π. Differences 1, 3: t = 2 / (√2/√2) = 2.
    assert paired_p_value([1.0, 3.0]) == pytest.approx(1 - 2 * math.atan(2.0) / math.pi, rel=1e-9)
    # df = 2: P(T ≤ t) = 1/2 + t / (2√(2 + t²)), so p = 1 − |t| / √(2 + t²).
    t = 3.0 / math.sqrt(7.0 / 3.0)  # differences 1, 2, 6: mean 3, sd √7
    assert paired_p_value([1.0, 2.0, 6.0]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert paired_p_value([-1.0, -2.0, -6.0]) == paired_p_value([1.0, 2.0, 6.0])
    # df = 4 at the table's 2.776 (two-sided 5 %): differences with mean/se = 2.776445.
    d = [1.0, 2.0, 3.0, 4.0, 5.0]
    shift = 2.776445 * math.sqrt(2.5) / math.sqrt(5) - 3.0
    assert paired_p_value([x + shift for x in d]) == pytest.approx(0.05, abs=1e-6)


@pytest.mark.parametrize("differences", [[], [0.1], [0.2, 0.2, 0.2], [0.1, float("nan")]])
def test_no_paired_p_value_without_spread(differences):
    assert paired_p_value(differences) is None


def test_holm_adjust_by_hand():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → kept monotone: 0.06.
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([None, 0.5, 0.2]) == [None, pytest.approx(0.5), pytest.approx(0.4)]
    assert holm_adjust([0.6, 0.7]) == [1.0, 1.0]
    assert holm_adjust([]) == []


def test_welch_p_value_against_closed_forms():
    """Welch's p: two-sided, from the same t and df as its interval. Equal n and equal sd
    make Welch's df an integer, 2(n − 1), where Student's t has a closed form."""
    # n = 2 each, variance 0.0002 each: d = −0.05, se = √(0.0002/2 + 0.0002/2), df 2.
    group, baseline = Sample((0.70, 0.72)), Sample((0.75, 0.77))
    interval = difference_interval(group, baseline)
    se = math.sqrt(0.0002 / 2 + 0.0002 / 2)
    t = -0.05 / se
    assert interval.df == pytest.approx(2.0)
    assert interval.p == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-9)  # df 2: p = 1 − |t|/√(2 + t²)
    # n = 3 each, the same sd: df 4, where p = 1 − x(3 − x²)/2 with x = |t|/√(4 + t²).
    group, baseline = Sample((0.70, 0.73, 0.76)), Sample((0.74, 0.77, 0.80))
    interval = difference_interval(group, baseline)
    t = -0.04 / math.sqrt(2 * 0.03**2 / 3)
    x = abs(t) / math.sqrt(4 + t * t)
    assert interval.df == pytest.approx(4.0)
    assert interval.p == pytest.approx(1 - x * (3 - x * x) / 2, rel=1e-9)
    # The table: t = 2.776 with df 4 is the two-sided 5 % point; the interval's edge touches 0 there.
    assert two_sided_p(2.776445, 4) == pytest.approx(0.05, abs=1e-6)


def test_p_below_005_exactly_when_the_interval_leaves_out_0():
    for group, baseline in [((0.70, 0.72), (0.75, 0.77)), ((0.70, 0.73, 0.76), (0.74, 0.77, 0.80)),
                            ((0.7968, 0.7990), (0.8100, 0.8142, 0.8200)), ((0.80, 0.82), (0.81, 0.80, 0.83))]:
        interval = difference_interval(Sample(group), Sample(baseline))
        assert (interval.p < 0.05) == (not interval.low <= 0 <= interval.high), (group, baseline)
        assert p_verdict(interval.p, statistics.mean(group) - statistics.mean(baseline)) == interval_verdict(interval)
    paired = paired_interval((0.1970 - 0.1665, 0.1632 - 0.1268, 0.2021 - 0.2261))
    assert paired.p == pytest.approx(paired_p_value((0.1970 - 0.1665, 0.1632 - 0.1268, 0.2021 - 0.2261)), rel=1e-12)


@pytest.mark.parametrize(
    ("group", "baseline", "verdict"),
    [((0.70,), (0.80, 0.81, 0.82), ONE_SEED_GROUP), ((0.70, 0.71, 0.72), (0.80,), ONE_SEED_BASELINE)],
)
def test_a_pooled_interval_gives_no_verdict(group, baseline, verdict):
    """One seed on one side: the interval borrows the other side's spread and leaves out
    0 here, but that seed's own noise is unmeasured: no better/worse rests on it."""
    group, baseline = Sample(group), Sample(baseline)
    interval = difference_interval(group, baseline)
    assert interval.method == "pooled" and interval.high < 0
    assert verdict_for(interval, group, baseline) == verdict
