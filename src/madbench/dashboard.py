"""The static results dashboard: one self-contained HTML file (inline CSS, JS and data).

It needs no server and no network: open ``results/dashboard/index.html`` in any browser. Figures
are linked relatively (``../figures/*.png``, only files that exist), run files likewise
(``../runs/.../config.yaml``, logs). Every run of the grid has a row, failed runs are marked red
with the stage that failed and the end of its log; filters by dataset, schedule, method, seed and
status; every table sorts by a click on its header; a click on a run shows its loss curve (an
inline SVG drawn from the embedded history), its provenance (git commit, versions, device, seed)
and links to its files.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import pandas as pd

from madbench._utils import atomic_write
from madbench.aggregate import (
    COORDS,
    headline_metrics,
    metric_columns,
    summarize,
    wide_table,
)

RUN_FILES = (
    "config.yaml",
    "train.log",
    "run_info.json",
    "metrics.json",
    "history.csv",
    "samples.npz",
    "score_error.csv",
)
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


def rel(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` with forward slashes (for href and src)."""
    return os.path.relpath(path.resolve(), start.resolve()).replace(os.sep, "/")


def history_points(run_dir: Path) -> dict | None:
    """step, loss and wall_time of history.csv, thinned to at most MAX_HISTORY_POINTS rows."""
    try:
        h = pd.read_csv(run_dir / "history.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    if h.empty or "loss" not in h:
        return None
    h = h.iloc[:: max(1, math.ceil(len(h) / MAX_HISTORY_POINTS))]
    cols = [c for c in ("step", "loss", "wall_time") if c in h]
    return {c: [clean(v) for v in h[c].tolist()] for c in cols}


def run_links(row: pd.Series, results: Path, page_dir: Path) -> dict[str, str]:
    """Label -> relative href for the run's files and Snakemake logs that exist."""
    run = Path(row["run_dir"])
    links = {name: rel(run / name, page_dir) for name in RUN_FILES if (run / name).exists()}
    pattern = "/".join(run.parts[-4:])
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


def summary_sections(runs: pd.DataFrame) -> str:
    """Per family: the headline metrics table (mean ± 95 % t half-width over seeds)."""
    summary = summarize(runs)
    parts = []
    for fam in sorted(summary["family"].dropna().unique()):
        long = summary[summary["family"] == fam]
        present = [
            m for m in long["metric"].dropna().unique() if long.loc[long.metric == m, "n"].sum()
        ]
        table = wide_table(long, headline_metrics(present))
        parts.append(f"<h3>{html.escape(str(fam))}</h3>{html_table(table)}")
    return "\n".join(parts)


def rate_separation_section(results: Path) -> str:
    """The fitted slopes of the rate-separation experiments with their predictions, if run."""
    path = Path(results) / "rate_separation" / "slopes.csv"
    if not path.exists():
        return "<p>Not run (madbench rate-separation, or the pipeline's rate_separation rule).</p>"
    df = pd.read_csv(path)
    from madbench.rate_separation.cli import SLOPE_COLUMNS

    cols = [c for c in SLOPE_COLUMNS if c in df]
    df = df[cols].copy()
    for c in ("slope", "ci_low", "ci_high", "predicted"):
        if c in df:
            df[c] = df[c].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    df = df.fillna("")
    link = html.escape(rel(path, Path(results) / "dashboard"))
    return (
        f"<p>Fitted log-log slopes against sigma with bootstrap 95 % intervals, next to the "
        f'predictions of SCIENCE.md section 5 (<a href="{link}">slopes.csv</a>; every point in '
        f"curves.csv beside it; figures below).</p>{html_table(df)}"
    )


def figure_section(figures_dir: Path, page_dir: Path) -> str:
    """<figure> elements for every PNG in figures_dir, linking the PDF beside it."""
    items = []
    for png in sorted(Path(figures_dir).glob("*.png")):
        pdf = png.with_suffix(".pdf")
        link = f' (<a href="{rel(pdf, page_dir)}">PDF</a>)' if pdf.exists() else ""
        items.append(
            f'<figure><img src="{rel(png, page_dir)}" alt="{png.stem}" loading="lazy">'
            f"<figcaption>{png.stem}{link}</figcaption></figure>"
        )
    return "\n".join(items) or "<p>No figures yet.</p>"


def table_links(tables_dir: Path, page_dir: Path) -> str:
    """A list of links to every table file (CSV, Markdown, LaTeX)."""
    files = sorted(p for p in Path(tables_dir).glob("*") if p.suffix in (".csv", ".md", ".tex"))
    return " · ".join(f'<a href="{rel(p, page_dir)}">{p.name}</a>' for p in files)


def page_data(runs: pd.DataFrame, results: Path, page_dir: Path) -> dict:
    """The JSON the page's script reads: runs, the columns of the runs table, filter keys."""
    metrics = headline_metrics(metric_columns(runs[runs["status"] == "ok"]))[:6]
    info = [c for c in ("info.device", "info.git_commit") if c in runs]
    return {
        "runs": run_records(runs, results, page_dir),
        "columns": COORDS + ["status"] + metrics + info,
        "filters": ["dataset", "schedule", "method", "seed", "status"],
    }


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
    data = json.dumps(page_data(runs, Path(results_dir), page_dir), allow_nan=False)
    n_failed = int((runs["status"] != "ok").sum())
    page = TEMPLATE.format(
        css=CSS,
        js=JS,
        data=data.replace("</", "<\\/"),
        n_runs=len(runs),
        n_failed=n_failed,
        failed_class="bad" if n_failed else "good",
        summary=summary_sections(runs),
        figures=figure_section(Path(figures_dir), page_dir),
        tables=table_links(Path(tables_dir), page_dir),
        rate_separation=rate_separation_section(Path(results_dir)),
    )
    atomic_write(out_html, lambda p: p.write_text(page, encoding="utf-8"))


CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{margin-bottom:.2em} .muted{color:#666} .good{color:#176317} .bad{color:#b00020;font-weight:bold}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none} th.asc::after{content:" ▲"}
th.desc::after{content:" ▼"} tr.failed td{background:#fde2e4} tr.sel td{outline:2px solid #36c}
#runs tbody tr{cursor:pointer} .badge{background:#b00020;color:#fff;border-radius:3px;padding:0 4px}
#filters label{margin-right:1em} figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:640px;border:1px solid #ddd} #detail{border:1px solid #ccc;padding:.7em;
margin:1em 0;background:#fafafa} pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;
max-height:15em;overflow:auto} .scroll{overflow-x:auto}
"""

JS = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const fmt = v => (v === null || v === undefined) ? '' :
  (typeof v === 'number' && !Number.isInteger(v)) ? Number(v.toPrecision(4)).toString() : String(v);
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function buildFilters() {
  const box = document.getElementById('filters');
  for (const key of D.filters) {
    const values = [...new Set(D.runs.map(r => fmt(r[key])))].sort();
    const sel = el('select', {id: 'filter-' + key, 'data-key': key});
    sel.appendChild(el('option', {value: ''}, 'all'));
    for (const v of values) sel.appendChild(el('option', {value: v}, v));
    sel.addEventListener('change', applyFilters);
    const lab = el('label', {}, key + ' ');
    lab.appendChild(sel);
    box.appendChild(lab);
  }
}
function buildRuns() {
  const table = document.getElementById('runs');
  const head = table.querySelector('thead tr'), body = table.querySelector('tbody');
  for (const c of D.columns) head.appendChild(el('th', {}, c));
  D.runs.forEach((r, i) => {
    const tr = el('tr', {'data-run': String(i)});
    if (r.status !== 'ok') tr.className = 'failed';
    for (const c of D.columns) {
      const td = el('td', {}, fmt(r[c]));
      if (c === 'status' && r.status !== 'ok') {
        td.textContent = '';
        td.appendChild(el('span', {class: 'badge'}, 'FAILED'));
        td.appendChild(document.createTextNode(' ' + (r.failed_stage || '')));
      }
      tr.appendChild(td);
    }
    tr.addEventListener('click', () => showRun(i, tr));
    body.appendChild(tr);
  });
}
function applyFilters() {
  const active = D.filters.map(k => [k, document.getElementById('filter-' + k).value]);
  let shown = 0;
  document.querySelectorAll('#runs tbody tr').forEach(tr => {
    const r = D.runs[Number(tr.dataset.run)];
    const ok = active.every(([k, v]) => v === '' || fmt(r[k]) === v);
    tr.hidden = !ok;
    if (ok) shown++;
  });
  document.getElementById('count').textContent = shown + ' of ' + D.runs.length + ' runs shown';
}
function sortBy(th) {
  const table = th.closest('table'), body = table.querySelector('tbody');
  const idx = [...th.parentNode.children].indexOf(th);
  const asc = !th.classList.contains('asc');
  table.querySelectorAll('th').forEach(h => h.classList.remove('asc', 'desc'));
  th.classList.add(asc ? 'asc' : 'desc');
  const key = tr => {
    const t = tr.children[idx].textContent.trim(), n = parseFloat(t);
    return isNaN(n) ? t : n;
  };
  const rows = [...body.querySelectorAll('tr')];
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
      : (typeof x === 'number' ? -1 : 1);
    return asc ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}
function lossSVG(h) {
  if (!h || !h.loss || h.loss.length < 2) return '<p class="muted">no loss history</p>';
  const xs = h.step || h.loss.map((_, i) => i), ys = h.loss;
  const pts = xs.map((x, i) => [x, ys[i]]).filter(p => p[0] !== null && p[1] !== null);
  const logy = pts.every(p => p[1] > 0);
  const ty = v => logy ? Math.log10(v) : v;
  const [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
  const [y0, y1] = [Math.min(...pts.map(p => ty(p[1]))), Math.max(...pts.map(p => ty(p[1])))];
  const W = 520, H = 220, m = 45;
  const sx = x => m + (W - 2 * m) * (x - x0) / ((x1 - x0) || 1);
  const sy = y => H - m + (2 * m - H) * (ty(y) - y0) / ((y1 - y0) || 1);
  const line = pts.map(p => sx(p[0]).toFixed(1) + ',' + sy(p[1]).toFixed(1)).join(' ');
  const lab = v => logy ? Number((10 ** v).toPrecision(3)) : Number(v.toPrecision(3));
  return `<svg class="loss" width="${W}" height="${H}" xmlns="http://www.w3.org/2000/svg">
    <rect x="${m}" y="${m / 2}" width="${W - 2 * m}" height="${H - 1.5 * m}"
      fill="none" stroke="#ccc"/>
    <polyline fill="none" stroke="#36c" stroke-width="1.5" points="${line}"/>
    <text x="${m}" y="${H - m / 3}" font-size="11">step ${x0}</text>
    <text x="${W - m}" y="${H - m / 3}" font-size="11" text-anchor="end">${x1}</text>
    <text x="2" y="${m / 2 + 10}" font-size="11">${lab(y1)}</text>
    <text x="2" y="${H - m}" font-size="11">${lab(y0)}</text>
    <text x="${W / 2}" y="${m / 2 - 4}" font-size="11" text-anchor="middle">
      loss${logy ? ' (log scale)' : ''}</text>
  </svg>`;
}
function showRun(i, tr) {
  document.querySelectorAll('#runs tr.sel').forEach(t => t.classList.remove('sel'));
  tr.classList.add('sel');
  const r = D.runs[i], box = document.getElementById('detail');
  const skip = new Set(['links', 'history', 'error']);
  const rows = Object.entries(r).filter(([k, v]) => !skip.has(k) && v !== null)
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(fmt(v))}</td></tr>`).join('');
  const links = Object.entries(r.links)
    .map(([k, href]) => `<a href="${esc(href)}">${esc(k)}</a>`).join(' · ');
  const err = r.status === 'ok' ? '' :
    `<p class="bad">FAILED at stage ${esc(r.failed_stage || '?')}</p>` +
    `<pre>${esc(r.error || '')}</pre>`;
  const title = [r.dataset, r.schedule, r.method, 'seed ' + r.seed].map(esc).join(' / ');
  box.innerHTML = `<h3>${title}</h3>
    ${err}<p>${links || '<span class="muted">no files</span>'}</p>${lossSVG(r.history)}
    <details><summary>all fields (provenance, metrics)</summary><table>${rows}</table></details>`;
  box.hidden = false;
}
function esc(s) {
  const map = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
  return String(s).replace(/[&<>"']/g, c => map[c]);
}
buildFilters();
buildRuns();
applyFilters();
document.querySelectorAll('table.sortable th, #runs th')
  .forEach(th => th.addEventListener('click', () => sortBy(th)));
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>madbench results</title><style>{css}</style></head>
<body>
<h1>madbench results</h1>
<p>{n_runs} runs, <span class="{failed_class}" id="n-failed">{n_failed} failed</span>.
Tables: {tables}</p>
<h2>Summary (mean ± half-width of the 95 % Student-t interval over seeds)</h2>
<div class="scroll">{summary}</div>
<h2>Runs</h2>
<div id="filters"></div><p id="count" class="muted"></p>
<div class="scroll"><table id="runs"><thead><tr></tr></thead><tbody></tbody></table></div>
<div id="detail" hidden></div>
<h2>Rate separation</h2>
{rate_separation}
<h2>Figures</h2>
{figures}
<script type="application/json" id="data">{data}</script>
<script>{js}</script>
</body></html>
"""
