"""The SLURM tier (`pytest -m slurm`): the pipeline through a real SLURM and the project's profile.

A session fixture starts a one-node SLURM with accounting and fake GPUs (.ci/slurm/start.sh: root
and apt-get on Debian) and always stops it again (.ci/slurm/stop.sh), unless one was running
already: then it is used and left running. The module runs config/test.yaml, with one cell made
to fail, through snakemake-executor-plugin-slurm with workflow/profiles/slurm plus the thin CI
layer .ci/slurm/profile (status polling only; account and partitions come from the environment,
as for users), and the same configuration locally for reference. It checks that every train and
evaluate job ran as a SLURM job with the profile's resources (GPU rules with a GPU), that the
tables equal the local run's, that the failed runs are marked failed while the rest complete, and
that a second invocation submits nothing. The fake GPUs have no CUDA: a `madbench` shim first on
PATH turns the `--device cuda` of GPU jobs into `--device cpu`, and refuses to if SLURM gave the
job no GPU (a real GPU job on a node without a working GPU fails, as it should).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import (
    REPO,
    SNAKEMAKE,
    copy_workflow,
    finish,
    kill_group,
    run_hard,
    start_group,
)

pytestmark = pytest.mark.slurm

CI = REPO / ".ci" / "slurm"
TOOLS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")
PLUGIN = "snakemake_executor_plugin_slurm"
SLURM_TIMEOUT = 900  # s, one pipeline run through SLURM; the whole tier aims at < 5 min
FAILING = {"dataset": "s2_vmf_mixture_4", "method": "rsgm"}  # not a rate-separation input
GPU_RULES = ("train", "evaluate")
# runs.csv columns that differ between two correct runs: timings, memory, threads, host, paths
VOLATILE = re.compile(
    r"wall|time|_s$|rss|memory|steps_per_s|device|torch_threads|git_commit|versions|python"
    r"|run_dir|^error$"
)

SHIM = '''#!{python}
"""madbench for the CI cluster's fake GPUs (see tests/test_slurm.py)."""
import os, sys
args = sys.argv[1:]
if "--device" in args and args[args.index("--device") + 1] == "cuda":
    if not os.environ.get("CUDA_VISIBLE_DEVICES"):
        sys.exit("madbench shim: --device cuda, but SLURM gave this job no GPU")
    args[args.index("--device") + 1] = "cpu"
