"""Sphere(d): Bessel helpers, base score, geometry, heat kernels vs independent references."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from madbench.manifolds import Sphere
from madbench.manifolds._bessel import (
    bessel_ratio,
    log_ive,
    log_vmf_normaliser,
    log_vmf_normaliser_scaled,
)
from madbench.manifolds.sphere import s2_log_heat

F64 = torch.float64


def mc_posterior_mean(x, y, log_f, sigma):
    """Self-normalised importance estimate of E[Y | x] (Y ~ uniform, prior weight f) and its s.e."""
    logw = log_f[None, :] - ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, -1)
    mean = w @ y
    var = ((w**2).unsqueeze(-1) * (y[None] - mean[:, None]) ** 2).sum(1)
    return mean, var.sqrt()


# ----------------------------------------------------------------------------- Bessel helpers
@pytest.mark.parametrize("nu", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.5])
def test_bessel_ratio_and_log_ive_vs_scipy(nu):
    x = np.concatenate([[1e-30, 1e-8], np.logspace(-6, 11, 300)])
    with np.errstate(invalid="ignore"):
        ref = special.ive(nu, x) / special.ive(nu - 1, x)
    ok = np.isfinite(ref) & (ref > 0)  # scipy's ive(-1/2, x) is nan beyond x ~ 700
    assert ok.mean() > 0.7
    got = bessel_ratio(nu, torch.tensor(x)).numpy()
    assert np.all(np.isfinite(got)) and np.max(np.abs(got[ok] / ref[ok] - 1)) < 1e-12
    got32 = bessel_ratio(nu, torch.tensor(x, dtype=torch.float32)).double().numpy()
    assert np.all(np.isfinite(got32)) and np.max(np.abs(got32[ok] / ref[ok] - 1)) < 1e-6
    assert bessel_ratio(nu, torch.zeros(1, dtype=F64)).item() == 0.0
    lref = np.log(special.ive(nu, x[1:]))
    ok = np.isfinite(lref)  # scipy's ive(1/2, x) is nan beyond x ~ 1e9
    got = log_ive(nu, torch.tensor(x[1:])).numpy()
    assert np.all(np.isfinite(got)) and np.max(np.abs(got[ok] - lref[ok])) < 1e-12


@pytest.mark.parametrize("p", [2, 3, 4, 5, 8])
def test_log_vmf_normaliser(p):
    """log M_p vs scipy ive; its derivative vs A_p (finite differences); M_p(0) = 1."""
    nu = p / 2 - 1
    k = np.logspace(-3, 6, 60)
    ref = special.gammaln(nu + 1) + nu * np.log(2 / k) + np.log(special.ive(nu, k)) + k
    got = log_vmf_normaliser(p, torch.tensor(k)).numpy()
    assert np.max(np.abs(got - ref) / np.maximum(1, np.abs(ref))) < 1e-13
    assert log_vmf_normaliser(p, torch.zeros(1, dtype=F64)).item() == 0.0
    kk = torch.tensor(k[(k > 0.1) & (k < 1e4)])  # log M has ~1e-16 absolute error near 0
    h = 1e-5 * kk
    fd = (log_vmf_normaliser(p, kk + h) - log_vmf_normaliser(p, kk - h)) / (2 * h)
    a = bessel_ratio(p / 2, kk)
    assert torch.max(torch.abs(fd / a - 1)) < 1e-7


# ----------------------------------------------------------------------------- base score
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_base_score_vs_monte_carlo(dim, gen):
    sphere = Sphere(dim)
    sigma = 0.5
    y = sphere.sample_uniform(200_000, gen).double()
    x = sphere.sample_uniform(8, gen).double() * torch.linspace(0.2, 1.6, 8, dtype=F64)[:, None]
    mean, se = mc_posterior_mean(x, y, torch.zeros(y.shape[0], dtype=F64), sigma)
    ref = (mean - x) / sigma**2
    got = sphere.base_score(x, sigma)
    assert torch.all(torch.abs(got - ref) <= 5 * se / sigma**2 + 1e-12)


def _log_noised_uniform(x, sigma, p):
    """log (Uniform(S^{p-1}) * N(0, sigma^2 I))(x) + const = -(|x|-1)^2/2s^2 + log M(k) - k."""
    r = x.norm(dim=-1)
    return -((r - 1) ** 2) / (2 * sigma**2) + log_vmf_normaliser_scaled(p, r / sigma**2)


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
@pytest.mark.parametrize("sigma", [1e-1, 1e-2, 1e-3, 1e-4])
def test_base_score_vs_finite_differences(dim, sigma, gen):
    sphere = Sphere(dim)
    p = dim + 1
    x0 = sphere.sample_uniform(16, gen).double()
    x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=F64)
    h = 1e-4 * sigma
    eye = torch.eye(p, dtype=F64)
    fd = torch.stack(
        [
            (_log_noised_uniform(x + h * e, sigma, p) - _log_noised_uniform(x - h * e, sigma, p))
            / (2 * h)
            for e in eye
        ],
        -1,
    )
    got = sphere.base_score(x, sigma)
    assert torch.max((got - fd).norm(dim=-1) / fd.norm(dim=-1)) < 1e-6


def test_base_score_limits_and_origin():
    s2 = Sphere(2)
    x = torch.tensor([[0.0, 0.0, 1e3], [0.0, 0.0, 0.0], [1e-3, 0.0, 0.0]], dtype=F64)
    sc = s2.base_score(x, 1e-4)
    # |x| = 1e3, sigma = 1e-4: E[y | x] = x/|x| to 1e-11, so s = (x/|x| - x)/sigma^2.
    assert torch.allclose(sc[0], torch.tensor([0.0, 0.0, (1 - 1e3) / 1e-8], dtype=F64), rtol=1e-12)
    assert torch.all(sc[1] == 0)
    # sigma large: s -> -x / sigma^2 (kappa -> 0, A ~ kappa/3).
    big = s2.base_score(torch.tensor([[0.5, 0.0, 0.0]], dtype=F64), 100.0)
    assert torch.allclose(big, torch.tensor([[(0.5 / 1e4 / 3 - 0.5) / 1e4, 0.0, 0.0]], dtype=F64))


@settings(max_examples=60, deadline=None)
@given(
    dim=st.sampled_from([1, 2, 3]),
    log_sigma=st.floats(math.log(1e-4), math.log(1e2)),
    log_r=st.floats(math.log(1e-6), math.log(1e3)),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_base_score_finite_property(dim, log_sigma, log_r, double, seed):
    g = torch.Generator().manual_seed(seed)
    sphere = Sphere(dim)
    dtype = F64 if double else torch.float32
    x = sphere.sample_uniform(32, g).to(dtype) * math.exp(log_r)
    sigma = math.exp(log_sigma)
    sc = sphere.base_score(x, sigma)
    assert sc.dtype == dtype and torch.all(torch.isfinite(sc))
    # float32 output is the float64 value (same input) to float32 rounding.
    ref = sphere.base_score(x.double(), sigma)
    assert torch.all((sc.double() - ref).norm(dim=-1) <= 1e-6 * ref.norm(dim=-1) + 1e-30)
    # The normal component (A - |x|)/sigma^2 along x/|x|, with A in [0, 1].
    a = (sc * x).sum(-1) / x.norm(dim=-1) * sigma**2 + x.norm(dim=-1)
    tol = 1e-3 * (1 + x.norm(dim=-1))
    assert torch.all((a >= -tol) & (a <= 1 + tol))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="dim"):
        Sphere(0)
    with pytest.raises(ValueError, match="shape"):
        Sphere(2).base_score(torch.zeros(3, 4), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        Sphere(2).base_score(torch.ones(3, 3), 0.0)
    with pytest.raises(ValueError, match="t must"):
        Sphere(2).heat_kernel_log_prob(torch.ones(3, 3), torch.ones(3, 3), -1.0)
    with pytest.raises(NotImplementedError):
        Sphere(3).heat_kernel_log_prob(torch.ones(3, 4), torch.ones(3, 4), 1.0)


# ----------------------------------------------------------------------------- geometry
def test_geometry_vs_geomstats(gen):
    gs = pytest.importorskip("geomstats.geometry.hypersphere")
    dtype = torch.get_default_dtype()
    try:
        hs = gs.Hypersphere(dim=2)
        s2 = Sphere(2)
        x = s2.project(s2.sample_uniform(200, gen).double())
        y = s2.project(s2.sample_uniform(200, gen).double())
        v = 0.7 * s2.to_tangent(x, torch.randn(x.shape, generator=gen, dtype=F64))
        xn, yn, vn = x.numpy(), y.numpy(), v.numpy()
        ref_d = np.asarray(hs.metric.dist(xn, yn))
        assert np.allclose(s2.geodesic_distance(x, y).numpy(), ref_d, atol=1e-10)
        assert np.allclose(s2.exp(x, v).numpy(), np.asarray(hs.metric.exp(vn, xn)), atol=1e-10)
        assert np.allclose(s2.log(x, y).numpy(), np.asarray(hs.metric.log(yn, xn)), atol=1e-8)
    finally:
        torch.set_default_dtype(dtype)


@pytest.mark.parametrize("theta", [1e-12, 1e-7, 1e-3, 1.0, math.pi - 1e-3, math.pi - 1e-7])
@pytest.mark.parametrize("dim", [1, 2, 4])
def test_distance_log_exp_near_0_and_pi(theta, dim):
    """y = cos(theta) e1 + sin(theta) e2 exactly: d(x, y) = theta, log_x y = theta e2."""
    sphere = Sphere(dim)
    e = torch.eye(dim + 1, dtype=F64)
    x = e[:1]
    th = torch.tensor(theta, dtype=F64)
    y = torch.cos(th) * e[:1] + torch.sin(th) * e[1:2]
    d = sphere.geodesic_distance(x, y).item()
    assert abs(d - theta) <= 1e-15 + 1e-14 * theta
    lg = sphere.log(x, y)
    assert torch.allclose(lg, theta * e[1:2], rtol=1e-8, atol=1e-15)
    assert torch.allclose(sphere.exp(x, lg), y, atol=1e-15)
    antipode = sphere.log(x, -x)
    assert (
        abs(antipode.norm().item() - math.pi) < 1e-15 and abs((antipode * x).sum().item()) < 1e-15
    )


def test_project_and_uniform(gen):
    s2 = Sphere(2)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    assert torch.equal(s2.project(x), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]))
    assert torch.allclose(s2.distance_to_manifold(x), torch.tensor([1.0, 4.0]))
    u = s2.sample_uniform(50_000, gen)
    assert u.dtype == torch.float32 and torch.allclose(u.norm(dim=-1), torch.ones(50_000))
    # Archimedes: the z coordinate of a uniform point on S^2 is uniform on [-1, 1].
    assert stats.kstest(u[:, 2].numpy(), "uniform", args=(-1, 2)).pvalue > 1e-3
    assert abs(s2.log_volume - math.log(4 * math.pi)) < 1e-15
    assert abs(Sphere(1).log_volume - math.log(2 * math.pi)) < 1e-15


# ----------------------------------------------------------------------------- heat kernels
def _mp_s2_log_heat(theta: float, t: float) -> float:
    """High-precision Legendre series (mpmath), digits enough for the cancellation."""
    dps = int(theta**2 / (2 * t) / 2.3) + 30
    with mpmath.workdps(dps):
        n_terms = int(math.sqrt(2 * 2.3 * dps / t)) + 10
        z, tt = mpmath.cos(mpmath.mpf(theta)), mpmath.mpf(t)
        p_prev, p_cur = mpmath.mpf(1), z
        s = 1 / (4 * mpmath.pi)
        for ell in range(1, n_terms):
            s += (2 * ell + 1) / (4 * mpmath.pi) * mpmath.exp(-ell * (ell + 1) * tt / 2) * p_cur
            p_prev, p_cur = p_cur, ((2 * ell + 1) * z * p_cur - ell * p_prev) / (ell + 1)
        return float(mpmath.log(s))


@pytest.mark.parametrize("t", [1e-4, 1e-3, 0.05, 0.3, 0.5, 2.0, 10.0])
def test_s2_heat_kernel_vs_high_precision_series(t):
    thetas = [0.0, 0.5 * math.sqrt(t), 2.9 * math.sqrt(t), 3.1 * math.sqrt(t), 8 * math.sqrt(t)]
    thetas += [0.5, 1.5, 3.0, math.pi]
    thetas = [th for th in thetas if th <= math.pi and th**2 / (2 * t) < 250]
    th = torch.tensor(thetas, dtype=F64)
    got = s2_log_heat(th, torch.full_like(th, t))[0].numpy()
    ref = np.array([_mp_s2_log_heat(a, t) for a in thetas])
    assert np.max(np.abs(got - ref)) < 1e-11


def _varadhan_first_order(theta, t):
    """Small-t expansion (derived by the transport equations): sqrt(th/sin th)(1 + t v1/2)."""
    v1 = 0.25 * (1 + (1 - theta / np.tan(theta)) / theta**2)
    lead = -np.log(2 * np.pi * t) - theta**2 / (2 * t) + 0.5 * np.log(theta / np.sin(theta))
    return lead + np.log1p(t * v1 / 2)


@pytest.mark.parametrize("t", [1e-4, 1e-3, 1e-2])
def test_s2_small_t_form_vs_exact(t):
    """Both converge for t << 1 away from the antipode; the gap is the O(t^2) remainder."""
    th = np.linspace(0.05, 2.5, 30)
    got = s2_log_heat(torch.tensor(th), torch.full((30,), t, dtype=F64))[0].numpy()
    assert np.max(np.abs(got - _varadhan_first_order(th, t))) < 2 * t**2


@pytest.mark.parametrize("t", [1e-4, 1e-3, 0.01, 0.1, 0.45, 0.6, 1.0, 10.0])
def test_s2_heat_kernel_integrates_to_one(t):
    s2 = Sphere(2)
    x0 = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)

    def dens(th: float) -> float:
        x = torch.tensor([[math.sin(th), 0.0, math.cos(th)]], dtype=F64)
        return 2 * math.pi * math.sin(th) * math.exp(s2.heat_kernel_log_prob(x, x0, t).item())

    pts = [k * math.sqrt(t) for k in (1, 2, 4, 8, 16) if k * math.sqrt(t) < math.pi]
    total, _ = integrate.quad(dens, 0, math.pi, points=pts, limit=200, epsabs=1e-13)
    assert abs(total - 1) < 1e-9


@pytest.mark.parametrize("t", [1e-4, 0.01, 0.3, 1.0, 10.0])
def test_circle_heat_kernel(t):
    """Integrates to 1; equals the theta series (1/2pi)(1 + 2 sum e^{-n^2 t/2} cos n phi)."""
    c = Sphere(1)
    x0 = torch.tensor([[1.0, 0.0]], dtype=F64)

    def logp(phi):
        phi = np.atleast_1d(phi)
        x = torch.tensor(np.stack([np.cos(phi), np.sin(phi)], -1))
        return c.heat_kernel_log_prob(x, x0.expand(len(phi), 2), t).numpy()

    pts = [k * math.sqrt(t) for k in (-8, -4, -1, 1, 4, 8) if k * math.sqrt(t) < math.pi]
    total, _ = integrate.quad(lambda p: math.exp(logp(p)[0]), -math.pi, math.pi, points=pts)
    assert abs(total - 1) < 1e-9
    if t >= 0.05:
        phi = np.linspace(-math.pi, math.pi, 101)
        n = np.arange(1, 200)
        theta = (1 + 2 * (np.exp(-(n**2) * t / 2) * np.cos(np.outer(phi, n))).sum(-1)) / (2 * np.pi)
        assert np.max(np.abs(np.exp(logp(phi)) - theta)) < 1e-14


def _fd_score_check(manifold, x, x0, t, gen, rtol):
    """<score, u> vs d/de log p(exp_x(e u)) at e = 0 for random unit tangent u."""
    u = manifold.to_tangent(x, torch.randn(x.shape, generator=gen, dtype=F64))
    u = u / u.norm(dim=-1, keepdim=True)
    h = 1e-5 * math.sqrt(t)
    lp_p = manifold.heat_kernel_log_prob(manifold.exp(x, h * u), x0, t)
    lp_m = manifold.heat_kernel_log_prob(manifold.exp(x, -h * u), x0, t)
    fd = (lp_p - lp_m) / (2 * h)
    sc = manifold.heat_kernel_score(x, x0, t)
    assert torch.all(torch.isfinite(sc))
    assert torch.max((sc * x).sum(-1).abs()) < 1e-12 * (1 + sc.norm(dim=-1).max())  # tangent
    err = ((sc * u).sum(-1) - fd).abs() / (1 / math.sqrt(t) + fd.abs())
    assert err.max() < rtol


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("t", [1e-4, 1e-3, 0.05, 0.3, 0.7, 5.0])
def test_heat_kernel_score_vs_finite_differences(dim, t, gen):
    sphere = Sphere(dim)
    x0 = sphere.project(sphere.sample_uniform(64, gen).double())
    x = sphere.sample_heat_kernel(x0, 3 * t, gen)  # typical and tail points
    x = torch.cat([x, sphere.project(sphere.sample_uniform(16, gen).double())])
    x0 = torch.cat([x0, x0[:16]])
    _fd_score_check(sphere, x, x0, t, gen, rtol=1e-6)


def test_s2_rejection_bound_holds():
    """The sampler's proposal ratio 2 pi t p_t(th) sinc(th) e^{th^2/2t} peaks at theta = 0."""
    for t in [1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0, 2.0]:
        th = torch.linspace(0, math.pi, 20001, dtype=F64)
        lp = s2_log_heat(th, torch.full_like(th, t))[0]
        logw = lp + torch.log(torch.special.sinc(th / math.pi)) + th**2 / (2 * t)
        assert logw.max() <= logw[0] + 1e-12


