"""Discrete sets and datasets: base and exact noisy scores against independent computations.

References: (a) Monte Carlo posterior means E[x0 | x] by self-normalised importance sampling with
>= 1e5 prior draws (Tweedie: s = (E[x0|x] - x) / sigma^2), tolerance 5 standard errors;
(b) central finite differences of log sum_k w_k N(x; m_k, sigma^2 I) computed with
scipy.special.logsumexp in float64 numpy; (c) closed forms of docs/science.md 2.1; (d) brute-force
enumeration in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, logsumexp

from madbench.data import get_dataset
from madbench.data.discrete import CategoricalDataset, HypercubeMixture, hypercube_mixture
from madbench.manifolds import DiscreteSet, Hypercube, OneHot
from madbench.manifolds.discrete import discrete_score, nearest_atom_index

DISCRETE_DATASETS = [
    "toy",
    "onehot_zipf_10",
    "onehot_random_20",
    "onehot_uniform_10",
    "hypercube_product_10",
    "hypercube_uniform_10",
    "hypercube_mixture_20",
    "hypercube_ising_10",
]


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def random_set() -> DiscreteSet:
    g = _gen(7)
    atoms = torch.randn(7, 3, generator=g, dtype=torch.float64)
    weights = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    return DiscreteSet(atoms, weights)


# ---------------------------------------------------------------- independent numpy references


def np_log_density(x: np.ndarray, sigma: float, atoms: np.ndarray, w: np.ndarray) -> np.ndarray:
    """log sum_k w_k N(x; m_k, sigma^2 I), float64, shape (n,)."""
    d2 = ((x[:, None, :] - atoms[None]) ** 2).sum(-1)
    D = x.shape[1]
    return logsumexp(np.log(w) - d2 / (2 * sigma**2), axis=1) - 0.5 * D * np.log(
        2 * np.pi * sigma**2
    )


def np_mixture_log_density(x: np.ndarray, sigma: float, mix: np.ndarray, fields: np.ndarray):
    """log sum_c pi_c prod_i [q_ci N(x_i; 1, s^2) + (1 - q_ci) N(x_i; -1, s^2)], q = sigmoid(2h)."""
    q = expit(2 * fields)[None]  # (1, C, d)
    lp = -((x[:, None, :] - 1) ** 2) / (2 * sigma**2) + np.log(q)
    lm = -((x[:, None, :] + 1) ** 2) / (2 * sigma**2) + np.log1p(-q)
    per = np.logaddexp(lp, lm).sum(-1) - 0.5 * x.shape[1] * np.log(2 * np.pi * sigma**2)
    return logsumexp(np.log(mix)[None] + per, axis=1)


def fd_grad(f, x: np.ndarray, h: float) -> np.ndarray:
    """Central differences of f: (n, D) -> (n,), per coordinate."""
    g = np.zeros_like(x)
    for i in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[i] = h
        g[:, i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def is_score(x: np.ndarray, sigma: float, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Self-normalised importance sampling of (E[x0 | x] - x) / sigma^2 from prior draws x0.

    Returns (estimate (q, D), delta-method standard error (q, D), minimum effective sample size).
    """
    logw = -((x[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    mean = w @ x0
    var = np.einsum("qn,qnd->qd", w**2, (x0[None] - mean[:, None]) ** 2)
    ess = float((1 / (w**2).sum(1)).min())
    return (mean - x) / sigma**2, np.sqrt(var) / sigma**2, ess


def noisy_queries(x0: torch.Tensor, sigma: float, q: int, seed: int) -> np.ndarray:
    g = _gen(seed)
    idx = torch.randint(x0.shape[0], (q,), generator=g)
    z = torch.randn(q, x0.shape[1], generator=g, dtype=torch.float64)
    return (x0[idx].double() + sigma * z).numpy()


# ---------------------------------------------------------------- closed forms of SCIENCE 2.1


@pytest.mark.parametrize("sigma", [1e-2, 0.1, 0.5, 1.0, 3.0])
def test_toy_tanh_closed_form(sigma: float) -> None:
    x = torch.randn(200, 2, generator=_gen(1), dtype=torch.float64) * 2
    s2 = sigma**2
    base = torch.stack([(torch.tanh(x[:, 0] / s2) - x[:, 0]) / s2, -x[:, 1] / s2], -1)
    true = torch.stack(
        [(torch.tanh(x[:, 0] / s2 + 0.5 * math.log(9.0)) - x[:, 0]) / s2, -x[:, 1] / s2], -1
    )
    got_base = DiscreteSet([[-1, 0], [1, 0]]).base_score(x, sigma)
    got_true = get_dataset("toy").score(x, sigma)
    torch.testing.assert_close(got_base, base, rtol=1e-12, atol=1e-12 / s2)
    torch.testing.assert_close(got_true, true, rtol=1e-12, atol=1e-12 / s2)


@pytest.mark.parametrize("sigma", [1e-3, 0.1, 0.7, 5.0])
def test_hypercube_and_onehot_forms_match_softmax_over_atoms(sigma: float) -> None:
    """tanh (Hypercube) and softmax(x / s^2) (OneHot) forms vs the general softmax over atoms."""
    cube, oh = Hypercube(4), OneHot(5)
    x = torch.randn(300, 4, generator=_gen(2), dtype=torch.float64) * 1.5
    ref = DiscreteSet(cube.all_atoms()).base_score(x, sigma)
    torch.testing.assert_close(cube.base_score(x, sigma), ref, rtol=1e-9, atol=1e-9 / sigma**2)
    y = torch.randn(300, 5, generator=_gen(3), dtype=torch.float64)
    ref = DiscreteSet(torch.eye(5)).base_score(y, sigma)
    torch.testing.assert_close(oh.base_score(y, sigma), ref, rtol=1e-9, atol=1e-9 / sigma**2)


# ---------------------------------------------------------------- finite differences


def _fd_cases():
    """(name, score function, numpy log density(x, sigma), prior sampler) per case."""
    ds = random_set()
    cases = {
        "discrete_set_base": (
            ds.base_score,
            lambda x, s: np_log_density(x, s, ds.atoms.numpy(), ds.weights.numpy()),
            ds.sample_base,
        ),
        "hypercube_base": (
            Hypercube(5).base_score,
            lambda x, s: np_log_density(x, s, Hypercube(5).all_atoms().double().numpy(), 1 / 32),
            Hypercube(5).sample_uniform,
        ),
        "onehot_base": (
            OneHot(6).base_score,
            lambda x, s: np_log_density(x, s, np.eye(6), np.full(6, 1 / 6)),
            OneHot(6).sample_uniform,
        ),
    }
    for name in DISCRETE_DATASETS:
        d = get_dataset(name)
        if isinstance(d, CategoricalDataset):
            ref = lambda x, s, d=d: np_log_density(x, s, d.atoms.numpy(), d.probs.numpy())
        else:
            ref = lambda x, s, d=d: np_mixture_log_density(x, s, d.mix.numpy(), d.fields.numpy())
        cases[name] = (d.score, ref, d.sample)
    return cases


FD_CASES = _fd_cases()


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.1, 0.5])
@pytest.mark.parametrize("case", sorted(FD_CASES))
def test_score_matches_finite_differences(case: str, sigma: float) -> None:
    score, log_density, sampler = FD_CASES[case]
    x0 = sampler(6, _gen(4)).double()
    x = x0 + sigma * torch.randn(x0.shape, generator=_gen(5), dtype=torch.float64)
    # also points between atoms, where the posterior is split
    x = torch.cat([x, 0.5 * (x0 + x0.roll(1, 0))])
    fd = fd_grad(lambda y: log_density(y, sigma), x.numpy(), h=1e-5 * sigma)
    got = score(x, sigma).numpy()
    err = np.abs(got - fd).max() / np.abs(fd).max()
    assert err < 1e-6, f"{case}: max relative error {err:.2e} vs finite differences"


# ---------------------------------------------------------------- Monte Carlo posterior means


def _mc_cases():
    ds = random_set()
    cases = {
        "discrete_set_base": (ds.base_score, ds.sample_base, 0.6),
        "hypercube_base": (Hypercube(6).base_score, Hypercube(6).sample_uniform, 1.0),
        "onehot_base": (OneHot(8).base_score, OneHot(8).sample_uniform, 0.5),
    }
    sig = {"hypercube_mixture_20": 1.8, "hypercube_product_10": 1.2, "hypercube_ising_10": 1.2}
    sig["hypercube_uniform_10"] = 1.2
    for name in DISCRETE_DATASETS:
        d = get_dataset(name)
        cases[name] = (d.score, d.sample, sig.get(name, 0.6))
    return cases


MC_CASES = _mc_cases()


@pytest.mark.parametrize("case", sorted(MC_CASES))
def test_score_matches_monte_carlo_posterior_mean(case: str) -> None:
    score, sampler, sigma = MC_CASES[case]
    x0 = sampler(200_000, _gen(6)).double()
    x = noisy_queries(x0, sigma, 6, seed=8)
    est, se, ess = is_score(x, sigma, x0.numpy())
    assert ess > 300, f"{case}: effective sample size {ess:.0f} too small for the test"
    got = score(torch.from_numpy(x), sigma).numpy()
    z = np.abs(got - est) / (se + 1e-12)
    assert z.max() < 5, f"{case}: |score - MC| up to {z.max():.1f} standard errors"


# ---------------------------------------------------------------- hypercube mixture, brute force


def _brute_force_mixture(d: HypercubeMixture) -> tuple[np.ndarray, np.ndarray]:
    """All 2^d vertices and their probabilities, by explicit products in numpy."""
    n = d.manifold.d
    v = np.array([[1 if (k >> i) & 1 else -1 for i in range(n)] for k in range(2**n)], float)
    q = expit(2 * d.fields.numpy())  # P(v_i = +1) per component
    per = np.where(v[:, None, :] > 0, q[None], 1 - q[None]).prod(-1)  # (2^n, C)
    return v, per @ d.mix.numpy()


def test_hypercube_mixture_matches_enumeration_d6() -> None:
    d6 = hypercube_mixture("m6", d=6, n_components=4, seed=2020)
    atoms, p = _brute_force_mixture(d6)
    assert abs(p.sum() - 1) < 1e-12
    lp = d6.log_prob(torch.from_numpy(atoms)).numpy()
    np.testing.assert_allclose(lp, np.log(p), rtol=0, atol=1e-12)
    x = torch.randn(400, 6, generator=_gen(9), dtype=torch.float64) * 2
    for sigma in [1e-3, 0.05, 0.3, 1.0, 10.0]:
        d2 = ((x.numpy()[:, None] - atoms[None]) ** 2).sum(-1)
        logits = np.log(p) - d2 / (2 * sigma**2)
        post = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
        ref = (post @ atoms - x.numpy()) / sigma**2
        got = d6.score(x, sigma).numpy()
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < 1e-10, f"sigma={sigma}: relative error {err:.2e} vs enumeration"


def test_hypercube_mixture_sampler_and_log_prob_d6() -> None:
    d6 = hypercube_mixture("m6", d=6, n_components=4, seed=2020)
    _, p = _brute_force_mixture(d6)
    n = 200_000
    idx = d6.manifold.nearest_atom_index(d6.sample(n, _gen(10)))
    freq = np.bincount(idx.numpy(), minlength=64) / n
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) < 5 * se + 1e-9)