os.execv({madbench!r}, [{madbench!r}, *args])
'''


def why_no_cluster() -> str | None:
    """What is missing for a CI cluster on this machine (None: nothing)."""
    if os.geteuid() != 0:
        return "the SLURM tier needs root: .ci/slurm/start.sh installs packages and starts daemons"
    if not shutil.which("apt-get") and not all(shutil.which(t) for t in TOOLS):
        missing = [t for t in TOOLS if not shutil.which(t)]
        return f"the SLURM tier needs apt-get (Debian) or these installed: {', '.join(missing)}"
    if importlib.util.find_spec(PLUGIN) is None:
        return "the Snakemake SLURM plugin is missing: pip install -e '.[slurm]'"
    return None


def read_env_sh(path: Path) -> dict[str, str]:
    """The `export NAME=VALUE` lines of start.sh's env.sh."""
    pairs = re.findall(r"^export (\w+)=(.*)$", path.read_text(), flags=re.M)
    return {k: shlex.split(v)[0] for k, v in pairs}


@pytest.fixture(scope="session")
def cluster():
    """Environment for the CI cluster (SLURM_CONF, MADBENCH_SLURM_*), started here if needed."""
    missing = why_no_cluster()
    if missing:
        pytest.skip(missing)
    state = Path(os.environ.get("MADBENCH_SLURM_DIR", "/tmp/madbench-slurm"))
    env = dict(os.environ, MADBENCH_SLURM_DIR=str(state))
    started_here = True  # until start.sh says otherwise: stop whatever a failed start left
    try:
        r = run_hard(["bash", str(CI / "start.sh")], cwd=REPO, env=env, timeout=900)
        started_here = "already running" not in r.stdout
        assert r.returncode == 0, f"start.sh failed:\n{r.stdout}\n{r.stderr}"
        yield dict(env, **read_env_sh(state / "env.sh"))
    finally:
        if started_here:
            r = run_hard(["bash", str(CI / "stop.sh")], cwd=REPO, env=env, timeout=120)
            assert r.returncode == 0, f"stop.sh failed:\n{r.stdout}\n{r.stderr}"


def sacct(env: dict, since: str, *args: str) -> pd.DataFrame:
    """Allocations (no steps) since ``since``, parsable output as a DataFrame."""
    fields = "JobID,JobName,State,Partition,Account,TimelimitRaw,ReqMem,AllocTRES,Comment"
    r = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", since, "-o", fields, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("|") for line in r.stdout.splitlines() if line]
    return pd.DataFrame(rows, columns=fields.split(","))


def slurm_run_id(run: subprocess.CompletedProcess) -> str:
    """The plugin's run ID (the job name of all its sbatch jobs) from a Snakemake log."""
    match = re.search(r"SLURM run ID: (\S+)", run.stdout + run.stderr)
    assert match, (run.stdout + run.stderr)[-3000:]
    return match.group(1)


def failing_config(path: Path) -> Path:
    """config/test.yaml with one (dataset, method) cell made to fail at run time (a learning
    rate that makes the loss non-finite in a few steps) and fail_on_run_error off, so that the
    pipeline completes."""
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["train"]["overrides"] = [{**FAILING, "set": {"lr": 1.0e6}}]  # the largest lr allowed
    cfg["fail_on_run_error"] = False
    path.write_text(yaml.safe_dump(cfg))
    return path


def profile_threads() -> dict[str, int]:
    """set-threads of the SLURM profile (train, evaluate)."""
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    return {rule: int(n) for rule, n in profile["set-threads"].items()}


class Runs:
    """The pipeline through SLURM, the same locally, and a second SLURM invocation."""

    def __init__(self, base: Path, env: dict):
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
        self.env = env
        self.config = failing_config(base / "test_failing.yaml")
        self.slurm_dir, self.local_dir = base / "slurm", base / "local"
        for d in (self.slurm_dir, self.local_dir):
            d.mkdir()
            copy_workflow(d)
        venv_bin = Path(sys.executable).parent
        (base / "bin").mkdir()
        shim = base / "bin" / "madbench"
        shim.write_text(SHIM.format(python=sys.executable, madbench=str(venv_bin / "madbench")))
        shim.chmod(0o755)
        path = os.pathsep.join([str(shim.parent), str(venv_bin), env["PATH"]])
        self.job_env = dict(env, PATH=path, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

        # The reference: the same configuration run locally, only up to the tables, with the
        # threads a SLURM job gets (the profile's, capped at this machine's cores like in the
        # job, whose snakemake runs with --cores all), beside the SLURM run.
        local_env = dict(self.job_env, PATH=f"{venv_bin}{os.pathsep}{env['PATH']}")
        threads = [f"{rule}={n}" for rule, n in profile_threads().items()]
        argv = [SNAKEMAKE, "aggregate", "--cores", "all", "--set-threads", *threads]
        argv += ["--configfile", str(self.config)]
        self.local_log = base / "local.log"
        local = start_group(argv, cwd=self.local_dir, env=local_env, log=self.local_log)
        try:
            self.first = self.slurm()
            self.local = finish(local, timeout=SLURM_TIMEOUT)
        finally:
            if local.poll() is None:
                kill_group(local)
        self.second = self.slurm()

    def slurm(self) -> subprocess.CompletedProcess:
        """The README's SLURM command (profile, account and partitions from the environment)
        plus the CI layer, on the failing configuration, with a hard timeout."""
        argv = [SNAKEMAKE, "--profile", str(CI / "profile")]
        argv += ["--workflow-profile", "workflow/profiles/slurm", "--configfile", str(self.config)]
        return run_hard(argv, cwd=self.slurm_dir, env=self.job_env, timeout=SLURM_TIMEOUT)

    def table(self, where: Path, name: str) -> pd.DataFrame:
        return pd.read_csv(where / "results" / "tables" / name)

    def jobs(self) -> pd.DataFrame:
        """sacct's allocations of the first SLURM invocation."""
        return sacct(self.env, self.since, "--name", slurm_run_id(self.first))


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("slurm_tier"), cluster)


def test_pipeline_completes_through_slurm(runs):
    out = runs.first.stdout + runs.first.stderr
    assert runs.first.returncode == 0, out[-5000:]
    assert "No wall time information given" not in out
    assert runs.local.returncode == 0, runs.local_log.read_text()[-5000:]
    for name in ("dashboard/index.html", "tables/run_check.txt", "figures/efficiency.png"):
        assert (runs.slurm_dir / "results" / name).stat().st_size > 0, name


def test_every_job_ran_as_a_slurm_job_with_the_profiles_resources(runs):
    from madbench.pipeline import build_grid

    jobs = runs.jobs()
    assert (jobs.State == "COMPLETED").all(), jobs[jobs.State != "COMPLETED"]
    assert (jobs.Account == runs.env["MADBENCH_SLURM_ACCOUNT"]).all()
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    grid, _ = build_grid(yaml.safe_load(runs.config.read_text()))
    for rule in GPU_RULES:
        ran = jobs[jobs.Comment.str.startswith(f"rule_{rule}_wildcards_")]
        expected = {
            f"rule_{rule}_wildcards_{r.dataset}_{r.split}_{r.schedule}_{r.method}_{r.seed}"
            for r in grid.itertuples()
        }
        assert set(ran.Comment) == expected and len(ran) == len(grid), rule
        assert (ran.Partition == runs.env["MADBENCH_SLURM_GPU_PARTITION"]).all(), rule
        assert ran.AllocTRES.str.contains("gres/gpu=1").all(), ran.AllocTRES
        assert (ran.TimelimitRaw.astype(int) == profile["set-resources"][rule]["runtime"]).all()
        assert (ran.ReqMem == f"{profile['set-resources'][rule]['mem_mb']}M").all()
    others = jobs[~jobs.Comment.str.match(r"rule_(train|evaluate)_")]
    assert {"rule_aggregate", "rule_rate_separation", "rule_dashboard"} <= set(others.Comment)
    assert (others.Partition == runs.env["MADBENCH_SLURM_PARTITION"]).all()
    assert not others.AllocTRES.str.contains("gpu").any()
    assert (others.TimelimitRaw.astype(int) == profile["default-resources"]["runtime"]).all()
    assert (others.ReqMem == f"{profile['default-resources']['mem_mb']}M").all()


def test_gpu_jobs_used_the_gpu_slurm_gave_them(runs):
    """run_stage.py kept SLURM's CUDA_VISIBLE_DEVICES (one of the 4 fake GPUs of start.sh)."""
    import json

    statuses = list((runs.slurm_dir / "results" / "runs").glob("*/*/*/*/*/status/train.json"))
    assert len(statuses) == len(runs.table(runs.slurm_dir, "runs.csv"))
    for path in statuses:
        status = json.loads(path.read_text())
        assert status["cuda_visible"] in {"0", "1", "2", "3"}, (path, status)


def test_tables_equal_the_local_run(runs):
    """Same seeds, same numbers: every metric of every run, and the family and summary tables."""
    key = ["dataset", "split", "schedule", "method", "seed"]
    a, b = (
        runs.table(d, "runs.csv").sort_values(key).reset_index(drop=True)
        for d in (runs.slurm_dir, runs.local_dir)
    )
    assert list(a.columns) == list(b.columns)
    stable = [c for c in a.columns if not VOLATILE.search(c)]
    assert {"status", "nll", "w1", "mmd2_h0.3", "score_error_integral"} <= set(stable)
    pd.testing.assert_frame_equal(a[stable], b[stable], check_exact=True)
    for name in ("discrete.csv", "sphere.csv", "summary.csv"):
        a, b = (runs.table(d, name) for d in (runs.slurm_dir, runs.local_dir))
        a, b = (t[~t.metric.str.contains(VOLATILE)].reset_index(drop=True) for t in (a, b))
        assert len(a) > 10, name
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)


def test_failed_runs_are_marked_and_the_rest_complete(runs):
    table = runs.table(runs.slurm_dir, "runs.csv")
    cell = (table.dataset == FAILING["dataset"]) & (table.method == FAILING["method"])
    assert cell.sum() == 2 and (table[cell].status == "failed").all()
    assert (table[cell].failed_stage == "train").all()
    assert table[cell].error.str.contains("non-finite training loss").all(), table[cell].error
    assert (table[~cell].status == "ok").all(), table[~cell & (table.status != "ok")]
    assert "0/2 (2 FAILED)" in (runs.slurm_dir / "results/tables/sphere.md").read_text()
    check = (runs.slurm_dir / "results/tables/run_check.txt").read_text()
    assert "2 failed" in check, check


def test_a_second_invocation_submits_nothing(runs):
    out = runs.second.stdout + runs.second.stderr
    assert runs.second.returncode == 0, out[-3000:]
    assert "Nothing to be done" in out, out[-3000:]
    assert "has been submitted" not in out
    assert len(sacct(runs.env, runs.since)) == len(runs.jobs())  # no job of another run since


@pytest.fixture
def plugin():
    """Dry runs with the SLURM profile need the plugin only (no cluster, no root)."""
    if importlib.util.find_spec(PLUGIN) is None:
        pytest.skip("the Snakemake SLURM plugin is missing: pip install -e '.[slurm]'")


def test_readme_cluster_command_keeps_the_profiles_resources(plugin, tmp_path):
    """The README's SLURM command, copied as written (names for the placeholders), gives every
    job the account and partitions and the profile's runtime, memory and GPU (a dry run)."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"^ *MADBENCH_SLURM_ACCOUNT=ACCOUNT .*?# SLURM$", readme, re.M | re.S)
    assert block, "README: the SLURM command of 'Running the full grid' not found"
    words = shlex.split(block.group(0).replace("\\\n", " ").split("#")[0])
    values = {"ACCOUNT": "acct_x", "PARTITION": "cpu_x", "GPU_PARTITION": "gpu_x"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MADBENCH_SLURM_")}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = values[value]
    assert words[0] == ".venv/bin/snakemake", words
    copy_workflow(tmp_path)
    r = run_hard([SNAKEMAKE, *words[1:], "-n"], cwd=tmp_path, env=env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    resources = re.findall(r"^rule (\w+):.*?^ +resources: (.*?)$", out, re.M | re.S)
    by_rule = {rule: dict(kv.split("=", 1) for kv in res.split(", ")) for rule, res in resources}
    assert {"train", "evaluate", "aggregate"} <= set(by_rule)
    for rule, res in by_rule.items():
        gpu = rule in GPU_RULES
        assert res["slurm_account"] == values["ACCOUNT"], (rule, res)
        assert res["slurm_partition"] == values["GPU_PARTITION" if gpu else "PARTITION"]
        assert res["gpu"] == ("1" if gpu else "0"), (rule, res)
        assert res["runtime"] == {"train": "720", "evaluate": "120"}.get(rule, "30"), (rule, res)
        assert res["mem_mb"] == ("16000" if gpu else "4000"), (rule, res)


def test_command_line_default_resources_replace_the_profiles(plugin, tmp_path):
    """Why the README does not use --default-resources for the account (snakemake 9.27): given
    on the command line, it replaces the profile's default-resources instead of merging."""
    copy_workflow(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MADBENCH_SLURM_")}
    argv = [SNAKEMAKE, "-n", "--workflow-profile", "workflow/profiles/slurm"]
    argv += ["--configfile", "config/test.yaml", "--default-resources", "slurm_account=A"]
    r = run_hard(argv, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    agg = re.search(r"^rule aggregate:.*?^ +resources: (.*?)$", r.stdout + r.stderr, re.M | re.S)
    assert "slurm_account=A" in agg.group(1) and "runtime=" not in agg.group(1), agg.group(1)
