"""Vectorised (tempered) Langevin dynamics run to stationarity.

    dX = sigma^alpha s(X) dt + sqrt(2) dW,   X in R^D, many independent chains at once,

discretised by Euler-Maruyama (the unadjusted Langevin algorithm, ULA):
X <- X + h sigma^alpha s(X) + sqrt(2 h) Z.

Step size. Near M the normal part of s is -dist / sigma^2 (plus an error c sigma^beta), so the
drift is an Ornstein-Uhlenbeck pull of rate lambda = sigma^alpha (sigma^-2 + |c| sigma^beta L)
(L = 1 bounds the error field's Lipschitz scale on the unit circle). ULA on an OU process of
rate lambda is stable for h lambda < 2 and its stationary variance is 1 / (1 - h lambda / 2)
times the exact one, so h = eta / lambda (eta = step_frac, e.g. 0.02-0.05) gives a relative
bias of about eta / 4 on E dist, the same at every sigma (it cancels in log-log slopes).

Length. Motion along M is a diffusion with unit coefficient and an O(sigma^alpha) drift; on the
unit circle its slowest relaxation rate is >= 1 (Brownian motion: e^{i t} decays like e^-t),
so t_burn = t_collect = a few time units are several mixing times. Stationarity is checked by
running a second set of chains from a different start and comparing the measurements.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]


def langevin_step_size(
    sigma: float, alpha: float, step_frac: float = 0.05, c: float = 0.0, beta: float = 0.0
) -> float:
    """h = step_frac / lambda, lambda = sigma^alpha (sigma^-2 + |c| sigma^beta) (module doc)."""
    if sigma <= 0 or step_frac <= 0:
        raise ValueError(f"need sigma > 0 and step_frac > 0, got {sigma}, {step_frac}")
    lam = sigma**alpha * (sigma**-2 + abs(c) * sigma**beta)
    return step_frac / lam


@torch.no_grad()
def run_langevin(
    score: ScoreFn,
    x_init: Tensor,
    sigma: float,
    alpha: float,
    h: float,
    t_burn: float,
    t_collect: float,
    n_snapshots: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run ULA for ``t_burn`` then ``t_collect`` time units; return snapshots (S, n, D).

    ``score(x)`` is the (possibly perturbed) score at the fixed noise level ``sigma``; the drift
    is sigma^alpha score(x). Snapshots are taken at equal intervals through the collection
    window (the last one at its end). Non-finite states raise (step size too large).
    """
    if x_init.ndim != 2:
        raise ValueError(f"x_init must have shape (n_chains, D), got {tuple(x_init.shape)}")
    if h <= 0 or t_burn < 0 or t_collect <= 0 or n_snapshots < 1:
        raise ValueError("need h > 0, t_burn >= 0, t_collect > 0, n_snapshots >= 1")
    x = x_init.clone()
    scale = float(sigma) ** alpha
    noise = (2 * h) ** 0.5
    n_burn = max(int(round(t_burn / h)), 0)
    every = max(int(round(t_collect / h / n_snapshots)), 1)
    snaps = []
    total = n_burn + every * n_snapshots
    for k in range(1, total + 1):
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + (h * scale) * score(x) + noise * z
        if k > n_burn and (k - n_burn) % every == 0:
            if not torch.isfinite(x).all():
                raise FloatingPointError(f"Langevin diverged at step {k} (h={h:.3g})")
            snaps.append(x.clone())
    return torch.stack(snaps)
