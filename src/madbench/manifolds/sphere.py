"""The unit sphere S^d in R^(d+1) (circle: ``Sphere(1)``), MAD's base score and RSGM geometry.

Metric: induced by R^(d+1); log densities on S^d are w.r.t. its area (length) measure, of total
mass |S^d| = 2 pi^((d+1)/2) / Gamma((d+1)/2) (4 pi for S^2, 2 pi for the circle).

Heat kernel (Brownian motion, generator Laplace-Beltrami / 2), theta = d(x, x0):
* circle: wrapped Gaussian sum_k N(theta + 2 pi k; 0, t) with |k| <= K(t) chosen for 1e-17
  relative truncation error;
* S^2: Legendre series sum_l (2l+1)/(4 pi) e^{-l(l+1)t/2} P_l(cos theta) with L(t) ~ sqrt(120/t)
  terms where it is free of cancellation (t >= 1/2, or theta <= 3 sqrt t); elsewhere the exact
  Mehler-Dirichlet representation (P_l(cos theta) = sqrt2/pi int_theta^pi sin((l+1/2)phi) /
  sqrt(cos theta - cos phi) dphi, summed over l by Poisson summation):

      p_t(theta) = e^{t/8} / (2 pi^{3/2} t^{3/2}) int_theta^pi F(phi) dphi / sqrt(cos th - cos phi),
      F(phi) = sum_k (-1)^k (phi - 2 pi k) e^{-(phi - 2 pi k)^2 / 2t}   (k = 0, 1 kept for t < 1/2)

  evaluated by 64-node Gauss-Legendre after phi = theta + 2 (pi - theta) sin^2(gamma/2), which
  removes the singularity; its small-t limit is Varadhan's form
  e^{-theta^2/2t} sqrt(theta/sin theta) / (2 pi t) and, unlike it, it stays exact at the antipode.
* S^d, d >= 3: no closed form here (NotImplementedError); ``sample_heat_kernel`` falls back to
  the geodesic random walk of the base class with 1000 steps (bias O(t / 1000)).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from madbench._utils import as_sigma
from madbench.manifolds._bessel import vmf_mean_resultant
from madbench.manifolds._distances import sphere_geodesic_cdist
from madbench.manifolds.base import RiemannianManifold, as_heat_time

_S2_SERIES_T = 0.5  # t at and above which the Legendre series is used everywhere on S^2
_GL_NODES = 64
_RW_STEPS = 1000


def _rows(x: Tensor, y: Tensor) -> Tensor:
    return (x * y).sum(-1, keepdim=True)


# ----------------------------------------------------------------------------- circle kernel
def _circle_terms(phi: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """phi + 2 pi k for |k| <= K and their log Gaussian weights, each (n, 2K + 1)."""
    k_max = math.ceil((math.sqrt(1.0 + 80.0 * float(t.max()) / math.pi**2) - 1.0) / 2.0) + 1
    k = torch.arange(-k_max, k_max + 1, dtype=phi.dtype, device=phi.device)
    a = phi.unsqueeze(-1) + 2.0 * math.pi * k
    return a, -(a * a) / (2.0 * t.unsqueeze(-1))


def circle_log_heat(phi: Tensor, t: Tensor) -> Tensor:
    """log of the wrapped normal density sum_k N(phi + 2 pi k; 0, t) w.r.t. arc length."""
    _, logw = _circle_terms(phi, t)
    return torch.logsumexp(logw, -1) - 0.5 * torch.log(2.0 * math.pi * t)


def circle_dlog_heat(phi: Tensor, t: Tensor) -> Tensor:
    """d/dphi of :func:`circle_log_heat` (phi the signed angle), shape (n,)."""
    a, logw = _circle_terms(phi, t)
    return -(torch.softmax(logw, -1) * a).sum(-1) / t


# ----------------------------------------------------------------------------- S^2 kernel
def _s2_series(theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Legendre series: log p_t(theta) and g = -(d log p / d theta) / theta, both (n,)."""
    if theta.numel() == 0:
        return theta.clone(), theta.clone()
    n_terms = math.ceil(math.sqrt(120.0 / float(t.min()))) + 3
    z = torch.cos(theta)
    p_prev, p_cur = torch.ones_like(z), z  # P_0, P_1
    d_prev, d_cur = torch.zeros_like(z), torch.ones_like(z)  # P'_0, P'_1
    s = torch.full_like(z, 1.0 / (4 * math.pi))
    ds = torch.zeros_like(z)
    for ell in range(1, n_terms):
        c = (2 * ell + 1) / (4 * math.pi) * torch.exp(-ell * (ell + 1) * t / 2)
        s = s + c * p_cur
        ds = ds + c * d_cur
        p_next = ((2 * ell + 1) * z * p_cur - ell * p_prev) / (ell + 1)
        d_next = d_prev + (2 * ell + 1) * p_cur
        p_prev, p_cur, d_prev, d_cur = p_cur, p_next, d_cur, d_next
    s = torch.clamp(s, min=torch.finfo(s.dtype).tiny)
    return torch.log(s), torch.special.sinc(theta / math.pi) * ds / s


