"""Experiment A: score anatomy, the normal and tangential parts of scores against sigma.

At x = x0 + sigma z (x0 ~ p_data, z ~ N(0, I_D)), or at a fixed offset x = x0 + d n (n a random
unit normal at x0), every score s is split at p = proj_M(x) into
tangent = P_{T_p M} s and normal = s - tangent (finite sets: everything is normal). Expected for
exact scores as sigma -> 0 (docs/science.md 5): E|normal| ~ sigma^-1 with sigma E|normal| -> E|Z_k|
(k = codim), ~ sigma^-2 at a fixed offset, E|tangent| ~ sigma^0 and the remainder s - s_base
~ sigma^0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ScoreAt = Callable[[Tensor, float], Tensor]


@dataclass
class AnatomyTarget:
    """What the anatomy needs from a (manifold, data law) pair; all maps act on (n, D)."""

    name: str
    codim: int
    sample: Callable[[int, torch.Generator], Tensor]  # x0 ~ p_data, float64
    project: Callable[[Tensor], Tensor]
    to_tangent: Callable[[Tensor, Tensor], Tensor] | None  # None: finite set (no tangent)
    scores: dict[str, ScoreAt]  # e.g. exact, base, remainder, dsm, mad


def mean_abs_gaussian_norm(k: int) -> float:
    """E|Z_k| = sqrt(2) Gamma((k+1)/2) / Gamma(k/2) for Z_k ~ N(0, I_k)."""
    if k < 1:
        raise ValueError(f"codimension must be >= 1, got {k}")
    return math.sqrt(2) * math.exp(math.lgamma((k + 1) / 2) - math.lgamma(k / 2))


def random_unit_normal(target: AnatomyTarget, x0: Tensor, z: Tensor) -> Tensor:
    """z with its tangent part at x0 removed, normalised (finite sets: z / |z|)."""
    n = z if target.to_tangent is None else z - target.to_tangent(x0, z)
    return n / n.norm(dim=-1, keepdim=True)


def split_norms(target: AnatomyTarget, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """(|normal part|, |tangent part|) of s at x, each (n,)."""
    if target.to_tangent is None:
        return s.norm(dim=-1), torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    tan = target.to_tangent(target.project(x), s)
    return (s - tan).norm(dim=-1), tan.norm(dim=-1)


def score_anatomy(
    target: AnatomyTarget,
    sigmas,
    n: int,
    offset: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-point norms: result[score][part] is an array (len(sigmas), n), part in
    {'normal', 'tangent'}. ``offset=None``: x = x0 + sigma z; else x = x0 + offset * n (the
    same points at every sigma)."""
    if n < 2 or len(sigmas) < 2:
        raise ValueError("need n >= 2 points and at least two sigmas")
    x0 = target.sample(n, generator).double()
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    out = {k: {"normal": [], "tangent": []} for k in target.scores}
    for sigma in sigmas:
        x = x0 + (sigma * z if offset is None else offset * random_unit_normal(target, x0, z))
        for k, f in target.scores.items():
            nn, tt = split_norms(target, x, f(x, float(sigma)))
            out[k]["normal"].append(nn.cpu().numpy())
            out[k]["tangent"].append(tt.cpu().numpy())
    return {k: {p: np.stack(v) for p, v in d.items()} for k, d in out.items()}


def predicted_anatomy_slope(score: str, part: str, offset: bool, finite: bool) -> float:
    """Predicted log-log slopes of E|part| (NaN: no prediction, e.g. remainder's normal part)."""
    if score == "exact":
        if part == "normal":
            return -2.0 if offset else -1.0
        return math.nan if finite else 0.0
    if score == "remainder" and part == "tangent" and not finite:
        return 0.0
    return math.nan
