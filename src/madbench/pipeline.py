"""Configuration checks and the run grid of the Snakemake pipeline (used by workflow/rules).

The config is validated in two steps: the JSON schema (workflow/schemas/config.schema.yaml,
through ``snakemake.utils.validate``: types, required keys, non-negative steps), then
:func:`check_config` (names against the madbench registries, sigma_min < sigma_max), each error
naming the offending key. :func:`build_grid` expands datasets x schedules x methods x seeds and
drops the method x dataset pairs that ``Method.check_supported`` rejects.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import IO, Any

import pandas as pd

from madbench.config import ConfigError, config_from_spec
from madbench.data import get_dataset, list_datasets
from madbench.methods import get_method, list_methods
from madbench.schedules import list_schedules
from madbench.stack import MEMBER_KEYS

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
GRID_COLUMNS = ["dataset", "split", "schedule", "method", "seed"]
STACK_ENV = "MADBENCH_TRAIN_STACK"


def registry_names(cfg: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Known names per config key, from the madbench registries (and the config's variants)."""
    return {
        "grid.datasets": list_datasets(),
        "grid.methods": list_methods() + sorted((cfg or {}).get("variants", {})),
        "grid.schedules": list_schedules(),
        "schedule_params": list_schedules(),
    }


def check_names(cfg: dict[str, Any]) -> None:
    """Raise ValueError naming the config key that holds a name no registry knows."""
    given = {
        "grid.datasets": cfg["grid"]["datasets"],
        "grid.methods": cfg["grid"]["methods"],
        "grid.schedules": cfg["grid"]["schedules"],
        "schedule_params": list(cfg.get("schedule_params", {})),
    }
    for name, v in cfg.get("variants", {}).items():
        if name in list_methods() or v["method"] not in list_methods():
            raise ValueError(
                f"config key 'variants.{name}': a variant needs a new name and a registered "
                f"method (known: {', '.join(list_methods())}), got method {v['method']!r}"
            )
    for key, known in registry_names(cfg).items():
        unknown = [n for n in given[key] if n not in known]
        if unknown:
            raise ValueError(
                f"config key {key!r}: unknown name(s) {unknown}; known: {', '.join(known)}"
            )


def check_ranges(cfg: dict[str, Any]) -> None:
    """Raise ValueError naming the key when sigma_min >= sigma_max or beta_min >= beta_max."""
    for sched, params in cfg.get("schedule_params", {}).items():
        for lo, hi in (("sigma_min", "sigma_max"), ("beta_min", "beta_max")):
            if lo in params and hi in params and params[lo] >= params[hi]:
                raise ValueError(
                    f"config key 'schedule_params.{sched}.{lo}' ({params[lo]}) must be "
                    f"below 'schedule_params.{sched}.{hi}' ({params[hi]})"
                )


def check_config(cfg: dict[str, Any], schema: str | Path = SCHEMA) -> None:
    """The schema (snakemake.utils.validate, which also fills defaults), then names and ranges."""
    from snakemake.utils import validate

    validate(cfg, schema=str(schema))
    check_names(cfg)
    check_ranges(cfg)


def base_method(cfg: dict[str, Any], name: str) -> str:
    """The registered method of a grid method name: itself, or the method of a variant."""
    return cfg.get("variants", {}).get(name, {}).get("method", name)


@functools.cache
def unsupported_reason(method: str, dataset: str) -> str | None:
    """None if ``method`` runs on ``dataset``, else the ValueError message of check_supported."""
    try:
        get_method(method).check_supported(get_dataset(dataset))
    except ValueError as err:
        return str(err)
    return None


def dataset_splits(cfg: dict[str, Any], dataset: str) -> list[str]:
    """The splits of a dataset in the grid: ``grid.splits`` (default random) for empirical data,
    none for a synthetic law."""
    if not get_dataset(dataset).empirical:
        return ["none"]
    return list(cfg["grid"].get("splits", ["random"]))


def glob_match(value: str, pattern: str) -> bool:
    """fnmatch, with a leading '!' negating the pattern ('!toy': every name but toy)."""
    if pattern.startswith("!"):
        return not fnmatch.fnmatch(value, pattern[1:])
    return fnmatch.fnmatch(value, pattern)


