"""The run directory: every file a run holds, its name, and the one writer and reader of each.

    RUN_DIR/
      config.yaml        the resolved run configuration (madbench.config)
      run_info.json      provenance and status: git commit, versions, device, seed, wall time
      checkpoint.pt      model, EMA, optimiser, lr scheduler, step, RNG states (trainable)
      no_weights.txt     marker of a method without weights (oracle): no checkpoint
      history.csv        step, loss, lr, steps_per_s, wall_time: one row per log_every steps
      probes.csv         step, wall_time, dist_mean, distributional metrics, probe_time_s
      train.log          the log lines of madbench train
      metrics.json       madbench evaluate: a flat dict of scalars (docs/metrics.md)
      samples.npz        the evaluation's samples (raw, projected, dist_to_manifold, ...)
      score_error.csv    the exact score-error curve of the evaluation
      status/            the pipeline's stage status files: train.json, evaluate.json

Writers are atomic (a crash leaves the earlier file); readers of result files are tolerant
(``None`` for a missing or unreadable file) because tables and dashboards must survive a bad
run; readers of what a run needs to go on (the checkpoint) raise :class:`RunLoadError`.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from madbench._utils import atomic_write

CONFIG = "config.yaml"
RUN_INFO = "run_info.json"
CHECKPOINT = "checkpoint.pt"
NO_WEIGHTS = "no_weights.txt"
HISTORY = "history.csv"
PROBES = "probes.csv"
LOG = "train.log"
METRICS = "metrics.json"
SAMPLES = "samples.npz"
SCORE_ERROR = "score_error.csv"
STATUS = "status"
#: the files a run directory may hold, in the order the dashboard links them
RUN_FILES = (CONFIG, LOG, RUN_INFO, METRICS, HISTORY, PROBES, SAMPLES, SCORE_ERROR)
#: what a fresh training start removes (everything a run derives from its config)
TRAINING_FILES = (CHECKPOINT, HISTORY, PROBES, NO_WEIGHTS, LOG)
HISTORY_COLUMNS = ("step", "loss", "lr", "steps_per_s", "wall_time")
CHECKPOINT_KEYS = ("step", "config", "model", "ema", "optimizer", "lr_scheduler", "rng")
CHECKPOINT_FORMAT = 1


class RunLoadError(RuntimeError):
    """A run directory cannot be loaded (the message names the file)."""


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"RUN_DIR/{name}")


@dataclass(frozen=True)
class RunDir:
    """Paths of the files of one run directory (nothing is read or created by building it)."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    config = _file(CONFIG)
    run_info = _file(RUN_INFO)
    checkpoint = _file(CHECKPOINT)
    history = _file(HISTORY)
    probes = _file(PROBES)
    log = _file(LOG)
    metrics = _file(METRICS)
    samples = _file(SAMPLES)
    score_error = _file(SCORE_ERROR)

    def status(self, stage: str) -> Path:
        """The pipeline's status file of ``stage`` (train, evaluate)."""
        return self.path / STATUS / f"{stage}.json"


# ---------------------------------------------------------------------- json and csv
def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (keys sorted, non-JSON values as str), atomically."""
    text = json.dumps(data, indent=1, sort_keys=True, default=str)
    atomic_write(path, lambda p: p.write_text(text))


def read_csv(path: str | Path) -> pd.DataFrame | None:
    """The csv at ``path`` as a DataFrame, or None if it is missing, empty or unreadable."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    return None if df.empty else df


def append_row(path: Path, row: dict[str, float], columns: tuple[str, ...] | None = None) -> None:
    """Append ``row`` to the csv ``path`` (header first if new); ``columns`` default: row order.
    Floats are written by repr (exact round trip), so a resumed run's rows read back equal."""
    columns = tuple(row) if columns is None else columns
    new = not path.exists()
    with open(path, "a") as fh:
        if new:
            fh.write(",".join(columns) + "\n")
        fh.write(",".join(repr(row[c]) for c in columns) + "\n")


def truncate_rows(path: Path, step: int) -> None:
    """Keep the header and the rows whose first column (the step) is <= ``step``: the rows a
    resumed run will write again are removed."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = lines[:1] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= step]
    atomic_write(path, lambda p: p.write_text("\n".join(keep) + "\n"))


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` (with its format number) to ``path``, atomically."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda p: torch.save(state, p))


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (tensors only: ``weights_only``), with RunLoadError naming the file
    if it is missing, corrupted, truncated or incomplete."""
    path = Path(path)
    if not path.is_file():
        raise RunLoadError(
            f"checkpoint {path} not found (training never reached its first checkpoint?)"
        )
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as e:
        raise RunLoadError(
            f"checkpoint {path} is corrupted or truncated ({type(e).__name__}: {e})"
        ) from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise RunLoadError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return ck