def test_hypercube_mixture_20_log_prob_vs_product_formula() -> None:
    d = get_dataset("hypercube_mixture_20")
    v = d.sample(500, _gen(11)).double()
    q = expit(2 * d.fields.numpy())
    per = np.where(v.numpy()[:, None, :] > 0, q[None], 1 - q[None])
    ref = logsumexp(np.log(d.mix.numpy()) + np.log(per).sum(-1), axis=1)
    np.testing.assert_allclose(d.log_prob(v).numpy(), ref, rtol=0, atol=1e-10)
    assert torch.isneginf(d.log_prob(v + 0.01)).all()


# ---------------------------------------------------------------- categorical datasets


def test_named_laws() -> None:
    np.testing.assert_allclose(get_dataset("toy").probs.numpy(), [0.1, 0.9], atol=1e-15)
    zipf = np.arange(1, 11) ** -1.1
    np.testing.assert_allclose(get_dataset("onehot_zipf_10").probs, zipf / zipf.sum(), 1e-13)
    ising = get_dataset("hypercube_ising_10")
    v, lp = ising.atoms.numpy(), ising.log_probs.numpy()
    # log-ratios equal energy differences J sum v_i v_{i+1} + h.v: fit h from single flips
    e = 0.4 * (v * np.roll(v, -1, axis=1)).sum(1)
    resid = lp - e  # = h.v + const, linear in v
    A = np.c_[v, np.ones(len(v))]
    coef = np.linalg.lstsq(A, resid, rcond=None)[0]
    np.testing.assert_allclose(A @ coef, resid, atol=1e-10)
    assert np.all(np.abs(coef[:-1]) <= 0.5)


