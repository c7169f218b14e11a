"""Load a run directory written by ``madbench train``: config, dataset, schedule, method.

``load_run(run_dir)`` rebuilds the method of ``config.yaml`` and loads the EMA weights of
``checkpoint.pt`` (or the raw weights with ``weights="model"``) into its network, in eval mode
on the requested device. Non-trainable methods (oracle) need no checkpoint. Every problem (not
a run directory, missing or corrupted checkpoint, weights that do not fit the config) raises
:class:`RunLoadError` naming the file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from madbench.build import build_run, resolve_device
from madbench.config import ConfigError, TrainConfig, load_config
from madbench.data import Dataset
from madbench.methods import Method
from madbench.rundir import CHECKPOINT, RunDir, RunLoadError, read_checkpoint
from madbench.schedules import Schedule

__all__ = ["Run", "RunLoadError", "load_method", "load_run"]


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


def load_run(
    run_dir: str | Path,
    device: str | torch.device | None = None,
    weights: str = "ema",
    checkpoint: str = CHECKPOINT,
) -> Run:
    """Rebuild the run in ``run_dir`` on ``device`` (default: cuda if available, else cpu) with
    the weights of ``checkpoint`` (a file of the run directory: the last checkpoint, or the
    snapshot kept for the convergence check)."""
    run_dir = Path(run_dir)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    cfg_path = RunDir(run_dir).config
    if not cfg_path.is_file():
        raise RunLoadError(f"{cfg_path} not found: {run_dir} is not a madbench run directory")
    try:
        cfg = load_config(cfg_path)
    except ConfigError as e:
        raise RunLoadError(str(e)) from e
    dev = resolve_device("auto" if device is None else str(device))
    method = build_run(cfg, dev)
    step, complete = 0, True
    if method.trainable:
        ck_path = RunDir(run_dir) / checkpoint
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
        if not complete and checkpoint == CHECKPOINT:
            print(
                f"warning: {ck_path} is at step {step} of {cfg.steps} (training incomplete)",
                file=sys.stderr,
            )
    return Run(
        run_dir, cfg, cfg.to_dict(), method.dataset, method.schedule, method, dev, step, complete
    )


def load_method(run_dir: str | Path, device: str | torch.device | None = None) -> Method:
    """The method of ``run_dir`` with EMA weights (see :func:`load_run`)."""
    return load_run(run_dir, device).method
