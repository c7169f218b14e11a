"""Discrete datasets with exact log-probabilities and exact noisy scores (docs/science.md 2.1, 3).

``log_prob`` is w.r.t. the counting measure: log P(X = v) for v an atom, -inf off the atoms
(tolerance ``ATOL``). ``score(x, sigma)`` is the exact score of p_data * N(0, sigma^2 I_D).
Every parameter that is drawn at random is drawn once from a fixed seed, stated per dataset.

Registered: ``toy`` (MAD's two points), ``onehot_zipf_10``, ``onehot_random_20``,
``onehot_uniform_10``, ``hypercube_product_10``, ``hypercube_mixture_20``,
``hypercube_ising_10``, ``hypercube_uniform_10``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from madbench._utils import make_generator
from madbench.data.base import Dataset, register_dataset
from madbench.manifolds.base import Manifold
from madbench.manifolds.discrete import (
    DiscreteSet,
    Hypercube,
    OneHot,
    check_points,
    discrete_logits,
    discrete_score,
    hypercube_score,
    nearest_atom_index,
    sigma_sq64,
)

#: Points farther than this from every atom have log_prob -inf.
ATOL = 1e-4
COUNTING = "counting measure: log P(X = atom)"


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def log2cosh(z: Tensor) -> Tensor:
    """log(2 cosh z) = |z| + log1p(exp(-2|z|)), stable for any z."""
    a = z.abs()
    return a + torch.log1p(torch.exp(-2 * a))


class CategoricalDataset(Dataset):
    """A categorical law P(X = m_k) = p_k over explicit atoms (K, D) lying on ``manifold``."""

    log_prob_convention = COUNTING

    def __init__(self, name: str, manifold: Manifold, atoms: Tensor, probs: Tensor):
        super().__init__(name)
        atoms = torch.as_tensor(atoms, dtype=torch.float64)
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if atoms.ndim != 2 or atoms.shape[1] != manifold.ambient_dim:
            raise ValueError(f"atoms must be (K, {manifold.ambient_dim}), got {tuple(atoms.shape)}")
        if probs.shape != (atoms.shape[0],) or bool((probs < 0).any()):
            raise ValueError(f"probs must be non-negative of shape ({atoms.shape[0]},)")
        if abs(float(probs.sum()) - 1) > 1e-9:
            raise ValueError(f"probs must sum to 1, got {float(probs.sum())}")
        self.manifold, self.atoms, self.probs = manifold, atoms, probs
        self.log_probs = torch.log(probs)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dev = _device_of(generator)
        idx = torch.multinomial(self.probs.to(dev), n, replacement=True, generator=generator)
        return self.atoms.to(device=dev, dtype=torch.float32)[idx]

    def atom_index(self, x: Tensor) -> Tensor:
        """Index (n,) into ``atoms`` of the nearest atom (for TV/KL after rounding)."""
        return nearest_atom_index(x, self.atoms)

    def log_prob(self, x: Tensor) -> Tensor:
        idx = self.atom_index(x)
        m = self.atoms.to(device=x.device)[idx]
        on = (x.to(torch.float64) - m).norm(dim=-1) <= ATOL
        lp = self.log_probs.to(x.device)[idx]
        return torch.where(on, lp, -math.inf).to(x.dtype)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return discrete_score(x, sigma, self.atoms, self.log_probs)

    def log_prob_noised(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """log sum_k p_k N(x; m_k, sigma^2 I) w.r.t. Lebesgue measure on R^D, (n,) float64."""
        s2 = sigma_sq64(sigma, x)
        logits = discrete_logits(x, sigma, self.atoms, self.log_probs)
        sq = (x.to(torch.float64) ** 2).sum(-1, keepdim=True)  # logits omit -|x|^2 / (2 s^2)
        d = x.shape[1]
        return (torch.logsumexp(logits, -1, keepdim=True) - sq / (2 * s2)).squeeze(-1) - (
            0.5 * d * torch.log(2 * math.pi * s2.squeeze(-1))
        )


def _on_cube(x: Tensor) -> Tensor:
    return ((x.to(torch.float64).abs() - 1).abs() <= ATOL).all(-1)


class HypercubeMixture(Dataset):
    """Mixture of product laws on {-1,1}^d: p(v) = sum_c pi_c prod_i e^{h_ci v_i} / (2 cosh h_ci).

    With one component this is the product law (P(v_i = 1) = sigmoid(2 h_i)); with several the
    coordinates are correlated. Exact noisy score without enumerating the 2^d atoms: with
    a = x / sigma^2 the posterior over components is r_c ∝ pi_c prod_i cosh(a_i + h_ci)/cosh(h_ci)
    and s(x) = (sum_c r_c tanh(a + h_c) - x) / sigma^2.
    """

    log_prob_convention = COUNTING

    def __init__(self, name: str, fields: Tensor, mix: Tensor | None = None):
        super().__init__(name)
        h = torch.as_tensor(fields, dtype=torch.float64)
        h = h.unsqueeze(0) if h.ndim == 1 else h
        if h.ndim != 2 or not bool(torch.isfinite(h).all()):
            raise ValueError(f"fields must be finite of shape (C, d), got {tuple(h.shape)}")
        w = torch.ones(h.shape[0], dtype=torch.float64) if mix is None else torch.as_tensor(mix)
        w = w.to(torch.float64)
        if w.shape != (h.shape[0],) or bool((w <= 0).any()):
            raise ValueError(f"mix must be positive of shape ({h.shape[0]},)")
        self.fields, self.mix = h, w / w.sum()
        self.manifold = Hypercube(h.shape[1])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dev = _device_of(generator)
        comp = torch.multinomial(self.mix.to(dev), n, replacement=True, generator=generator)
        p_plus = torch.sigmoid(2 * self.fields.to(dev)[comp])
        u = torch.rand(p_plus.shape, generator=generator, device=dev, dtype=torch.float64)
        return torch.where(u < p_plus, 1.0, -1.0).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        check_points(x, self.manifold.d, f"{self.name}.log_prob")
        h = self.fields.to(x.device)
        v = torch.where(x >= 0, 1.0, -1.0).to(torch.float64)
        comp = torch.log(self.mix.to(x.device)) + v @ h.T - log2cosh(h).sum(-1)
        lp = torch.logsumexp(comp, dim=-1)
        return torch.where(_on_cube(x), lp, -math.inf).to(x.dtype)

    def log_prob_noised(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """log of p * N(0, sigma^2 I) at x w.r.t. Lebesgue measure on R^d, (n,) float64: with
        a = x / sigma^2, log sum_c pi_c prod_i cosh(a_i + h_ci) / cosh(h_ci)
        - (|x|^2 + d) / (2 sigma^2) - (d / 2) log(2 pi sigma^2) (derived as the score)."""
        check_points(x, self.manifold.d, f"{self.name}.log_prob_noised")
        s2 = sigma_sq64(sigma, x)
        x64, h = x.to(torch.float64), self.fields.to(x.device)
        z = (x64 / s2).unsqueeze(1) + h  # (n, C, d)
        comp = torch.log(self.mix.to(x.device)) + (log2cosh(z) - log2cosh(h)).sum(-1)
        d = x.shape[1]
        quad = ((x64**2).sum(-1) + d) / (2 * s2.squeeze(-1))
        return torch.logsumexp(comp, -1) - quad - 0.5 * d * torch.log(2 * math.pi * s2.squeeze(-1))

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        check_points(x, self.manifold.d, f"{self.name}.score")
        if self.fields.shape[0] == 1:
            return hypercube_score(x, sigma, self.fields[0])
        s2 = sigma_sq64(sigma, x)
        x64, h = x.to(torch.float64), self.fields.to(x.device)
        z = (x64 / s2).unsqueeze(1) + h  # (n, C, d)
        logits = torch.log(self.mix.to(x.device)) + (log2cosh(z) - log2cosh(h)).sum(-1)
        r = torch.softmax(logits, dim=-1).unsqueeze(-1)
        return (((r * torch.tanh(z)).sum(1) - x64) / s2).to(x.dtype)


def hypercube_mixture(name: str, d: int, n_components: int, seed: int) -> HypercubeMixture:
    """The seeded construction behind ``hypercube_mixture_*``: component c has a random sign
    pattern s_c in {-1,1}^d and fields h_ci = s_ci (0.5 + U(0,1)); weights pi_c ∝ 1 + U(0,1)."""
    g = make_generator(seed)
    signs = 2 * torch.randint(2, (n_components, d), generator=g, dtype=torch.float64) - 1
    fields = signs * (0.5 + torch.rand(n_components, d, generator=g, dtype=torch.float64))
    mix = 1 + torch.rand(n_components, generator=g, dtype=torch.float64)
    return HypercubeMixture(name, fields, mix)


def ising_ring(name: str, d: int, coupling: float, seed: int) -> CategoricalDataset:
    """Ising law on a ring, p(v) ∝ exp(J sum_i v_i v_{i+1 mod d} + sum_i h_i v_i), with fields
    h_i ~ U(-0.5, 0.5) (seeded); normalised by enumerating the 2^d vertices (d <= 16)."""
    if d > 16:
        raise ValueError(f"ising_ring enumerates 2^d atoms; need d <= 16, got {d}")
    cube = Hypercube(d)
    v = cube.all_atoms().to(torch.float64)
    h = torch.rand(d, generator=make_generator(seed), dtype=torch.float64) - 0.5
    energy = coupling * (v * v.roll(-1, dims=1)).sum(-1) + v @ h
    return CategoricalDataset(name, cube, v, torch.softmax(energy, dim=0))


def _toy() -> CategoricalDataset:
    """MAD's toy: P((-1, 0)) = 0.1, P((1, 0)) = 0.9 on DiscreteSet([[-1, 0], [1, 0]])."""
    m = DiscreteSet([[-1.0, 0.0], [1.0, 0.0]])
    return CategoricalDataset("toy", m, m.atoms, torch.tensor([0.1, 0.9], dtype=torch.float64))