@pytest.mark.parametrize("name", DISCRETE_DATASETS)
def test_sampler_frequencies_and_log_prob(name: str) -> None:
    d = get_dataset(name)
    n = 100_000
    x = d.sample(n, _gen(12))
    assert x.shape == (n, d.manifold.ambient_dim) and x.dtype == torch.float32
    assert torch.equal(d.sample(500, _gen(12)), d.sample(500, _gen(12)))  # seeded
    assert not torch.equal(d.sample(500, _gen(12)), d.sample(500, _gen(13)))
    assert torch.all(d.manifold.distance_to_manifold(x) == 0)
    lp = d.log_prob(x[:2000]).double()
    assert torch.isfinite(lp).all()
    if isinstance(d, CategoricalDataset):
        assert abs(torch.logsumexp(d.log_probs, 0).item()) < 1e-12
        freq = torch.bincount(d.atom_index(x), minlength=len(d.probs)).double() / n
        p = d.probs
        assert torch.all((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt() + 1e-9)
        torch.testing.assert_close(d.log_prob(d.atoms), d.log_probs)
    else:  # product / mixture: per-coordinate marginals
        p1 = (d.mix[:, None] * torch.sigmoid(2 * d.fields)).sum(0)
        freq = (x > 0).double().mean(0)
        assert torch.all((freq - p1).abs() < 5 * (p1 * (1 - p1) / n).sqrt())
    assert torch.isneginf(d.log_prob(x[:10] + 0.3)).all()


# ---------------------------------------------------------------- geometry


def test_projection_and_nearest_atom() -> None:
    ds = random_set()
    x = torch.randn(500, 3, generator=_gen(13), dtype=torch.float64) * 3
    d = torch.cdist(x, ds.atoms)
    assert torch.equal(ds.nearest_atom_index(x), d.argmin(1))
    torch.testing.assert_close(ds.distance_to_manifold(x), d.min(1).values)
    cube = Hypercube(5)
    y = torch.randn(500, 5, generator=_gen(14), dtype=torch.float64)
    y[0] = 0.0
    torch.testing.assert_close(cube.project(y)[0], torch.ones(5, dtype=torch.float64))
    brute = torch.cdist(y, cube.all_atoms().double())
    assert torch.equal(cube.nearest_atom_index(y[1:]), brute[1:].argmin(1))
    torch.testing.assert_close(cube.distance_to_manifold(y[1:]), brute[1:].min(1).values)
    torch.testing.assert_close(
        cube.atoms_from_index(cube.nearest_atom_index(y)).double(), cube.project(y)
    )
    oh = OneHot(4)
    z = torch.randn(500, 4, generator=_gen(15))
    torch.testing.assert_close(
        oh.distance_to_manifold(z), torch.cdist(z, torch.eye(4)).min(1).values
    )
    assert torch.equal(nearest_atom_index(z, torch.eye(4)), oh.nearest_atom_index(z))


@pytest.mark.parametrize("m", [random_set(), Hypercube(3), OneHot(5)], ids=repr)
def test_sample_uniform_is_counting_law(m) -> None:
    n = 60_000
    x = m.sample_uniform(n, _gen(16))
    assert x.dtype == torch.float32 and torch.all(m.distance_to_manifold(x) == 0)
    idx = m.nearest_atom_index(x)
    k = int(idx.max()) + 1 if not isinstance(m, DiscreteSet) else m.n_atoms
    freq = torch.bincount(idx, minlength=k).double() / n
    assert torch.all((freq - 1 / k).abs() < 5 * math.sqrt((1 / k) * (1 - 1 / k) / n))


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        DiscreteSet([[0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="weights"):
        DiscreteSet([[0.0], [1.0]], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="shape"):
        Hypercube(3).base_score(torch.zeros(4, 2), 0.1)
    with pytest.raises(ValueError, match="positive"):
        OneHot(3).base_score(torch.zeros(4, 3), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        Hypercube(2).base_score(torch.zeros(4, 2), torch.ones(3))
    with pytest.raises(ValueError, match="log_weights"):
        discrete_score(torch.zeros(2, 2), 0.1, torch.eye(2), torch.zeros(3))
    with pytest.raises(ValueError):
        Hypercube(0)


# ---------------------------------------------------------------- finiteness over the range


def _all_scores():
    out = {
        "toy_base": DiscreteSet([[-1, 0], [1, 0]]).base_score,
        "set_base": random_set().base_score,
        "cube_base": Hypercube(5).base_score,
        "onehot_base": OneHot(6).base_score,
    }
    out.update({n: get_dataset(n).score for n in DISCRETE_DATASETS})
    return out


SCORES = _all_scores()
DIMS = {"toy_base": 2, "set_base": 3, "cube_base": 5, "onehot_base": 6}


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(sorted(SCORES)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    log_sigma=st.floats(-4, 2),
    radius=st.one_of(st.just(0.0), st.just(1e3), st.floats(0, 1e3)),
    seed=st.integers(0, 2**16),
)
def test_scores_finite_and_stable(name, dtype, log_sigma, radius, seed) -> None:
    score = SCORES[name]
    D = DIMS.get(name) or get_dataset(name).manifold.ambient_dim
    sigma = 10.0**log_sigma
    u = torch.randn(16, D, generator=_gen(seed), dtype=torch.float64)
    x = (radius * u / u.norm(dim=1, keepdim=True)).to(dtype)
    s = score(x, sigma)
    assert s.dtype == dtype and s.shape == x.shape
    assert torch.isfinite(s).all(), f"{name}: non-finite score at sigma={sigma}, |x|={radius}"
    # float32 only rounds the float64 result computed from the same inputs; below float32's
    # normal range (|s| < 1.2e-38, e.g. |x| ~ 1e-42) it has no relative precision left, only
    # absolute steps of its subnormals
    s64 = score(x.double(), sigma)
    f32 = dtype == torch.float32
    torch.testing.assert_close(
        s.double(),
        s64,
        rtol=2e-7 if f32 else 1e-12,
        atol=torch.finfo(torch.float32).tiny if f32 else 0,
    )
    # per-row sigma gives the same as a scalar sigma
    torch.testing.assert_close(score(x, torch.full((16,), sigma, dtype=dtype)), s)


def _gap_sq(m, x: torch.Tensor) -> torch.Tensor:
    """Second-nearest minus nearest squared distance to the atoms of m, per row (float64)."""
    x = x.double()
    if isinstance(m, Hypercube):
        return 4 * x.abs().min(1).values  # flip the least certain coordinate
    atoms = m.atoms if isinstance(m, DiscreteSet | OneHot) else m.all_atoms()
    d2 = torch.cdist(x, atoms.double()).square().sort(1).values
    return d2[:, 1] - d2[:, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(SCORES))
def test_small_sigma_limit_is_nearest_atom(name: str, dtype: torch.dtype) -> None:
    """Where the nearest atom wins the posterior by > 200 nats, s = (proj(x) - x) / sigma^2."""
    m = (
        get_dataset(name).manifold
        if name in DISCRETE_DATASETS
        else {
            "toy_base": DiscreteSet([[-1, 0], [1, 0]]),
            "set_base": random_set(),
            "cube_base": Hypercube(5),
            "onehot_base": OneHot(6),
        }[name]
    )
    D = m.ambient_dim
    u = torch.randn(64, D, generator=_gen(17), dtype=torch.float64)
    r = torch.tensor([0.3, 1.0, 10.0, 1e3], dtype=torch.float64).repeat(16)[:, None]
    x = (r * u / u.norm(dim=1, keepdim=True)).to(dtype)
    for sigma in [1e-4, 1e-3, 1e-2]:
        keep = _gap_sq(m, x) / (2 * sigma**2) > 200
        assert keep.sum() > 10
        xk = x[keep]
        s = SCORES[name](xk, sigma).double()
        lim = (m.project(xk.double()) - xk.double()) / sigma**2
        torch.testing.assert_close(s, lim, rtol=1e-6, atol=1e-6 / sigma)
