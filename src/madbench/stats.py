"""Statistics over seeds: the Student-t interval of a mean (the one used everywhere)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import stats

LEVEL = 0.95


def t_interval(values: Iterable[float | None], level: float = LEVEL) -> dict[str, float]:
    """n, mean, std and the two-sided Student-t interval of the mean of the finite ``values``.

    mean -/+ t_{(1 + level)/2, n - 1} s / sqrt(n), s the sample standard deviation (ddof 1).
    None, NaN and infinite values are left out (``n`` counts the rest); with n = 1 the
    interval is undefined (NaN), with n = 0 everything is NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x = np.asarray([v for v in values if v is not None], dtype=float).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    nan = math.nan
    if n == 0:
        return {"n": 0, "mean": nan, "std": nan, "ci_low": nan, "ci_high": nan}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": nan, "ci_low": nan, "ci_high": nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def intervals_separate(a: dict[str, float], b: dict[str, float]) -> bool:
    """True when two intervals of :func:`t_interval` are both defined and do not overlap."""
    bounds = (a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"])
    if not all(math.isfinite(v) for v in bounds):
        return False
    return a["ci_high"] < b["ci_low"] or b["ci_high"] < a["ci_low"]
