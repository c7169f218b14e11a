"""Finite sets in R^D: any atoms, the hypercube {-1,1}^d and the one-hot simplex vertices.

For a law sum_k w_k delta_{m_k} noised by N(0, sigma^2 I_D) the score is exact
(docs/science.md 2.1):

    s(x) = ( sum_k softmax_k( log w_k - |x - m_k|^2 / (2 sigma^2) ) m_k  -  x ) / sigma^2

so MAD's base score (w uniform, or the ``weights`` of a :class:`DiscreteSet`) and the score of
every discrete dataset are one function, :func:`discrete_score`. The logits are formed in float64
as log w_k + (<x, m_k> - |m_k|^2 / 2) / sigma^2 (the shared -|x|^2 / (2 sigma^2) cancels in the
softmax, and softmax subtracts the row maximum), so they stay finite and accurate for sigma in
[1e-4, 1e2] and |x| up to 1e3; results are returned in the dtype of x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from madbench._utils import as_sigma
from madbench.manifolds.base import Manifold

#: Row blocks of discrete_score / nearest_atom_index hold at most this many (point, atom) pairs.
CHUNK_ENTRIES = 2**22


def check_points(x: Tensor, ambient_dim: int, who: str) -> None:
    """Raise ValueError unless x is a floating tensor of shape (n, ambient_dim)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"{who}: x must be a floating-point tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != ambient_dim:
        raise ValueError(f"{who}: x must have shape (n, {ambient_dim}), got {tuple(x.shape)}")


def sigma_sq64(sigma: float | Tensor, x: Tensor) -> Tensor:
    """sigma^2 as a float64 tensor of shape (n, 1) on x's device; sigma must be finite and > 0."""
    s = as_sigma(torch.as_tensor(sigma, dtype=torch.float64, device=x.device), x[:, :0].double())
    if not bool(torch.all(torch.isfinite(s) & (s > 0))):
        raise ValueError("sigma must be finite and strictly positive")
    return s * s


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def discrete_logits(x: Tensor, sigma: float | Tensor, atoms: Tensor, log_weights: Tensor) -> Tensor:
    """Posterior logits log w_k - |x - m_k|^2 / (2 sigma^2) + c(x), float64, shape (n, K).

    x (n, D), atoms (K, D), log_weights (K,) (may hold -inf for atoms of weight 0).
    """
    return _logits(x.to(torch.float64), sigma_sq64(sigma, x), atoms, log_weights)


def _logits(x64: Tensor, s2: Tensor, atoms: Tensor, log_weights: Tensor) -> Tensor:
    m = atoms.to(device=x64.device, dtype=torch.float64)
    lw = log_weights.to(device=x64.device, dtype=torch.float64)
    return lw + (x64 @ m.T - 0.5 * (m * m).sum(-1)) / s2


