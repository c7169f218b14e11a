"""Sphere, circle and torus datasets: samplers, densities and exact noisy scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from madbench.data import get_dataset, list_datasets
from madbench.data.sphere import TETRAHEDRON, VMFMixture, sample_vmf

F64 = torch.float64
NAMES = [
    "sphere_uniform",
    "circle_uniform",
    "torus_uniform",
    "s2_vmf_single",
    "s2_vmf_mixture_4",
    "s2_vmf_mixture_sharp",
    "circle_vonmises",
    "torus_vonmises",
]


def _scipy_log_prob(ds, x: np.ndarray) -> np.ndarray:
    """Independent density w.r.t. area/length: scipy's vonmises_fisher (S^2) / vonmises (circle)."""
    if ds.manifold.ambient_dim == 2:
        mu = ds.mus.numpy()
        logs = [
            stats.vonmises(k, loc=math.atan2(m[1], m[0])).logpdf(np.arctan2(x[:, 1], x[:, 0]))
            for m, k in zip(mu, ds.kappas.numpy(), strict=True)
        ]
    else:
        logs = [
            stats.vonmises_fisher(m, k).logpdf(x)
            for m, k in zip(ds.mus.numpy(), ds.kappas.numpy(), strict=True)
        ]
    return special.logsumexp(np.stack(logs, -1) + np.log(ds.weights.numpy()), -1)


def test_registry_and_interface():
    assert set(NAMES) <= set(list_datasets())
    for name in NAMES:
        ds = get_dataset(name)
        assert ds.has_log_prob and ds.has_score and ds.log_prob_convention


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_normalised_and_uniform_values(name, gen):
    """E_U[p(X)] |M| = 1 by Monte Carlo over uniform points (and exact values for uniform laws)."""
    ds = get_dataset(name)
    u = ds.manifold.sample_uniform(400_000, gen).double()
    lp = ds.log_prob(u)
    dens = torch.exp(lp + ds.manifold.log_volume)
    se = dens.std() / math.sqrt(dens.numel())
    assert abs(dens.mean().item() - 1) < 5 * se.item() + 1e-12
    if "uniform" in name:
        assert torch.allclose(lp, torch.full_like(lp, -ds.manifold.log_volume))
    if name == "sphere_uniform":
        assert abs(lp[0].item() + math.log(4 * math.pi)) < 1e-12


@pytest.mark.parametrize(
    "name", ["s2_vmf_single", "s2_vmf_mixture_4", "s2_vmf_mixture_sharp", "circle_vonmises"]
)
def test_log_prob_vs_scipy(name, gen):
    ds = get_dataset(name)
    x = ds.manifold.project(ds.sample(2000, gen).double())
    ref = _scipy_log_prob(ds, x.numpy())
    assert np.max(np.abs(ds.log_prob(x).numpy() - ref)) < 1e-10


@pytest.mark.parametrize("p,kappa", [(2, 4.0), (3, 0.0), (3, 15.0), (3, 200.0), (4, 7.0), (3, 1e4)])
def test_wood_sampler_mean_resultant(p, kappa, gen):
    """E<mu, X> = A_p(kappa) (scipy ive), and the law of <mu, X> matches scipy's sampler (KS)."""
    mu = torch.zeros(p, dtype=F64)
    mu[-1] = 1.0
    n = 100_000
    x = sample_vmf(mu.expand(n, p), torch.full((n,), kappa, dtype=F64), gen)
    assert torch.allclose(x.norm(dim=-1), torch.ones(n, dtype=F64))
    c = (x @ mu).numpy()
    ref = special.ive(p / 2, kappa) / special.ive(p / 2 - 1, kappa) if kappa > 0 else 0.0
    assert abs(c.mean() - ref) < 5 * c.std() / math.sqrt(n)
    if 0 < kappa < 1e3:
        other = stats.vonmises_fisher(mu.numpy(), kappa).rvs(
            n, random_state=np.random.default_rng(0)
        )
        assert stats.ks_2samp(c, other @ mu.numpy()).pvalue > 1e-3
    # the tangent part is isotropic
    assert x[:, :-1].mean(0).abs().max() < 5 / math.sqrt(n)


def test_dataset_samples_and_seeding():
    ds = get_dataset("s2_vmf_mixture_4")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = ds.sample(1000, g1), ds.sample(1000, g2)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    # component frequencies: nearest tetrahedron vertex (kappa = 15 leaves ~1e-3 overlap)
    x = ds.sample(100_000, g1).double()
    counts = torch.bincount((x @ TETRAHEDRON.T).argmax(-1), minlength=4).double() / 1e5
    assert torch.allclose(counts, ds.weights, atol=0.01)
    tv = get_dataset("torus_vonmises")
    y = tv.sample(50_000, g1)
    ang = torch.atan2(y[:, 1::2], y[:, 0::2]).double().numpy()
    for i, (k, loc) in enumerate([(4.0, 0.0), (2.0, math.pi / 2)]):
        a = np.remainder(ang[:, i] - loc + np.pi, 2 * np.pi) - np.pi + loc  # scipy's support
        assert stats.kstest(a, stats.vonmises(k, loc=loc).cdf).pvalue > 1e-3


