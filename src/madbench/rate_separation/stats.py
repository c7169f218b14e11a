"""Log-log slope fits with bootstrap intervals, and circle discrepancies (TV, W1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class SlopeFit:
    slope: float
    ci_low: float
    ci_high: float
    intercept: float


def loglog_slope(sigmas, values) -> tuple[float, float]:
    """OLS fit log(values) = a + b log(sigmas); returns (b, a). Non-positive values -> error."""
    s, v = np.asarray(sigmas, dtype=float), np.asarray(values, dtype=float)
    if s.shape != v.shape or s.ndim != 1 or s.size < 2:
        raise ValueError(f"need two 1-d arrays of equal length >= 2, got {s.shape}, {v.shape}")
    if np.any(s <= 0) or np.any(v <= 0) or not np.all(np.isfinite(v)):
        raise ValueError("log-log fit needs positive finite sigmas and values")
    b, a = np.polyfit(np.log(s), np.log(v), 1)
    return float(b), float(a)


def bootstrap_slope(
    sigmas,
    samples: list[np.ndarray],
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> SlopeFit:
    """Slope of log statistic(samples[i]) against log sigmas[i], with a percentile bootstrap CI.

    ``samples[i]`` holds the per-point measurements at ``sigmas[i]`` (rows of a 2-d array are
    resampled together). Each bootstrap replicate resamples the points within every sigma level
    independently (with replacement) and refits the slope.
    """
    if len(samples) != len(sigmas):
        raise ValueError(f"{len(samples)} sample sets for {len(sigmas)} sigmas")
    point = [statistic(np.asarray(a)) for a in samples]
    slope, icpt = loglog_slope(sigmas, point)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        stats = []
        for a in samples:
            a = np.asarray(a)
            stats.append(statistic(a[rng.integers(0, len(a), len(a))]))
        try:
            reps[b] = loglog_slope(sigmas, stats)[0]
        except ValueError:
            reps[b] = np.nan
    q = (1 - level) / 2
    lo, hi = np.nanquantile(reps, [q, 1 - q])
    return SlopeFit(slope, float(lo), float(hi), icpt)


def bootstrap_mean_slope(sigmas, samples: list[np.ndarray], n_boot: int = 1000, seed: int = 0):
    """``bootstrap_slope`` for the mean, vectorised (one multinomial weight draw per level)."""
    if len(samples) != len(sigmas):
        raise ValueError(f"{len(samples)} sample sets for {len(sigmas)} sigmas")
    rng = np.random.default_rng(seed)
    means = np.array([np.mean(a) for a in samples])
    slope, icpt = loglog_slope(sigmas, means)
    boot = np.empty((n_boot, len(samples)))
    for i, a in enumerate(samples):
        a = np.asarray(a, dtype=float)
        w = rng.multinomial(len(a), np.full(len(a), 1 / len(a)), size=n_boot)
        boot[:, i] = w @ a / len(a)
    x = np.log(np.asarray(sigmas, dtype=float))
    y = np.log(boot)
    xc = x - x.mean()
    reps = (y - y.mean(1, keepdims=True)) @ xc / (xc @ xc)
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return SlopeFit(slope, float(lo), float(hi), icpt)


def wrap_angle(theta: Tensor) -> Tensor:
    """Angles mapped to [-pi, pi)."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def histogram_tv(theta: Tensor, target_bin_probs: Tensor) -> float:
    """TV between the histogram of angles theta (any shape) on B equal bins of [-pi, pi) and
    the target bin probabilities (B,)."""
    b = target_bin_probs.numel()
    idx = ((wrap_angle(theta.reshape(-1).double()) + math.pi) / (2 * math.pi) * b).long()
    counts = torch.bincount(idx.clamp(0, b - 1), minlength=b).double()
    return 0.5 * float((counts / counts.sum() - target_bin_probs.double().cpu()).abs().sum())


def circle_w1_from_cdfs(diff_cdf: Tensor, dtheta: float) -> float:
    """W1 on the circle (geodesic cost) from F - G on a uniform angle grid:
    min_c int |F - G - c| d theta, the minimiser being the median of F - G."""
    d = diff_cdf.double()
    return float((d - d.median()).abs().sum() * dtheta)


def circle_w1_samples(theta: Tensor, target_cdf: Tensor, grid: Tensor) -> float:
    """W1 on the circle between the empirical law of angles theta and a target with CDF
    ``target_cdf`` evaluated on the uniform grid ``grid`` of [-pi, pi)."""
    t = torch.sort(wrap_angle(theta.reshape(-1).double().cpu())).values
    emp = torch.searchsorted(t, grid.double().cpu(), right=True).double() / t.numel()
    return circle_w1_from_cdfs(emp - target_cdf.double().cpu(), float(grid[1] - grid[0]))
