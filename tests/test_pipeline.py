"""The Snakemake pipeline: dry runs, lint, config rejection, and end-to-end runs.

Fast tier: `snakemake -n` of every configuration, `--lint`, and rejection of bad configs with a
message naming the key (a few seconds each: Snakemake builds the DAG and imports madbench).
End to end: config/test.yaml with the real CLI (fast tier, about 80 s); slow tier (`-m slow`):
the pipeline mechanics with a stub `madbench` CLI (a failed run is marked in the tables, retried
on the next invocation, a finished pipeline has nothing to do, and the Snakemake report builds).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import REPO, copy_workflow, snakemake

CONFIGS = ["config/config.yaml", "config/quick.yaml", "config/test.yaml", "config/study.yaml"]


@pytest.fixture(scope="module")
def wf(tmp_path_factory) -> Path:
    """A copy of the workflow with no results (the repository's results/ stay untouched)."""
    dest = tmp_path_factory.mktemp("wf")
    copy_workflow(dest)
    return dest


def write_config(tmp_path: Path, edit) -> Path:
    """config/test.yaml with ``edit(cfg)`` applied, written under tmp_path."""
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("configfile", CONFIGS)
def test_dry_run_lists_the_jobs(wf, configfile):
    r = snakemake("-n", "-p", "--nolock", "--configfile", configfile, cwd=wf)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    for rule in (
        "train",
        "evaluate",
        "rate_separation",
        "aggregate",
        "figure_toy",
        "figure_runs",
        "dashboard",
    ):
        assert f"rule {rule}:" in out, rule
    # every config has rsgm and the toy: the pair is excluded, logged, and has no job
    assert "excluded: method rsgm on dataset toy" in out
    assert "dataset~toy/split~none/schedule~ve/method~rsgm" not in out
    assert "dataset~toy/split~none/schedule~ve/method~dsm/seed~0/status/train.json" in out
    # a --configfile replaces config/config.yaml instead of being merged into it
    assert ("--set net.width=512" in out) == (configfile == "config/config.yaml")


def test_lint_is_clean(wf):
    r = snakemake("--lint", "--nolock", "--configfile", "config/test.yaml", cwd=wf)
    assert r.returncode == 0 and "Congratulations" in r.stdout + r.stderr, r.stdout[-3000:]


BAD_CONFIGS = {
    "unknown-method": (
        lambda c: c["grid"].update(methods=["dsm", "no_such_method"]),
        ["grid.methods", "no_such_method"],
    ),
    "unknown-dataset": (
        lambda c: c["grid"].update(datasets=["toy", "no_such_set"]),
        ["grid.datasets", "no_such_set"],
    ),
    "unknown-schedule": (lambda c: c["grid"].update(schedules=["vx"]), ["grid.schedules", "vx"]),
    "unknown-schedule-params": (
        lambda c: c["schedule_params"].update(vx={"t_min": 0.1}),
        ["schedule_params", "vx"],
    ),
    "sigma-order": (
        lambda c: c["schedule_params"]["ve"].update(sigma_min=5.0, sigma_max=1.0),
        ["schedule_params.ve.sigma_min", "schedule_params.ve.sigma_max"],
    ),
    "sigma-equal": (
        lambda c: c["schedule_params"]["ve"].update(sigma_min=1.0, sigma_max=1.0),
        ["schedule_params.ve.sigma_min"],
    ),
    "beta-order": (
        lambda c: c["schedule_params"].update(vp={"beta_min": 3.0, "beta_max": 2.0}),
        ["schedule_params.vp.beta_min"],
    ),
    "neg-steps": (lambda c: c["train"].update(steps=-5), ["'steps'", "-5", "minimum"]),
    "neg-override-steps": (
        lambda c: c["train"].update(overrides=[{"dataset": "*", "steps": -1}]),
        ["'overrides'", "'steps'", "minimum"],
    ),
    "neg-seed": (lambda c: c["grid"].update(seeds=[-1]), ["'seeds'", "minimum"]),
    "unknown-key": (lambda c: c.update(lerning_rate=1), ["lerning_rate"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_rejected_naming_the_key(case):
    from madbench.pipeline import check_config

    edit, words = BAD_CONFIGS[case]
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    edit(cfg)
    with pytest.raises(Exception) as err:
        check_config(cfg)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_good_configs_pass_the_checks():
    from madbench.pipeline import check_config

    for name in CONFIGS:
        check_config(yaml.safe_load((REPO / name).read_text()))


def test_snakemake_rejects_a_bad_config_naming_the_key(wf, tmp_path):
    """The Snakefile runs the same checks: schema error and registry error reach the user."""
    for edit, words in (BAD_CONFIGS["neg-steps"], BAD_CONFIGS["unknown-method"]):
        r = snakemake("-n", "--nolock", "--configfile", str(write_config(tmp_path, edit)), cwd=wf)
        assert r.returncode != 0
        for w in words:
            assert w in r.stderr + r.stdout, (w, r.stderr[-2000:])


def test_run_settings_apply_overrides_in_order():
    from madbench.pipeline import run_settings

    cfg = {
        "train": {
            "steps": 100,
            "set": {"lr": 1e-3},
            "overrides": [
                {"dataset": "earth_*", "steps": 600},
                {"dataset": "earth_*", "schedule": "vp", "set": {"lr": 5e-4}},
            ],
        },
        "schedule_params": {"vp": {"beta_max": 6.0}},
    }
    assert run_settings(cfg, "toy", "vp", "dsm") == (100, {"lr": 1e-3, "schedule.beta_max": 6.0})
    assert run_settings(cfg, "earth_fire", "ve", "mad") == (600, {"lr": 1e-3})
    assert run_settings(cfg, "earth_fire", "vp", "mad") == (
        600,
        {"lr": 5e-4, "schedule.beta_max": 6.0},
    )


def test_stacks_group_one_dimension_and_split_by_method_and_keep_shapes_apart():
    from madbench.pipeline import build_grid, stack_groups, stack_size

    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["grid"]["seeds"] = [0, 1, 2]
    cfg["train"]["overrides"] = [{"method": "rsgm", "set": {"lr": 1e-4}}]  # another shape
    grid, _ = build_grid(cfg)
    stacks = stack_groups(cfg, grid, 4)
    members = [(k, r.dataset, r.method, r.seed) for k, g in stacks.items() for r in g.itertuples()]
    assert sorted((d, m, s) for _, d, m, s in members) == sorted(
        (r.dataset, r.method, r.seed) for r in grid[grid.method != "oracle"].itertuples()
    )  # every trainable run in exactly one stack, the oracle in none
    by_stack = {k: [(m, s) for kk, _, m, s in members if kk == k] for k in stacks}
    assert [by_stack[f"dim~2/split~none/stack~0{i}"] for i in range(2)] == [
        [("dsm", 0), ("dsm", 1), ("dsm", 2), ("mad", 0)],  # a method's runs side by side
        [("mad", 1), ("mad", 2)],
    ]
    assert [by_stack[f"dim~3/split~none/stack~0{i}"] for i in range(3)] == [
        [("dsm", 0), ("dsm", 1), ("dsm", 2), ("mad", 0)],
        [("mad", 1), ("mad", 2)],
        [("rsgm", 0), ("rsgm", 1), ("rsgm", 2)],  # its lr sets it apart
    ]
    assert stack_groups(cfg, grid, 1) == {}
    assert (stack_size({"train": {}}, True), stack_size({"train": {}}, False)) == (64, 1)
    assert stack_size({"train": {}}, False, "32") == 32  # auto, as resolved where it started
    assert stack_size({"train": {"stack": 4}}, False, "32") == 4
    with pytest.raises(ValueError, match="train.stack"):
        stack_size({"train": {"stack": 0}}, True)
    with pytest.raises(ValueError, match="MADBENCH_TRAIN_STACK: 'many'"):
        stack_size({"train": {}}, True, "many")


def test_a_stacked_pipeline_marks_a_failed_run_and_retries_its_stack(tmp_path):
    """toy x {dsm, mad} x 2 seeds in stacks of 2 (train.stack), MAD with lr 1e6: the MAD
    stack's runs fail (non-finite loss) and are marked so, DSM's finish; the next invocation
    runs the MAD stack once more (max_attempts 2), then there is nothing to do."""
    copy_workflow(tmp_path)
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["grid"] = {"datasets": ["toy"], "schedules": ["ve"], "methods": ["dsm", "mad"],
                   "seeds": [0, 1]}  # fmt: skip
    cfg["train"].update(stack=2, overrides=[{"method": "mad", "set": {"lr": 1e6}}])
    cfg.update(max_attempts=2, fail_on_run_error=False)
    (tmp_path / "stacked.yaml").write_text(yaml.safe_dump(cfg))
    target = ("results/tables/runs.csv", "--configfile", "stacked.yaml")
    r = snakemake("--cores", "2", *target, cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stderr[-5000:]
    assert "training 4 runs as 2 stacks of up to 2" in r.stdout + r.stderr
    runs = pd.read_csv(tmp_path / "results/tables/runs.csv").set_index(["method", "seed"])
    assert (runs.loc["dsm", "status"] == "ok").all()
    assert (runs.loc["mad", "status"] == "failed").all()
    assert runs.loc["mad", "error"].str.contains("non-finite").all()
    status = tmp_path / "results/runs/dataset~toy/split~none/schedule~ve/method~dsm/seed~1"
    info = yaml.safe_load((status / "status/train.json").read_text())
    assert info["status"] == "ok" and info["stack"] == "dim~2/split~none/stack~00"
    assert (status / "checkpoint.pt").exists() and (status / "history.csv").exists()
    r = snakemake("--cores", "2", *target, cwd=tmp_path, timeout=1800)
    assert r.returncode == 0 and "rule train_stack" in r.stdout + r.stderr, r.stderr[-5000:]
    assert "dim~2/split~none/stack~01" in r.stdout + r.stderr  # only the failed stack
    assert "dim~2/split~none/stack~00" not in r.stdout + r.stderr
    r = snakemake("-n", *target, cwd=tmp_path)
    assert "Nothing to be done" in r.stdout + r.stderr


# --------------------------------------------------------------------------------------------
# End to end (slow)
# --------------------------------------------------------------------------------------------

STUB = r'''#!{python}
"""Stub madbench CLI: writes plausible run files; fails training for runs matching $STUB_FAIL."""
import argparse, json, os, sys
from pathlib import Path
import numpy as np, pandas as pd
if sys.argv[1] == "rate-separation":
    res = Path(sys.argv[sys.argv.index("--results") + 1])
    (res / "rate_separation").mkdir(parents=True, exist_ok=True)
    for name in ("curves", "slopes"):
        (res / "rate_separation" / f"{{name}}.csv").write_text("manifold,slope\ncircle,-1.0\n")
    for fig in ("anatomy", "tolerance", "tempering"):
        for ext in ("png", "pdf"):
            (res / "figures").mkdir(parents=True, exist_ok=True)
            (res / "figures" / f"rate_separation_{{fig}}.{{ext}}").write_bytes(b"stub")
    sys.exit(0)
p = argparse.ArgumentParser()
p.add_argument("cmd")
for a in ("--dataset", "--method", "--schedule", "--seed", "--steps", "--out", "--device",
          "--run", "--n", "--sampler"):
    p.add_argument(a)
p.add_argument("--set", action="append", default=[])
a = p.parse_args()
if a.cmd == "train":
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("STUB_FAIL") and os.environ["STUB_FAIL"] in a.out:
        sys.exit("RuntimeError: loss is NaN at step 17")
    (out / "config.yaml").write_text(f"dataset: {{a.dataset}}\n")
    (out / "run_info.json").write_text(json.dumps({{"git_commit": "abc", "device": a.device}}))
    s = np.arange(0, int(a.steps) + 1, 5)
    pd.DataFrame({{"step": s, "loss": 1 + 1 / (1 + s), "lr": 1e-3, "steps_per_s": 9.0,
                  "wall_time": s / 9}}).to_csv(out / "history.csv", index=False)
elif a.cmd == "sample":
    np.savez(a.out, projected=np.random.default_rng(0).normal(size=(int(a.n), 2)))
else:
    seed = int(Path(a.run).name.split("~")[1])
    Path(a.out).write_text(json.dumps({{"nll": 1.0 + seed, "dist_mean": 0.1 * seed}}))
'''


@pytest.mark.slow
def test_failed_run_is_marked_then_retried_and_a_finished_run_does_nothing(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "bin").mkdir()
    stub = tmp_path / "bin" / "madbench"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "grid": {
                    "datasets": ["toy"],
                    "schedules": ["ve"],
                    "methods": ["dsm", "mad"],
                    "seeds": [0, 1],
                },
                "schedule_params": {"ve": {"sigma_min": 0.01, "sigma_max": 5.0}},
                "train": {"steps": 10, "set": {}, "overrides": []},
                "sample": {"n": 50},
                "max_attempts": 2,
                "fail_on_run_error": True,
            }
        )
    )
    env = {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "STUB_FAIL": "method~mad/seed~1",
    }
    r = snakemake("--cores", "2", "--configfile", str(cfg), cwd=tmp_path, env=env)
    assert r.returncode != 0 and "1 of 4 runs failed" in r.stdout + r.stderr, r.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "results/tables/runs.csv")
    bad = runs[runs.status != "ok"]
    assert bad[["method", "seed"]].values.tolist() == [["mad", 1]]
    assert "loss is NaN" in bad["error"].iloc[0]
    assert "1/2 (1 FAILED)" in (tmp_path / "results/tables/discrete.md").read_text()
    assert (tmp_path / "results/dashboard/index.html").exists()
    env.pop("STUB_FAIL")
    r = snakemake("--cores", "2", "--configfile", str(cfg), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (pd.read_csv(tmp_path / "results/tables/runs.csv").status == "ok").all()
    r = snakemake("-n", "--configfile", str(cfg), cwd=tmp_path, env=env)
    assert "Nothing to be done" in r.stdout + r.stderr
    r = snakemake(
        "--report", "results/report.html", "--configfile", str(cfg), cwd=tmp_path, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "results/report.html").stat().st_size > 100_000


def test_config_test_yaml_end_to_end(tmp_path):
    """The CI configuration with the real CLI: every run trains, samples and evaluates, and the
    tables, figures and dashboard come out (about 80 s on 2 CPU cores)."""
    copy_workflow(tmp_path)
    r = snakemake("--cores", "2", "--configfile", "config/test.yaml", cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stderr[-5000:]
    runs = pd.read_csv(tmp_path / "results/tables/runs.csv")
    assert (runs.status == "ok").all(), runs[runs.status != "ok"][["run_dir", "error"]]
    for name in ("toy_fields", "training_curves", "score_error", "samples_s2"):
        assert (tmp_path / f"results/figures/{name}.png").stat().st_size > 1000
    summary = pd.read_csv(tmp_path / "results/tables/summary.csv")
    oracle = summary[(summary.method == "oracle") & (summary.metric == "score_error_integral")]
    assert len(oracle) == 2 and (oracle["mean"] < 1e-20).all()  # exact scores: zero error
    html = (tmp_path / "results/dashboard/index.html").read_text()
    assert all(d in html for d in ("toy", "s2_vmf_mixture_4", "rsgm", "oracle"))
    r = snakemake("-n", "--configfile", "config/test.yaml", cwd=tmp_path)
    assert "Nothing to be done" in r.stdout + r.stderr


# --------------------------------------------------------------------------------------------
# The stage wrapper (workflow/scripts/run_stage.py)
# --------------------------------------------------------------------------------------------


def load_run_stage():
    """The stage wrapper as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "run_stage", REPO / "workflow/scripts/run_stage.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage(tmp_path, name, cmd, upstream=()):
    """Run the wrapper in-process; return the status it wrote."""
    import json

    rs = load_run_stage()
    status = tmp_path / f"{name}.json"
    argv = [
        "--stage",
        name,
        "--status",
        str(status),
        "--log",
        str(tmp_path / f"{name}.log"),
        "--run-dir",
        str(tmp_path),
        "--meta",
        "dataset=toy",
        "seed=3",
    ]
    rs.main(argv + (["--upstream", *map(str, upstream)] if upstream else []) + ["--", *cmd])
    return json.loads(status.read_text())


def test_stage_records_success_failure_and_skips_after_a_failure(tmp_path):
    ok = stage(tmp_path, "train", [sys.executable, "-c", "print('fine')"])
    assert ok["status"] == "ok" and ok["seed"] == 3 and ok["dataset"] == "toy"
    assert "fine" in (tmp_path / "train.log").read_text()
    bad = stage(tmp_path, "sample", [sys.executable, "-c", "raise SystemExit('boom at step 7')"])
    assert bad["status"] == "failed" and bad["failed_stage"] == "sample" and bad["returncode"] == 1
    assert "boom at step 7" in bad["error"]
    skipped = stage(tmp_path, "evaluate", ["false"], upstream=[tmp_path / "sample.json"])
    assert skipped["status"] == "failed" and skipped["failed_stage"] == "sample"
    assert "boom at step 7" in skipped["error"] and skipped["returncode"] is None


def test_gpu_slots_hand_out_distinct_devices(tmp_path, monkeypatch):
    rs = load_run_stage()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    with rs.gpu_slots(1) as a, rs.gpu_slots(1) as b, rs.gpu_slots(1) as c:
        assert sorted([a, b, c]) == ["0", "1", "2"]
    with rs.gpu_slots(2) as pair:
        assert len(set(pair.split(","))) == 2
    with rs.gpu_slots(0) as none:
        assert none == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # e.g. set by SLURM for this job
    with rs.gpu_slots(1) as only:
        assert only == "5"
