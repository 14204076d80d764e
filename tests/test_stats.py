"""Student-t quantiles and Welch intervals against table values."""

import math

import pytest

from plainnet.stats import mean_std, t_cdf, t_quantile, welch


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)


def test_t_distribution_limits():
    assert t_quantile(0.975, 1e7) == pytest.approx(1.95996, abs=1e-4)  # the normal's
    assert t_quantile(0.95, 3) == pytest.approx(2.353, abs=1e-3)
    assert t_quantile(0.95, 4) == pytest.approx(2.132, abs=1e-3)
    assert 2.132 < t_quantile(0.95, 3.5) < 2.353  # Welch's df need not be an integer
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(-2.0, 5) == pytest.approx(1 - t_cdf(2.0, 5))


def test_mean_std_and_welch_interval():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert math.isnan(mean_std([5.0])[1])
    # Two groups of 3 with std 1 each: diff -3, se sqrt(2/3), Welch df 4 -> t 2.776.
    iv = welch([(1, [1.0, 2.0, 3.0]), (-1, [4.0, 5.0, 6.0])])
    assert iv.estimate == pytest.approx(-3.0)
    assert iv.df == pytest.approx(4.0)
    assert iv.high - iv.estimate == pytest.approx(2.7764 * math.sqrt(2 / 3), abs=1e-3)
    # Unequal variances: df falls below n1 + n2 - 2.
    iv = welch([(1, [0.0, 1.0, 2.0, 3.0]), (-1, [0.0, 10.0, 20.0])])
    assert 2.0 < iv.df < 5.0
    assert not welch([(1, [1.0]), (-1, [2.0, 3.0])]).known
