"""Torus(n): factorised base score, geometry and heat kernel against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from madbench.manifolds import Sphere, Torus

F64 = torch.float64


def _angles_to_points(a: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.cos(a), torch.sin(a)], -1).reshape(a.shape[0], -1)


def test_shapes_and_errors(gen):
    tor = Torus(2)
    assert (tor.ambient_dim, tor.dim, tor.codim) == (4, 2, 2)
    assert abs(tor.log_volume - 2 * math.log(2 * math.pi)) < 1e-15
    with pytest.raises(ValueError, match="n >= 1"):
        Torus(0)
    with pytest.raises(ValueError, match="shape"):
        tor.base_score(torch.zeros(3, 3), 0.1)
    x = tor.sample_uniform(50_000, gen)
    assert x.dtype == torch.float32 and x.shape == (50_000, 4)
    a = tor.angles(x)
    for i in range(2):
        assert stats.kstest(a[:, i].numpy(), "uniform", args=(-math.pi, 2 * math.pi)).pvalue > 1e-3


def test_base_score_vs_monte_carlo(gen):
    """Posterior mean of a uniform point of T^2 given x, by importance weights over 2e5 draws."""
    tor = Torus(2)
    sigma = 0.6
    y = tor.sample_uniform(200_000, gen).double()
    x = tor.sample_uniform(8, gen).double() * torch.linspace(0.3, 1.5, 8, dtype=F64)[:, None]
    x = x + 0.2 * torch.randn(x.shape, generator=gen, dtype=F64)
    logw = -((x[:, None, :] - y[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, -1)
    mean = w @ y
    se = ((w**2).unsqueeze(-1) * (y[None] - mean[:, None]) ** 2).sum(1).sqrt()
    ref = (mean - x) / sigma**2
    got = tor.base_score(x, sigma)
    assert torch.all(torch.abs(got - ref) <= 5 * se / sigma**2)
    # and it is the per-circle formula (I_1/I_0)(|x_i|/s^2) x_i/|x_i| - x_i) / s^2:
    xi = x.reshape(-1, 2)
    r = xi.norm(dim=-1, keepdim=True)
    k = (r / sigma**2).numpy()
    a = torch.tensor(special.ive(1, k) / special.ive(0, k))
    per_circle = ((a * xi / r - xi) / sigma**2).reshape(-1, 4)
    assert torch.allclose(got, per_circle, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_base_score_finite_extremes(dtype, gen):
    tor = Torus(3)
    x = tor.sample_uniform(64, gen).to(dtype)
    for sigma in (1e-4, 1e-2, 1.0, 1e2):
        for scale in (1e-6, 1.0, 1e3):
            sc = tor.base_score(x * scale, torch.full((64,), sigma, dtype=dtype))
            assert sc.dtype == dtype and torch.all(torch.isfinite(sc))


def test_geometry(gen):
    tor = Torus(2)
    a = (torch.rand(500, 2, generator=gen, dtype=F64) - 0.5) * 2 * math.pi
    b = (torch.rand(500, 2, generator=gen, dtype=F64) - 0.5) * 2 * math.pi
    x, y = _angles_to_points(a), _angles_to_points(b)
    diff = np.remainder((b - a).numpy() + np.pi, 2 * np.pi) - np.pi  # wrapped angle differences
    assert np.allclose(
        tor.geodesic_distance(x, y).numpy(), np.linalg.norm(diff, axis=-1), atol=1e-12
    )
    lg = tor.log(x, y)
    # log in angle coordinates is the wrapped difference along the unit tangents (-sin, cos).
    tang = torch.stack([-torch.sin(a), torch.cos(a)], -1)
    assert np.allclose((lg.reshape(-1, 2, 2) * tang).sum(-1).numpy(), diff, atol=1e-10)
    assert torch.allclose(tor.exp(x, lg), y, atol=1e-10)
    assert torch.allclose(tor.project(3 * x), x, atol=1e-15)
    assert torch.allclose(
        tor.distance_to_manifold(3 * x), torch.full((500,), 2 * math.sqrt(2), dtype=F64)
    )


@pytest.mark.parametrize("t", [1e-3, 0.2, 2.0])
def test_heat_kernel_integrates_to_one_and_factorises(t):
    tor = Torus(2)
    circ = Sphere(1)
    x0 = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=F64)

    def density_1d(phi: float, i: int) -> float:
        x = torch.tensor([[math.cos(phi), math.sin(phi)]], dtype=F64)
        return math.exp(circ.heat_kernel_log_prob(x, x0[:, 2 * i : 2 * i + 2], t).item())

    pts = [k * math.sqrt(t) for k in (-8, -1, 1, 8) if abs(k) * math.sqrt(t) < math.pi]
    ints = [integrate.quad(density_1d, -math.pi, math.pi, args=(i,), points=pts)[0] for i in (0, 1)]
    # The torus kernel is the product of circle kernels (checked at random points), so its
    # integral is the product of the circle integrals.
    g = torch.Generator().manual_seed(3)
    x = tor.sample_uniform(100, g).double()
    lp = tor.heat_kernel_log_prob(x, x0.expand(100, 4), t)
    ang = torch.atan2(x[:, 1::2], x[:, 0::2]) - torch.tensor([0.0, math.pi / 2], dtype=F64)
    k = torch.arange(-20, 21, dtype=F64)
    wn = torch.logsumexp(-((ang[..., None] + 2 * math.pi * k) ** 2) / (2 * t), -1)
    ref = (wn - 0.5 * math.log(2 * math.pi * t)).sum(-1)
    assert torch.allclose(lp, ref, atol=1e-12)
    assert abs(ints[0] * ints[1] - 1) < 1e-9


@pytest.mark.parametrize("t", [1e-4, 0.05, 1.0, 8.0])
def test_heat_kernel_score_vs_finite_differences(t, gen):
    tor = Torus(2)
    x0 = tor.project(tor.sample_uniform(64, gen).double())
    x = torch.cat(
        [tor.sample_heat_kernel(x0, 3 * t, gen), tor.project(tor.sample_uniform(64, gen).double())]
    )
    x0 = torch.cat([x0, x0])
    u = tor.to_tangent(x, torch.randn(x.shape, generator=gen, dtype=F64))
    u = u / u.norm(dim=-1, keepdim=True)
    h = 1e-5 * math.sqrt(t)
    fd = (
        tor.heat_kernel_log_prob(tor.exp(x, h * u), x0, t)
        - tor.heat_kernel_log_prob(tor.exp(x, -h * u), x0, t)
    ) / (2 * h)
    sc = tor.heat_kernel_score(x, x0, t)
    assert torch.all(torch.isfinite(sc))
    err = ((sc * u).sum(-1) - fd).abs() / (1 / math.sqrt(t) + fd.abs())
    assert err.max() < 1e-6


@pytest.mark.parametrize("t", [0.01, 0.5, 3.0])
def test_heat_kernel_sampler_and_random_walk(t, gen):
    tor = Torus(2)
    n = 20_000
    x0 = tor.sample_uniform(n, gen).double()
    a0 = tor.angles(x0)

    def wrapped_cdf(a):
        k = np.arange(-8, 9)[:, None]
        s = math.sqrt(t)
        return np.sum(
            stats.norm.cdf((a + 2 * np.pi * k) / s) - stats.norm.cdf((-np.pi + 2 * np.pi * k) / s),
            0,
        )

    for y in (
        tor.sample_heat_kernel(x0, t, gen),
        tor.random_walk(x0, t, n_steps=100, generator=gen),
    ):
        d = torch.remainder(tor.angles(y) - a0 + math.pi, 2 * math.pi) - math.pi
        for i in range(2):
            assert stats.kstest(d[:, i].numpy(), wrapped_cdf).pvalue > 1e-3
        assert abs(stats.pearsonr(d[:, 0].numpy(), d[:, 1].numpy())[0]) < 5 / math.sqrt(n)
