"""The findings: generated from a study's tables, every quoted value a table cell, the verdicts
those of the intervals, and the committed docs/findings in agreement with its tables, the
README's headline table and the dashboard's leaderboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from madbench import aggregate as A
from madbench.aggregate import not_converged, summarize
from madbench.dashboard import leaderboard_section, summary_sections
from madbench.findings import (
    HEADLINE_END,
    HEADLINE_START,
    update_readme_headline,
    write_findings,
)
from madbench.leaderboard import comparisons, leaderboards

REPO = Path(__file__).resolve().parents[1]
FINDINGS = REPO / "docs" / "findings"
#: a standalone number outside backticks (identifiers such as s2_vmf_mixture_4 are not)
NUMBER = re.compile(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def fake_study(root: Path) -> Path:
    """results/ of a toy study: mad clearly ahead on nll, the methods tied on tv, dsm ahead on
    dist_mean, 3 seeds each (fixed draws)."""
    rng = np.random.default_rng(0)
    statuses = []
    for method, nll, tv, dist in (("dsm", 3.0, 0.2, 0.01), ("mad", 0.4, 0.2, 0.05)):
        for seed in range(3):
            run = root / "runs" / "dataset~toy" / "split~none" / "schedule~ve" / method / str(seed)
            (run / "status").mkdir(parents=True)
            st = dict(dataset="toy", split="none", schedule="ve", method=method, seed=seed)
            st.update(status="ok", run_dir=str(run))
            (run / "status" / "evaluate.json").write_text(json.dumps(st))
            m = {"nll": nll + 0.01 * rng.normal(), "tv": tv + 0.05 * rng.normal(),
                 "dist_mean": dist + 0.001 * rng.normal(), "floor_tv": 0.01}  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(m))
            (run / "run_info.json").write_text(json.dumps({"git_commit": f"c0ffee{seed % 2}"}))
            statuses.append(run / "status" / "evaluate.json")
    A.write_tables(statuses, root / "tables", ["discrete"])
    return root


def backticked(text: str) -> list[str]:
    """The backticked spans that hold a digit, outside Markdown tables."""
    spans = []
    for line in text.splitlines():
        if not line.startswith("|"):
            spans += [s for s in re.findall(r"`([^`]*)`", line) if re.search(r"\d", s)]
    return spans


def markdown_cells(text: str) -> list[str]:
    """The cells of the Markdown tables in ``text`` below their header rows (bold marks and
    daggers removed)."""
    cells, lines = [], text.splitlines()
    for line, below in zip(lines, lines[1:] + [""], strict=True):
        header = set(below) <= set("|-") and below.startswith("|")  # names, not values
        if line.startswith("|") and not set(line) <= set("|-") and not header:
            cells += [c.strip().strip("*").removesuffix(" †") for c in line.strip("|").split("|")]
    return cells


def table_cells(tables: Path) -> set[str]:
    """Every cell of the committed tables: CSV values and Markdown table cells."""
    cells = set()
    for csv in tables.glob("*.csv"):
        cells |= {str(v).strip() for v in pd.read_csv(csv, dtype=str).fillna("").to_numpy().ravel()}
    for md in tables.glob("*.md"):
        cells |= set(markdown_cells(md.read_text()))
    return cells


def loose_numbers(text: str) -> list[str]:
    """Numbers outside backticks, link targets and row citations ('row 12'), except the
    confidence level '95 %' and the names SO(3) and S^2."""
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"row \d+", "", text)
    text = text.replace("95 %", "").replace("→1", "")  # the confidence level, an arrow
    text = re.sub(r"SO\(3\)|S\^2", "", text)  # names of manifolds
    lines = [ln for ln in text.splitlines() if not ln.startswith(("<!--", "|"))]
    return [m for ln in lines for m in NUMBER.findall(ln)]


def check_findings(folder: Path) -> None:
    cells = table_cells(folder / "tables")
    for name in ("README.md", "discussion.md"):
        path = folder / name
        if not path.exists():
            continue
        text = path.read_text()
        quoted = backticked(text) + [c for c in markdown_cells(text) if re.search(r"\d", c)]
        missing = [v for v in quoted if v.strip() not in cells]
        assert missing == [], (name, missing[:10])
        assert loose_numbers(text) == [], (name, loose_numbers(text)[:10])


def test_generated_findings_quote_only_table_cells_and_the_right_verdicts(tmp_path):
    results = fake_study(tmp_path / "results")
    out = tmp_path / "findings"
    write_findings(results, out, "make study", 123.0)
    check_findings(out)
    text = (out / "README.md").read_text()
    assert "- nll: MAD ahead: MAD `0.386 ± 0.02` vs DSM `3.01" in text
    assert "- tv: indistinguishable" in text
    lost = text[text.index("## Where MAD loses") : text.index("## Convergence")]
    assert "dist_mean: DSM" in lost and "nll" not in lost
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["wall_time_s"] == 123.0 and prov["command"] == "make study"
    assert prov["run_commits"] == ["c0ffee0", "c0ffee1"]  # the runs' commits, not this checkout's
    head = pd.read_csv(out / "tables" / "headline.csv")
    assert list(head.columns) == ["family", "cell", "dsm", "mad", "MAD vs DSM (nll)"]


def test_leaderboards_mark_the_means_that_did_not_converge(tmp_path):
    summary = summarize(pd.read_csv(fake_study(tmp_path) / "tables" / "runs.csv"))
    bad = {("toy", "none", "ve", "dsm", "nll")}
    (board,) = leaderboards(summary, "discrete", bad)
    table = board.table.set_index("method")
    assert table.loc["dsm", "nll"].endswith(" †") and not table.loc["mad", "nll"].endswith("†")
    assert not table.loc["dsm", "tv"].endswith("†")
    assert "<td>3.01 ± 0.017 †</td>" in leaderboard_section(summary, bad)
    assert "<td>3.01 ± 0.017 †</td>" in summary_sections(summary, bad)  # the dashboard's tables


def test_the_readme_headline_block_is_replaced_and_nothing_else(tmp_path):
    results = fake_study(tmp_path / "results")
    write_findings(results, tmp_path / "findings", "make study")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{HEADLINE_START}\nold table\n{HEADLINE_END}\nrest\n")
    head = (tmp_path / "findings" / "headline.md").read_text()
    assert update_readme_headline(readme, head)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{HEADLINE_END}\nrest\n")
    assert "old table" not in text and head.strip() in text
    (tmp_path / "other.md").write_text("no markers\n")
    assert not update_readme_headline(tmp_path / "other.md", head)


def test_a_quoted_number_that_is_not_in_the_tables_is_caught(tmp_path):
    results = fake_study(tmp_path / "results")
    out = tmp_path / "findings"
    write_findings(results, out, "make study")
    (out / "discussion.md").write_text("MAD wins by `0.123 ± 0.01` nats.\n")
    with pytest.raises(AssertionError, match="0.123"):
        check_findings(out)
    (out / "discussion.md").write_text("MAD wins by 7 nats.\n")
    with pytest.raises(AssertionError, match="7"):
        check_findings(out)


@pytest.mark.skipif(not (FINDINGS / "README.md").exists(), reason="no committed findings yet")
def test_committed_findings_agree_with_their_tables_the_readme_and_the_dashboard():
    check_findings(FINDINGS)
    runs = pd.read_csv(FINDINGS / "tables" / "runs.csv")
    summary = summarize(runs)
    comp = comparisons(summary)
    committed = pd.read_csv(FINDINGS / "tables" / "comparisons.csv", dtype=str).fillna("")
    assert comp.astype(str).to_numpy().tolist() == committed.to_numpy().tolist()
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(HEADLINE_START) + len(HEADLINE_START) : readme.index(HEADLINE_END)]
    assert block.strip() == (FINDINGS / "headline.md").read_text().strip()
    bad = not_converged(pd.read_csv(FINDINGS / "tables" / "convergence.csv"))
    page = leaderboard_section(summary, bad)
    text = (FINDINGS / "README.md").read_text()
    for family in summary["family"].unique():
        for board in leaderboards(summary, family, bad):
            for m, (leader, separated) in board.leaders.items():
                cell = board.table.set_index("method").loc[leader, m]
                assert f"`{cell}`" in text or cell in text
                assert (f'<td class="leader">{cell}</td>' in page) == separated, (m, leader)
