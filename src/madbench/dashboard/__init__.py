"""The static results dashboard: one self-contained HTML file (inline CSS, JS and data).

It needs no server and no network: open ``results/dashboard/index.html`` in any browser. Figures
are linked relatively (``../figures/*.png``, only files that exist), run files likewise
(``../runs/.../config.yaml``, logs). Every run of the grid has a row, failed runs are marked red
with the stage that failed and the end of its log; filters by dataset, schedule, method, seed and
status; every table sorts by a click on its header; a click on a run shows its loss curve (an
inline SVG drawn from the embedded history), its provenance (git commit, versions, device, seed)
and links to its files.

The page's CSS, JavaScript and HTML skeleton are the package data files ``static/``; this
module fills in the data.
"""

from __future__ import annotations

import html
import json
import math
import os
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from madbench._utils import atomic_write
from madbench.aggregate import (
    COORDS,
    family_table,
    headline_metrics,
    metric_columns,
    not_converged,
    run_pattern,
    summarize,
)
from madbench.leaderboard import ARROW, BETTER, Board, leaderboards
from madbench.rate_separation.outputs import SLOPE_COLUMNS, SLOPES, rate_separation_dir
from madbench.rundir import RUN_FILES, RunDir, read_csv

STAGES = ("train", "evaluate")
MAX_HISTORY_POINTS = 300


def clean(value):
    """JSON-safe scalar: NaN/inf and pandas NA become None, numpy scalars become Python ones."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if hasattr(value, "item"):
        return clean(value.item())
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def script_safe_json(text: str) -> str:
    """JSON text that no data string can end or open an HTML element in: ``<``, ``>`` and ``&``
    become the JSON escapes \\u003c, \\u003e, \\u0026 (same value once parsed)."""
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _attr(url: str) -> str:
    """A relative URL as an HTML attribute value: percent-encoded path, then HTML-escaped."""
    return html.escape(quote(url, safe="/~.-_"), quote=True)


def rel(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` with forward slashes (for href and src)."""
    return os.path.relpath(path.resolve(), start.resolve()).replace(os.sep, "/")


def history_points(run_dir: Path) -> dict | None:
    """step, loss and wall_time of history.csv, thinned to at most MAX_HISTORY_POINTS rows."""
    h = read_csv(RunDir(run_dir).history)
    if h is None or "loss" not in h:
        return None
    h = h.iloc[:: max(1, math.ceil(len(h) / MAX_HISTORY_POINTS))]
    cols = [c for c in ("step", "loss", "wall_time") if c in h]
    return {c: [clean(v) for v in h[c].tolist()] for c in cols}


def run_links(row: pd.Series, results: Path, page_dir: Path) -> dict[str, str]:
    """Label -> relative href for the run's files and Snakemake logs that exist."""
    run = Path(row["run_dir"])
    links = {name: rel(run / name, page_dir) for name in RUN_FILES if (run / name).exists()}
    pattern = run_pattern(run)
    for stage in STAGES:
        log = results / "logs" / stage / f"{pattern}.log"
        if log.exists():
            links[f"{stage} log (snakemake)"] = rel(log, page_dir)
    return links


def run_records(runs: pd.DataFrame, results: Path, page_dir: Path) -> list[dict]:
    """One JSON record per run: every column, its links and its thinned history."""
    records = []
    for _, row in runs.iterrows():
        rec = {k: clean(v) for k, v in row.items()}
        rec["links"] = run_links(row, results, page_dir)
        rec["history"] = history_points(Path(row["run_dir"]))
        records.append(rec)
    return records


