"""Noise-free quadrature oracle for the stationary laws of tempered Langevin on the circle.

For dX = sigma^alpha (grad log p_sigma + c sigma^beta grad phi0) dt + sqrt(2) dW in R^2 the
generator is reversible w.r.t. pi(x) ∝ exp(sigma^alpha (log p_sigma(x) + c sigma^beta phi0(x)))
(drift = grad log pi), so pi is the stationary law whenever it is integrable. In polar
coordinates pi(r, t) r dr dt is integrated on a tensor grid: periodic trapezoid in the angle
(spectrally accurate), a sorted non-uniform trapezoid in r concentrated where the mass is.

Measured: E dist(X, S^1) = E |r - 1|, the angle marginal q(t), its TV and circle-W1 to the
reference law (p_data = vM(kappa) for alpha = 0, uniform for alpha > 0), and q's bin masses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from madbench.rate_separation.circle import (
    error_potential_polar,
    vonmises_angle_density,
    vonmises_log_density,
)
from madbench.rate_separation.stats import circle_w1_from_cdfs


@dataclass
class OracleResult:
    sigma: float
    alpha: float
    beta: float
    c: float
    error_type: str
    dist: float  # E |r - 1|
    tv: float  # TV of the angle marginal to the reference law
    w1: float  # geodesic W1 of the angle marginal to the reference law
    theta: Tensor  # angle grid (n_theta,)
    marginal: Tensor  # angle density q on the grid
    reference: Tensor  # reference angle density on the grid

    def bin_probs(self, n_bins: int) -> Tensor:
        """Masses of q on n_bins equal bins of [-pi, pi) (n_theta must be a multiple)."""
        m = self.theta.numel()
        if m % n_bins:
            raise ValueError(f"n_theta={m} is not a multiple of n_bins={n_bins}")
        w = self.marginal * (2 * math.pi / m)
        return w.reshape(n_bins, m // n_bins).sum(1)


def _log_pi(r: Tensor, th: Tensor, sigma, alpha, beta, c, error_type, kappa) -> Tensor:
    x = torch.stack([r * torch.cos(th), r * torch.sin(th)], dim=-1)
    lp = vonmises_log_density(x.reshape(-1, 2), sigma, kappa).reshape(x.shape[:-1])
    phi = error_potential_polar(r, th, error_type)
    return sigma**alpha * (lp + c * sigma**beta * phi)


def _radial_grid(sigma, alpha, beta, c, error_type, kappa, n_r) -> Tensor:
    """Sorted r nodes covering every point within 60 nats of the maximum of log pi."""
    width = sigma ** (1 - alpha / 2)
    shift = c * sigma ** (2 + beta) if error_type == "normal" else 0.0
    r_max = 2.0 + 2 * abs(shift) + 40 * width
    coarse = torch.cat(
        [
            torch.linspace(0, r_max, 4001, dtype=torch.float64),
            (1 + shift + width * torch.linspace(-40, 40, 801, dtype=torch.float64)).clamp(0),
        ]
    ).unique()
    th = torch.linspace(-math.pi, math.pi, 65, dtype=torch.float64)[:-1]
    lp = _log_pi(coarse[:, None], th[None, :], sigma, alpha, beta, c, error_type, kappa)
    prof = lp.max(dim=1).values + torch.log(coarse.clamp_min(1e-300))
    keep = torch.nonzero(prof > prof.max() - 60).flatten()
    lo = coarse[max(int(keep[0]) - 1, 0)]
    hi = coarse[min(int(keep[-1]) + 1, coarse.numel() - 1)]
    return torch.linspace(float(lo), float(hi), n_r, dtype=torch.float64)


def stationary_oracle(
    sigma: float,
    alpha: float = 0.0,
    beta: float = 0.0,
    c: float = 0.0,
    error_type: str = "none",
    kappa: float = 4.0,
    n_theta: int = 1024,
    n_r: int = 2000,
) -> OracleResult:
    """Stationary law of tempered Langevin with score s + c sigma^beta e0 (von Mises data).

    Returns E dist, TV and W1 of its projected (angle) law to vM(kappa) if alpha == 0, else to
    the uniform law. ``c = 0`` or ``error_type = 'none'`` is the exact score.
    """
    if sigma <= 0 or not 0 <= alpha < 2:
        raise ValueError(f"need sigma > 0 and 0 <= alpha < 2, got sigma={sigma}, alpha={alpha}")
    r = _radial_grid(sigma, alpha, beta, c, error_type, kappa, n_r)
    th = torch.linspace(-math.pi, math.pi, n_theta + 1, dtype=torch.float64)[:-1]
    lp = _log_pi(r[:, None], th[None, :], sigma, alpha, beta, c, error_type, kappa)
    w = torch.exp(lp - lp.max()) * r[:, None]  # density w.r.t. dr dtheta
    wr = torch.zeros_like(r)  # trapezoid weights in r
    dr = r[1:] - r[:-1]
    wr[1:] += dr / 2
    wr[:-1] += dr / 2
    dth = 2 * math.pi / n_theta
    mass = (w * wr[:, None]).sum() * dth
    marg = (w * wr[:, None]).sum(0) / mass  # density in theta
    dist = float(((r - 1).abs()[:, None] * w * wr[:, None]).sum() * dth / mass)
    ref = (
        vonmises_angle_density(th, kappa) if alpha == 0 else torch.full_like(th, 1 / (2 * math.pi))
    )
    tv = 0.5 * float((marg - ref).abs().sum() * dth)
    # CDFs by cumulative (midpoint) sums; the W1 minimiser removes the common offset.
    w1 = circle_w1_from_cdfs(torch.cumsum(marg - ref, 0) * dth, dth)
    return OracleResult(sigma, alpha, beta, c, error_type, dist, tv, w1, th, marg, ref)