def excluded_by_config(cfg: dict[str, Any], dataset: str, schedule: str, method: str) -> bool:
    """Whether a rule of config key ``exclude`` (globs on dataset, schedule, method; all given
    ones must match) leaves this cell out of the grid."""
    coords = {"dataset": dataset, "schedule": schedule, "method": method}
    return any(
        all(glob_match(coords[k], rule[k]) for k in coords if k in rule)
        for rule in cfg.get("exclude", [])
    )


def build_grid(cfg: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs: dataset, split, schedule, method, seed) and (excluded: dataset, schedule, method,
    reason): datasets x their splits x schedules x methods x seeds, without the cells of config
    key ``exclude`` and the method x dataset pairs that ``Method.check_supported`` rejects."""
    g = cfg["grid"]
    runs, excluded = [], []
    for d, s, m in itertools.product(g["datasets"], g["schedules"], g["methods"]):
        if excluded_by_config(cfg, d, s, m):
            continue
        reason = unsupported_reason(base_method(cfg, m), d)
        if reason:
            excluded.append({"dataset": d, "schedule": s, "method": m, "reason": reason})
            continue
        for split, seed in itertools.product(dataset_splits(cfg, d), g["seeds"]):
            runs.append(dict(dataset=d, split=split, schedule=s, method=m, seed=int(seed)))
    grid = pd.DataFrame(runs, columns=GRID_COLUMNS).astype({"seed": int})
    if grid.empty:
        raise ValueError("config key 'grid': no method of grid.methods supports any dataset")
    return grid, pd.DataFrame(excluded, columns=["dataset", "schedule", "method", "reason"])


def run_settings(cfg: dict[str, Any], dataset: str, schedule: str, method: str) -> tuple[int, dict]:
    """Training steps and `--set` pairs of one run: train.*, schedule_params, the variant's own
    settings (when ``method`` names a variant), then overrides.

    Schedule parameters become ``schedule.KEY``; every override whose dataset, schedule and method
    globs all match is applied in order (a later one wins; a variant matches by its name).
    """
    steps, pairs = cfg["train"]["steps"], dict(cfg["train"].get("set", {}))
    params = cfg.get("schedule_params", {}).get(schedule, {})
    pairs.update({f"schedule.{k}": v for k, v in params.items()})
    pairs.update(cfg.get("variants", {}).get(method, {}).get("set", {}))
    coords = {"dataset": dataset, "schedule": schedule, "method": method}
    for o in cfg["train"].get("overrides", []):
        if all(glob_match(v, o.get(k, "*")) for k, v in coords.items()):
            steps = o.get("steps", steps)
            pairs.update(o.get("set", {}))
    return steps, pairs


def run_spec(cfg: dict[str, Any], row: dict[str, Any], out: str) -> dict[str, Any]:
    """The training of one grid run (a dict with the grid columns) into ``out``: a
    ``madbench train-stack --spec`` entry, from which ``madbench train`` is spelled as well.

    ``set`` holds the split, :func:`run_settings`' pairs and, for a trainable method when config
    key ``convergence.fraction`` is set, the snapshot fraction, in that order.
    """
    steps, pairs = run_settings(cfg, row["dataset"], row["schedule"], row["method"])
    method = base_method(cfg, row["method"])
    sets = [f"split={row['split']}"] + [f"{k}={v}" for k, v in pairs.items()]
    fraction = cfg.get("convergence", {}).get("fraction")
    if fraction and get_method(method).trainable:
        sets.append(f"snapshot_fraction={fraction}")
    return {"out": out, "dataset": row["dataset"], "method": method, "schedule": row["schedule"],
            "seed": int(row["seed"]), "steps": int(steps), "set": sets}  # fmt: skip


def stack_size(cfg: dict[str, Any], cuda: bool, env: str | None = None) -> int:
    """Config key ``train.stack``: how many runs train as one stacked model. "auto" (the
    default) is ``env`` (MADBENCH_TRAIN_STACK) when set, else 64 where Snakemake sees a GPU and
    1 (every run its own job) elsewhere."""
    size = cfg["train"].get("stack", "auto")
    key = "config key 'train.stack'"
    if size == "auto" and env:
        size, key = (int(env) if env.strip().isdigit() else env), "MADBENCH_TRAIN_STACK"
    elif size == "auto":
        return 64 if cuda else 1
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{key}: {size!r} is not a positive integer or 'auto'")
    return size


def resolve_stack_size(cfg: dict[str, Any], cuda: bool) -> int:
    """:func:`stack_size` with MADBENCH_TRAIN_STACK from the environment, which it then sets
    to the result: jobs that parse the workflow again (cluster jobs) inherit the same size."""
    size = stack_size(cfg, cuda, os.environ.get(STACK_ENV))
    os.environ[STACK_ENV] = str(size)
    return size


def stack_groups(cfg: dict[str, Any], grid: pd.DataFrame, size: int) -> dict[str, pd.DataFrame]:
    """The stacks of the grid's trainable runs: {"dim~D/split~P/stack~NN": runs}.

    Runs of one ambient dimension and split whose training configs differ only in the keys a
    stack lets its members differ in (dataset, seed, method, schedule) are grouped, ordered by
    method, schedule, dataset and seed, and cut into stacks of at most ``size``: the runs of
    one method, schedule and manifold, which share their loss computation (madbench.stack),
    sit together, so a stack holds few such groups. Empty when ``size`` is 1.
    """
    if size <= 1:
        return {}
    trainable = grid.method.map(lambda m: get_method(base_method(cfg, m)).trainable)
    runs = grid[trainable].assign(
        dim=grid.dataset.map(lambda d: get_dataset(d).manifold.ambient_dim)
    )
    runs = runs.sort_values(["dim", "split", "method", "schedule", "dataset", "seed"])
    shapes = runs.apply(lambda r: _shape_key(cfg, r), axis=1)
    stacks: dict[str, pd.DataFrame] = {}
    for (dim, split), cell in runs.groupby(["dim", "split"], sort=True):
        chunks = [g.iloc[i : i + size] for _, g in cell.groupby(shapes[cell.index], sort=False)
                  for i in range(0, len(g), size)]  # fmt: skip
        for n, chunk in enumerate(chunks):
            stacks[f"dim~{dim}/split~{split}/stack~{n:02d}"] = chunk.drop(columns="dim")
    return stacks


def _shape_key(cfg: dict[str, Any], row: pd.Series) -> str:
    """The training config of a grid run without the keys members of a stack may differ in."""
    tc = config_from_spec(run_spec(cfg, {k: row[k] for k in GRID_COLUMNS}, ""))
    return repr(sorted((k, v) for k, v in tc.to_dict().items() if k not in MEMBER_KEYS))


def evaluate_overrides(cfg: dict[str, Any]) -> dict[str, Any]:
    """The evaluation settings of config key ``sample`` (madbench evaluate --set ...)."""
    s = cfg["sample"]
    names = {"n": "n_samples", "steps": "sample_steps", "sampler": "sampler"}
    return {names[k]: v for k, v in s.items() if k in names}


def check_runs(cfg: dict[str, Any], grid: pd.DataFrame) -> None:
    """Build and check the training config and the evaluation settings of every grid cell, so
    that a misspelled ``train.set`` key, a bad value, an unknown schedule parameter or sampler is
    an error before any job runs (ValueError naming the key and the run)."""
    cells = grid.drop_duplicates(["dataset", "split", "schedule", "method"])
    for row in cells.to_dict("records"):
        run = "run " + " ".join(f"{k}={row[k]}" for k in ("dataset", "split", "schedule", "method"))
        try:
            tc = config_from_spec(run_spec(cfg, row, ""))
        except ConfigError as e:
            raise ValueError(
                f"{run}: {e} (set by train.set, train.overrides or schedule_params)"
            ) from None
        try:
            tc.eval_settings(evaluate_overrides(cfg))
        except ConfigError as e:
            raise ValueError(f"{run}: {e} (set by config key 'sample')") from None


@contextmanager
def rule_log(path: str | Path) -> Iterator[IO[str]]:
    """stdout and stderr of a rule's script into its log file; an exception's traceback is
    written there before it propagates, so the log of a failed rule says why."""
    with open(path, "w") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            yield log
        except BaseException:
            traceback.print_exc(file=log)
            raise
