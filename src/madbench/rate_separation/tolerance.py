"""Experiment B: error tolerance of (tempered) Langevin on the circle, sampled and by quadrature.

Score: exact vM(kappa = 4) noisy score plus c sigma^beta e0(x) (``circle.error_field``); sampler
dX = sigma^alpha s dt + sqrt(2) dW run to stationarity (``langevin.run_langevin``), from two
starts: 'data' (x0 ~ p_data plus N(0, sigma^2 I)) and 'far' (uniform angle at radius 1.5). The
stationary law of the same dynamics by quadrature (``oracle.stationary_oracle``) is the
noise-free reference that the sampled points must agree with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from madbench.rate_separation.circle import (
    error_field,
    sample_vonmises_circle,
    vonmises_angle_density,
    vonmises_score,
)
from madbench.rate_separation.langevin import langevin_step_size, run_langevin
from madbench.rate_separation.oracle import stationary_oracle
from madbench.rate_separation.stats import circle_w1_samples, histogram_tv

KAPPA = 4.0


@dataclass(frozen=True)
class SamplerConfig:
    n_chains: int = 4096
    step_frac: float = 0.05
    t_burn: float = 3.0
    t_collect: float = 3.0
    n_snapshots: int = 10
    n_bins: int = 64
    dtype: torch.dtype = torch.float32


def predicted_slope(quantity: str, alpha: float, beta: float, error_type: str) -> float:
    """docs/science.md 5 predictions of d log(quantity) / d log sigma as sigma -> 0.

    dist: min(1 - alpha/2, 2 + beta) for a normal error (no concentration when beta <= -2),
    1 - alpha/2 otherwise. tv / w1 (to p_data at alpha = 0, to uniform at alpha > 0):
    alpha = 0: 2 exact or with a normal error of beta > -2, min(beta, 2) for a tangential error
    with beta >= 0 (0 = plateau), 0 for beta < 0 (collapse to an O(1) error);
    alpha > 0: alpha, or min(alpha, alpha + beta) with a tangential error, 0 below -alpha.
    NaN where the theory predicts no power law.
    """
    tangential = error_type.startswith("tangential")
    if quantity == "dist":
        return min(1 - alpha / 2, 2 + beta) if error_type == "normal" else 1 - alpha / 2
    if quantity not in ("tv", "w1"):
        raise ValueError(f"no prediction for quantity {quantity!r}")
    if error_type == "normal" and beta <= -2:
        return math.nan
    if alpha == 0:
        return max(min(beta, 2.0), 0.0) if tangential else 2.0
    return max(min(alpha, alpha + beta), 0.0) if tangential else alpha


def _score_fn(sigma, beta, c, error_type):
    amp = c * sigma**beta

    def f(x):
        s = vonmises_score(x, sigma, KAPPA)
        return s if error_type == "none" or c == 0 else s + amp * error_field(x, error_type)

    return f


def _start(kind: str, n: int, sigma: float, g: torch.Generator, dtype) -> torch.Tensor:
    if kind == "data":
        x0 = sample_vonmises_circle(n, KAPPA, generator=g, dtype=dtype)
        return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=dtype)
    if kind == "far":
        t = (2 * torch.rand(n, generator=g, dtype=dtype) - 1) * math.pi
        return 1.5 * torch.stack([torch.cos(t), torch.sin(t)], -1)
    raise ValueError(f"unknown start {kind!r}")


def reference_law(alpha: float, grid: torch.Tensor, n_bins: int):
    """(CDF on grid, bin masses) of p_data = vM(4) (alpha = 0) or the uniform law (alpha > 0)."""
    fine = torch.linspace(-math.pi, math.pi, 64 * n_bins + 1, dtype=torch.float64)
    mid = (fine[1:] + fine[:-1]) / 2
    dens = vonmises_angle_density(mid, KAPPA) if alpha == 0 else torch.full_like(mid, 0.5 / math.pi)
    mass = dens * (fine[1] - fine[0])
    mass = mass / mass.sum()
    bins = mass.reshape(n_bins, -1).sum(1)
    cdf_f = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(mass, 0)])
    cdf = torch.from_numpy(np.interp(grid.numpy(), fine.numpy(), cdf_f.numpy()))
    return cdf, bins


def tolerance_point(
    sigma: float,
    alpha: float,
    error_type: str = "none",
    beta: float = 0.0,
    c: float = 0.0,
    cfg: SamplerConfig | None = None,
    seed: int = 0,
    starts: tuple[str, ...] = ("data", "far"),
) -> dict:
    """Sampled and quadrature measurements at one (sigma, alpha, error) point.

    Returns a dict with the oracle's dist / tv / w1 / tv_binned and, per start, the per-chain
    mean distances (array), the snapshot angles (chains x snapshots), tv (histogram), w1.
    """
    cfg = cfg or SamplerConfig()
    orc = stationary_oracle(sigma, alpha, beta, c, error_type, KAPPA, n_theta=64 * cfg.n_bins)
    grid = torch.linspace(-math.pi, math.pi, 4097, dtype=torch.float64)[:-1]
    ref_cdf, ref_bins = reference_law(alpha, grid, cfg.n_bins)
    out = {
        "oracle": {
            "dist": orc.dist,
            "tv": orc.tv,
            "w1": orc.w1,
            "tv_binned": 0.5 * float((orc.bin_probs(cfg.n_bins) - ref_bins).abs().sum()),
        },
        "ref_bins": ref_bins,
        "ref_cdf": ref_cdf,
        "grid": grid,
    }
    h = langevin_step_size(sigma, alpha, cfg.step_frac, c if error_type != "none" else 0, beta)
    score = _score_fn(sigma, beta, c, error_type)
    for i, start in enumerate(starts):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        x = _start(start, cfg.n_chains, sigma, g, cfg.dtype)
        snaps = run_langevin(
            score, x, sigma, alpha, h, cfg.t_burn, cfg.t_collect, cfg.n_snapshots, g
        )
        snaps = snaps.double()
        dist = (snaps.norm(dim=-1) - 1).abs().mean(0).numpy()  # per chain
        theta = torch.atan2(snaps[..., 1], snaps[..., 0]).T.contiguous()  # chains x snaps
        out[start] = {
            "dist": dist,
            "theta": theta.numpy(),
            "tv": histogram_tv(theta, ref_bins),
            "w1": circle_w1_samples(theta, ref_cdf, grid),
            "h": h,
            "n_steps": int(round((cfg.t_burn + cfg.t_collect) / h)),
        }
    return out