def _row_chunks(n: int, k: int) -> list[slice]:
    """Row blocks holding at most ~2^22 entries of an (n, k) matrix."""
    step = max(1, CHUNK_ENTRIES // max(k, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)] or [slice(0, 0)]


def discrete_score(x: Tensor, sigma: float | Tensor, atoms: Tensor, log_weights: Tensor) -> Tensor:
    """Exact score of sum_k w_k N(m_k, sigma^2 I) at x: (E[m | x] - x) / sigma^2, shape (n, D).

    x (n, D); atoms (K, D); log_weights (K,), normalised or not (only differences matter);
    sigma a float or (n,). Computed in float64 (row blocks of ~2^22 logits) and returned in
    x's dtype.
    """
    check_points(x, atoms.shape[1], "discrete_score")
    if log_weights.shape != (atoms.shape[0],):
        raise ValueError(
            f"log_weights must have shape ({atoms.shape[0]},), got {tuple(log_weights.shape)}"
        )
    x64, s2 = x.to(torch.float64), sigma_sq64(sigma, x)
    m = atoms.to(device=x.device, dtype=torch.float64)
    means = [
        torch.softmax(_logits(x64[b], s2[b], m, log_weights), dim=-1) @ m
        for b in _row_chunks(x.shape[0], m.shape[0])
    ]
    return ((torch.cat(means) - x64) / s2).to(x.dtype)


def nearest_atom_index(x: Tensor, atoms: Tensor) -> Tensor:
    """Index (n,) int64 of the atom nearest to each row of x (ties: the lowest index)."""
    check_points(x, atoms.shape[1], "nearest_atom_index")
    m = atoms.to(device=x.device, dtype=torch.float64)
    x64, half_sq = x.to(torch.float64), 0.5 * (m * m).sum(-1)
    blocks = _row_chunks(x.shape[0], m.shape[0])
    return torch.cat([torch.argmax(x64[b] @ m.T - half_sq, dim=-1) for b in blocks])


def hypercube_score(x: Tensor, sigma: float | Tensor, fields: Tensor | None = None) -> Tensor:
    """Exact score of a product law on {-1,1}^d noised by N(0, sigma^2 I), shape (n, d).

    The law is p(v) = prod_i exp(h_i v_i) / (2 cosh h_i) (so P(v_i = 1) = sigmoid(2 h_i)), with
    fields h (d,) or (n, d) (None: uniform). Then
    s_i(x) = (tanh(x_i / sigma^2 + h_i) - x_i) / sigma^2.
    """
    s2 = sigma_sq64(sigma, x)
    x64 = x.to(torch.float64)
    a = x64 / s2
    if fields is not None:
        a = a + fields.to(device=x.device, dtype=torch.float64)
    return ((torch.tanh(a) - x64) / s2).to(x.dtype)


class FiniteSet(Manifold):
    """Base of the finite sets (dim 0): log densities w.r.t. counting measure."""

    dim = 0
    kind = "discrete"
    volume_convention = "counting measure"


class DiscreteSet(FiniteSet):
    """A finite set {m_1..m_K} in R^D with a base law w (default uniform); dim 0.

    ``base_score`` uses the base law w (MAD's p_base); ``sample_uniform`` draws the normalised
    counting law (uniform over atoms) and ``sample_base`` draws w.
    """

    def __init__(self, atoms: Tensor | list, weights: Tensor | list | None = None):
        a = torch.as_tensor(atoms, dtype=torch.float64)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"atoms must have shape (K, D) with K, D >= 1, got {tuple(a.shape)}")
        if not bool(torch.isfinite(a).all()):
            raise ValueError("atoms must be finite")
        if torch.unique(a, dim=0).shape[0] < a.shape[0]:
            raise ValueError("atoms must be distinct (found a repeated atom)")
        self.atoms, self.ambient_dim = a, a.shape[1]
        if weights is None:
            w = torch.full((a.shape[0],), 1.0 / a.shape[0], dtype=torch.float64)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (a.shape[0],):
                raise ValueError(f"weights must have shape ({a.shape[0]},), got {tuple(w.shape)}")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ValueError("weights must be finite, non-negative and not all zero")
            w = w / w.sum()
        self.weights, self.log_weights = w, torch.log(w)

    @property
    def n_atoms(self) -> int:
        return self.atoms.shape[0]

    def nearest_atom_index(self, x: Tensor) -> Tensor:
        """Index (n,) of the nearest atom (ties: lowest index)."""
        return nearest_atom_index(x, self.atoms)

    def project(self, x: Tensor) -> Tensor:
        idx = self.nearest_atom_index(x)
        return self.atoms.to(device=x.device, dtype=x.dtype)[idx]

    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(self.n_atoms, (n,), generator=generator, device=_device_of(generator))
        return self.atoms.to(device=idx.device, dtype=torch.float32)[idx]

    def sample_base(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of the base law w (float32)."""
        dev = _device_of(generator)
        idx = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        return self.atoms.to(device=dev, dtype=torch.float32)[idx]

    def base_score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return discrete_score(x, sigma, self.atoms, self.log_weights)

    def __repr__(self) -> str:
        return f"DiscreteSet(K={self.n_atoms}, ambient_dim={self.ambient_dim})"


class Hypercube(FiniteSet):
    """The vertices {-1,1}^d in R^d with the uniform (counting) law; dim 0.

    ``project`` rounds by sign with sign(0) = +1. Atom index of v: sum_i [v_i = +1] 2^i.
    """

    def __init__(self, d: int):
        if int(d) != d or d < 1:
            raise ValueError(f"Hypercube needs an integer d >= 1, got {d!r}")
        self.ambient_dim = self.d = int(d)

    def project(self, x: Tensor) -> Tensor:
        check_points(x, self.d, "Hypercube.project")
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    def nearest_atom_index(self, x: Tensor) -> Tensor:
        """Integer code (n,) int64 of the nearest vertex: sum_i [x_i >= 0] 2^i (d <= 62)."""
        if self.d > 62:
            raise ValueError(f"atom indices need d <= 62, got d = {self.d}")
        check_points(x, self.d, "Hypercube.nearest_atom_index")
        powers = 2 ** torch.arange(self.d, device=x.device, dtype=torch.int64)
        return ((x >= 0).to(torch.int64) * powers).sum(-1)

    def atoms_from_index(self, idx: Tensor) -> Tensor:
        """Inverse of ``nearest_atom_index``: vertices (n, d) float32."""
        bits = (idx.unsqueeze(-1) >> torch.arange(self.d, device=idx.device)) & 1
        return (2 * bits - 1).to(torch.float32)

    def all_atoms(self) -> Tensor:
        """All 2^d vertices (2^d, d) float32, ordered by index; only for d <= 20."""
        if self.d > 20:
            raise ValueError(f"refusing to enumerate 2^{self.d} vertices (d <= 20)")
        return self.atoms_from_index(torch.arange(2**self.d))

    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        bits = torch.randint(2, (n, self.d), generator=generator, device=_device_of(generator))
        return (2 * bits - 1).to(torch.float32)

    def base_score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """s_base,i(x) = (tanh(x_i / sigma^2) - x_i) / sigma^2 (factorises over coordinates)."""
        check_points(x, self.d, "Hypercube.base_score")
        return hypercube_score(x, sigma)


class OneHot(FiniteSet):
    """The K one-hot vertices e_1..e_K of the simplex in R^K with the uniform law; dim 0.

    ``project`` is one_hot(argmax x) (ties: lowest index).
    """

    def __init__(self, K: int):
        if int(K) != K or K < 2:
            raise ValueError(f"OneHot needs an integer K >= 2, got {K!r}")
        self.ambient_dim = self.K = int(K)

    @property
    def atoms(self) -> Tensor:
        return torch.eye(self.K, dtype=torch.float64)

    def nearest_atom_index(self, x: Tensor) -> Tensor:
        check_points(x, self.K, "OneHot.nearest_atom_index")
        return torch.argmax(x, dim=-1)

    def project(self, x: Tensor) -> Tensor:
        return F.one_hot(self.nearest_atom_index(x), self.K).to(x.dtype)

    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(self.K, (n,), generator=generator, device=_device_of(generator))
        return F.one_hot(idx, self.K).to(torch.float32)

    def base_score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """s_base(x) = (softmax(x / sigma^2) - x) / sigma^2."""
        check_points(x, self.K, "OneHot.base_score")
        s2 = sigma_sq64(sigma, x)
        x64 = x.to(torch.float64)
        return ((torch.softmax(x64 / s2, dim=-1) - x64) / s2).to(x.dtype)
