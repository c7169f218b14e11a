"""Tables from run directories: one row per run, and means with 95 % Student-t intervals.

Input: the final status file of every run (``RUN/status/evaluate.json``, written by the
pipeline whatever happened), and beside it, when present, ``metrics.json`` (a flat dict of
scalars), ``run_info.json`` and ``history.csv``. A run is *ok* when its status says so and its
metrics.json exists; every other run is *failed*, keeps its row and is counted in the tables.

Statistics: over the ok seeds of one (dataset, schedule, method), mean +- t_{0.975, n-1} s/sqrt(n)
(s the sample standard deviation); with one seed the interval is undefined (NaN, shown as the
mean alone).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from madbench._utils import atomic_write
from madbench.data import DATASETS, get_dataset
from madbench.evaluate import TEXT_KEYS
from madbench.rundir import RunDir, read_csv, read_json
from madbench.stats import t_interval

COORDS = ["dataset", "family", "split", "schedule", "method", "seed"]
#: the coordinates of a grid cell (a group of seeds)
CELL = ["dataset", "split", "schedule", "method"]
STATUS_COLS = ["status", "failed_stage", "error", "attempt", "run_dir"]
#: metrics.json keys that repeat the run's coordinates or describe it (not metrics).
NON_METRIC_KEYS = {"seed", "dataset", "method", "schedule", "manifold"}
#: column prefixes of runs.csv that are not metrics of the final weights
PREFIXES = ("info.", "hist.", "bench.", "snapshot.")
#: Headline metrics shown in the family tables when present, in this order.
HEADLINE = [
    "nll",
    "dist_mean",
    "w1",
    "w2",
    "mmd2_h0.3",
    "tv",
    "kl",
    "marginal_mae",
    "correlation_mae",
    "angle_ks",
    "score_error_integral",
    "normalisation",
]
#: Label of the noise-floor row: each distributional metric between two data samples.
FLOOR_ROW = "(data vs data: noise floor)"
#: Mark of a table cell whose metric failed the convergence check.
NOT_CONVERGED = " †"
#: Cost columns (metrics.json keys or derived columns), in this order.
COST = [
    "train_steps",
    "train_steps_per_s",
    "train_wall_time_s",
    "sample_time_per_1000_s",
    "nll_nfe",
    "eval_wall_time_s",
    "eval_peak_rss_mb",
    "bench.train_max_rss_mb",
    "bench.train_s",
    "bench.evaluate_s",
]
EARTH_COLUMNS = {
    "earth_volcano": "Volcano",
    "earth_earthquake": "Earthquake",
    "earth_flood": "Flood",
    "earth_fire": "Fire",
}
#: Earth test NLL in nats (lower is better) as published (docs/science.md section 6; each paper's
#: own split): method -> (Volcano, Earthquake, Flood, Fire).
PUBLISHED_EARTH_NLL = {
    "uniform on S^2": ("2.531", "2.531", "2.531", "2.531"),
    "Mixture of Kent": ("-0.80 ± 0.47", "0.33 ± 0.05", "0.73 ± 0.07", "1.18 ± 0.06"),
    "Moser flow": ("-4.21 ± 0.17", "-0.16 ± 0.06", "0.57 ± 0.10", "-1.28 ± 0.05"),
    "RSGM": ("-4.92 ± 0.25", "-0.19 ± 0.07", "0.45 ± 0.17", "-1.33 ± 0.06"),
    "RDM (Huang et al.)": ("-6.61 ± 0.97", "-0.40 ± 0.05", "0.43 ± 0.07", "-1.38 ± 0.05"),
    "RFM": ("-7.93 ± 1.67", "-0.28 ± 0.08", "0.42", "-1.86 ± 0.11"),
}
#: The SO(3) wrapped-normal mixtures of the published protocol, by table column.
SO3_COLUMNS = {"so3_wrapped_16": "M = 16", "so3_wrapped_32": "M = 32", "so3_wrapped_64": "M = 64"}
#: SO(3) test log-likelihood in nats w.r.t. vol SO(3) = 8 pi^2 (higher is better) as published
#: (docs/science.md section 6): method -> (M = 16, M = 32, M = 64).
PUBLISHED_SO3_LL = {
    "uniform on SO(3)": ("-4.369", "-4.369", "-4.369"),
    "RSGM": ("0.89", "0.20", "-0.49"),
    "Moser flow": ("0.85", "0.17", "-0.49"),
    "exp-wrapped SGM": ("0.87", "0.16", "-0.58"),
}


def dataset_family(name: str) -> str:
    """The table family of a registered dataset (``Dataset.family``: discrete, sphere, so3,
    torus, earth); "other" for a name no longer registered."""
    return get_dataset(name).family if name in DATASETS else "other"


# --------------------------------------------------------------------------------------------
# One row per run
# --------------------------------------------------------------------------------------------


def flatten(d: dict, prefix: str) -> dict:
    """{'a': {'b': 1}} -> {prefix + 'a.b': 1}; lists become JSON strings."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


