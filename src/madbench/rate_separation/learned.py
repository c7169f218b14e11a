"""Learned scores from pipeline run directories, as functions of (x, sigma) in VE units.

A run directory is loaded by :func:`madbench.runs.load_run` (a trained method with ``.score(x,
t)``, ``.schedule`` and ``.manifold``). For a VP schedule the model's score at x_t = a x (a =
alpha(t)) relates to the VE score by s_VE(x, sigma) = a s(a x, t) (madbench.schedules), which is
what is returned here, so learned and exact scores share axes.

* 'dsm': the network's score s_theta.
* 'mad': MAD's learned remainder r_theta = s_model - s_base.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from madbench.likelihood import infer_score_dtype, ve_score
from madbench.runs import RunLoadError, load_run


def ve_score_fn(method) -> Callable[[Tensor, float], Tensor]:
    """(x, sigma) -> a s_theta(a x, t(sigma)) with a = alpha(t): the model score in VE units."""
    dtype = infer_score_dtype(method.score)
    device = getattr(method, "device", None)  # None: score where x lives

    @torch.no_grad()
    def f(x: Tensor, sigma: float) -> Tensor:
        xin = x if device is None else x.to(device)
        return ve_score(method.score, method.schedule, xin, float(sigma), dtype).to(x.device)

    return f


def learned_score_fns(run_dirs: dict[str, str | Path]) -> dict[str, Callable]:
    """{'dsm': s_theta, 'mad': r_theta} (VE units) for the given {'dsm': dir, 'mad': dir}.

    A run that cannot be loaded (a failed pipeline run) is skipped with a warning, so the exact
    curves are still written."""
    out = {}
    for kind, d in run_dirs.items():
        if kind not in ("dsm", "mad"):
            raise ValueError(f"learned score kind must be 'dsm' or 'mad', got {kind!r}")
        try:
            method = load_run(d)
        except RunLoadError as e:  # a failed pipeline run: go on
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