def _s2_angle_cdf(t: float):
    s2_th = np.linspace(0, math.pi, 40001)
    lp = s2_log_heat(torch.tensor(s2_th), torch.full((s2_th.size,), t, dtype=F64))[0].numpy()
    f = 2 * np.pi * np.sin(s2_th) * np.exp(lp)
    cdf = integrate.cumulative_trapezoid(f, s2_th, initial=0)
    return lambda a: np.interp(a, s2_th, cdf / cdf[-1])


@pytest.mark.parametrize("t", [1e-3, 0.05, 0.5, 3.0])
def test_s2_heat_kernel_sampler_and_random_walk(t, gen):
    s2 = Sphere(2)
    n = 20_000
    x0 = s2.sample_uniform(n, gen).double()
    cdf = _s2_angle_cdf(t)
    exact = s2.sample_heat_kernel(x0, t, gen)
    assert torch.allclose(exact.norm(dim=-1), torch.ones(n, dtype=F64))
    assert stats.kstest(s2.geodesic_distance(exact, x0).numpy(), cdf).pvalue > 1e-3
    walk = s2.random_walk(x0, t, n_steps=200, generator=gen)
    assert stats.kstest(s2.geodesic_distance(walk, x0).numpy(), cdf).pvalue > 1e-3
    # Azimuth about x0 is uniform: the tangent direction has no preferred axis.
    lg = s2.log(x0, exact)
    assert (lg.mean(0).norm() < 5 * lg.norm(dim=-1).mean() / math.sqrt(n)).item()