class RunFileError(ValueError):
    """A run file holds something the tables cannot use (the message names file and value)."""


def history_summary(run: Path) -> dict:
    """Final loss, steps/s and wall time from history.csv (empty if there is none);
    RunFileError naming the column and row of a non-numeric value."""
    h = read_csv(RunDir(run).history)
    if h is None:
        return {}
    for col in h.columns:
        bad = pd.to_numeric(h[col], errors="coerce").isna() & h[col].notna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise RunFileError(
                f"history.csv: column {col!r} has a non-numeric value {h[col].iloc[i]!r} "
                f"in data row {i + 1}"
            )
    h = h.apply(pd.to_numeric)
    last = h.iloc[-1]
    out = {f"hist.{c}": float(last[c]) for c in ("step", "loss", "wall_time") if c in h}
    if "steps_per_s" in h:
        out["hist.steps_per_s"] = float(h["steps_per_s"].median())
    return out


def run_pattern(run: Path) -> str:
    """A run directory's path below results/runs (dataset~D/split~P/...), as the pipeline's logs
    and benchmarks name their files."""
    parts = run.parts
    return "/".join(parts[parts.index("runs") + 1 :] if "runs" in parts else parts[-5:])


def benchmark_summary(bench_root: Path | None, pattern: str) -> dict:
    """Seconds and peak RSS (MB) of each stage from Snakemake's benchmark files."""
    out: dict[str, float] = {}
    for stage in ("train", "evaluate"):
        path = None if bench_root is None else bench_root / stage / f"{pattern}.tsv"
        if path is None or not path.exists():
            continue
        b = pd.read_csv(path, sep="\t")
        out[f"bench.{stage}_s"] = float(b["s"].iloc[-1])
        if "max_rss" in b and pd.notna(b["max_rss"].iloc[-1]):
            out[f"bench.{stage}_max_rss_mb"] = float(b["max_rss"].iloc[-1])
    return out


def check_metrics(metrics: dict) -> None:
    """RunFileError naming the first value of metrics.json that is text where a number (or
    null, a non-finite value) belongs."""
    for k, v in metrics.items():
        if k not in TEXT_KEYS and not (v is None or isinstance(v, bool | int | float)):
            raise RunFileError(f"metrics.json: {k!r} is {v!r}, not a number")


def run_row(status_path: Path, bench_root: Path | None = None) -> dict:
    """One table row: coordinates, status, run_info (info.*), history (hist.*), metrics.

    A run whose files the tables cannot use (no metrics.json, a non-numeric value in
    history.csv or metrics.json, ...) keeps its row, marked failed with the reason."""
    status = read_json(status_path) or {"status": "failed", "error": "unreadable status file"}
    run = Path(status.get("run_dir", status_path.parent.parent))
    row = {k: status.get(k) for k in ("dataset", "schedule", "method", "seed")}
    row["split"] = status.get("split", "none")  # status files of earlier versions have none
    row.update({k: status.get(k) for k in STATUS_COLS}, run_dir=str(run))
    row["family"] = dataset_family(str(row["dataset"]))
    try:
        row.update(_run_files(run, row["status"] == "ok", bench_root))
    except Exception as e:  # one bad run must not stop the tables of every other run
        reason = str(e) if isinstance(e, RunFileError) else f"{type(e).__name__}: {e}"
        print(f"run {run}: marked failed: {reason}", file=sys.stderr)
        if row["status"] == "ok":
            row.update(status="failed", failed_stage="results", error=reason)
    return row


