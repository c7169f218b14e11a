"""What ``madbench rate-separation`` writes: RESULTS/rate_separation/{curves,slopes}.csv, the
stationarity checks, meta.json, and the columns of the slopes table."""

from __future__ import annotations

from pathlib import Path

CURVES = "curves.csv"
SLOPES = "slopes.csv"
STATIONARITY = "stationarity.csv"
META = "meta.json"
#: the figures (RESULTS/figures/<name>.{png,pdf})
FIGURES = ("rate_separation_anatomy", "rate_separation_tolerance", "rate_separation_tempering")
#: the leading columns of slopes.csv (a fitted slope, its interval and the prediction)
SLOPE_COLUMNS = [
    "manifold",
    "family",
    "quantity",
    "score",
    "alpha",
    "beta",
    "error_type",
    "slope",
    "ci_low",
    "ci_high",
    "predicted",
]


def rate_separation_dir(results: str | Path) -> Path:
    """RESULTS/rate_separation."""
    return Path(results) / "rate_separation"
