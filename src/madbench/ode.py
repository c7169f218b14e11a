"""An adaptive Dormand-Prince 5(4) integrator that never steps past its end point.

torchdiffeq's adaptive solvers step beyond the final time and interpolate back (and may probe
far beyond it while choosing the first step), which evaluates the vector field outside the
schedule's range [t_min, T]. This solver clips every step to the end point instead, so the
field is only evaluated on [t0, t1].

Error control: the embedded 4th-order estimate e, scaled componentwise, in the max norm over the
whole state (every point of a batch meets the tolerance):
err = max_i |e_i| / (atol + rtol max(|y0_i|, |y1_i|)); a step is accepted when err <= 1 and the
next step is h * clamp(0.9 err^(-1/5), 0.2, 10). The 5th-order solution is propagated (local
extrapolation, FSAL), as in Hairer, Norsett & Wanner, Solving ODEs I, II.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# Dormand-Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


@dataclass
class ODEStats:
    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    max_projection: float = 0.0  # largest |y - project(y)| (max norm) over accepted steps


def _error_ratio(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float) -> float:
    scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    return float((err.abs() / scale).max())


def _initial_step(f, t0, y0, f0, direction, rtol, atol, span) -> float:
    """Hairer's starting step (order 5), capped at the whole interval."""
    scale = atol + rtol * y0.abs()
    d0, d1 = float((y0 / scale).abs().max()), float((f0 / scale).abs().max())
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = f(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = float(((f1 - f0) / scale).abs().max()) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, span)


def dopri5(
    f: Callable[[float, Tensor], Tensor],
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 100_000,
    project: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, ODEStats]:
    """Solve y' = f(t, y) from t0 to t1 (either direction); returns (y(t1), stats).

    ``f`` receives a python float time and a tensor shaped like y0. ``project``: the standard
    projection method for ODEs on manifolds (Hairer, Lubich & Wanner, Geometric Numerical
    Integration, IV.4): every accepted step is mapped back onto the invariant manifold, which
    keeps the order of the method and stops an unstable off-manifold extension of f from
    amplifying the drift. Raises RuntimeError if the step size underflows, the state turns
    non-finite or ``max_steps`` is exceeded.
    """
    stats = ODEStats()

    def fc(t: float, y: Tensor) -> Tensor:
        stats.nfe += 1
        return f(t, y)

    span = abs(t1 - t0)
    if span == 0:
        return y0, stats
    direction = 1.0 if t1 > t0 else -1.0
    t, y = float(t0), y0
    k0 = fc(t, y)
    h = _initial_step(fc, t, y, k0, direction, rtol, atol, span)
    while direction * (t1 - t) > 0:
        if stats.n_accepted + stats.n_rejected >= max_steps:
            raise RuntimeError(f"dopri5: more than {max_steps} steps between {t0} and {t1}")
        last = h >= abs(t1 - t) * (1 - 1e-12)
        h = abs(t1 - t) if last else h
        if h <= 1e-14 * max(1.0, abs(t)):
            raise RuntimeError(f"dopri5: step size underflow at t = {t}")
        t_new = t1 if last else t + direction * h
        y_new, k_new, ratio = _dopri_step(fc, t, y, k0, direction * h, t_new, rtol, atol)
        if ratio <= 1.0:
            t, y, k0 = t_new, y_new, k_new
            if project is not None:
                y = project(y_new)
                stats.max_projection = max(stats.max_projection, float((y - y_new).abs().max()))
                k0 = fc(t, y)  # FSAL value no longer matches the projected state
            stats.n_accepted += 1
        else:
            stats.n_rejected += 1
        h = h * min(10.0, max(0.2, 0.9 * max(ratio, 1e-10) ** -0.2))
    return y, stats


def _dopri_step(fc, t: float, y: Tensor, k0: Tensor, dt: float, t_end: float, rtol, atol):
    """One Dormand-Prince step of size dt from (t, y) with f(t, y) = k0: (the 5th-order
    solution, f there (FSAL), the scaled error ratio). The last stage is evaluated at exactly
    ``t_end`` (= t + dt, or the end point, so that rounding never steps past it)."""
    ks = [k0]
    for i in range(1, 7):
        yi = y + dt * sum(a * k for a, k in zip(_A[i], ks, strict=False) if a != 0.0)
        ks.append(fc(t + _C[i] * dt if i < 6 else t_end, yi))
    y_new = yi  # the 7th stage is evaluated at the 5th-order solution (FSAL)
    err = dt * sum(e * k for e, k in zip(_E, ks, strict=True) if e != 0.0)
    ratio = _error_ratio(err, y, y_new, rtol, atol)
    if not torch.isfinite(y_new).all() or ratio != ratio:
        raise RuntimeError(f"dopri5: non-finite state at t = {t + dt}")
    return y_new, ks[6], ratio
