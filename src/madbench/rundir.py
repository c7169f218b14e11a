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

import fcntl
import hashlib
import json
import os
import pickle
import socket
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from madbench._utils import atomic_write

CONFIG = "config.yaml"
RUN_INFO = "run_info.json"
CHECKPOINT = "checkpoint.pt"
#: the checkpoint kept at ``snapshot_fraction`` of the steps, for the convergence check
SNAPSHOT = "snapshot.pt"
NO_WEIGHTS = "no_weights.txt"
HISTORY = "history.csv"
PROBES = "probes.csv"
LOG = "train.log"
METRICS = "metrics.json"
SAMPLES = "samples.npz"
SCORE_ERROR = "score_error.csv"
STATUS = "status"
#: where the evaluation of snapshot.pt goes (metrics.json, samples.npz, score_error.csv)
SNAPSHOT_EVAL = "snapshot"
#: the files a run directory may hold, in the order the dashboard links them
RUN_FILES = (CONFIG, LOG, RUN_INFO, METRICS, HISTORY, PROBES, SAMPLES, SCORE_ERROR)
#: what a fresh training start removes (everything a run derives from its config)
TRAINING_FILES = (CHECKPOINT, SNAPSHOT, HISTORY, PROBES, NO_WEIGHTS, LOG)
HISTORY_COLUMNS = ("step", "loss", "lr", "steps_per_s", "wall_time")
CHECKPOINT_KEYS = ("step", "config", "model", "ema", "optimizer", "lr_scheduler", "rng")
#: 2: with a sha256 of its content (format 1, without one, is read unverified)
CHECKPOINT_FORMAT = 2
LOCK = ".lock"
#: what a run derives from its config: a fresh start with another config removes all of it
DERIVED_FILES = TRAINING_FILES + (RUN_INFO, METRICS, SAMPLES, SCORE_ERROR)
#: directories a fresh start with another config removes
DERIVED_DIRS = (STATUS, SNAPSHOT_EVAL)


class RunLoadError(RuntimeError):
    """A run directory cannot be loaded (the message names the file)."""


class RunLockedError(RuntimeError):
    """Another madbench process works on this run directory or output (the message says who)."""


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
    snapshot = _file(SNAPSHOT)
    history = _file(HISTORY)
    probes = _file(PROBES)
    log = _file(LOG)
    metrics = _file(METRICS)
    samples = _file(SAMPLES)
    score_error = _file(SCORE_ERROR)

    @property
    def snapshot_metrics(self) -> Path:
        """The metrics of snapshot.pt (``madbench evaluate --checkpoint snapshot.pt``)."""
        return self.path / SNAPSHOT_EVAL / METRICS

    def status(self, stage: str) -> Path:
        """The pipeline's status file of ``stage`` (train, evaluate)."""
        return self.path / STATUS / f"{stage}.json"


def evaluation_files(out: str | Path) -> dict[str, Path]:
    """What ``madbench evaluate --out OUT`` writes: the metrics at OUT, and beside it the samples
    and the score-error curve, named by OUT: ``samples.npz`` and ``score_error.csv`` for a run
    directory's own ``metrics.json``, ``<stem>.samples.npz`` and ``<stem>.score_error.csv``
    for any other name (so two evaluations never share a file)."""
    out = Path(out)
    if out.name == METRICS:
        return {
            "metrics": out,
            "samples": out.with_name(SAMPLES),
            "score_error": out.with_name(SCORE_ERROR),
        }
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {
        "metrics": out,
        "samples": out.with_name(f"{stem}.{SAMPLES}"),
        "score_error": out.with_name(f"{stem}.{SCORE_ERROR}"),
    }


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
def content_digest(obj: Any) -> str:
    """sha256 of a checkpoint's content: every tensor's dtype, shape and bytes and every other
    value's repr, dict keys in sorted order (stable under save and load)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)};".encode())
        for k in sorted(obj, key=repr):
            h.update(f"{k!r}:".encode())
            _feed(h, obj[k])
    elif isinstance(obj, list | tuple):
        h.update(f"seq {len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"{obj!r};".encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` with its format number and the sha256 of its content, atomically."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    state["sha256"] = content_digest(state)
    atomic_write(path, lambda p: torch.save(state, p))


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (tensors only: ``weights_only``) and verify its sha256, with
    RunLoadError naming the file if it is missing, corrupted, truncated or incomplete (torch
    does not check the zip's CRC: a flipped byte inside a tensor loads silently otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise RunLoadError(
            f"checkpoint {path} not found (training never reached its first checkpoint?)"
        )
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
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
    stored = ck.pop("sha256", None)
    if stored is not None and stored != content_digest(ck):
        raise RunLoadError(
            f"checkpoint {path} is corrupted: its content does not match its sha256 (a changed "
            "byte); delete it to train again from the last good state, or from scratch"
        )
    return _to_device(ck, torch.device(device))


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


# ---------------------------------------------------------------------- locks
@contextmanager
def lock(directory: str | Path, *, exclusive: bool, what: str, name: str = LOCK) -> Iterator[None]:
    """Hold the lock file ``directory/name`` while the block runs: exclusive for a writer
    (``madbench train``, an evaluation output), shared for readers. A conflict is
    RunLockedError naming the holder; the lock goes with the process (kill -9 included)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / name, "a+")
    try:
        fcntl.flock(fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "a process reading it"
        fh.close()
        raise RunLockedError(
            f"{directory} is in use by another madbench process ({holder}); wait for it to end"
        ) from None
    try:
        if exclusive:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}: {what}, since {time.ctime()}\n")
            fh.flush()
        yield
    finally:
        if exclusive:
            fh.truncate(0)
        fh.close()
