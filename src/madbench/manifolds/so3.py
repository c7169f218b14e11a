"""SO(3) in R^9 (3x3 matrices flattened row-major), MAD's base score and RSGM geometry.

Metric and volume: the Frobenius inner product tr(A^T B) of R^9 restricted to SO(3) (the
convention of :mod:`madbench.manifolds.base`). Tangent vectors at R are R W with W skew; the
geodesic distance is sqrt(2) * omega, omega in [0, pi] the rotation angle of R1^T R2, and the
Riemannian volume is 8 pi^2 2^{3/2} (``LOG_VOLUME_FROBENIUS``). Published SO(3) likelihoods use
<A,B> = tr(A^T B)/2 (volume 8 pi^2, ``LOG_VOLUME_HALF_TRACE``): a log density w.r.t. that volume
equals ours plus ``LOG_DENSITY_SHIFT`` = 1.5 log 2 = 1.04 nats.

Heat kernel: Brownian motion with generator Laplace_F / 2 at time t is the IGSO(3) law at time
t_h = t / 2 of the half-trace metric (Laplace_F = Laplace_h / 2). Its density w.r.t. the
normalised Haar measure is

    f(omega, t_h) = sum_l (2l + 1) e^{-l(l+1) t_h / 2} sin((l + 1/2) omega) / sin(omega / 2),

evaluated by the series with L = ceil(sqrt(100 / t_h)) + 2 terms for t_h >= 1 and otherwise by
its exact Poisson-summed form (derived; Matthes et al. / Leach et al. give the same)

    f = e^{t_h/8} sqrt(2 pi) t_h^{-3/2} (omega / sin(omega/2)) e^{-omega^2 / 2 t_h} (1 - S),
    S = sum_{k=1}^{3} (-1)^k e^{-a_k (a_k - 2 omega) / 2 t_h} B_k,
    B_k = (2 a_k^2 / t_h) E(y_k) - 1 - e^{-y_k},

a_k = 2 pi k, y_k = 2 a_k omega / t_h, E(y) = (1 - e^{-y}) / y, in which the images k and -k are
paired so that nothing cancels near omega = 0. Densities w.r.t. the Frobenius volume are
f / (8 pi^2 2^{3/2}). The score is (g / 2) log_x(x0) with g = -(d log f / d omega) / omega.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from madbench._utils import as_sigma, check_all, fixed_work
from madbench.manifolds._distances import so3_angle_cdist
from madbench.manifolds._rotations import (
    angle_so3,
    exp_so3,
    hat,
    log_so3,
    quaternion_to_matrix,
    vee,
)
from madbench.manifolds.base import RiemannianManifold, as_heat_time
from madbench.manifolds.matrix_fisher import mean as mf_mean
from madbench.manifolds.matrix_fisher import proper_svd

__all__ = [
    "LOG_DENSITY_SHIFT",
    "LOG_VOLUME_FROBENIUS",
    "LOG_VOLUME_HALF_TRACE",
    "SO3",
    "igso3_log_density",
    "rotation_angle",
    "sample_igso3_angle",
]

LOG_VOLUME_HALF_TRACE = math.log(8 * math.pi**2)  # vol SO(3), metric tr(A^T B)/2
LOG_VOLUME_FROBENIUS = LOG_VOLUME_HALF_TRACE + 1.5 * math.log(2.0)  # metric tr(A^T B)
LOG_DENSITY_SHIFT = 1.5 * math.log(2.0)  # log p (vol 8 pi^2) = log p (Frobenius) + this
_SERIES_T = 1.0  # half-trace time from which the spectral series is used
_SERIES_TERMS = math.ceil(math.sqrt(100.0 / _SERIES_T)) + 2  # its terms for any t >= _SERIES_T
_N_IMAGES = 3


def _mats(x: Tensor, name: str = "x") -> Tensor:
    if x.ndim != 2 or x.shape[-1] != 9:
        raise ValueError(f"{name} must have shape (n, 9) (row-major 3x3), got {tuple(x.shape)}")
    return x.reshape(-1, 3, 3)


def rotation_angle(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Rotation angle in [0, pi] of x (n, 9), or of x^T y if y is given; shape (n,).

    Computed from the quaternion (2 atan2(|v|, |w|)), accurate near 0 and pi. The geodesic
    distance is this angle for the metric tr(A^T B)/2 and sqrt(2) times it for Frobenius.
    """
    r = _mats(x).double()
    if y is not None:
        r = r.transpose(-1, -2) @ _mats(y, "y").double()
    return angle_so3(r).to(x.dtype)