def _onehot(name: str, probs: Tensor) -> CategoricalDataset:
    m = OneHot(probs.shape[0])
    return CategoricalDataset(name, m, m.atoms, probs / probs.sum())


register_dataset("toy")(_toy)


@register_dataset("onehot_zipf_10")
def _onehot_zipf_10() -> CategoricalDataset:
    """Zipf law p_k ∝ k^{-1.1}, k = 1..10, on the one-hot vertices of R^10."""
    return _onehot("onehot_zipf_10", torch.arange(1, 11, dtype=torch.float64) ** -1.1)


@register_dataset("onehot_random_20")
def _onehot_random_20() -> CategoricalDataset:
    """Dirichlet(1, ..., 1) categorical on K = 20 (normalised Exp(1) draws, seed 20)."""
    u = torch.rand(20, generator=make_generator(20), dtype=torch.float64)
    return _onehot("onehot_random_20", -torch.log1p(-u))


@register_dataset("onehot_uniform_10")
def _onehot_uniform_10() -> CategoricalDataset:
    return _onehot("onehot_uniform_10", torch.ones(10, dtype=torch.float64))


@register_dataset("hypercube_product_10")
def _hypercube_product_10() -> HypercubeMixture:
    """Independent coordinates on {-1,1}^10, fields h_i ~ U(-1, 1) (seed 10)."""
    h = 2 * torch.rand(10, generator=make_generator(10), dtype=torch.float64) - 1
    return HypercubeMixture("hypercube_product_10", h)


@register_dataset("hypercube_uniform_10")
def _hypercube_uniform_10() -> HypercubeMixture:
    return HypercubeMixture("hypercube_uniform_10", torch.zeros(10, dtype=torch.float64))


@register_dataset("hypercube_mixture_20")
def _hypercube_mixture_20() -> HypercubeMixture:
    """Correlated law on {-1,1}^20: 4 product components (seed 2020, see hypercube_mixture)."""
    return hypercube_mixture("hypercube_mixture_20", d=20, n_components=4, seed=2020)


@register_dataset("hypercube_ising_10")
def _hypercube_ising_10() -> CategoricalDataset:
    """Ising ring on {-1,1}^10 with coupling J = 0.4 and fields U(-0.5, 0.5) (seed 1010)."""
    return ising_ring("hypercube_ising_10", d=10, coupling=0.4, seed=1010)
