"""The Student-t interval over seeds (madbench.stats) against tables and by coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from madbench.stats import intervals_separate, t_interval


def test_t_interval_matches_the_student_t_quantile():
    x = [1.0, 2.0, 4.0, 7.0, 11.0]
    r = t_interval(x)
    half = 2.7764451051977987 * np.std(x, ddof=1) / math.sqrt(5)  # t_{0.975, 4} from tables
    assert r["n"] == 5 and r["mean"] == pytest.approx(5.0)
    assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(half, rel=1e-9)
    one = t_interval([3.0, float("nan"), None, float("inf")])
    assert one["n"] == 1 and one["mean"] == 3.0 and math.isnan(one["ci_low"])
    assert t_interval([])["n"] == 0 and math.isnan(t_interval([])["mean"])
    with pytest.raises(ValueError, match="level"):
        t_interval(x, level=1.5)


def test_t_interval_covers_the_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    draws = rng.normal(2.0, 3.0, size=(4000, 5))
    hits = sum(r["ci_low"] <= 2.0 <= r["ci_high"] for r in map(t_interval, draws))
    # 95 % coverage; binomial sd over 4000 trials is 0.0034, allow 4 sd
    assert abs(hits / 4000 - 0.95) < 4 * 0.0034


def test_intervals_separate_only_when_disjoint_and_defined():
    a, b = t_interval([1.0, 1.1, 0.9]), t_interval([5.0, 5.1, 4.9])
    assert intervals_separate(a, b) and intervals_separate(b, a)
    c = t_interval([0.0, 2.0, 4.0])  # wide, overlaps a
    assert not intervals_separate(a, c)
    assert not intervals_separate(a, t_interval([9.0]))  # one seed: no interval