def _mc_score(ds, x, sigma, gen, n=200_000):
    """Posterior mean of y ~ p_data given x from uniform draws with importance weights p_data(y)."""
    y = ds.manifold.project(ds.manifold.sample_uniform(n, gen).double())
    logw = ds.log_prob(y)[None, :] - ((x[:, None, :] - y[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, -1)
    mean = w @ y
    se = ((w**2).unsqueeze(-1) * (y[None] - mean[:, None]) ** 2).sum(1).sqrt()
    # log p_sigma(x) by the same draws: log E_U[p(y) N(x; y, sigma^2)] + log |M| ... w.r.t. U
    d = x.shape[-1]
    log_norm = -d / 2 * math.log(2 * math.pi * sigma**2)
    log_dens = torch.logsumexp(logw, -1) - math.log(n) + ds.manifold.log_volume + log_norm
    ratio = torch.exp(logw - logw.max(-1, keepdim=True).values)
    log_se = ratio.std(-1) / (ratio.mean(-1) * math.sqrt(n))  # s.e. of the log of the mean
    return (mean - x) / sigma**2, se / sigma**2, log_dens, log_se


@pytest.mark.parametrize(
    "name",
    ["s2_vmf_single", "s2_vmf_mixture_4", "circle_vonmises", "torus_vonmises", "sphere_uniform"],
)
@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_score_and_noised_density_vs_monte_carlo(name, sigma, gen):
    ds = get_dataset(name)
    x0 = ds.sample(8, gen).double()
    x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=F64)
    ref, se, log_dens, log_se = _mc_score(ds, x, sigma, gen)
    assert torch.all(torch.abs(ds.score(x, sigma) - ref) <= 5 * se + 1e-12)
    assert torch.all(torch.abs(ds.log_prob_noised(x, sigma) - log_dens) <= 5 * log_se + 1e-12)


@pytest.mark.parametrize(
    "name", ["s2_vmf_mixture_4", "s2_vmf_mixture_sharp", "circle_vonmises", "torus_vonmises"]
)
@pytest.mark.parametrize("sigma", [1e-1, 1e-2, 1e-3, 1e-4])
def test_score_vs_finite_differences_of_noised_density(name, sigma, gen):
    ds = get_dataset(name)
    x0 = ds.manifold.project(ds.sample(16, gen).double())
    x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=F64)
    h = 1e-4 * sigma
    eye = torch.eye(x.shape[-1], dtype=F64)
    fd = torch.stack(
        [
            (ds.log_prob_noised(x + h * e, sigma) - ds.log_prob_noised(x - h * e, sigma)) / (2 * h)
            for e in eye
        ],
        -1,
    )
    sc = ds.score(x, sigma)
    assert torch.max((sc - fd).norm(dim=-1) / fd.norm(dim=-1)) < 1e-6


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_score_extremes(name, dtype, gen):
    """Finite for sigma in [1e-4, 1e2] and |x| up to 1e3; at |x| = 1e3, sigma = 1e-4 the posterior
    is a point mass at x/|x| per circle/sphere factor: s = (proj(x) - x) / sigma^2."""
    ds = get_dataset(name)
    x = ds.manifold.project(ds.sample(64, gen).double())
    for sigma in (1e-4, 1e-2, 1.0, 1e2):
        for scale in (1e-6, 0.5, 1.0, 1e3):
            sc = ds.score((x * scale).to(dtype), sigma)
            assert sc.dtype == dtype and torch.all(torch.isfinite(sc)), (sigma, scale)
            assert torch.all(torch.isfinite(ds.log_prob_noised((x * scale).to(dtype), sigma)))
    far = 1e3 * x
    limit = (ds.manifold.project(far) - far) / 1e-8
    assert torch.allclose(ds.score(far, 1e-4), limit, rtol=1e-9)
    if dtype == torch.float32:
        got = ds.score(far.float(), 1e-4).double()
        assert torch.allclose(got, limit, rtol=1e-5)


def test_uniform_scores_match_zero_kappa_mixture(gen):
    """sphere_uniform's score is the base score; the kappa = 0 mixture formula gives the same."""
    ds = get_dataset("sphere_uniform")
    mix = VMFMixture("k0", TETRAHEDRON[:2], torch.zeros(2), torch.ones(2))
    x = 1.3 * ds.sample(32, gen).double() + 0.1 * torch.randn(32, 3, generator=gen, dtype=F64)
    for sigma in (1e-3, 0.2, 5.0):
        assert torch.allclose(ds.score(x, sigma), mix.score(x, sigma), rtol=1e-10, atol=1e-10)


def test_bad_parameters():
    with pytest.raises(ValueError, match="unit"):
        VMFMixture("bad", torch.tensor([[1.0, 1.0, 0.0]]), [1.0], [1.0])
    with pytest.raises(ValueError, match="kappas"):
        VMFMixture("bad", torch.tensor([[1.0, 0.0, 0.0]]), [-1.0], [1.0])
    with pytest.raises(ValueError, match="sigma"):
        get_dataset("s2_vmf_mixture_4").score(torch.ones(2, 3), 0.0)
