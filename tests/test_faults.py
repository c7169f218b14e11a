"""Nothing lost, nothing mixed: run directories, tables and the dashboard under faults.

Each numbered test is the regression test of the item of the same number of the robustness
issue (results lost 1-3, results mixed 4-8, one-line errors 9-12, the dashboard 13-14, 15 the
earth mirror path in test_earth.py). The last part runs config/test.yaml once, then corrupts its
results the ways a hostile but fair user would and checks that nothing earlier is lost, every
bad run is marked with its reason and every error is one line with the documented exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import chrome_driver
from test_pipeline import copy_workflow, snakemake

from madbench import aggregate as A
from madbench._utils import atomic_write
from madbench.cli import main
from madbench.config import TrainConfig
from madbench.dashboard import build_dashboard
from madbench.pipeline import check_runs, rule_log
from madbench.rundir import RunDir, RunLockedError, lock, read_checkpoint, save_checkpoint
from madbench.training import train

TINY = ["--set", "net.width=16", "--set", "net.depth=2", "--set", "batch_size=16"]
MADBENCH = str(Path(sys.executable).with_name("madbench"))


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI in-process: (exit status, stderr)."""
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def one_line(err: str) -> str:
    """The error of a command's stderr, checked to be one line (``madbench CMD: error: ...``)
    with no traceback; other lines are the run's log (plain log lines without a terminal)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("madbench ") and ": error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def train_cli(out: Path, method: str = "dsm", steps: int = 4, *extra: str) -> list[str]:
    argv = ["train", "--dataset", "toy", "--method", method, "--seed", "0", "--steps", str(steps)]
    argv += ["--out", str(out), "--device", "cpu", "--no-progress"]
    argv += (TINY + ["--set", "checkpoint_every=2", "--set", "warmup_steps=1"]) * (
        method != "oracle"
    )
    return argv + list(extra)


def small_cfg(**kw) -> TrainConfig:
    cfg = TrainConfig(dataset="toy", method="dsm", steps=6, batch_size=16, device="cpu", **kw)
    cfg.net.width, cfg.net.depth = 16, 2
    cfg.log_every, cfg.checkpoint_every, cfg.warmup_steps = 2, 2, 1
    return cfg.validate()


# ------------------------------------------------------------------------------ results lost
def test_1_bad_history_marks_its_run_and_every_table_is_written(tmp_path):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed~{seed}"
        (run / "status").mkdir(parents=True)
        status = dict(dataset="toy", schedule="ve", method="dsm", seed=seed, status="ok")
        (run / "status" / "evaluate.json").write_text(json.dumps({**status, "run_dir": str(run)}))
        (run / "metrics.json").write_text(json.dumps({"nll": 1.0 + seed, "w1": 0.1}))
        loss = "abc" if seed == 1 else "0.5"
        (run / "history.csv").write_text(f"step,loss,wall_time\n10,0.7,1.0\n20,{loss},2.0\n")
        runs.append(run / "status" / "evaluate.json")
    out = A.write_tables(runs, tmp_path / "tables", ["discrete"])
    bad = out[out.status != "ok"]
    assert bad.seed.tolist() == [1]
    assert "history.csv" in bad.error.iloc[0] and "'abc'" in bad.error.iloc[0]
    assert "1/2 (1 FAILED)" in (tmp_path / "tables" / "discrete.md").read_text()


def test_1_a_failing_rule_writes_its_traceback_into_its_log(tmp_path):
    log = tmp_path / "rule.log"
    with pytest.raises(ZeroDivisionError):
        with rule_log(log):
            print("working")
            1 / 0  # noqa: B018
    text = log.read_text()
    assert "working" in text and "Traceback" in text and "ZeroDivisionError" in text


def test_2_evaluate_output_is_named_by_out_and_another_runs_results_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        assert cli(capsys, *train_cli(run, "oracle"))[0] == 0
    (b / "samples.npz").write_bytes(b"b's samples")
    small = ["--set", "n_samples=50", "--set", "likelihood=false", "--set", "n_score=20"]
    rc, err = cli(capsys, "evaluate", "--run", str(a), "--out", str(b / "metrics.json"), *small)
    assert rc == 2 and "would overwrite the results of the run in" in one_line(err)
    rc, _ = cli(capsys, "evaluate", "--run", str(a), "--out", str(b / "x.json"), *small)
    assert rc == 0 and (b / "x.samples.npz").exists() and (b / "x.score_error.csv").exists()
    assert (b / "samples.npz").read_bytes() == b"b's samples" and not (b / "metrics.json").exists()


# ------------------------------------------------------------------------------ results mixed
def test_4_a_directory_of_another_run_is_refused_and_overwrite_clears_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *train_cli(run, "oracle"))[0] == 0
    for name in ("metrics.json", "samples.npz", "score_error.csv"):
        (run / name).write_text("the oracle's")
    rc, err = cli(capsys, *train_cli(run, "dsm"))
    line = one_line(err)
    assert rc == 2 and "holds another run" in line and "metrics.json" in line
    assert (run / "metrics.json").read_text() == "the oracle's"  # nothing touched
    assert cli(capsys, *train_cli(run, "dsm"), "--overwrite")[0] == 0
    assert not any((run / n).exists() for n in ("metrics.json", "samples.npz", "score_error.csv"))
    assert "method: dsm" in (run / "config.yaml").read_text()


def test_5_a_second_writer_of_a_run_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    with lock(run, exclusive=True, what="madbench train (a test holding it)"):
        rc, err = cli(capsys, *train_cli(run))
        assert rc == 1 and "in use by another madbench process" in one_line(err)
        assert "a test holding it" in err and f"pid {os.getpid()}" in err
        with pytest.raises(RunLockedError, match="in use"):
            with lock(run, exclusive=False, what="reader"):
                pass
    assert cli(capsys, *train_cli(run))[0] == 0  # released with the process's hold


def test_6_a_checkpoint_of_an_older_config_resumes_bit_for_bit(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(small_cfg(), full, progress=False)
    train(small_cfg(), part, progress=False, stop_after=4)
    ck_path = RunDir(part).checkpoint
    ck = torch.load(ck_path, weights_only=True)
    old = dict(ck["config"])  # as an earlier version wrote it: flat keys, no new fields
    old.pop("method_params")
    old.pop("lr_final_ratio")
    old.update(input_scaling=True, rsgm_forward="exact", rsgm_walk_steps=100, rsgm_tau_min=1e-4)
    ck["config"] = old
    ck.pop("sha256")
    torch.save(ck, ck_path)  # format 1 had no checksum either
    train(small_cfg(), part, progress=False)
    a, b = (read_checkpoint(RunDir(r).checkpoint)["model"] for r in (full, part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_7_non_numeric_metrics_mark_the_run_and_missing_values_are_counted(tmp_path):
    statuses = []
    for seed, metrics in enumerate(
        [{"nll": 1.0, "tv": 0.1}, {"nll": 2.0, "tv": None}, {"nll": 3.0, "tv": 0.3}]
        + [{"nll": 4.0, "tv": "garbage"}]
    ):
        run = tmp_path / f"seed~{seed}"
        (run / "status").mkdir(parents=True)
        status = dict(dataset="toy", schedule="ve", method="mad", seed=seed, status="ok")
        (run / "status" / "evaluate.json").write_text(json.dumps({**status, "run_dir": str(run)}))
        (run / "metrics.json").write_text(json.dumps(metrics))
        statuses.append(run / "status" / "evaluate.json")
    runs = A.write_tables(statuses, tmp_path / "tables", ["discrete"])
    bad = runs[runs.status != "ok"]
    assert bad.seed.tolist() == [3] and "'tv' is 'garbage', not a number" in bad.error.iloc[0]
    table = (tmp_path / "tables" / "discrete.md").read_text()
    assert "3/4 (1 FAILED)" in table and "(n=2)" in table  # tv: 2 of the 3 finished seeds


def test_8_a_flipped_byte_inside_a_tensor_is_caught(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *train_cli(run))[0] == 0
    path = RunDir(run).checkpoint
    data = bytearray(path.read_bytes())
    weights = torch.load(path, weights_only=True)["ema"]["body.0.weight"]
    at = bytes(data).index(weights.numpy().tobytes()[:16])  # the tensor's bytes in the zip
    data[at + 3] ^= 0x10
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["ema"]["body.0.weight"], weights)
    rc, err = cli(capsys, "sample", "--run", str(run), "--n", "8", "--out", str(tmp_path / "s.npz"))
    assert rc == 1 and "does not match its sha256" in one_line(err)
    assert not (tmp_path / "s.npz").exists()


# ------------------------------------------------------------------------------ one-line errors
def test_9_errors_are_one_line_with_the_documented_status(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MADBENCH_EARTH_DIR", str(tmp_path / "no_mirror"))
    argv = train_cli(tmp_path / "e")
    argv[argv.index("toy")] = "earth_volcano"
    rc, err = cli(capsys, *argv)
    assert rc == 1 and "volerup.csv not found in mirror" in one_line(err)
    (tmp_path / "afile").write_text("x")
    rc, err = cli(capsys, *train_cli(tmp_path / "afile"))
    assert rc == 2 and "is a file" in one_line(err)
    run = tmp_path / "run"
    assert cli(capsys, *train_cli(run, "oracle"))[0] == 0
    for setting, words in (
        ("n_samples=0", "'evaluate.n_samples' must be >= 2, got 0"),
        ("n_samples=-3", "'evaluate.n_samples' must be >= 2, got -3"),
        ("sample_steps=0", "'evaluate.sample_steps' must be >= 1"),
        ("n_sigmas=0", "'evaluate.n_sigmas' must be >= 2"),
        ("sampler=bogus", "'evaluate.sampler'"),
        ("nope=1", "unknown config key 'evaluate.nope'"),
    ):
        rc, err = cli(capsys, "evaluate", "--run", str(run), "--out", str(run / "m.json"),
                      "--set", setting)  # fmt: skip
        assert rc == 2 and words in one_line(err), (setting, err)
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root writes anywhere: let the access check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == ro else real(p, m))
    rc, err = cli(capsys, "evaluate", "--run", str(run), "--out", str(ro / "m.json"))
    assert rc == 2 and "not writable" in one_line(err)
    rc, err = cli(capsys, *train_cli(ro / "run"))
    assert rc == 2 and "not writable" in one_line(err)


def test_10_the_pipeline_checks_every_runs_settings_before_any_job():
    import yaml

    from madbench.pipeline import build_grid

    cases = {
        "train.set.batch_sz": (lambda c: c["train"]["set"].update(batch_sz=256), "'batch_sz'"),
        "train.set.lr": (lambda c: c["train"]["set"].update(lr="abc"), "'lr'"),
        "schedule_params.ve.sigma_mx": (
            lambda c: c["schedule_params"]["ve"].update(sigma_mx=3.0),
            "'schedule.sigma_mx'",
        ),
        "sample.sampler": (lambda c: c["sample"].update(sampler="bogus"), "'evaluate.sampler'"),
    }
    for name, (edit, words) in cases.items():
        cfg = yaml.safe_load(Path("config/test.yaml").read_text())
        edit(cfg)
        with pytest.raises(ValueError, match=words):
            check_runs(cfg, build_grid(cfg)[0])
        assert name


@contextlib.contextmanager
def diverging_updates(monkeypatch):
    """Every optimiser step leaves a weight infinite (what a diverging run does, at once)."""
    step = torch.optim.AdamW.step

    def diverging_step(self, *a, **kw):
        out = step(self, *a, **kw)
        self.param_groups[0]["params"][0].data[0, 0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging_step)
    yield
    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_11_divergence_is_stopped_and_sample_refuses_non_finite_output(
    tmp_path, capsys, monkeypatch
):
    for lr in ("inf", "1e39"):
        rc, err = cli(capsys, *train_cli(tmp_path / "lr", "dsm", 1, "--set", f"lr={lr}"))
        assert rc == 2 and "'lr' must" in one_line(err) and not (tmp_path / "lr").exists()
    run = tmp_path / "run"
    assert cli(capsys, *train_cli(run, "dsm", 2))[0] == 0
    with diverging_updates(monkeypatch):
        rc, err = cli(capsys, *train_cli(tmp_path / "inf", "dsm", 1))
    assert rc == 1 and "non-finite network parameters after step 1" in one_line(err)
    ck = read_checkpoint(RunDir(run).checkpoint)
    ck["ema"] = {k: v * 1e30 for k, v in ck["ema"].items()}  # finite weights, overflowing output
    save_checkpoint(RunDir(run).checkpoint, ck)
    out = tmp_path / "s.npz"
    rc, err = cli(capsys, "sample", "--run", str(run), "--n", "16", "--out", str(out))
    assert rc == 1 and "are not finite" in one_line(err) and not out.exists()


def test_12_failures_reach_run_info_and_train_log_and_bad_names_leave_nothing(
    tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    with diverging_updates(monkeypatch):
        rc, err = cli(capsys, *train_cli(run, "dsm", 1))
    info = json.loads(RunDir(run).run_info.read_text())
    assert rc == 1 and info["status"] == "failed" and "non-finite" in info["error"]
    assert "training failed at step 1: NonFiniteLossError" in RunDir(run).log.read_text()
    ok = tmp_path / "ok"
    assert cli(capsys, *train_cli(ok))[0] == 0
    info = json.loads(RunDir(ok).run_info.read_text())
    RunDir(ok).run_info.write_text(json.dumps({**info, "status": "running"}))  # killed there
    assert cli(capsys, *train_cli(ok))[0] == 0
    assert json.loads(RunDir(ok).run_info.read_text())["status"] == "complete"
    never = tmp_path / "never"
    for old, new in (("dsm", "no_such_method"), ("toy", "no_such_dataset"), ("0", "-1")):
        argv = train_cli(never)
        argv[argv.index(old)] = new
        rc, err = cli(capsys, *argv)
        assert rc == 2 and new in one_line(err) and not never.exists(), (new, err)


# ------------------------------------------------------------------------------ the dashboard
HOSTILE = "<!--<script>alert('x')</script><img src=x onerror=alert(1)>&amp;"


def test_14_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "t.txt", lambda p: p.write_text("x"))
        assert stat.S_IMODE((tmp_path / "t.txt").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "u.txt", lambda p: p.write_text("x"))
        assert stat.S_IMODE((tmp_path / "u.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------ fault injection
@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A workflow copy on which config/test.yaml ran to the end (with the real CLI)."""
    wf = tmp_path_factory.mktemp("faults")
    copy_workflow(wf)
    r = snakemake("--cores", "2", "--configfile", "config/test.yaml", cwd=wf, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return wf


def run_dirs(wf: Path) -> list[Path]:
    return sorted(p.parent for p in (wf / "results" / "runs").glob("*/*/*/*/*/status"))


def test_faults_after_a_real_pipeline_run(done, capsys):
    wf = done
    runs = run_dirs(wf)
    dsm = [r for r in runs if "method~dsm" in str(r)]
    mad = [r for r in runs if "method~mad" in str(r)]
    tables = {p.name for p in (wf / "results" / "tables").glob("*")} - {"run_check.txt"}
    # malformed history and metrics in two runs, a null (non-finite) metric in a third
    h = RunDir(dsm[0]).history
    h.write_text(h.read_text().replace("\n20,", "\n20x,", 1))
    m = json.loads(RunDir(mad[0]).metrics.read_text())
    RunDir(mad[0]).metrics.write_text(json.dumps({**m, "w1": "garbage"}))
    m = json.loads(RunDir(mad[1]).metrics.read_text())
    RunDir(mad[1]).metrics.write_text(json.dumps({**m, "dist_mean": None}))
    r = snakemake("--cores", "2", "--configfile", "config/test.yaml", "-R", "aggregate", cwd=wf)
    table = pd.read_csv(wf / "results" / "tables" / "runs.csv")
    marked = table[table.status != "ok"].set_index("run_dir")["error"]
    assert "history.csv" in marked[str(dsm[0].relative_to(wf))]
    assert "'w1' is 'garbage'" in marked[str(mad[0].relative_to(wf))]
    assert len(marked) == 2 and r.returncode != 0  # check_runs ends the pipeline, tables exist
    assert tables <= {p.name for p in (wf / "results" / "tables").glob("*")}  # all rewritten
    assert "marked failed" in (wf / "results" / "logs" / "aggregate.log").read_text()
    # truncated and bit-flipped checkpoints: one-line errors, earlier metrics intact
    ck = RunDir(dsm[1]).checkpoint
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    metrics_before = RunDir(dsm[1]).metrics.read_bytes()
    out = dsm[1] / "metrics.json"
    rc, err = cli(capsys, "evaluate", "--run", str(dsm[1]), "--out", str(out))
    assert rc == 1 and "corrupted or truncated" in one_line(err)
    assert RunDir(dsm[1]).metrics.read_bytes() == metrics_before


def test_concurrent_trainings_of_one_run_directory(tmp_path):
    run = tmp_path / "run"
    argv = [MADBENCH, *train_cli(run, "dsm", 200000)]
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for _ in range(600):  # until the first holds the lock
            if (run / ".lock").exists() and (run / ".lock").read_text().strip():
                break
            time.sleep(0.1)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr
        line = one_line(second.stderr)
        assert f"pid {first.pid}" in line and "madbench train dsm on toy" in line
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert "method: dsm" in (run / "config.yaml").read_text()  # the first run's files


def test_13_hostile_strings_stay_text_in_the_dashboard(tmp_path):
    root = tmp_path / "results"
    statuses = []
    for seed, status in enumerate(("ok", "failed")):
        run = root / "runs" / "dataset~toy" / "schedule~ve" / "method~dsm" / f"seed~{seed}"
        (run / "status").mkdir(parents=True)
        st = dict(dataset="toy", schedule="ve", method="dsm", seed=seed, status=status)
        st.update(run_dir=str(run), failed_stage="train" if seed else None)
        st["error"] = f"RuntimeError: {HOSTILE}" if seed else ""
        (run / "status" / "evaluate.json").write_text(json.dumps(st))
        (run / "metrics.json").write_text(json.dumps({"nll": 1.0, "nll_convention": HOSTILE}))
        statuses.append(run / "status" / "evaluate.json")
    A.write_tables(statuses, root / "tables", ["discrete"])
    (root / "figures").mkdir()
    (root / "figures" / "<img src=x onerror=alert(2)>.png").write_bytes(b"not a png")
    page = root / "dashboard" / "index.html"
    build_dashboard(root / "tables" / "runs.csv", root / "tables", root / "figures", page, root)
    text = page.read_text()
    assert "<!--<script>" not in text and "<img src=x onerror" not in text
    d = chrome_driver()
    try:
        d.get(page.resolve().as_uri())
        assert len(d.find_elements("css selector", "#runs tbody tr")) == 2
        assert d.find_elements("id", "filter-method")  # the page's own script ran
        assert d.execute_script("return document.querySelectorAll('[onerror]').length") == 0
        d.find_element("css selector", "#runs tbody tr.failed").click()
        assert HOSTILE in d.find_element("id", "detail").text  # shown as text
        captions = d.execute_script(
            "return [...document.querySelectorAll('figcaption')].map(f => f.textContent)"
        )
        assert any("<img src=x onerror=alert(2)>" in c for c in captions)
    finally:
        d.quit()
