"""Pairwise distances between point sets on the manifolds (float64, exact near 0 and pi).

Each manifold's ``metric_cdist`` is one of these; they are the costs and kernel distances of
the distributional metrics (``madbench.metrics``). Points are rows (n, D); SO(3) points are 3x3
rotations flattened row-major. Distances are returned as float64 tensors on x's device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_f64",
    "as_f64_pair",
    "euclidean_cdist",
    "exact_cdist",
    "so3_angle_cdist",
    "sphere_geodesic_cdist",
    "torus_geodesic_cdist",
]


def as_f64(x: Tensor | np.ndarray, name: str, ndim: int = 2) -> Tensor:
    t = torch.as_tensor(x)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real tensor, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def as_f64_pair(x: Tensor, y: Tensor, cols: int | None = None) -> tuple[Tensor, Tensor]:
    x, y = as_f64(x, "x"), as_f64(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have {x.shape[1]} and {y.shape[1]} columns")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"expected points with {cols} coordinates, got {x.shape[1]}")
    return x, y.to(x.device)


def exact_cdist(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise Euclidean distances without the |x|^2 + |y|^2 - 2xy cancellation."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def euclidean_cdist(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise Euclidean distances |x_i - y_j|, (n, D) x (m, D) -> (n, m), float64."""
    x, y = as_f64_pair(x, y)
    return exact_cdist(x, y)


def _unit_angle_cdist(x: Tensor, y: Tensor) -> Tensor:
    xn = x / x.norm(dim=-1, keepdim=True)
    yn = y / y.norm(dim=-1, keepdim=True)
    # For unit vectors |x - y| = 2 sin(d/2) and |x + y| = 2 cos(d/2): stable at 0 and pi.
    return 2.0 * torch.atan2(exact_cdist(xn, yn), exact_cdist(xn, -yn))


def sphere_geodesic_cdist(x: Tensor, y: Tensor) -> Tensor:
    """Great-circle distances on S^{p-1}, (n, p) x (m, p) -> (n, m) in [0, pi], float64.

    Rows are first normalised (the angle between directions), then
    d = 2 atan2(|x - y|, |x + y|), exact at 0 and pi where arccos(<x, y>) loses sqrt(eps).
    """
    x, y = as_f64_pair(x, y)
    if x.shape[1] < 2:
        raise ValueError("sphere points need at least 2 coordinates")
    if (x.norm(dim=-1) == 0).any() or (y.norm(dim=-1) == 0).any():
        raise ValueError("sphere points must be nonzero")
    return _unit_angle_cdist(x, y)


def _so3_angle_from(sin_half: Tensor, trace: Tensor) -> Tensor:
    cos_half = ((1.0 + trace) / 4.0).clamp(0.0, 1.0).sqrt()
    return 2.0 * torch.atan2(sin_half.clamp(0.0, 1.0), cos_half)


def so3_angle_cdist(x: Tensor, y: Tensor) -> Tensor:
    """Rotation angle of R1^T R2 for flattened rotations, (n, 9) x (m, 9) -> (n, m) in [0, pi].

    With t = tr(R1^T R2) = <x, y> (any common flattening): cos(w/2)^2 = (1 + t)/4 (clamped to
    [0, 1]) and sin(w/2) = |R1 - R2|_F / (2 sqrt 2), combined by atan2 so the angle is accurate
    near 0 (arccos of the trace would lose sqrt(eps) there); near pi the accuracy is
    sqrt(eps) ~ 1e-8 rad, as for every trace-based formula. Inputs must be rotations (project
    first).
    """
    x, y = as_f64_pair(x, y, cols=9)
    sin_half = exact_cdist(x, y) / (2.0 * math.sqrt(2.0))
    return _so3_angle_from(sin_half, x @ y.T)


def torus_geodesic_cdist(x: Tensor, y: Tensor) -> Tensor:
    """Flat-torus distance for points (cos t1, sin t1, ..., cos td, sin td), (n, 2d) -> (n, m).

    d = sqrt(sum_k angle_k^2) with angle_k the circle distance of coordinate pair k. Memory
    n * m * d.
    """
    x, y = as_f64_pair(x, y)
    if x.shape[1] % 2:
        raise ValueError(f"torus points need an even number of coordinates, got {x.shape[1]}")
    xs = x.reshape(x.shape[0], -1, 2).transpose(0, 1)  # (d, n, 2)
    ys = y.reshape(y.shape[0], -1, 2).transpose(0, 1)
    return _unit_angle_cdist(xs, ys).square().sum(0).sqrt()
