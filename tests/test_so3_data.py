"""SO(3) datasets: registry, exact densities (normalisation, Monte Carlo) and exact noisy scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from madbench.data import get_dataset, list_datasets
from madbench.data.so3 import MatrixFisherMixture, WrappedNormalMixture
from madbench.manifolds import SO3
from madbench.manifolds._rotations import angle_so3, quaternion_to_matrix
from madbench.manifolds.so3 import LOG_DENSITY_SHIFT, LOG_VOLUME_FROBENIUS

F64 = torch.float64
NAMES = [
    "so3_uniform",
    "so3_mf_mixture_3",
    "so3_mf_mixture_6",
    "so3_mf_mixture_sharp",
    "so3_wrapped_16",
    "so3_wrapped_32",
    "so3_wrapped_64",
]


def _haar(n: int, seed: int) -> torch.Tensor:
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return quaternion_to_matrix(q).reshape(n, 9)


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_seeded(name):
    assert name in list_datasets()
    d = get_dataset(name)
    assert isinstance(d.manifold, SO3) and d.has_log_prob and "Frobenius" in d.log_prob_convention
    a = d.sample(500, torch.Generator().manual_seed(1))
    b = d.sample(500, torch.Generator().manual_seed(1))
    assert a.shape == (500, 9) and a.dtype == torch.float32 and torch.equal(a, b)
    assert d.manifold.distance_to_manifold(a.double()).max() < 1e-6
    assert d.has_score == (not name.startswith("so3_wrapped"))


def test_uniform_dataset():
    d = get_dataset("so3_uniform")
    x = _haar(10, 0)
    torch.testing.assert_close(d.log_prob(x), torch.full((10,), -LOG_VOLUME_FROBENIUS, dtype=F64))
    assert d.log_prob(x)[0].item() + LOG_DENSITY_SHIFT == pytest.approx(-math.log(8 * math.pi**2))
    torch.testing.assert_close(d.score(x * 1.1, 0.3), SO3().base_score(x * 1.1, 0.3))


@pytest.mark.parametrize("name", ["so3_mf_mixture_3", "so3_mf_mixture_6", "so3_wrapped_16"])
def test_density_normalises_under_haar_monte_carlo(name):
    d = get_dataset(name)
    u = _haar(100_000 if name.startswith("so3_wrapped") else 400_000, 2)
    vals = torch.exp(d.log_prob(u) + LOG_VOLUME_FROBENIUS)
    assert abs(vals.mean().item() - 1) < 5 * vals.std().item() / math.sqrt(len(u))


def test_mf_mixture_density_matches_samples():
    """E_p[log p] by sampling equals the Haar-MC value of int p log p (independent routes)."""
    d = get_dataset("so3_mf_mixture_3")
    x = d.sample(100_000, torch.Generator().manual_seed(3)).double()
    lp = d.log_prob(x)
    u = _haar(400_000, 4)
    lpu = d.log_prob(u)
    w = torch.exp(lpu + LOG_VOLUME_FROBENIUS)
    ent_mc = (w * lpu).mean().item()
    se = (w * lpu).std().item() / math.sqrt(len(u)) + lp.std().item() / math.sqrt(len(x))
    assert abs(lp.mean().item() - ent_mc) < 5 * se


def _mixture_mc(d: MatrixFisherMixture, x: torch.Tensor, sigma: float, n: int, seed: int):
    """log p_sigma(x) and E[R | x] by Monte Carlo over R ~ p_data (independent of c(G))."""
    r = d.sample(n, torch.Generator().manual_seed(seed)).double()
    r = torch.as_tensor(SO3().project(r))  # float32 draws, re-orthonormalised
    out = []
    for xi in x:
        logk = -((xi - r) ** 2).sum(-1) / (2 * sigma**2) - 4.5 * math.log(2 * math.pi * sigma**2)
        lp = torch.logsumexp(logk, 0) - math.log(n)
        w = torch.softmax(logk, 0)
        out.append((lp.item(), (w[:, None] * r).sum(0), 1.0 / (w * w).sum().item()))
    return out


@pytest.mark.parametrize("sigma", [0.3, 0.8])
def test_mf_mixture_noised_density_and_score_vs_monte_carlo(sigma):
    d = get_dataset("so3_mf_mixture_3")
    g = torch.Generator().manual_seed(5)
    x = d.sample(6, g).double() + sigma * torch.randn(6, 9, generator=g, dtype=F64)
    lp, score = d.log_prob_noised(x, sigma), d.score(x, sigma)
    for i, (lp_mc, mean_mc, ess) in enumerate(_mixture_mc(d, x, sigma, 200_000, 6)):
        assert ess > 200
        assert abs(math.exp(lp[i].item() - lp_mc) - 1) < 6 / math.sqrt(ess)
        tol = 6 / math.sqrt(ess) / sigma**2
        assert (score[i] - (mean_mc - x[i]) / sigma**2).abs().max() < tol


@pytest.mark.parametrize("name", ["so3_mf_mixture_3", "so3_mf_mixture_6", "so3_mf_mixture_sharp"])
@pytest.mark.parametrize("sigma", [0.02, 0.2, 1.0])
def test_mf_mixture_score_vs_finite_differences(name, sigma):
    d = get_dataset(name)
    g = torch.Generator().manual_seed(7)
    x = d.sample(4, g).double() + sigma * torch.randn(4, 9, generator=g, dtype=F64)
    score = d.score(x, sigma)
    h = 1e-4 * sigma
    eye = torch.eye(9, dtype=F64)
    for i in range(4):
        xp, xm = x[i] + h * eye, x[i] - h * eye
        fd = (d.log_prob_noised(xp, sigma) - d.log_prob_noised(xm, sigma)) / (2 * h)
        scale = max(1.0, score[i].abs().max().item())
        assert (score[i] - fd).abs().max() / scale < 1e-6


def test_mf_mixture_small_sigma_score_is_finite_and_tends_to_projection():
    d = get_dataset("so3_mf_mixture_6")
    g = torch.Generator().manual_seed(8)
    x0 = d.sample(50, g).double()
    for sigma in [1e-4, 1e-3]:
        x = x0 + sigma * torch.randn(50, 9, generator=g, dtype=F64)
        s = d.score(x, sigma)
        assert torch.isfinite(s).all()
        lead = (SO3().project(x) - x) / sigma**2
        assert ((s - lead).norm(dim=-1)).max() < 200  # the O(1) remainder (prior + curvature)
    for sigma in [1e-4, 1e2]:
        xx = torch.randn(20, 9, generator=g, dtype=F64) * 1e3
        assert torch.isfinite(d.score(xx.float(), sigma)).all()


def _wrapped_angle_density(d: WrappedNormalMixture, th: float) -> float:
    """Angle law of d's single component: p(R(th)) (1 - cos th) / pi, p w.r.t. normalised Haar."""
    rot = torch.tensor(
        [[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0], [0.0, 0.0, 1.0]],
        dtype=F64,
    )
    x = (d.means[0] @ rot).reshape(1, 9)
    lp = d.log_prob(x).item() + LOG_VOLUME_FROBENIUS
    return math.exp(lp) * (1 - math.cos(th)) / math.pi


