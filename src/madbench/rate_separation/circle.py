"""Closed forms on the unit circle S^1 in R^2 for the rate-separation experiments.

Data law: von Mises vM(mu, kappa) on the angle, points (cos t, sin t); noise N(0, sigma^2 I_2).
With v = kappa mu + x / sigma^2 and r = |v| (docs/science.md 2.2, p = 2):

    log p_sigma(x) = -log(2 pi sigma^2) - (|x|^2 + 1) / (2 sigma^2) + log I0(r) - log I0(kappa)
    s(x)           = (A(r) v / r - x) / sigma^2,   A = I1 / I0,

and MAD's base score is the same with kappa = 0 (uniform law on the circle). Everything is
computed with exponentially scaled Bessel functions so that sigma down to 1e-4 stays finite.

Error fields are gradients of potentials phi0 (so that the stationary law of Langevin dynamics
with the perturbed score is known, see :mod:`madbench.rate_separation.oracle`):

* ``normal``:          e0 = x / |x|                  = grad |x|        (radial, outward)
* ``tangential``:      e0 = sin(t) tau / |x|         = grad (-cos t)   (tau = (-sin t, cos t))
* ``tangential_orth``: e0 = cos(t) tau / |x|        = grad sin t

``tangential`` vanishes at the data mode t = 0 and flattens vM(4) towards vM(4 - c): at c = 1
its TV to p_data is 0.0779 (docs/science.md 5's plateau); its potential is aligned with
log p_data = kappa cos t, so under tempering (alpha > 0) it partly cancels the data term and
bends the TV slope. ``tangential_orth`` (potential sin t, L2-orthogonal to cos t) moves the mode
and gives the clean slope min(alpha, alpha + beta).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from madbench.manifolds._bessel import bessel_ratio, log_ive

ERROR_TYPES = ("none", "normal", "tangential", "tangential_orth")


def _log_i0(r: Tensor) -> Tensor:
    """log I0(r), from the exponentially scaled Bessel function (finite for large r)."""
    return log_ive(0, r) + r


def _check_x(x: Tensor) -> None:
    if x.ndim != 2 or x.shape[-1] != 2:
        raise ValueError(f"circle points must have shape (n, 2), got {tuple(x.shape)}")


def _v(x: Tensor, sigma: float, kappa: float, mu_angle: float) -> Tensor:
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if kappa < 0:
        raise ValueError(f"kappa must be >= 0, got {kappa}")
    mu = torch.tensor([math.cos(mu_angle), math.sin(mu_angle)], dtype=x.dtype, device=x.device)
    return kappa * mu + x / sigma**2


def vonmises_log_density(x: Tensor, sigma: float, kappa: float = 4.0, mu_angle: float = 0.0):
    """log p_sigma(x) of vM(mu, kappa) * N(0, sigma^2 I_2) at x (n, 2), w.r.t. Lebesgue; (n,)."""
    _check_x(x)
    r = _v(x, sigma, kappa, mu_angle).norm(dim=-1)
    k = torch.as_tensor(kappa, dtype=x.dtype)
    return (
        -math.log(2 * math.pi * sigma**2)
        - ((x * x).sum(-1) + 1) / (2 * sigma**2)
        + _log_i0(r)
        - _log_i0(k)
    )


def vonmises_score(x: Tensor, sigma: float, kappa: float = 4.0, mu_angle: float = 0.0) -> Tensor:
    """Exact score of vM(mu, kappa) * N(0, sigma^2 I_2) at x (n, 2); kappa = 0 is s_base."""
    _check_x(x)
    v = _v(x, sigma, kappa, mu_angle)
    r = v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return (bessel_ratio(1.0, r) * v / r - x) / sigma**2


def circle_base_score(x: Tensor, sigma: float) -> Tensor:
    """MAD's s_base for the uniform law on the circle: (A(|x|/s^2) x/|x| - x) / s^2."""
    return vonmises_score(x, sigma, kappa=0.0)


def error_field(x: Tensor, error_type: str) -> Tensor:
    """Unit-scale error field e0(x) (n, 2) of the given type (see module docstring)."""
    _check_x(x)
    if error_type == "none":
        return torch.zeros_like(x)
    r = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if error_type == "normal":
        return x / r
    tau = torch.stack([-x[:, 1], x[:, 0]], dim=-1) / r
    if error_type == "tangential":
        return (x[:, 1:2] / r) * tau / r
    if error_type == "tangential_orth":
        return (x[:, 0:1] / r) * tau / r
    raise ValueError(f"unknown error type {error_type!r}; known: {', '.join(ERROR_TYPES)}")


def error_potential_polar(r: Tensor, theta: Tensor, error_type: str) -> Tensor:
    """phi0 with grad phi0 = e0, in polar coordinates (broadcasting r and theta)."""
    if error_type == "none":
        return torch.zeros_like(r * theta)
    if error_type == "normal":
        return r + 0 * theta
    if error_type == "tangential":
        return -torch.cos(theta) + 0 * r
    if error_type == "tangential_orth":
        return torch.sin(theta) + 0 * r
    raise ValueError(f"unknown error type {error_type!r}; known: {', '.join(ERROR_TYPES)}")


def vonmises_angle_density(theta: Tensor, kappa: float = 4.0, mu_angle: float = 0.0) -> Tensor:
    """Density of vM(mu, kappa) w.r.t. d theta on [-pi, pi)."""
    k = torch.as_tensor(kappa, dtype=theta.dtype)
    log_norm = math.log(2 * math.pi) + _log_i0(k)
    return torch.exp(kappa * torch.cos(theta - mu_angle) - log_norm)


def sample_vonmises_circle(
    n: int,
    kappa: float = 4.0,
    mu_angle: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """n points (cos t, sin t) with t ~ vM(mu, kappa), by Best-Fisher rejection (vectorised)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    dev = generator.device if generator is not None else "cpu"
    if kappa < 1e-8:
        t = (2 * torch.rand(n, generator=generator, device=dev, dtype=dtype) - 1) * math.pi
    else:
        tau = 1 + math.sqrt(1 + 4 * kappa**2)
        rho = (tau - math.sqrt(2 * tau)) / (2 * kappa)
        rr = (1 + rho**2) / (2 * rho)
        out, have = [], 0
        while have < n:
            m = 2 * (n - have) + 16
            u = torch.rand(3, m, generator=generator, device=dev, dtype=dtype)
            z = torch.cos(math.pi * u[0])
            f = (1 + rr * z) / (rr + z)
            c = kappa * (rr - f)
            ok = (c * (2 - c) - u[1] > 0) | (torch.log(c / u[1]) + 1 - c >= 0)
            t = torch.sign(u[2] - 0.5) * torch.acos(f.clamp(-1, 1))
            out.append(t[ok])
            have += int(ok.sum())
        t = torch.cat(out)[:n]
        t = torch.remainder(t + mu_angle + math.pi, 2 * math.pi) - math.pi
    return torch.stack([torch.cos(t), torch.sin(t)], dim=-1)