def _run_files(run: Path, ok: bool, bench_root: Path | None) -> dict:
    """The info.*, hist.*, bench.* and metric columns of one run directory."""
    metrics = read_json(RunDir(run).metrics)
    if ok and metrics is None:
        raise RunFileError("metrics.json missing or unreadable")
    check_metrics(metrics or {})
    out = flatten(read_json(RunDir(run).run_info) or {}, "info.")
    snapshot = read_json(RunDir(run).snapshot_metrics) or {}
    check_metrics(snapshot)
    out.update({f"snapshot.{k}": v for k, v in snapshot.items() if k not in TEXT_KEYS})
    out.update(history_summary(run))
    out.update(benchmark_summary(bench_root, run_pattern(run)))
    for k, v in (metrics or {}).items():
        if k not in NON_METRIC_KEYS:
            out[k if k not in out and k not in COORDS + STATUS_COLS else f"metric.{k}"] = v
    return out


def collect_runs(
    status_paths: Iterable[str | Path], bench_root: Path | None = None
) -> pd.DataFrame:
    """A DataFrame with one row per run, sorted by its coordinates."""
    rows = [run_row(Path(p), bench_root) for p in status_paths]
    df = pd.DataFrame(rows)
    for col in COORDS + STATUS_COLS:
        if col not in df:
            df[col] = None
    front = COORDS + STATUS_COLS
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(["family", *CELL, "seed"]).reset_index(drop=True)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric, non-boolean metric columns (not coordinates, status, info.* or hist.*)."""
    skip = set(COORDS + STATUS_COLS)
    cols = []
    for c in df.columns:
        if c in skip or c.startswith(PREFIXES) or df[c].dtype == bool:
            continue
        values = pd.to_numeric(df[c], errors="coerce")
        if values.notna().any() and df[c].dropna().map(lambda v: not isinstance(v, bool)).all():
            cols.append(c)
    return cols


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def summarize(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Long table: one row per (dataset, split, schedule, method, metric) over the ok seeds."""
    metrics = metric_columns(df) if metrics is None else metrics
    keys = ["family", *CELL]
    rows = []
    for key, group in df.groupby(keys, sort=True):
        ok = group[group["status"] == "ok"]
        base = dict(zip(keys, key, strict=True), n_runs=len(group), n_failed=len(group) - len(ok))
        for m in metrics:
            vals = pd.to_numeric(ok[m], errors="coerce") if m in ok else []
            rows.append({**base, "metric": m, **t_interval(vals)})
        if not metrics:
            rows.append({**base, "metric": None, **t_interval([])})
    return pd.DataFrame(rows)


def convergence(runs: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """The convergence check: per grid cell and metric, the mean over the finished seeds of the
    final weights and of the snapshot (kept at ``snapshot_fraction`` of the steps), the change,
    and whether it is below the half-width of the final value's 95 % interval over seeds
    (``converged``; None with fewer than two seeds or no snapshot)."""
    ok = runs[runs["status"] == "ok"]
    have = [c[len("snapshot.") :] for c in ok.columns if c.startswith("snapshot.")]
    metrics = [m for m in (metrics or headline_metrics(have)) if m in have and m in ok]
    rows = []
    for key, g in ok.groupby(["family", *CELL], sort=True):
        for m in metrics:
            final = pd.to_numeric(g[m], errors="coerce")
            snap = pd.to_numeric(g[f"snapshot.{m}"], errors="coerce")
            both = final.notna() & snap.notna()
            if not both.any():
                continue
            fin, sn = t_interval(final[both]), t_interval(snap[both])
            half = (fin["ci_high"] - fin["ci_low"]) / 2 if fin["n"] > 1 else float("nan")
            change = fin["mean"] - sn["mean"]
            verdict = bool(abs(change) <= half) if half == half else None
            rows.append(
                dict(zip(["family", *CELL], key, strict=True), metric=m, n=fin["n"],
                     final=fin["mean"], snapshot=sn["mean"], change=change, half_width=half,
                     converged=verdict)
            )  # fmt: skip
    cols = ["family", *CELL, "metric", "n", "final", "snapshot", "change", "half_width"]
    return pd.DataFrame(rows, columns=cols + ["converged"])


def convergence_shown(conv: pd.DataFrame) -> pd.DataFrame:
    """The convergence table for reading: converged as yes / NO / –, numbers to 3 digits."""
    shown = conv.assign(converged=conv["converged"].map({True: "yes", False: "NO"}).fillna("–"))
    for col in ("final", "snapshot", "change", "half_width"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: f"{v:.3g}" if v == v else "–")
    return shown


def not_converged(conv: pd.DataFrame | None) -> set[tuple]:
    """(dataset, split, schedule, method, metric) of the cells the check found not converged."""
    if conv is None or conv.empty:
        return set()
    bad = conv[conv["converged"].eq(False)]
    return {(*r[:4], r[4]) for r in bad[[*CELL, "metric"]].itertuples(index=False)}


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def fmt_mean_ci(mean: float, low: float, high: float) -> str:
    """'1.23 ± 0.04' (half-width of the interval), the mean alone without an interval, or '–'."""
    if not np.isfinite(mean):
        return "–"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.3g}"
    return f"{mean:.3g} ± {(high - low) / 2:.2g}"