def test_s2_sampler_per_point_time(gen):
    s2 = Sphere(2)
    t = torch.tensor([1e-4, 1.0, 5.0], dtype=F64).repeat(4000)
    x0 = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64).expand(12000, 3)
    th = s2.geodesic_distance(s2.sample_heat_kernel(x0, t, gen), x0).numpy()
    for i, tt in enumerate([1e-4, 1.0, 5.0]):
        assert stats.kstest(th[i::3], _s2_angle_cdf(tt)).pvalue > 1e-3


@pytest.mark.parametrize("t", [1e-3, 0.3, 4.0])
def test_circle_sampler_and_random_walk(t, gen):
    c = Sphere(1)
    n = 20_000
    x0 = c.sample_uniform(n, gen).double()
    phi0 = torch.atan2(x0[:, 1], x0[:, 0])

    def wrapped_cdf(a):  # CDF of the wrapped normal angle on (-pi, pi]
        k = np.arange(-8, 9)[:, None]
        s = math.sqrt(t)
        return np.sum(
            stats.norm.cdf((a + 2 * np.pi * k) / s) - stats.norm.cdf((-np.pi + 2 * np.pi * k) / s),
            0,
        )

    for y in (c.sample_heat_kernel(x0, t, gen), c.random_walk(x0, t, n_steps=100, generator=gen)):
        ang = torch.remainder(torch.atan2(y[:, 1], y[:, 0]) - phi0 + math.pi, 2 * math.pi) - math.pi
        assert stats.kstest(ang.numpy(), wrapped_cdf).pvalue > 1e-3


