"""Stable modified-Bessel helpers for spheres: ratios I_nu / I_{nu-1} and log vMF normalisers.

Only half-integer orders nu in {1/2, 1, 3/2, ...} occur on spheres (nu = p/2 for S^{p-1}), so
everything is built from two exact base cases and a three-term recurrence for the ratio
r_k(x) = I_k(x) / I_{k-1}(x):

    1 / r_k - r_{k+1} = 2k / x          (from I_{k-1} - I_{k+1} = (2k/x) I_k)

* base cases: r_1 = i1e/i0e (torch's scaled Bessel functions) and r_{3/2} = coth x - 1/x
  (with its Taylor series at small x);
* x < T: the Gauss continued fraction, i.e. the backward recurrence r_k = x / (2k + x r_{k+1})
  started ``n_terms`` orders above, which is exact to rounding once n_terms >> x;
* x >= T: the forward recurrence r_{k+1} = 1/r_k - 2k/x, stable while r_k stays near 1, i.e.
  for x >> k (T grows with the largest order).

Everything is evaluated in float64 and returned in the input dtype; x = 0 and x up to 1e11 and
beyond are finite.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "bessel_ratio",
    "langevin",
    "log_ive",
    "log_vmf_normaliser",
    "log_vmf_normaliser_scaled",
    "vmf_mean_resultant",
]

# Taylor coefficients of coth(x) - 1/x = sum_n 2^{2n} B_{2n} x^{2n-1} / (2n)!, n = 1..6.
_COTH_SERIES = (
    1.0 / 3.0,
    -1.0 / 45.0,
    2.0 / 945.0,
    -1.0 / 4725.0,
    2.0 / 93555.0,
    -1382.0 / 638512875.0,
)


def _check_order(nu: float, what: str) -> float:
    if nu < 0 or abs(2 * nu - round(2 * nu)) > 1e-12:
        raise ValueError(f"{what} must be a non-negative half-integer, got {nu}")
    return round(2 * nu) / 2


def langevin(x: Tensor) -> Tensor:
    """coth(x) - 1/x = I_{3/2}(x) / I_{1/2}(x) for x >= 0 (Taylor series below x = 0.25)."""
    small = x < 0.25
    xs = torch.where(small, x, torch.zeros_like(x))
    x2 = xs * xs
    ser = torch.zeros_like(x)
    for c in reversed(_COTH_SERIES):
        ser = ser * x2 + c
    ser = ser * xs
    xl = torch.where(small, torch.ones_like(x), x)
    big = 1.0 / torch.tanh(xl) - 1.0 / xl
    return torch.where(small, ser, big)


def _threshold(k_max: float) -> float:
    """Switch from the continued fraction to the forward recurrence (see module docstring)."""
    return max(20.0, 0.5 * k_max * k_max)


def _ratios(k_max: float, x: Tensor) -> list[Tensor]:
    """[r_k(x) for k = k0, k0 + 1, ..., k_max], k0 = 1 (integer k_max) or 3/2; float64 x >= 0."""
    k0 = 1.0 if float(k_max).is_integer() else 1.5
    ks = [k0 + i for i in range(int(round(k_max - k0)) + 1)]
    if not ks:
        return []
    # Forward recurrence from the exact base case (used where x >= T).
    thr = _threshold(k_max)
    xf = torch.clamp(x, min=thr)
    r = torch.special.i1e(xf) / torch.special.i0e(xf) if k0 == 1.0 else langevin(xf)
    fwd = [r]
    for k in ks[:-1]:
        r = 1.0 / r - 2.0 * k / xf
        fwd.append(r)
    # Backward recurrence (Gauss continued fraction) where x < T.
    xb = torch.clamp(x, max=thr)
    n_terms = int(math.ceil(1.5 * thr)) + 30
    top = ks[-1] + n_terms
    r = xb / (top + 0.5 + torch.sqrt(xb * xb + (top + 0.5) ** 2))  # Amos-type start value
    bwd: dict[float, Tensor] = {}
    for i in range(n_terms + len(ks) - 1, -1, -1):
        k = k0 + i
        r = xb / (2.0 * k + xb * r)
        if i < len(ks):
            bwd[k] = r
    use_fwd = x >= thr
    return [torch.where(use_fwd, f, bwd[k]) for f, k in zip(fwd, ks, strict=True)]


def bessel_ratio(nu: float, x: Tensor) -> Tensor:
    """I_nu(x) / I_{nu-1}(x) for half-integer nu >= 1/2 and x >= 0 (0 at x = 0)."""
    nu = _check_order(nu, "nu")
    if nu < 0.5:
        raise ValueError(f"bessel_ratio needs nu >= 1/2, got {nu}")
    if torch.any(x < 0):
        raise ValueError("bessel_ratio needs x >= 0")
    xd = x.to(torch.float64)
    if nu == 0.5:
        return torch.tanh(xd).to(x.dtype)
    if nu == 1.0:  # circle: exact scaled Bessel functions
        return (torch.special.i1e(xd) / torch.special.i0e(xd)).to(x.dtype)
    if nu == 1.5:  # S^2: the Langevin function
        return langevin(xd).to(x.dtype)
    return _ratios(nu, xd)[-1].to(x.dtype)


def vmf_mean_resultant(p: int, kappa: Tensor) -> Tensor:
    """A_p(kappa) = I_{p/2}(kappa) / I_{p/2-1}(kappa): mean resultant length of vMF on S^{p-1}."""
    if p < 2:
        raise ValueError(f"vMF needs ambient dimension p >= 2, got {p}")
    return bessel_ratio(p / 2, kappa)


def log_vmf_normaliser(p: int, kappa: Tensor) -> Tensor:
    """log M_p(kappa), M_p(kappa) = E_{U(S^{p-1})} e^{kappa <mu, X>} = Gamma(nu+1) (2/k)^nu I_nu(k).

    nu = p/2 - 1; M_p(0) = 1. The vMF density w.r.t. the uniform probability measure is
    exp(kappa <mu, x>) / M_p(kappa); d/dkappa log M_p = A_p(kappa).
    """
    return (kappa.to(torch.float64) + log_vmf_normaliser_scaled(p, kappa).double()).to(kappa.dtype)


def log_vmf_normaliser_scaled(p: int, kappa: Tensor) -> Tensor:
    """log M_p(kappa) - kappa (slowly varying: about -(p-1)/2 log kappa at large kappa)."""
    if p < 2:
        raise ValueError(f"vMF needs ambient dimension p >= 2, got {p}")
    if torch.any(kappa < 0):
        raise ValueError("log_vmf_normaliser needs kappa >= 0")
    x = kappa.to(torch.float64)
    nu = p / 2 - 1
    if float(nu).is_integer():  # base: M_0 e^{-x} = i0e(x)
        out = torch.log(torch.special.i0e(x))
    else:  # base: M_{1/2} e^{-x} = sinh(x) e^{-x} / x = -expm1(-2x) / (2x)
        xs = torch.clamp(x, min=1e-300)
        out = torch.where(x > 0, torch.log(-torch.expm1(-2.0 * xs) / (2.0 * xs)), 0.0 * x)
    if nu >= 1:
        thr = _threshold(nu)
        for k, r in zip(_orders(nu), _ratios(nu, x), strict=True):
            # q_k = (2k/x) r_k = M_k / M_{k-1}; for x < T, r_k = x / (2k + x r_{k+1})
            q = torch.where(x >= thr, 2.0 * k * r / torch.clamp(x, min=thr), 2.0 * k * r / x)
            q = torch.where(x > 0, q, torch.ones_like(q))
            out = out + torch.log(q)
    return out.to(kappa.dtype)


def _orders(k_max: float) -> list[float]:
    k0 = 1.0 if float(k_max).is_integer() else 1.5
    return [k0 + i for i in range(int(round(k_max - k0)) + 1)]


def log_ive(nu: float, x: Tensor) -> Tensor:
    """log(I_nu(x) e^{-x}) for half-integer nu >= 0 and x >= 0 (-inf at x = 0 when nu > 0)."""
    nu = _check_order(nu, "nu")
    xd = x.to(torch.float64)
    if nu == 0:
        return torch.log(torch.special.i0e(xd)).to(x.dtype)
    log_m = log_vmf_normaliser_scaled(int(round(2 * nu + 2)), xd)
    out = log_m - math.lgamma(nu + 1) + nu * torch.log(xd / 2)
    return out.to(x.dtype)
