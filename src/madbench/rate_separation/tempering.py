"""Experiment C: tempered score Langevin converges to the uniform law on M as sigma -> 0.

dX = sigma^alpha s(X, sigma) dt + sqrt(2) dW (0 < alpha < 2) has stationary law
∝ p_sigma^(sigma^alpha) ≈ exp(-sigma^(alpha-2) dist^2 / 2) p_data(proj x)^(sigma^alpha), whose
projection is uniform up to O(sigma^alpha) (docs/science.md 5): the discrepancy to uniform has slope
alpha. The discrepancy is a moment MMD: with features f(x) = (x, vec(x x^T)) of the projected
points, D^2 = |E_q f - E_U f|^2, estimated without bias (each mean's variance trace removed)
against a large uniform reference sample; a uniform sample of the same size gives the floor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from madbench.rate_separation.langevin import langevin_step_size, run_langevin


def moment_features(x: Tensor) -> Tensor:
    """(x, vec(x x^T)) for points x (n, D): first and second moments, (n, D + D^2)."""
    return torch.cat([x, (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)], dim=1)


def moment_mmd2(x: Tensor, ref: Tensor) -> float:
    """Unbiased |mean f(x) - mean f(ref)|^2 (x, ref: (n, D), (m, D); rows independent)."""
    fx, fr = moment_features(x.double()), moment_features(ref.double())
    diff = fx.mean(0) - fr.mean(0)
    bias = fx.var(0).sum() / fx.shape[0] + fr.var(0).sum() / fr.shape[0]
    return float(diff @ diff - bias)


def tempering_point(
    score: Callable[[Tensor, float], Tensor],
    sample_data: Callable[[int, torch.Generator], Tensor],
    project: Callable[[Tensor], Tensor],
    uniform_ref: Tensor,
    sigma: float,
    alpha: float = 1.0,
    n_chains: int = 2048,
    step_frac: float = 0.05,
    t_burn: float = 4.0,
    t_collect: float = 2.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Run tempered Langevin from the noised data law; moment MMD^2 of the final projected
    chains (independent rows) to the uniform reference, mean distance to M, and the floor."""
    g = torch.Generator().manual_seed(seed)
    x0 = sample_data(n_chains, g).to(dtype)
    x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=dtype)
    h = langevin_step_size(sigma, alpha, step_frac)
    snaps = run_langevin(
        lambda y: score(y, sigma).to(dtype), x, sigma, alpha, h, t_burn, t_collect, 1, g
    )
    xf = snaps[-1].double()
    p = project(xf.to(uniform_ref.dtype)).double()
    return {
        "mmd2": moment_mmd2(p, uniform_ref[n_chains:]),
        "mmd2_floor": moment_mmd2(uniform_ref[:n_chains], uniform_ref[n_chains:]),
        "mmd2_data": moment_mmd2(x0.double(), uniform_ref[n_chains:]),
        "dist": float((xf - p).norm(dim=-1).mean()),
        "n_steps": int(round((t_burn + t_collect) / h)),
    }


def positive_sqrt(v: float) -> float:
    return float(np.sqrt(v)) if v > 0 else float("nan")