@pytest.mark.slow
def test_s3_random_walk_fallback(gen):
    """S^3 sampler fallback vs the exact S^3 kernel (odd dimension, closed form by wrapping)."""
    s3 = Sphere(3)
    t, n = 0.2, 20_000
    x0 = s3.sample_uniform(n, gen).double()
    th = s3.geodesic_distance(s3.sample_heat_kernel(x0, t, gen), x0).numpy()
    a = np.linspace(1e-9, np.pi, 20001)
    k = np.arange(-5, 6)[:, None]
    ker = np.exp(t / 2) * ((a + 2 * np.pi * k) * np.exp(-((a + 2 * np.pi * k) ** 2) / (2 * t))).sum(
        0
    )
    f = ker / np.sin(a) * np.sin(a) ** 2  # density ∝ p_t(a) sin^2 a
    cdf = integrate.cumulative_trapezoid(f, a, initial=0)
    assert stats.kstest(th, lambda v: np.interp(v, a, cdf / cdf[-1])).pvalue > 1e-3


@pytest.mark.parametrize("t", [1e-4, 1e-2, 0.3])
def test_s2_heat_kernel_small_angles_match_the_legendre_series(t):
    """For t < 1/2 the quadrature serves every angle (the series would need ~sqrt(120/t) terms);
    near theta = 0 its g = -(dlogp/dtheta)/theta is taken at 0.01 sqrt(t)."""
    from madbench.manifolds.sphere import _s2_series, s2_log_heat

    th = torch.tensor([0.0, 1e-4, 0.003, 0.3, 1.0, 3.0], dtype=torch.float64) * math.sqrt(t)
    tt = torch.full_like(th, t)
    lp, g = s2_log_heat(th, tt, need_grad=True)
    lp_ref, g_ref = _s2_series(th, tt)
    assert torch.allclose(lp, lp_ref, rtol=0, atol=1e-6)
    assert torch.allclose(g, g_ref, rtol=1e-6, atol=0)
