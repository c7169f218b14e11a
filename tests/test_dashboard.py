"""Aggregation tables and the static dashboard, on small fake run directories.

The browser test opens the page in Debian's headless chromium through selenium (install with
`apt-get install -y chromium chromium-driver`); it is skipped, with that reason, when either is
missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import chrome_driver

from madbench import aggregate as A
from madbench.dashboard import build_dashboard

METHODS = ("dsm", "mad", "oracle")
SEEDS = (0, 1, 2)
FAILED = ("toy", "mad", 2)  # (dataset, method, seed) of the run that fails at training


def fake_run(root: Path, dataset: str, method: str, seed: int) -> Path:
    """A run directory as the pipeline leaves it; returns its final status path."""
    run = (
        root
        / "runs"
        / f"dataset~{dataset}"
        / "split~none"
        / "schedule~ve"
        / f"method~{method}"
        / f"seed~{seed}"
    )
    (run / "status").mkdir(parents=True)
    failed = (dataset, method, seed) == FAILED
    status = {
        "dataset": dataset,
        "schedule": "ve",
        "method": method,
        "seed": seed,
        "run_dir": str(run),
        "attempt": 1,
        "status": "failed" if failed else "ok",
        "failed_stage": "train" if failed else None,
        "error": "RuntimeError: loss is NaN at step 17" if failed else "",
    }
    (run / "status" / "evaluate.json").write_text(json.dumps(status))
    if failed:
        return run / "status" / "evaluate.json"
    rng = np.random.default_rng(seed + 10 * METHODS.index(method))
    (run / "config.yaml").write_text(f"dataset: {dataset}\nmethod: {method}\n")
    (run / "run_info.json").write_text(
        json.dumps(
            {
                "git_commit": "0123abc",
                "device": "cpu",
                "seed": seed,
                "versions": {"torch": "2.13.0"},
            }
        )
    )
    steps = np.arange(0, 201, 10)
    pd.DataFrame(
        {
            "step": steps,
            "loss": 1 + np.exp(-steps / 50),
            "lr": 1e-3,
            "steps_per_s": 50.0,
            "wall_time": steps / 50,
        }
    ).to_csv(run / "history.csv", index=False)
    metrics = {
        "dataset": dataset,
        "seed": seed,
        "nll": float(rng.normal()),
        "dist_mean": float(rng.random()),
        "w1": float(rng.random()),
        "train_steps_per_s": 50.0,
        "normalisation_ok": True,
        "nll_convention": "area",
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run / "status" / "evaluate.json"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """results/ with 3 methods x 3 seeds on toy and 2 methods x 3 seeds on earth_volcano."""
    root = tmp_path_factory.mktemp("results")
    statuses = [fake_run(root, "toy", m, s) for m in METHODS for s in SEEDS]
    statuses += [fake_run(root, "earth_volcano", m, s) for m in METHODS[:2] for s in SEEDS]
    A.write_tables(statuses, root / "tables", ["discrete", "earth"])
    (root / "figures").mkdir()
    (root / "rate_separation").mkdir()
    (root / "rate_separation" / "slopes.csv").write_text(
        "manifold,family,quantity,score,alpha,beta,error_type,slope,ci_low,ci_high,predicted,x\n"
        "circle,anatomy,normal,exact,0.0,,none,-0.99993,-1.0067,-0.9918,-1.0,1\n"
    )
    build_dashboard(
        root / "tables" / "runs.csv",
        root / "tables",
        root / "figures",
        root / "dashboard" / "index.html",
        root,
    )
    return root


def test_rate_separation_slopes_are_shown_beside_their_predictions(results):
    page = (results / "dashboard" / "index.html").read_text()
    section = page[page.index("<h2>Rate separation</h2>") :]
    assert "<td>circle</td>" in section and "<td>-1</td>" in section  # slope to 3 digits
    assert "../rate_separation/slopes.csv" in section and "<th>x</th>" not in section


def test_runs_table_keeps_the_failed_run(results):
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert len(runs) == 3 * 3 + 2 * 3
    failed = runs[runs["status"] != "ok"]
    assert failed[["dataset", "method", "seed"]].values.tolist() == [list(FAILED)]
    assert failed["failed_stage"].iloc[0] == "train"
    assert "info.git_commit" in runs and "hist.loss" in runs
    assert set(A.metric_columns(runs)) >= {"nll", "dist_mean", "w1"}
    assert "normalisation_ok" not in A.metric_columns(runs)


def test_family_tables_mark_failures_and_match_the_runs(results):
    md = (results / "tables" / "discrete.md").read_text()
    assert "2/3 (1 FAILED)" in md
    long = pd.read_csv(results / "tables" / "discrete.csv")
    runs = pd.read_csv(results / "tables" / "runs.csv")
    ok = runs[(runs.method == "dsm") & (runs.dataset == "toy") & (runs.status == "ok")]
    row = long[(long.method == "dsm") & (long.metric == "nll")].iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(ok["nll"].mean())
    assert r"\begin{tabular}" in (results / "tables" / "discrete.tex").read_text()


def test_earth_table_marks_published_rows(results):
    t = pd.read_csv(results / "tables" / "earth_nll.csv")
    assert (t["source"] == "published").sum() == len(A.PUBLISHED_EARTH_NLL)
    assert t.loc[t.method == "RSGM", "Volcano"].iloc[0] == "-4.92 ± 0.25"
    ours = t[t["source"].str.startswith("ours")]
    assert set(ours["method"]) == {"dsm (ve)", "mad (ve)"}
    assert (ours["Earthquake"] == "–").all()


def test_so3_table_turns_our_nll_into_a_log_likelihood():
    summary = pd.DataFrame(
        [{"dataset": "so3_wrapped_32", "split": "none", "schedule": "vp", "method": "rsgm",
          "metric": "nll", "mean": 1.25, "ci_low": 1.0, "ci_high": 1.75, "n_failed": 0}]
    )  # fmt: skip
    t = A.so3_table(summary)
    assert t.loc[t.method == "RSGM", "M = 32"].iloc[0] == "0.20"
    ours = t[t.source == "ours (-nll)"].iloc[0]
    assert (ours["method"], ours["M = 32"], ours["M = 16"]) == ("rsgm (vp)", "-1.25 ± 0.38", "–")


def test_cost_table_has_device_and_speed(results):
    shown = (results / "tables" / "cost.md").read_text()
    assert "train_steps_per_s" in shown and "device" in shown and "cpu" in shown


def test_dashboard_is_self_contained(results):
    page = (results / "dashboard" / "index.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and '<link rel="stylesheet"' not in page
    data = json.loads(page.split('id="data">')[1].split("</script>")[0].replace("<\\/", "</"))
    assert len(data["runs"]) == 15
    assert any(r["status"] == "failed" for r in data["runs"])


# --------------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(results):
    """The dashboard loaded in headless chromium."""
    d = chrome_driver()
    d.get((results / "dashboard" / "index.html").resolve().as_uri())
    yield d
    d.quit()


def visible_runs(d) -> list[str]:
    return d.execute_script(
        "return [...document.querySelectorAll('#runs tbody tr')].filter(t => !t.hidden)"
        ".map(t => t.children[4].textContent)"  # the method column
    )


def test_browser_loads_without_errors_or_failed_requests(page):
    errors = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    events = [json.loads(e["message"])["message"] for e in page.get_log("performance")]
    assert [e for e in events if e["method"] == "Network.loadingFailed"] == []


def test_browser_shows_every_run_and_marks_the_failed_one(page):
    assert len(visible_runs(page)) == 15
    failed = page.find_elements("css selector", "#runs tbody tr.failed")
    assert len(failed) == 1 and "FAILED" in failed[0].text


def test_browser_filtering_and_run_detail(page):
    from selenium.webdriver.support.ui import Select

    Select(page.find_element("id", "filter-method")).select_by_visible_text("oracle")
    assert visible_runs(page) == ["oracle"] * 3
    Select(page.find_element("id", "filter-status")).select_by_visible_text("failed")
    assert visible_runs(page) == []
    Select(page.find_element("id", "filter-method")).select_by_visible_text("mad")
    assert visible_runs(page) == ["mad"]
    Select(page.find_element("id", "filter-status")).select_by_visible_text("all")
    Select(page.find_element("id", "filter-method")).select_by_visible_text("all")
    page.find_element("css selector", "#runs tbody tr:not(.failed)").click()
    detail = page.find_element("id", "detail")
    assert detail.find_elements("css selector", "svg polyline")
    assert "config.yaml" in detail.text and "0123abc" in detail.get_attribute("innerHTML")


def test_browser_sorts_a_table(page):
    header = page.find_elements("css selector", "#runs th")[5]  # seed
    header.click()
    seeds = page.execute_script(
        "return [...document.querySelectorAll('#runs tbody tr')]"
        ".map(t => t.children[5].textContent)"
    )
    assert seeds == sorted(seeds, key=int)