@functools.lru_cache(maxsize=4)
def _leggauss(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [-1, 1] (an eigenvalue problem: computed once)."""
    return np.polynomial.legendre.leggauss(n)


def _s2_quad_logp(theta: Tensor, t: Tensor) -> Tensor:
    """log p_t(theta) on S^2 from the Mehler-Dirichlet integral (module docstring), t < 1/2."""
    x, w = _leggauss(_GL_NODES)
    x = torch.as_tensor(x, dtype=theta.dtype, device=theta.device)
    w = torch.as_tensor(w, dtype=theta.dtype, device=theta.device)
    th, tt = theta.unsqueeze(-1), t.unsqueeze(-1)
    eps = math.pi - th
    # Upper limit where the leading exponent reaches 60 (the rest is below e^-60).
    s2_cut = 60.0 * tt / (eps * (th + torch.sqrt(th * th + 120.0 * tt)))
    far = (s2_cut >= 0.5) | (eps * (math.pi - eps / 2) / tt < 80.0)
    g_max = torch.where(
        far, math.pi / 2, 2.0 * torch.asin(torch.sqrt(torch.clamp(s2_cut, max=0.5)))
    )
    gam = (x + 1) / 2 * g_max
    s, c = torch.sin(gam / 2) ** 2, torch.cos(gam / 2) ** 2
    phi = th + 2.0 * eps * s
    jac = math.sqrt(2.0) / torch.sqrt(
        torch.special.sinc(eps * s / math.pi) * torch.special.sinc(eps * c / math.pi)
    )
    e1 = 2.0 * eps * s * (th + eps * s) / tt  # (phi^2 - theta^2) / 2t
    e2 = 2.0 * eps * c * (math.pi - eps * s) / tt  # ((2 pi - phi)^2 - theta^2) / 2t
    f = phi * torch.exp(-e1) + (2.0 * math.pi - phi) * torch.exp(-e2)
    integral = (w * g_max / 2 * f * jac).sum(-1)
    log_c = t / 8 - math.log(2.0) - 1.5 * math.log(math.pi) - 1.5 * torch.log(t)
    return log_c - theta**2 / (2 * t) + torch.log(integral)


def _s2_quad(theta: Tensor, t: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    if theta.numel() == 0:
        return theta.clone(), theta.clone()
    if not need_grad:
        return _s2_quad_logp(theta, t), None
    # g = -(d log p / d theta) / theta is even and smooth in theta, but 0/0 at theta = 0: below
    # theta_0 = 0.01 sqrt(t) take g(theta_0), off by O((theta / sqrt t)^2) < 1e-7 relative
    # (checked against the series in the tests).
    th0 = torch.maximum(theta, 0.01 * torch.sqrt(t))
    with torch.enable_grad():
        th = th0.detach().clone().requires_grad_(True)
        lp0 = _s2_quad_logp(th, t.detach())
        (dlp,) = torch.autograd.grad(lp0.sum(), th)
    lp = torch.where(theta < th0, _s2_quad_logp(theta, t), lp0.detach())
    return lp, -dlp / th0


def s2_log_heat(theta: Tensor, t: Tensor, need_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """log p_t(theta) on S^2 (w.r.t. area) and, if asked, g = -(d log p/d theta) / theta."""
    # The series needs about sqrt(120 / t) terms: only where t is large. The quadrature is
    # accurate at every angle for t < 1/2 (within 1e-11 of an mpmath series in the tests).
    use_series = t >= _S2_SERIES_T
    logp = torch.empty_like(theta)
    g = torch.empty_like(theta) if need_grad else None
    lp_s, g_s = _s2_series(theta[use_series], t[use_series])
    lp_q, g_q = _s2_quad(theta[~use_series], t[~use_series], need_grad)
    logp[use_series], logp[~use_series] = lp_s, lp_q
    if g is not None:
        g[use_series], g[~use_series] = g_s, g_q
    return logp, g


class Sphere(RiemannianManifold):
    """S^dim = {x in R^(dim+1): |x| = 1}; ``Sphere(1)`` is the circle, ``Sphere(2)`` is S^2."""

    kind = "sphere"
    volume_convention = "area measure of the unit sphere (vol S^2 = 4 pi, vol S^1 = 2 pi)"

    def __init__(self, dim: int):
        if int(dim) != dim or dim < 1:
            raise ValueError(f"Sphere needs an integer dim >= 1, got {dim}")
        self.dim = int(dim)
        self.ambient_dim = self.dim + 1

    def __repr__(self) -> str:
        return f"Sphere({self.dim})"

    @property
    def family(self) -> str:
        """The circle S^1 = T^1 is tabled with the tori; S^d, d >= 2, with the spheres."""
        return "torus" if self.dim == 1 else "sphere"

    def metric_cdist(self, x: Tensor, y: Tensor) -> Tensor:
        """Great-circle distances (radians)."""
        return sphere_geodesic_cdist(x, y)

    @property
    def log_volume(self) -> float:
        """log |S^d| = log(2 pi^((d+1)/2) / Gamma((d+1)/2)): log 4 pi on S^2, log 2 pi on S^1."""
        h = (self.dim + 1) / 2
        return math.log(2.0) + h * math.log(math.pi) - math.lgamma(h)

    def _check(self, x: Tensor, name: str = "x") -> None:
        if x.ndim != 2 or x.shape[-1] != self.ambient_dim:
            raise ValueError(
                f"{name} must have shape (n, {self.ambient_dim}), got {tuple(x.shape)}"
            )

    def project(self, x: Tensor) -> Tensor:
        """x / |x|; the origin (equidistant from all of S^d) maps to e_1 = (1, 0, ..., 0)."""
        self._check(x)
        r = x.norm(dim=-1, keepdim=True)
        e1 = torch.zeros_like(x)
        e1[:, 0] = 1.0
        return torch.where(r > 0, x / torch.where(r > 0, r, torch.ones_like(r)), e1)

    def distance_to_manifold(self, x: Tensor) -> Tensor:
        self._check(x)
        return (x.norm(dim=-1) - 1.0).abs()

    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n uniform points (normalised Gaussians), float32, on the generator's device."""
        device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.ambient_dim, generator=generator, device=device)
        return self.project(z)

    def base_score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """(A_p(k) x/|x| - x) / sigma^2, k = |x|/sigma^2, A_p = I_{p/2}/I_{p/2-1}, p = d + 1."""
        self._check(x)
        # The radial coefficient (A - |x|) / sigma^2 in float64: at sigma = 1e-4 it resolves |x|
        # to 1e-8, finer than float32 arithmetic would, so float32 inputs get float32-exact output.
        xd = x.double()
        s2 = as_sigma(sigma, xd) ** 2
        if not torch.all(s2 > 0):
            raise ValueError("sigma must be > 0")
        r = xd.norm(dim=-1, keepdim=True)
        a = vmf_mean_resultant(self.ambient_dim, r / s2)
        return ((a - r) / s2).to(x.dtype) * self.project(x)

    # ------------------------------------------------------------------ geometry
    def geodesic_distance(self, x: Tensor, y: Tensor) -> Tensor:
        """Great-circle angle 2 atan2(|x - y|, |x + y|) in [0, pi] (accurate near 0 and pi)."""
        self._check(x)
        self._check(y, "y")
        return 2.0 * torch.atan2((x - y).norm(dim=-1), (x + y).norm(dim=-1))

    def to_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """v - <x, v> x."""
        return v - _rows(x, v) * x

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        """cos|v| x + sin|v| v/|v| (renormalised onto S^d)."""
        n = v.norm(dim=-1, keepdim=True)
        y = torch.cos(n) * x + torch.special.sinc(n / math.pi) * v
        return y / y.norm(dim=-1, keepdim=True)

    def _unit_normal_to(self, x: Tensor) -> Tensor:
        """A deterministic unit tangent vector at x (the coordinate axis least aligned with x)."""
        idx = x.abs().argmin(dim=-1, keepdim=True)
        e = torch.zeros_like(x).scatter_(-1, idx, 1.0)
        u = self.to_tangent(x, e)
        return u / u.norm(dim=-1, keepdim=True)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        """theta u/|u| with u = (y - x) - <y - x, x> x the tangent part of y, theta = d(x, y).

        Using y - x keeps u accurate near theta = 0; at the antipode (u = 0, theta = pi) the
        direction is a fixed tangent axis (any direction is a valid geodesic there).
        """
        d = y - x
        u = d - _rows(d, x) * x
        un = u.norm(dim=-1, keepdim=True)
        theta = self.geodesic_distance(x, y).unsqueeze(-1)
        unit = torch.where(
            un > 0, u / torch.where(un > 0, un, torch.ones_like(un)), self._unit_normal_to(x)
        )
        return torch.where(theta > 0, theta * unit, torch.zeros_like(x))

    # ------------------------------------------------------------------ heat kernel
    def _no_closed_form(self) -> None:
        if self.dim > 2:
            raise NotImplementedError(
                f"heat kernel of S^{self.dim} has no closed form here (circle and S^2 only); "
                "use sample_heat_kernel (random-walk fallback)"
            )

    def _signed_angle(self, x: Tensor, x0: Tensor) -> Tensor:
        """Circle only: angle from x0 to x in (-pi, pi], float64."""
        x, x0 = x.double(), x0.double()
        cross = x0[:, 0] * x[:, 1] - x0[:, 1] * x[:, 0]
        return torch.atan2(cross, (x0 * x).sum(-1))

    def heat_kernel_log_prob(self, x: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(x | x0) w.r.t. the length (d = 1) or area (d = 2) measure, shape (n,)."""
        self._check(x)
        self._check(x0, "x0")
        self._no_closed_form()
        tt = as_heat_time(t, x.shape[0], x.device)
        if self.dim == 1:
            return circle_log_heat(self._signed_angle(x, x0), tt).to(x.dtype)
        theta = self.geodesic_distance(x.double(), x0.double())
        return s2_log_heat(theta, tt)[0].to(x.dtype)

    def heat_kernel_score(self, x: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """Riemannian gradient in x of log p_t(x | x0): g log_x(x0), g = -(d log p/d theta)/theta.

        Not differentiable w.r.t. its inputs (a regression target).
        """
        self._check(x)
        self._check(x0, "x0")
        self._no_closed_form()
        tt = as_heat_time(t, x.shape[0], x.device)
        xd, x0d = x.double(), x0.double()
        if self.dim == 1:
            dlp = circle_dlog_heat(self._signed_angle(xd, x0d), tt)
            return (dlp.unsqueeze(-1) * torch.stack([-xd[:, 1], xd[:, 0]], -1)).to(x.dtype)
        theta = self.geodesic_distance(xd, x0d)
        _, g = s2_log_heat(theta, tt, need_grad=True)
        return (g.unsqueeze(-1) * self.log(xd, x0d)).to(x.dtype)

    def sample_heat_kernel(
        self, x0: Tensor, t: float | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Brownian motion at time t from each row of x0: exact on S^1 (wrapped normal) and S^2
        (polar angle by exact rejection sampling against the kernel, uniform azimuth);
        on S^d, d >= 3, the geodesic random walk with 1000 steps."""
        self._check(x0, "x0")
        n = x0.shape[0]
        tt = as_heat_time(t, n, x0.device)
        if self.dim > 2:
            return self.random_walk(x0, tt.to(x0.dtype), n_steps=_RW_STEPS, generator=generator)
        if self.dim == 1:
            z = torch.randn(n, generator=generator, device=x0.device, dtype=torch.float64)
            ang = torch.atan2(x0[:, 1].double(), x0[:, 0].double()) + torch.sqrt(tt) * z
            return torch.stack([torch.cos(ang), torch.sin(ang)], -1).to(x0.dtype)
        theta = _s2_sample_angle(tt, generator)
        g = torch.randn(n, 3, generator=generator, device=x0.device, dtype=torch.float64)
        x0d = x0.double()
        v = self.to_tangent(x0d, g)
        v = v / v.norm(dim=-1, keepdim=True)
        y = torch.cos(theta).unsqueeze(-1) * x0d + torch.sin(theta).unsqueeze(-1) * v
        return y.to(x0.dtype)


def _s2_sample_angle(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """Exact polar angles with density f(theta) = 2 pi sin(theta) p_t(theta) on [0, pi], (n,).

    Rejection sampling, vectorised over points (loop over rounds only). Proposal: for t <= 2 the
    Rayleigh law theta = sqrt(t) |N(0, I_2)|, q = theta e^{-theta^2/2t} / t, whose ratio
    f/q = 2 pi t p_t(theta) sinc(theta) e^{theta^2/2t} decreases in theta (checked in the
    tests), so its bound is the value 2 pi t p_t(0) at theta = 0 (acceptance >= 0.70); for t > 2
    the uniform law, f/q = 4 pi p_t(theta) <= 4 pi p_t(0). p_t(0) from s2_log_heat.
    """
    n = t.shape[0]
    ray = t <= 2.0
    log_p0, _ = s2_log_heat(torch.zeros_like(t), t)
    log_bound = torch.where(ray, torch.log(2 * math.pi * t), math.log(4 * math.pi)) + log_p0
    theta = torch.zeros_like(t)
    todo = torch.arange(n, device=t.device)
    while todo.numel() > 0:
        k, tt, rk = todo.numel(), t[todo], ray[todo]
        z = torch.randn(k, 2, generator=generator, device=t.device, dtype=t.dtype)
        c = 2 * torch.rand(k, generator=generator, device=t.device, dtype=t.dtype) - 1
        u = torch.rand(k, generator=generator, device=t.device, dtype=t.dtype)
        prop = torch.where(rk, torch.sqrt(tt) * z.norm(dim=-1), torch.acos(c))
        ok = prop <= math.pi
        th = torch.where(ok, prop, torch.zeros_like(prop))
        logp, _ = s2_log_heat(th, tt)
        log_ratio = (
            torch.where(
                rk,
                math.log(2 * math.pi)
                + torch.log(tt * torch.special.sinc(th / math.pi))
                + th**2 / (2 * tt),
                torch.full_like(th, math.log(4 * math.pi)),
            )
            + logp
        )
        accept = ok & (torch.log(u) <= log_ratio - log_bound[todo])
        theta[todo[accept]] = th[accept]
        todo = todo[~accept]
    return theta
