"""Learned scores from pipeline run directories, as functions of (x, sigma) in VE units.

Contract (madbench.runs, written elsewhere): a loader maps a run directory to a trained
:class:`madbench.methods.base.Method` with ``.score(x, t)`` (x (n, D), t (n,)), ``.schedule``
(``t_of_sigma``, ``alpha``) and ``.dataset`` / ``.manifold``. For a VP schedule the model's
score at x_t = a x (a = alpha(t)) relates to the VE score by s_VE(x, sigma) = a s(a x, t)
(madbench.schedules), which is what is returned here, so learned and exact scores share axes.

* 'dsm': the network's score s_theta.
* 'mad': MAD's learned remainder r_theta = s_model - s_base.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

_LOADER_NAMES = ("load_run", "load_method", "load_run_method", "method_from_run_dir")


def load_method(run_dir: str | Path):
    """Load a trained Method from ``run_dir`` through madbench.runs (clear error if missing)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    try:
        import madbench.runs as runs
    except ImportError as e:
        raise ImportError(f"madbench.runs is not available to load {run_dir}: {e}") from e
    for name in _LOADER_NAMES:
        fn = getattr(runs, name, None)
        if callable(fn):
            return fn(run_dir)
    raise ImportError(f"madbench.runs has none of the loaders {_LOADER_NAMES}")


def ve_score_fn(method) -> Callable[[Tensor, float], Tensor]:
    """(x, sigma) -> a s_theta(a x, t(sigma)) with a = alpha(t): the model score in VE units."""
    from madbench.likelihood import infer_score_dtype, ve_score

    dtype = infer_score_dtype(method.score)
    device = getattr(method, "device", None)  # None: score where x lives

    @torch.no_grad()
    def f(x: Tensor, sigma: float) -> Tensor:
        xin = x if device is None else x.to(device)
        return ve_score(method.score, method.schedule, xin, float(sigma), dtype).to(x.device)

    return f


def learned_score_fns(run_dirs: dict[str, str | Path]) -> dict[str, Callable]:
    """{'dsm': s_theta, 'mad': r_theta} (VE units) for the given {'dsm': dir, 'mad': dir}."""
    from madbench.runs import RunLoadError

    out = {}
    for kind, d in run_dirs.items():
        if kind not in ("dsm", "mad"):
            raise ValueError(f"learned score kind must be 'dsm' or 'mad', got {kind!r}")
        try:
            method = load_method(d)
        except (RunLoadError, FileNotFoundError) as e:  # a failed pipeline run: go on
            print(f"warning: learned {kind} scores skipped: {e}", file=sys.stderr)
            continue
        f = ve_score_fn(method)
        if kind == "mad":
            base = method.manifold.base_score
            out["mad"] = lambda x, s, f=f, base=base: f(x, s) - base(x, s)
            out["mad_full"] = f
        else:
            out["dsm"] = f
    return out