def metric_cell(r: pd.Series, n_ok: int) -> str:
    """``fmt_mean_ci`` of a summary row, with ``(n=k)`` when fewer than the ``n_ok`` finished
    seeds have a value for this metric (a null, i.e. non-finite, value in some seeds)."""
    cell = fmt_mean_ci(r["mean"], r["ci_low"], r["ci_high"])
    return cell + f" (n={int(r['n'])})" if 0 < r["n"] < n_ok else cell


def runs_label(n_runs: int, n_failed: int) -> str:
    """'5' when every seed finished, '3/5 (2 FAILED)' otherwise."""
    return f"{n_runs}" if n_failed == 0 else f"{n_runs - n_failed}/{n_runs} ({n_failed} FAILED)"


def headline_metrics(available: Iterable[str]) -> list[str]:
    """The curated headline metrics present, in HEADLINE order; all of them if none is."""
    available = list(available)
    chosen = [m for m in HEADLINE if m in available]
    return chosen or available


def wide_table(
    summary: pd.DataFrame, metrics: list[str], unconverged: set[tuple] = frozenset()
) -> pd.DataFrame:
    """dataset, split (where there are splits), schedule, method, seeds, then one 'mean ±
    half-width' column per metric, and a noise-floor row per dataset, split and schedule."""
    keys = CELL
    rows = []
    for key, g in summary.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True))
        n_runs, n_failed = int(g["n_runs"].iloc[0]), int(g["n_failed"].iloc[0])
        row["seeds"] = runs_label(n_runs, n_failed)
        by_metric = g.set_index("metric")
        for m in metrics:
            r = by_metric.loc[m] if m in by_metric.index else None
            row[m] = "–" if r is None else metric_cell(r, n_runs - n_failed)
            row[m] += NOT_CONVERGED if (*key, m) in unconverged else ""
        rows.append(row)
    # One noise-floor row per dataset and schedule: what a perfect model scores (metrics.json's
    # floor_<metric>, the same for every method of a dataset and seed).
    floors = summary[summary["metric"].fillna("").str.startswith("floor_")]
    for (dataset, split, schedule), g in floors.groupby(CELL[:3], sort=True):
        first = g[g["method"] == g["method"].iloc[0]].set_index("metric")
        row = dict(dataset=dataset, split=split, schedule=schedule, method=FLOOR_ROW, seeds="")
        for m in metrics:
            r = first.loc[f"floor_{m}"] if f"floor_{m}" in first.index else None
            row[m] = "" if r is None else fmt_mean_ci(r["mean"], r["ci_low"], r["ci_high"])
        rows.append(row)
    df = pd.DataFrame(rows, columns=keys + ["seeds"] + metrics)
    df = df.sort_values(CELL[:3], kind="stable").reset_index(drop=True)
    return df.drop(columns="split") if (df["split"].fillna("none") == "none").all() else df


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of the string values of ``df``."""
    cells = [[str(v).replace("|", "\\|") for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX specials; ± becomes $\\pm$."""
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("^", r"\^{}"),
        ("~", r"\~{}"),
    ):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$").replace("–", "--")