def html_table(df: pd.DataFrame, css_class: str = "sortable") -> str:
    """An HTML table of ``df`` (escaped), sortable by the page's script."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summary_sections(summary: pd.DataFrame, unconverged: set[tuple] = frozenset()) -> str:
    """Per family: the table of :func:`madbench.aggregate.family_table` (the headline metrics,
    mean ± 95 % t half-width over seeds, † where not converged)."""
    parts = []
    for fam in sorted(summary["family"].dropna().unique()):
        _, table = family_table(summary, fam, unconverged)
        parts.append(f"<h3>{html.escape(str(fam))}</h3>{html_table(table)}")
    return "\n".join(parts)


def board_html(board: Board) -> str:
    """One leaderboard: methods x headline metrics (an arrow per metric), the noise-floor row,
    the leader of a metric in bold where its interval separates from every other method's."""
    head = "".join(
        f"<th>{html.escape(str(c))}" + (f" {ARROW[BETTER[c]]}" if c in BETTER else "") + "</th>"
        for c in board.table.columns
    )
    rows = []
    for r in board.table.itertuples(index=False):
        cells = []
        for col, value in zip(board.table.columns, r, strict=True):
            text = html.escape(str(value))
            lead = board.leaders.get(col)
            bold = lead is not None and lead[1] and lead[0] == r.method
            cells.append(f'<td class="leader">{text}</td>' if bold else f"<td>{text}</td>")
        floor = ' class="floor"' if r.method == "noise floor" else ""
        rows.append(f"<tr{floor}>{''.join(cells)}</tr>")
    title = html.escape(f"{board.dataset}" + ("" if board.split == "none" else f" ({board.split})"))
    return (
        f'<h4>{title}, {html.escape(board.schedule)}</h4><table class="board">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def leaderboard_section(summary: pd.DataFrame, unconverged: set[tuple] = frozenset()) -> str:
    """Per family of the long ``summary`` (:func:`madbench.aggregate.summarize`), a leaderboard
    per dataset and schedule (:mod:`madbench.leaderboard`); † marks the means the convergence
    check found still moving."""
    parts = []
    for fam in sorted(summary["family"].dropna().unique()):
        boards = "".join(board_html(b) for b in leaderboards(summary, fam, unconverged))
        parts.append(f'<section class="family"><h3>{html.escape(str(fam))}</h3>{boards}</section>')
    return "\n".join(parts) or "<p>No finished runs yet.</p>"


def rate_separation_section(results: Path) -> str:
    """The fitted slopes of the rate-separation experiments with their predictions, if run."""
    path = rate_separation_dir(results) / SLOPES
    df = read_csv(path)
    if df is None:
        return "<p>Not run (madbench rate-separation, or the pipeline's rate_separation rule).</p>"
    cols = [c for c in SLOPE_COLUMNS if c in df]
    df = df[cols].copy()
    for c in ("slope", "ci_low", "ci_high", "predicted"):
        if c in df:
            df[c] = df[c].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    df = df.fillna("")
    link = html.escape(rel(path, Path(results) / "dashboard"))
    return (
        "<p>Fitted log-log slopes against sigma with bootstrap 95 % intervals, next to the "
        f'predictions of docs/science.md section 5 (<a href="{link}">slopes.csv</a>; every '
        f"point in curves.csv beside it; figures below).</p>{html_table(df)}"
    )


def figure_section(figures_dir: Path, page_dir: Path) -> str:
    """<figure> elements for every PNG in figures_dir, linking the PDF beside it."""
    items = []
    for png in sorted(Path(figures_dir).glob("*.png")):
        pdf = png.with_suffix(".pdf")
        link = f' (<a href="{_attr(rel(pdf, page_dir))}">PDF</a>)' if pdf.exists() else ""
        name = html.escape(png.stem)
        items.append(
            f'<figure><img src="{_attr(rel(png, page_dir))}" alt="{name}" loading="lazy">'
            f"<figcaption>{name}{link}</figcaption></figure>"
        )
    return "\n".join(items) or "<p>No figures yet.</p>"


def table_links(tables_dir: Path, page_dir: Path) -> str:
    """A list of links to every table file (CSV, Markdown, LaTeX)."""
    files = sorted(p for p in Path(tables_dir).glob("*") if p.suffix in (".csv", ".md", ".tex"))
    return " · ".join(
        f'<a href="{_attr(rel(p, page_dir))}">{html.escape(p.name)}</a>' for p in files
    )


def page_data(runs: pd.DataFrame, results: Path, page_dir: Path) -> dict:
    """The JSON the page's script reads: runs, the columns of the runs table, filter keys."""
    metrics = headline_metrics(metric_columns(runs[runs["status"] == "ok"]))[:6]
    info = [c for c in ("info.device", "info.git_commit") if c in runs]
    return {
        "runs": run_records(runs, results, page_dir),
        "columns": COORDS + ["status"] + metrics + info,
        "filters": ["dataset", "split", "schedule", "method", "seed", "status"],
    }


def unconverged_in(tables_dir: Path) -> set[tuple]:
    """The means the convergence table of ``tables_dir`` marks not converged (none without it)."""
    path = tables_dir / "convergence.csv"
    return not_converged(pd.read_csv(path)) if path.is_file() else set()


def build_dashboard(
    runs_csv: str | Path,
    tables_dir: str | Path,
    figures_dir: str | Path,
    out_html: str | Path,
    results_dir: str | Path = "results",
) -> None:
    """Write the dashboard page ``out_html`` from runs.csv, the tables and the figures."""
    out_html = Path(out_html)
    page_dir = out_html.parent
    page_dir.mkdir(parents=True, exist_ok=True)
    runs = pd.read_csv(runs_csv)
    summary, unconverged = summarize(runs), unconverged_in(Path(tables_dir))
    data = json.dumps(page_data(runs, Path(results_dir), page_dir), allow_nan=False)
    n_failed = int((runs["status"] != "ok").sum())
    page = _static("page.html").format(
        css=_static("dashboard.css"),
        js=_static("dashboard.js"),
        data=script_safe_json(data),
        n_runs=len(runs),
        n_failed=n_failed,
        failed_class="bad" if n_failed else "good",
        summary=summary_sections(summary, unconverged),
        leaderboard=leaderboard_section(summary, unconverged),
        figures=figure_section(Path(figures_dir), page_dir),
        tables=table_links(Path(tables_dir), page_dir),
        rate_separation=rate_separation_section(Path(results_dir)),
    )
    atomic_write(out_html, lambda p: p.write_text(page, encoding="utf-8"))


def _static(name: str) -> str:
    """The text of the package data file ``static/<name>``."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")
