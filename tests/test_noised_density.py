"""The exact noised densities log (p_data * N(0, sigma^2 I))(x) (``Dataset.log_prob_noised``),
the end point of every ambient likelihood, against independent computations: their gradient
(central differences) against the exact score, which is separate code; Monte Carlo over data
samples; and, for finite sets, the sum over every atom."""

from __future__ import annotations

import math

import pytest
import torch

from madbench.data import DATASETS, get_dataset

WITH_DENSITY = sorted(n for n in DATASETS if get_dataset(n).has_log_prob_noised)


def _points(ds, n: int, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = ds.sample(n, generator=g).double()
    return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)


def test_every_dataset_with_an_exact_score_has_its_noised_density():
    missing = [n for n in DATASETS if get_dataset(n).has_score and n not in WITH_DENSITY]
    assert missing == []


@pytest.mark.parametrize("name", WITH_DENSITY)
@pytest.mark.parametrize("sigma", [0.05, 0.5, 4.0])
def test_gradient_of_the_noised_density_is_the_exact_score(name, sigma):
    ds = get_dataset(name)
    x = _points(ds, 6, sigma, 0)
    h = 1e-6 * max(1.0, sigma)
    fd = torch.zeros_like(x)
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        fd[:, j] = (ds.log_prob_noised(x + e, sigma) - ds.log_prob_noised(x - e, sigma)) / (2 * h)
    score = ds.score(x, sigma).double()
    torch.testing.assert_close(fd, score, rtol=1e-5, atol=1e-5 * float(score.abs().max()))


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_noised_density_matches_monte_carlo_over_the_data(name):
    """log mean_i N(y; x_i, sigma^2 I) over 40 000 data samples, at a noise level where the
    estimator's relative standard error is small (reported and used as the tolerance)."""
    ds = get_dataset(name)
    sigma = 1.5
    x0 = ds.sample(40_000, generator=torch.Generator().manual_seed(1)).double()
    y = _points(ds, 8, sigma, 2)
    logw = -(torch.cdist(y, x0) ** 2) / (2 * sigma**2)
    lse = torch.logsumexp(logw, 1)
    w = torch.exp(logw - lse[:, None]) * x0.shape[0]
    se = w.std(1) / math.sqrt(x0.shape[0])
    d = y.shape[1]
    mc = lse - math.log(x0.shape[0]) - 0.5 * d * math.log(2 * math.pi * sigma**2)
    assert (se < 0.1).all()  # the estimate is informative
    assert ((ds.log_prob_noised(y, sigma) - mc).abs() <= 5 * se + 1e-9).all()


@pytest.mark.parametrize("name", ["toy", "onehot_zipf_10", "hypercube_product_10"])
def test_finite_noised_density_is_the_sum_over_every_atom(name):
    ds = get_dataset(name)
    man = ds.manifold
    atoms = man.all_atoms() if hasattr(man, "all_atoms") else ds.atoms
    atoms = atoms.double()
    lp = ds.log_prob(atoms).double()
    for sigma in (0.3, 1.0):
        y = _points(ds, 5, sigma, 3)
        d2 = torch.cdist(y, atoms) ** 2
        exact = torch.logsumexp(lp - d2 / (2 * sigma**2), 1) - 0.5 * y.shape[1] * math.log(
            2 * math.pi * sigma**2
        )
        torch.testing.assert_close(ds.log_prob_noised(y, sigma), exact, rtol=1e-12, atol=1e-12)
