"""Load a run directory written by ``madbench train``: config, dataset, schedule, method.

``load_run(run_dir)`` rebuilds the method of ``config.yaml`` and loads the EMA weights of
``checkpoint.pt`` (or the raw weights with ``weights="model"``) into its network, in eval mode
on the requested device. Non-trainable methods (oracle) need no checkpoint. Every problem (not
a run directory, missing or corrupted checkpoint, weights that do not fit the config) raises
:class:`RunLoadError` naming the file.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from madbench.config import ConfigError, TrainConfig, load_config
from madbench.data.base import Dataset
from madbench.methods.base import Method
from madbench.schedules import Schedule

CHECKPOINT_KEYS = ("step", "config", "model", "ema", "optimizer", "lr_scheduler", "rng")


class RunLoadError(RuntimeError):
    """A run directory cannot be loaded (the message names the file)."""


class EvaluationError(RuntimeError):
    """A run cannot be evaluated (bad settings, non-finite samples); the message says why."""


@dataclass
class Run:
    """A loaded run. ``config`` is the resolved config as a plain dict (``cfg`` the dataclass);
    ``schedule`` the schedule the method uses (RSGM: restricted to heat times >= tau_min);
    ``step`` the checkpoint's step (0 for oracle runs); ``complete`` whether step == steps.
    Other attributes (``score``, ``net``, ``manifold``, ...) are the method's, so a Run can
    stand where a Method is expected."""

    run_dir: Path
    cfg: TrainConfig
    config: dict[str, Any]
    dataset: Dataset
    schedule: Schedule
    method: Method
    device: torch.device
    step: int
    complete: bool

    def __getattr__(self, name: str) -> Any:
        if name == "method":  # not yet set (during unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.method, name)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load a checkpoint, with RunLoadError naming the file if missing or corrupted."""
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


def load_run(
    run_dir: str | Path, device: str | torch.device | None = None, weights: str = "ema"
) -> Run:
    """Rebuild the run in ``run_dir`` on ``device`` (default: cuda if available, else cpu)."""
    from madbench.training import (
        CHECKPOINT,
        CONFIG,
        build_dataset,
        build_method,
        build_schedule,
        resolve_device,
    )

    run_dir = Path(run_dir)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        raise RunLoadError(f"{cfg_path} not found: {run_dir} is not a madbench run directory")
    try:
        cfg = load_config(cfg_path)
    except ConfigError as e:
        raise RunLoadError(str(e)) from e
    dev = resolve_device("auto" if device is None else str(device))
    dataset, schedule = build_dataset(cfg), build_schedule(cfg)
    method = build_method(cfg, dataset, schedule, dev)
    step, complete = 0, True
    if method.trainable:
        ck_path = run_dir / CHECKPOINT
        ck = read_checkpoint(ck_path, dev)
        try:
            method.net.load_state_dict(ck[weights])
        except RuntimeError as e:
            raise RunLoadError(f"checkpoint {ck_path} does not fit config {cfg_path}: {e}") from e
        method.net.eval()
        for p in method.net.parameters():
            p.requires_grad_(False)
        step = int(ck["step"])
        complete = step == cfg.steps
        if not complete:
            print(
                f"warning: {ck_path} is at step {step} of {cfg.steps} (training incomplete)",
                file=sys.stderr,
            )
    return Run(run_dir, cfg, cfg.to_dict(), dataset, method.schedule, method, dev, step, complete)


def load_method(run_dir: str | Path, device: str | torch.device | None = None) -> Method:
    """The method of ``run_dir`` with EMA weights (see :func:`load_run`)."""
    return load_run(run_dir, device).method
