"""Who is ahead, on what, with what certainty: leaderboards and pairwise comparisons over seeds.

Both read the long summary of :func:`madbench.aggregate.summarize` (one row per grid cell and
metric with the mean and the 95 % Student-t interval over seeds). A method is *ahead* of another
on a metric only when their intervals do not overlap (:func:`madbench.stats.intervals_separate`)
and its mean is better; overlapping intervals are *indistinguishable*. The oracle (the exact
score) is a reference, never a competitor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from madbench.aggregate import CELL, NOT_CONVERGED, family_metrics, fmt_mean_ci, headline_metrics
from madbench.stats import intervals_separate

#: how each headline metric is read: "lower" is better, or "one" (closer to 1 is better)
BETTER = {
    "nll": "lower",
    "dist_mean": "lower",
    "w1": "lower",
    "w2": "lower",
    "mmd2_h0.3": "lower",
    "tv": "lower",
    "kl": "lower",
    "marginal_mae": "lower",
    "correlation_mae": "lower",
    "angle_ks": "lower",
    "score_error_integral": "lower",
    "normalisation": "one",
}
ARROW = {"lower": "↓", "one": "→1"}
#: methods shown for reference, never ranked
REFERENCE_METHODS = ("oracle",)
#: the pairs compared in the findings (the new method first)
PAIRS = (("mad", "dsm"), ("mad", "rsgm"), ("dsm", "rsgm"))


def badness(metric: str, value: float) -> float:
    """What is minimised for ``metric``: the value, or its distance to 1 (``normalisation``)."""
    return abs(value - 1) if BETTER.get(metric) == "one" else value


def _interval(row: pd.Series, metric: str) -> dict[str, float]:
    """The interval of a summary row in badness units (for 'one' metrics: distance to 1)."""
    lo, hi, mean = row["ci_low"], row["ci_high"], row["mean"]
    if BETTER.get(metric) != "one" or not (math.isfinite(lo) and math.isfinite(hi)):
        return {"mean": badness(metric, mean), "ci_low": lo, "ci_high": hi}
    a, b = abs(lo - 1), abs(hi - 1)
    return {"mean": badness(metric, mean), "ci_low": 0.0 if lo <= 1 <= hi else min(a, b),
            "ci_high": max(a, b)}  # fmt: skip


def verdict(a: pd.Series, b: pd.Series, metric: str, names: tuple[str, str]) -> str:
    """'<a> ahead', '<b> ahead' or 'indistinguishable' (no interval: 'no interval')."""
    ia, ib = _interval(a, metric), _interval(b, metric)
    if not all(math.isfinite(v) for v in (*ia.values(), *ib.values())):
        return "no interval"
    if not intervals_separate(ia, ib):
        return "indistinguishable"
    return f"{names[0]} ahead" if ia["mean"] < ib["mean"] else f"{names[1]} ahead"


@dataclass
class Board:
    """One cell's leaderboard: a formatted table (methods x metrics, floors) and its leaders."""

    dataset: str
    split: str
    schedule: str
    table: pd.DataFrame
    #: metric -> (leading method, whether its interval separates from every other competitor)
    leaders: dict[str, tuple[str, bool]]


def leaderboards(
    summary: pd.DataFrame, family: str, unconverged: set[tuple] = frozenset()
) -> list[Board]:
    """One :class:`Board` per (dataset, split, schedule) of ``family``: headline metrics, the
    noise floor of each distributional metric, the leader of each metric among the competitors
    (bold where separated); † marks the means in ``unconverged``
    (:func:`madbench.aggregate.not_converged`)."""
    fam = summary[summary["family"] == family]
    metrics = [m for m in family_metrics(fam) if m in BETTER]
    boards = []
    for (dataset, split, schedule), g in fam.groupby(CELL[:3], sort=True):
        boards.append(_board(g, (dataset, split, schedule), metrics, unconverged))
    return boards


def _board(g: pd.DataFrame, cell: tuple, metrics: list[str], unconverged: set[tuple]) -> Board:
    by = {(r.method, r.metric): r for r in g.itertuples()}
    methods = sorted(g["method"].unique(), key=lambda m: (m in REFERENCE_METHODS, m))
    leaders = {}
    for m in metrics:
        rows = {k: pd.Series(by[(k, m)]._asdict()) for k in methods if (k, m) in by}
        rows = {k: r for k, r in rows.items() if k not in REFERENCE_METHODS and r["n"] > 0}
        if len(rows) < 2:
            continue
        best = min(rows, key=lambda k: badness(m, rows[k]["mean"]))
        others = [k for k in rows if k != best]
        sep = all(verdict(rows[best], rows[k], m, (best, k)) == f"{best} ahead" for k in others)
        leaders[m] = (best, sep)
    cells = []
    for k in methods:
        row = {"method": k}
        for m in metrics:
            r = by.get((k, m))
            row[m] = fmt_mean_ci(r.mean, r.ci_low, r.ci_high) if r is not None else "–"
            row[m] += NOT_CONVERGED if (*cell, k, m) in unconverged else ""
        cells.append(row)
    floor = {"method": "noise floor"}
    for m in metrics:
        f = g[g["metric"] == f"floor_{m}"]
        floor[m] = fmt_mean_ci(*f.iloc[0][["mean", "ci_low", "ci_high"]]) if len(f) else ""
    table = pd.DataFrame([*cells, floor], columns=["method", *metrics])
    return Board(*cell, table, leaders)


def comparisons(summary: pd.DataFrame, pairs=PAIRS) -> pd.DataFrame:
    """Every pairwise comparison of ``pairs`` on every headline metric of every cell: the two
    means and intervals (formatted as in the tables) and the verdict."""
    rows = []
    metrics = [m for m in headline_metrics(summary["metric"].dropna().unique()) if m in BETTER]
    for key, g in summary.groupby(["family", *CELL[:3]], sort=True):
        by = g.set_index(["method", "metric"])
        for a, b in pairs:
            for m in metrics:
                if (a, m) not in by.index or (b, m) not in by.index:
                    continue
                ra, rb = by.loc[(a, m)], by.loc[(b, m)]
                if ra["n"] == 0 or rb["n"] == 0:
                    continue
                rows.append(
                    dict(zip(["family", *CELL[:3]], key, strict=True), metric=m, a=a, b=b,
                         a_value=fmt_mean_ci(ra["mean"], ra["ci_low"], ra["ci_high"]),
                         b_value=fmt_mean_ci(rb["mean"], rb["ci_low"], rb["ci_high"]),
                         a_n=int(ra["n"]), b_n=int(rb["n"]), verdict=verdict(ra, rb, m, (a, b)))
                )  # fmt: skip
    cols = ["family", *CELL[:3], "metric", "a", "b", "a_value", "b_value", "a_n", "b_n"]
    return pd.DataFrame(rows, columns=cols + ["verdict"])
