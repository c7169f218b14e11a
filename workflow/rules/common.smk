# Configuration checks, the run grid and the helpers every rule uses.
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch
from snakemake.logging import logger
from snakemake.utils import Paramspace, validate

from madbench.aggregate import dataset_family
from madbench.figures import RUN_FIGURES as RUN_FIGURE_FUNCTIONS
from madbench.methods import get_method
from madbench.pipeline import (
    base_method,
    build_grid,
    check_names,
    check_ranges,
    check_runs,
    evaluate_overrides,
    run_spec,
    stack_groups,
    resolve_stack_size,
)
from madbench.rate_separation.outputs import FIGURES as RS_FIGURE_NAMES


validate(config, schema="../schemas/config.schema.yaml")
check_names(config)  # names against the madbench registries
check_ranges(config)  # sigma_min < sigma_max, beta_min < beta_max

RESULTS = config.get("results", "results")
# Run stages on the GPU when this machine has one (profiles may override with set-resources).
GPU_PER_JOB = 1 if torch.cuda.is_available() else 0
# The CLI by name when it is on PATH (so that moving the checkout does not change every job's
# params and retrigger every run), else beside the Python running Snakemake.
MADBENCH = "madbench" if shutil.which("madbench") else str(Path(sys.executable).with_name("madbench"))
# Relative to the working directory, so the param does not change when the checkout moves.
STAGE_SCRIPT = os.path.relpath(Path(workflow.basedir, "workflow", "scripts", "run_stage.py"))
MEMBER_SCRIPT = os.path.relpath(Path(workflow.basedir, "workflow", "scripts", "stack_member.py"))


def log_excluded(excluded):
    """Say which method x dataset combinations the grid leaves out, and why."""
    pairs = excluded.drop_duplicates(["dataset", "method"])
    for row in pairs.itertuples():
        logger.info(f"excluded: method {row.method} on dataset {row.dataset}: {row.reason}")


GRID, EXCLUDED = build_grid(config)
# Convergence check (config key `convergence`): trainable runs keep snapshot.pt at this fraction
# of their steps, evaluated like the final weights (rule evaluate_snapshot).
CONVERGENCE = config.get("convergence", {}).get("fraction")
check_runs(config, GRID)  # every run's training config and evaluation settings, before any job
log_excluded(EXCLUDED)
RUNS = Paramspace(GRID)
RUN = f"{RESULTS}/runs/{RUNS.wildcard_pattern}"
RUN_PATTERN = RUNS.wildcard_pattern
FAMILIES = sorted({dataset_family(d) for d in GRID["dataset"]})


def run_dir(wildcards):
    """results/runs/dataset~D/split~P/schedule~S/method~M/seed~N for a job's wildcards."""
    pattern = RUNS.wildcard_pattern.format(**dict(wildcards.items()))
    return f"{RESULTS}/runs/{pattern}"


def all_run_files(name, trainable_only=False):
    """``name`` (a path inside a run directory) for every run of the grid (or its trainable
    runs: the methods with weights)."""
    patterns = RUNS.instance_patterns
    if trainable_only:
        keep = [get_method(base_method(config, m)).trainable for m in GRID["method"]]
        patterns = [p for p, k in zip(patterns, keep) if k]
    return [f"{RESULTS}/runs/{p}/{name}" for p in patterns]


def run_row(wildcards):
    """The grid coordinates of a job's wildcards."""
    return {k: getattr(wildcards, k) for k in ("dataset", "split", "schedule", "method", "seed")}


def train_cmd(wildcards, resources):
    """`madbench train ...` (shell-quoted); --device cuda when the job holds a GPU, else cpu."""
    spec = run_spec(config, run_row(wildcards), run_dir(wildcards))
    device = "cuda" if resources.gpu > 0 else "cpu"
    argv = [MADBENCH, "train", "--dataset", spec["dataset"], "--method", spec["method"],
            "--schedule", spec["schedule"], "--seed", str(spec["seed"]),
            "--steps", str(spec["steps"]), "--out", spec["out"], "--device", device]
    for pair in spec["set"]:
        argv += ["--set", pair]
    return shlex.join(argv)


# ---- stacks (config key train.stack; the train_stack jobs of workflow/rules/runs.smk): the
# trainable runs of one ambient dimension and split train as stacked models of up to STACK_SIZE
# runs, one job each. "auto" is resolved once, where Snakemake starts, and exported (in
# madbench.pipeline.resolve_stack_size): cluster jobs parse this file again on nodes that may
# see a GPU the submitting host does not, and must find the same stacks.
STACK_SIZE = resolve_stack_size(config, GPU_PER_JOB > 0)
STACKS = stack_groups(config, GRID, STACK_SIZE)
STACK_OF = {
    f"{RESULTS}/runs/{RUNS.wildcard_pattern.format(**row._asdict())}": stack
    for stack, runs in STACKS.items()
    for row in runs.itertuples(index=False)
}
# The grid's method names whose runs train in stacks (a regex for the rules' constraints).
STACKED_METHODS = "|".join(re.escape(m) for m in sorted({m for r in STACKS.values() for m in r.method}))
if STACKS:
    logger.info(f"training {len(STACK_OF)} runs as {len(STACKS)} stacks of up to {STACK_SIZE}")