# ----------------------------------------------------------------------------- IGSO(3)


def _e_and_de(y: Tensor) -> tuple[Tensor, Tensor]:
    """E(y) = (1 - e^{-y}) / y and E'(y) for y >= 0 (Taylor series below 1e-2)."""
    small = y < 1e-2
    ys = torch.where(small, torch.ones_like(y), y)
    e_big = -torch.expm1(-ys) / ys
    de_big = (torch.exp(-ys) - e_big) / ys
    e_ser = 1 - y / 2 + y**2 / 6 - y**3 / 24 + y**4 / 120
    de_ser = -0.5 + y / 3 - y**2 / 8 + y**3 / 30 - y**4 / 144
    return torch.where(small, e_ser, e_big), torch.where(small, de_ser, de_big)


def _closed_form(omega: Tensor, t: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """log f and g = -(d log f / d omega)/omega from the Poisson-summed form (module doc)."""
    k = torch.arange(1, _N_IMAGES + 1, dtype=omega.dtype, device=omega.device)
    a = 2 * math.pi * k
    w, tt = omega[:, None], t[:, None]
    y = 2 * a * w / tt
    e, de = _e_and_de(y)
    sign = (-1.0) ** k
    damp = sign * torch.exp(-a * (a - 2 * w) / (2 * tt))
    b = 2 * a * a / tt * e - 1 - torch.exp(-y)
    one_minus_s = 1 - (damp * b).sum(-1)
    log_q = math.log(2.0) - torch.log(torch.special.sinc(omega / (2 * math.pi)))
    log_f = (
        t / 8 + 0.5 * math.log(2 * math.pi) - 1.5 * torch.log(t) + log_q
        - omega**2 / (2 * t) + torch.log(one_minus_s)
    )  # fmt: skip
    if not need_grad:
        return log_f, None
    # S' / omega, evaluated at omega >= 1e-3 sqrt(t) (S' / omega is even and smooth in omega).
    wc = torch.clamp(omega, min=1e-3 * torch.sqrt(t))[:, None]
    yc = 2 * a * wc / tt
    ec, dec = _e_and_de(yc)
    bc = 2 * a * a / tt * ec - 1 - torch.exp(-yc)
    dbc = 2 * a / tt * (2 * a * a / tt * dec + torch.exp(-yc))
    dampc = sign * torch.exp(-a * (a - 2 * wc) / (2 * tt))
    ds_over_w = (dampc * (a / tt * bc + dbc)).sum(-1) / wc.squeeze(-1)
    small = omega < 0.05
    ws = torch.where(small, torch.ones_like(omega), omega)
    hq_big = (1 / ws - 0.5 / torch.tan(ws / 2)) / ws
    hq_ser = 1 / 12 + omega**2 / 720 + omega**4 / 30240
    h_q = torch.where(small, hq_ser, hq_big)  # (d log q / d omega) / omega
    return log_f, -h_q + 1 / t + ds_over_w / one_minus_s


def _series(
    omega: Tensor, t: Tensor, need_grad: bool, n_terms: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """log f and g from the spectral series with L = ceil(sqrt(100 / min t)) + 2 terms (or
    ``n_terms``: the fixed-work path's _SERIES_TERMS, enough for every t >= _SERIES_T)."""
    if n_terms is None:
        n_terms = math.ceil(math.sqrt(100.0 / float(t.min()))) + 2
    m = torch.arange(1, n_terms + 1, dtype=omega.dtype, device=omega.device)
    w = omega[:, None]
    chi = torch.cat([torch.ones_like(w), 1 + 2 * torch.cumsum(torch.cos(m * w), -1)], -1)
    ell = torch.cat([torch.zeros(1, dtype=m.dtype, device=m.device), m])
    coef = (2 * ell + 1) * torch.exp(-ell * (ell + 1) * t[:, None] / 2)
    f = (coef * chi).sum(-1)
    if not need_grad:
        return torch.log(f), None
    dchi = -2 * torch.cumsum(m * m * torch.special.sinc(m * w / math.pi), -1)  # chi_l' / omega
    df_over_w = (coef[:, 1:] * dchi).sum(-1)
    return torch.log(f), -df_over_w / f


def igso3_log_density(
    omega: Tensor, t: Tensor, need_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """log f(omega, t) w.r.t. normalised Haar (half-trace time t) and g = -(log f)'/omega.

    omega, t: float64 (n,), omega in [0, pi], t > 0. g is None unless ``need_grad``.
    """
    omega, t = omega.double(), t.double()
    ser = t >= _SERIES_T
    if fixed_work(t):  # both forms on every row (each at a time in its range), then select
        lf_s, g_s = _series(omega, torch.where(ser, t, _SERIES_T), need_grad, _SERIES_TERMS)
        lf_c, g_c = _closed_form(omega, torch.where(ser, _SERIES_T / 2, t), need_grad)
        g = torch.where(ser, g_s, g_c) if need_grad else None
        return torch.where(ser, lf_s, lf_c), g
    log_f = torch.empty_like(omega)
    g = torch.empty_like(omega) if need_grad else None
    for mask, fn in ((ser, _series), (~ser, _closed_form)):
        if mask.any():
            lf, gg = fn(omega[mask], t[mask], need_grad)
            log_f[mask] = lf
            if g is not None:
                g[mask] = gg
    return log_f, g


def sample_igso3_angle(t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Exact IGSO(3) rotation vectors (n, 3) for half-trace times t (n,), float64.

    Rejection sampling, rounds over the rows not yet accepted. t < 1: proposal phi = sqrt(t) z,
    z ~ N(0, I_3), whose angle law sqrt(2/pi) w^2 e^{-w^2/2t} / t^{3/2} gives the ratio
    f (1 - cos w)/pi / proposal = e^{t/8} sinc(w / 2 pi) (1 - S) <= 2 e^{t/8} (tested).
    t >= 1: Haar proposal, ratio f(w) <= f(0).
    """
    t = t.double()
    n, dev = t.shape[0], t.device
    out = torch.zeros(n, 3, dtype=torch.float64, device=dev)
    gauss = t < _SERIES_T
    log_f0, _ = igso3_log_density(torch.zeros_like(t), t)
    todo = torch.arange(n, device=dev)
    while todo.numel() > 0:
        k, tt, gk = todo.numel(), t[todo], gauss[todo]
        z = torch.randn(k, 3, generator=generator, device=dev, dtype=torch.float64)
        q = torch.randn(k, 4, generator=generator, device=dev, dtype=torch.float64)
        u = torch.rand(k, generator=generator, device=dev, dtype=torch.float64)
        phi_haar = log_so3(quaternion_to_matrix(q))
        phi = torch.where(gk[:, None], torch.sqrt(tt)[:, None] * z, phi_haar)
        w = phi.norm(dim=-1)
        ok = w <= math.pi
        wc = torch.where(ok, w, torch.zeros_like(w))
        log_f, _ = igso3_log_density(wc, tt)
        log_ratio_gauss = (
            log_f + math.log(0.5 / math.pi) + 2 * torch.log(torch.special.sinc(wc / (2 * math.pi)))
            - 0.5 * math.log(2 / math.pi) + wc**2 / (2 * tt) + 1.5 * torch.log(tt)
            - math.log(2.0) - tt / 8
        )  # fmt: skip
        log_acc = torch.where(gk, log_ratio_gauss, log_f - log_f0[todo])
        acc = ok & (torch.log(u) < log_acc)
        out[todo[acc]] = phi[acc]
        todo = todo[~acc]
    return out


# ----------------------------------------------------------------------------- manifold
class SO3(RiemannianManifold):
    """SO(3) in R^9 with the Frobenius metric (module docstring for all conventions)."""

    ambient_dim = 9
    dim = 3
    kind = "so3"
    volume_convention = "Haar with <A,B> = tr(A^T B)/2, vol SO(3) = 8 pi^2"
    log_density_shift = LOG_DENSITY_SHIFT

    def __repr__(self) -> str:
        return "SO3()"

    def metric_cdist(self, x: Tensor, y: Tensor) -> Tensor:
        """Rotation angle of x_i^T y_j: the geodesic distance of the reported metric
        tr(A^T B)/2 (radians; the Frobenius geodesic distance is sqrt(2) times it)."""
        return so3_angle_cdist(x, y)

    @property
    def log_volume(self) -> float:
        """log(8 pi^2 2^{3/2}): volume of SO(3) for the Frobenius metric."""
        return LOG_VOLUME_FROBENIUS

    def project(self, x: Tensor) -> Tensor:
        """Nearest rotation U V^T (proper SVD, so det < 0 is handled), computed in float64."""
        u, _, v = proper_svd(_mats(x).double())
        return (u @ v.transpose(-1, -2)).reshape(-1, 9).to(x.dtype)

    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n Haar rotations (normalised Gaussian quaternions), float32 on the generator's device."""
        device = generator.device if generator is not None else torch.device("cpu")
        q = torch.randn(n, 4, generator=generator, device=device, dtype=torch.float64)
        return quaternion_to_matrix(q).reshape(n, 9).float()

    def base_score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """(E_{MF(X/sigma^2)}[R] - X) / sigma^2, E[R] = U diag(d log c/d s) V^T (float64 inside)."""
        xm = _mats(x).double()
        s2 = as_sigma(sigma, x).double() ** 2
        check_all(s2 > 0, "sigma must be > 0")
        check_all(torch.isfinite(xm), "x must be finite")
        mean = mf_mean(xm / s2[:, :, None], check=False)  # finite: checked just above
        return ((mean - xm).reshape(-1, 9) / s2).to(x.dtype)

    # ------------------------------------------------------------------ geometry
    def geodesic_distance(self, x: Tensor, y: Tensor) -> Tensor:
        """sqrt(2) * rotation angle of x^T y."""
        return math.sqrt(2.0) * rotation_angle(x, y)

    def to_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """X skew(X^T V), skew(A) = (A - A^T)/2."""
        xm, vm = _mats(x), _mats(v, "v")
        a = xm.transpose(-1, -2) @ vm
        return (xm @ (a - a.transpose(-1, -2)) / 2).reshape(-1, 9)

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        """X expm(X^T V) (Rodrigues, on the skew part of X^T V)."""
        xm, vm = _mats(x).double(), _mats(v, "v").double()
        phi = vee(xm.transpose(-1, -2) @ vm)
        return (xm @ exp_so3(phi)).reshape(-1, 9).to(x.dtype)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        """X logm(X^T Y) via the quaternion (stable at angle 0 and pi; at pi one of the two
        minimising directions)."""
        xm, ym = _mats(x).double(), _mats(y, "y").double()
        phi = log_so3(xm.transpose(-1, -2) @ ym)
        return (xm @ hat(phi)).reshape(-1, 9).to(x.dtype)

    # ------------------------------------------------------------------ heat kernel
    def heat_kernel_log_prob(self, x: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(x | x0) w.r.t. the Frobenius volume: log f(omega, t/2) - LOG_VOLUME_FROBENIUS."""
        tt = as_heat_time(t, _mats(x).shape[0], x.device)
        omega = rotation_angle(x0.double(), x.double())
        return (igso3_log_density(omega, tt / 2)[0] - LOG_VOLUME_FROBENIUS).to(x.dtype)

    def heat_kernel_score(self, x: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """Riemannian (Frobenius) gradient in x of log p_t(x | x0): (g / 2) log_x(x0)."""
        tt = as_heat_time(t, _mats(x).shape[0], x.device)
        xd, x0d = x.double(), x0.double()
        omega = rotation_angle(x0d, xd)
        _, g = igso3_log_density(omega, tt / 2, need_grad=True)
        return (g[:, None] / 2 * self.log(xd, x0d)).to(x.dtype)

    def sample_heat_kernel(
        self, x0: Tensor, t: float | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact draw x0 Exp(phi), phi an IGSO(3) rotation vector at half-trace time t/2."""
        xm = _mats(x0, "x0").double()
        tt = as_heat_time(t, xm.shape[0], x0.device)
        phi = sample_igso3_angle(tt / 2, generator)
        return (xm @ exp_so3(phi)).reshape(-1, 9).to(x0.dtype)