def to_latex(df: pd.DataFrame, caption: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs})."""
    head = " & ".join(latex_escape(str(c)) for c in df.columns) + r" \\"
    body = [
        " & ".join(latex_escape(str(v)) for v in row) + r" \\" for row in df.itertuples(index=False)
    ]
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{latex_escape(caption)}}}",
            r"\begin{tabular}{" + "l" * len(df.columns) + "}",
            r"\toprule",
            head,
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_text(text))


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Write ``df`` as CSV atomically."""
    atomic_write(path, lambda p: df.to_csv(p, index=False))


def write_formats(stem: Path, csv: pd.DataFrame, shown: pd.DataFrame, caption: str) -> None:
    """stem.csv (``csv``), stem.md and stem.tex (``shown``, the formatted table)."""
    write_csv(stem.with_suffix(".csv"), csv)
    write_text(stem.with_suffix(".md"), f"{caption}\n\n{to_markdown(shown)}")
    write_text(stem.with_suffix(".tex"), to_latex(shown, caption))


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------

T_NOTE = "mean ± half-width of the 95 % Student-t interval over seeds"


def family_table(
    summary: pd.DataFrame, family: str, unconverged: set[tuple] = frozenset()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long CSV rows, formatted wide table of the headline metrics) of one family."""
    long = summary[summary["family"] == family].reset_index(drop=True)
    return long, wide_table(long, family_metrics(long), unconverged)


def family_metrics(long: pd.DataFrame) -> list[str]:
    """The headline metrics (:func:`headline_metrics`) that some seed of ``long`` has."""
    present = [m for m in long["metric"].dropna().unique() if long.loc[long.metric == m, "n"].sum()]
    return headline_metrics(present)


def nll_levels(runs: pd.DataFrame) -> str:
    """'NLL read at sigma = 0.001' (or per dataset, where they differ), from the runs'
    ``nll_sigma``; '' without likelihoods."""
    if "nll_sigma" not in runs:
        return ""
    levels = (
        runs[runs["status"] == "ok"]
        .groupby("dataset")["nll_sigma"]
        .agg(lambda v: ", ".join(f"{x:.3g}" for x in sorted(set(v.dropna()))))
    )
    levels = levels[levels != ""]
    if levels.empty:
        return ""
    if levels.nunique() == 1:
        return f"NLL read at noise level sigma = {levels.iloc[0]}"
    return "NLL read at noise level sigma = " + "; ".join(f"{d}: {v}" for d, v in levels.items())


def caption(title: str, runs: pd.DataFrame, unconverged: set[tuple]) -> str:
    """A table's caption: what the cells are, the NLL's noise level, what † marks."""
    parts = [f"{title}: {T_NOTE}", nll_levels(runs)]
    if unconverged:
        parts.append(
            "† not converged: the mean moved by more than its half-width over the last part of "
            "training (convergence.csv)"
        )
    return "; ".join(p for p in parts if p)


def cost_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run cost CSV, formatted means per dataset/schedule/method) with the device."""
    cols = [c for c in COST if c in runs]
    device = next((c for c in ("info.device", "info.device_name") if c in runs), None)
    per_run = runs[COORDS + ["status"] + ([device] if device else []) + cols]
    summary = summarize(runs, cols)
    shown = wide_table(summary, cols) if cols else summary
    if device and not shown.empty:
        devices = runs.groupby(CELL)[device].agg(
            lambda s: ", ".join(sorted({str(v) for v in s.dropna()}))
        )
        shown = shown.merge(devices.rename("device").reset_index(), how="left")
    return per_run, shown


def nll_key(summary: pd.DataFrame) -> str | None:
    """The on-manifold NLL metric of the earth runs ('nll', else any key holding 'nll')."""
    keys = list(summary["metric"].dropna().unique())
    if "nll" in keys:
        return "nll"
    return next((k for k in keys if "nll" in k and "ambient" not in k), None)