@pytest.mark.parametrize("scale", [0.1, 0.6, 1.5])
def test_wrapped_component_density_integrates_and_matches_sampler(scale):
    """One component: the angle density integrates to 1 (scipy quad) and the sampled angles
    follow it (KS); the density is the wrapped sum of the module docstring."""
    mu = _haar(1, 9).reshape(1, 3, 3)
    d = WrappedNormalMixture("one", mu, torch.tensor([scale]))
    total = integrate.quad(
        lambda th: _wrapped_angle_density(d, th), 0, math.pi, points=[scale, 3 * scale], limit=200
    )[0]
    assert abs(total - 1) < 1e-8
    grid = np.linspace(1e-9, math.pi, 4001)
    dens = np.array([_wrapped_angle_density(d, th) for th in grid])
    cdf = integrate.cumulative_trapezoid(dens, grid, initial=0)
    cdf = cdf / cdf[-1]
    x = d.sample(5000, torch.Generator().manual_seed(10)).double()
    th = angle_so3(mu.mT @ x.reshape(-1, 3, 3)).numpy()
    assert stats.kstest(th, lambda a: np.interp(a, grid, cdf)).pvalue > 1e-3


def test_wrapped_rsgm_protocol_parameters():
    d = get_dataset("so3_wrapped_32")
    precision = d.scales**-2
    assert d.means.shape == (32, 3, 3) and len(precision) == 32
    assert 80 < precision.mean().item() < 120  # Gamma(100, 1)
    eye = torch.eye(3, dtype=F64)
    assert (d.means @ d.means.mT - eye).abs().max() < 1e-12


def test_mixture_score_jacobian_on_the_manifold_matches_finite_differences():
    """The ambient likelihood ODE differentiates the exact score at data points on SO(3)."""
    from madbench.data import get_dataset
    from madbench.manifolds import SO3

    ds = get_dataset("so3_mf_mixture_3")
    x = SO3().project(ds.sample(5, generator=torch.Generator().manual_seed(3)).double())
    xg = x.clone().requires_grad_(True)
    out = ds.score(xg, 1e-2)
    jac = torch.stack(
        [torch.autograd.grad(out[:, i].sum(), xg, retain_graph=True)[0] for i in range(9)], 1
    )
    h = 1e-6
    ref = torch.stack(
        [
            (ds.score(x + h * e, 1e-2) - ds.score(x - h * e, 1e-2)) / (2 * h)
            for e in torch.eye(9, dtype=torch.float64)
        ],
        -1,
    )
    assert torch.isfinite(jac).all()
    assert (jac - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_acg_constant_is_the_root_that_scipy_finds():
    """The ACG envelope constant of the matrix Fisher sampler (fixed Newton steps) against
    scipy's brentq on sum_i 1 / (b + 2 lam_i) = 1, over eigenvalue spreads 1e-3..1e5."""
    from scipy.optimize import brentq

    from madbench.manifolds.matrix_fisher import _acg_b

    rng = np.random.default_rng(0)
    lam = rng.uniform(0, 1, (300, 4)) * 10.0 ** rng.uniform(-3, 5, (300, 1))
    lam[:, -1] = 0.0
    b = _acg_b(torch.from_numpy(lam)).numpy()
    ref = [brentq(lambda x, l=l: (1 / (x + 2 * l)).sum() - 1, 1.0, 4.0, xtol=1e-15) for l in lam]
    np.testing.assert_allclose(b, ref, rtol=1e-13, atol=0)