def stack_cmd(wildcards, resources):
    """`madbench train-stack ...` (shell-quoted) for the stack of the job's wildcards."""
    runs = STACKS[wildcards.stack]
    spec = [run_spec(config, row._asdict(), f"{RESULTS}/runs/{RUNS.wildcard_pattern.format(**row._asdict())}")
            for row in runs.itertuples(index=False)]
    device = "cuda" if resources.gpu > 0 else "cpu"
    argv = [MADBENCH, "train-stack", "--stack-dir", f"{RESULTS}/stacks/{wildcards.stack}",
            "--spec", json.dumps(spec, separators=(",", ":")), "--device", device, "--no-progress"]
    return shlex.join(argv)


def stack_attempt(wildcards):
    """The stack job's attempt: past its own, and past any of its runs' (a failed run of a
    stack is retried by running the stack again, which resumes only the unfinished runs)."""
    path = Path(RESULTS, "stacks", wildcards.stack, "status.json")
    attempts = [_next_attempt(path)]
    for row in STACKS[wildcards.stack].itertuples(index=False):
        run = f"{RESULTS}/runs/{RUNS.wildcard_pattern.format(**row._asdict())}"
        attempts.append(_next_attempt(Path(run, "status", "train.json")))
    return max(attempts)


def evaluate_cmd(wildcards, snapshot=False):
    """`madbench evaluate ...` (shell-quoted) writing metrics.json, score_error.csv and
    samples.npz into the run directory (with ``snapshot``: the weights of snapshot.pt, into
    RUN/snapshot/); config `sample` sets the evaluation's sampler."""
    run = run_dir(wildcards)
    out = f"{run}/snapshot/metrics.json" if snapshot else f"{run}/metrics.json"
    argv = [MADBENCH, "evaluate", "--run", run, "--out", out]
    if snapshot:
        argv += ["--checkpoint", "snapshot.pt"]
    for name, value in evaluate_overrides(config).items():
        argv += ["--set", f"{name}={value}"]
    return shlex.join(argv)


def next_attempt(stage):
    """Params function: the attempt number of ``stage``; it grows while the stage has failed.

    A changed param makes Snakemake (rerun trigger 'params') run the stage again, so a failed
    stage is retried on the next invocation until it has been tried ``max_attempts`` times.
    """

    def attempt(wildcards):
        return _next_attempt(Path(run_dir(wildcards)) / "status" / f"{stage}.json")

    return attempt


def _next_attempt(path):
    """The attempt after the one recorded in status file ``path`` if it failed and may be
    retried, else the recorded one (1 when there is none)."""
    try:
        status = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return 1
    done = int(status.get("attempt", 1))
    retry = status.get("status") != "ok" and done < config.get("max_attempts", 2)
    return done + 1 if retry else done


def run_meta(wildcards):
    """The run's grid coordinates as key=value words, stored in every status file."""
    return " ".join(
        f"{k}={getattr(wildcards, k)}" for k in ("dataset", "split", "schedule", "method", "seed")
    )


# ---- rate separation (workflow/rules/rate_separation.smk)
RS = f"{RESULTS}/rate_separation"
RS_FIGURES = list(RS_FIGURE_NAMES)
# Figures drawn from the run table (one figure_runs job each): madbench.figures.RUN_FIGURES.
RUN_FIGURES = list(RUN_FIGURE_FUNCTIONS)
# Learned scores: the first seed of the VE runs on the anatomy targets' datasets, when in the grid.
RS_LEARNED = {"s2": "s2_vmf_mixture_4", "discrete": "toy"}


def rs_learned_runs():
    """{'dsm:s2': run_dir, ...} for the learned scores the grid provides."""
    out = {}
    for key, dataset in RS_LEARNED.items():
        for method in ("dsm", "mad"):
            rows = GRID[(GRID.dataset == dataset) & (GRID.schedule == "ve") & (GRID.method == method)]
            if len(rows):
                seed = int(rows.seed.min())
                out[f"{method}:{key}"] = (
                    f"{RESULTS}/runs/dataset~{dataset}/split~none/schedule~ve/method~{method}/seed~{seed}"
                )
    return out


def rs_cmd(wildcards):
    rs = config.get("rate_separation", {})
    argv = [MADBENCH, "rate-separation", "--mode", rs.get("mode", "quick"),
            "--results", RESULTS, "--seed", str(rs.get("seed", 0))]
    for key, run in rs_learned_runs().items():
        argv += ["--run-dir", f"{key}={run}"]
    return shlex.join(argv)