def published_table(
    summary: pd.DataFrame, columns: dict[str, str], published: dict, log_likelihood: bool = False
) -> pd.DataFrame:
    """Our (method, schedule, split) rows of the datasets ``columns`` (dataset -> column) beside
    the ``published`` rows (marked): the test NLL, or with ``log_likelihood`` its negative."""
    names = list(columns.values())
    rows = [
        {"method": m, "source": "published", **dict(zip(names, v, strict=True))}
        for m, v in published.items()
    ]
    part = summary[summary["dataset"].isin(list(columns))]
    key = nll_key(part) if not part.empty else None
    if key is not None:
        sign = -1.0 if log_likelihood else 1.0
        ours = part[part["metric"] == key]
        for (method, sched, split), g in ours.groupby(["method", "schedule", "split"]):
            where = sched if split == "none" else f"{sched}, {split} split"
            what = f"-{key}" if log_likelihood else key
            row = {"method": f"{method} ({where})", "source": f"ours ({what})"}
            for r in g.itertuples():
                low, high = sorted((sign * r.ci_low, sign * r.ci_high))
                label = fmt_mean_ci(sign * r.mean, low, high)
                row[columns[r.dataset]] = label + (" [FAILED runs]" if r.n_failed else "")
            rows.append(row)
    return pd.DataFrame(rows, columns=["method", "source", *names]).fillna("–")


def earth_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Our earth test NLL beside the published numbers."""
    return published_table(summary, EARTH_COLUMNS, PUBLISHED_EARTH_NLL)


def so3_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Our SO(3) wrapped-normal test log-likelihoods beside the published numbers."""
    return published_table(summary, SO3_COLUMNS, PUBLISHED_SO3_LL, log_likelihood=True)


def write_tables(
    status_paths: Iterable[str | Path],
    out_dir: str | Path,
    families: Iterable[str],
    bench_root: str | Path | None = None,
    excluded: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Write runs.csv, summary.csv, FAMILY.{csv,md,tex}, cost.*, earth_nll.*, so3_ll.*,
    convergence.* (empty without snapshots), excluded.csv."""
    out = Path(out_dir)
    runs = collect_runs(status_paths, Path(bench_root) if bench_root else None)
    summary = summarize(runs)
    conv = convergence(runs)
    bad = not_converged(conv)
    write_csv(out / "runs.csv", runs)
    write_csv(out / "summary.csv", summary)
    for fam in families:
        long, shown = family_table(summary, fam, bad)
        fam_runs = runs[runs["family"] == fam]
        write_formats(out / fam, long, shown, caption(fam, fam_runs, bad & _cells(long)))
    per_run, shown = cost_table(runs)
    write_formats(out / "cost", per_run, shown, f"cost: {T_NOTE}")
    write_published(out, runs, summary)
    shown = convergence_shown(conv)
    note = CONVERGENCE_NOTE if not conv.empty else "convergence check: not run (config key)"
    write_formats(out / "convergence", conv, shown.fillna("–"), note)
    excl = excluded if excluded is not None else pd.DataFrame(columns=["dataset", "method"])
    write_csv(out / "excluded.csv", excl)
    return runs


def write_published(out: Path, runs: pd.DataFrame, summary: pd.DataFrame) -> None:
    """earth_nll.* and so3_ll.*: ours beside the published numbers, with the NLL levels read."""
    note = "'published' rows are the papers' own numbers (docs/science.md section 6), not ours"
    earth = earth_table(summary)
    levels = nll_levels(runs[runs["family"] == "earth"])
    write_formats(
        out / "earth_nll",
        earth,
        earth,
        f"earth test NLL in nats (lower is better); {note}, each on its own split; ours: "
        f"{T_NOTE}" + (f"; {levels}" if levels else ""),
    )
    so3 = so3_table(summary)
    levels = nll_levels(runs[runs["dataset"].isin(list(SO3_COLUMNS))])
    write_formats(
        out / "so3_ll",
        so3,
        so3,
        "SO(3) wrapped-normal mixtures: test log-likelihood in nats w.r.t. vol SO(3) = 8 pi^2 "
        f"(higher is better; ours: minus the NLL); {note}; ours: {T_NOTE}"
        + (f"; {levels}" if levels else ""),
    )


CONVERGENCE_NOTE = (
    "convergence check (config key convergence): mean over seeds of the final weights and of "
    "the snapshot kept at snapshot_fraction of the steps; converged when the change is below "
    "the half-width of the final value's 95 % Student-t interval over seeds"
)


def _cells(long: pd.DataFrame) -> set[tuple]:
    """Every (dataset, split, schedule, method, metric) of a long table."""
    return {tuple(r) for r in long[[*CELL, "metric"]].itertuples(index=False)}


def failed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs whose status is not ok."""
    return runs[runs["status"] != "ok"]
