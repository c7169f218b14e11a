"""Laws on spheres and tori: exact samplers, densities and noisy scores (docs/science.md 2.2, 3).

Densities (``log_prob``) are w.r.t. the Riemannian volume of the embedded manifold: length on
the circle (total 2 pi), area on S^2 (total 4 pi), product length on T^n (total (2 pi)^n).
``log_prob_noised`` is the log density of p_data * N(0, sigma^2 I) w.r.t. Lebesgue measure on
the ambient R^p, and ``score`` its gradient, both exact.

von Mises-Fisher mixture sum_j w_j vMF(mu_j, k_j) on S^{p-1}, density w.r.t. the uniform
probability U: f = sum_j w_j exp(k_j <mu_j, y>) / M_p(k_j), M_p(k) = E_U exp(k <mu, Y>). Noised,

    p_sigma(x) = (2 pi sigma^2)^{-p/2} e^{-(|x|^2 + 1)/(2 sigma^2)} sum_j w_j M_p(|v_j|) / M_p(k_j),
    v_j = k_j mu_j + x / sigma^2,

and the score is (sum_j pi_j A_p(|v_j|) v_j / |v_j| - x) / sigma^2 with posterior weights
pi_j ∝ w_j M_p(|v_j|) / M_p(k_j). Evaluated in float64 in log space with
|v_j| - |x|/sigma^2 = (2 k_j <mu_j, x>/sigma^2 + k_j^2) / (|v_j| + |x|/sigma^2), so that nothing
cancels at sigma = 1e-4 and |x| = 1e3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from madbench._utils import as_sigma
from madbench.data.base import Dataset, register_dataset
from madbench.manifolds._bessel import (
    log_vmf_normaliser,
    log_vmf_normaliser_scaled,
    vmf_mean_resultant,
)
from madbench.manifolds.sphere import Sphere
from madbench.manifolds.torus import Torus

__all__ = ["TorusVonMises", "VMFMixture", "sample_vmf", "vmf_mixture_noised"]


def sample_vmf(mu: Tensor, kappa: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One vMF(mu_i, kappa_i) draw per row by Wood's (1994) rejection algorithm, float64 (m, p).

    mu: (m, p) unit vectors, kappa: (m,) >= 0. Beta((p-1)/2, (p-1)/2) variates are built from
    chi-square ratios of Gaussians so that the generator seeds everything.
    """
    mu, kappa = mu.double(), kappa.double()
    m, p = mu.shape
    dev = mu.device
    b = (p - 1) / (2 * kappa + torch.sqrt(4 * kappa**2 + (p - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (p - 1) * torch.log1p(-x0 * x0)
    one_minus_w = torch.zeros(m, dtype=torch.float64, device=dev)
    todo = torch.arange(m, device=dev)
    while todo.numel() > 0:
        k = todo.numel()
        g = torch.randn(k, 2, p - 1, generator=generator, device=dev, dtype=torch.float64)
        g2 = (g * g).sum(-1)
        z = g2[:, 0] / g2.sum(-1)
        u = torch.rand(k, generator=generator, device=dev, dtype=torch.float64)
        bb, xx = b[todo], x0[todo]
        den = 1 - (1 - bb) * z
        omw = 2 * bb * z / den  # 1 - w, exact form (w = (1 - (1+b) z) / (1 - (1-b) z))
        w = 1 - omw
        acc = kappa[todo] * w + (p - 1) * torch.log1p(-xx * w) - c[todo] >= torch.log(u)
        one_minus_w[todo[acc]] = omw[acc]
        todo = todo[~acc]
    g = torch.randn(m, p, generator=generator, device=dev, dtype=torch.float64)
    v = g - (g * mu).sum(-1, keepdim=True) * mu
    v = v / v.norm(dim=-1, keepdim=True)
    w = 1 - one_minus_w
    return w.unsqueeze(-1) * mu + torch.sqrt(one_minus_w * (2 - one_minus_w)).unsqueeze(-1) * v


def vmf_mixture_noised(
    x: Tensor, sigma: float | Tensor, mus: Tensor, kappas: Tensor, log_w: Tensor
) -> tuple[Tensor, Tensor]:
    """(log p_sigma(x), score) of the noised vMF mixture (see module doc), float64 (n,), (n, p)."""
    xd = x.double()
    s2 = as_sigma(sigma, xd) ** 2
    if not torch.all(s2 > 0):
        raise ValueError("sigma must be > 0")
    p = xd.shape[-1]
    mus, kappas, log_w = mus.double(), kappas.double(), log_w.double()
    r0 = xd.norm(dim=-1, keepdim=True) / s2  # (n, 1)
    v = kappas[:, None] * mus + (xd / s2).unsqueeze(1)  # (n, K, p)
    r = v.norm(dim=-1)  # (n, K)
    num = 2 * kappas * (xd @ mus.T) / s2 + kappas**2
    dr = num / torch.clamp(r + r0, min=1e-300)  # |v_j| - |x|/sigma^2
    log_terms = log_w - log_vmf_normaliser(p, kappas) + dr + log_vmf_normaliser_scaled(p, r)
    sigma2 = s2.squeeze(-1)
    dist2 = (xd.norm(dim=-1) - 1) ** 2
    log_p = (
        torch.logsumexp(log_terms, -1)
        - dist2 / (2 * sigma2)
        - p / 2 * torch.log(2 * math.pi * sigma2)
    )
    post = torch.softmax(log_terms, -1)
    a = vmf_mean_resultant(p, r)
    unit = v / torch.clamp(r, min=1e-300).unsqueeze(-1)
    mean = ((post * a).unsqueeze(-1) * unit).sum(1)  # E[y | x]
    return log_p, (mean - xd) / s2


class VMFMixture(Dataset):
    """sum_j w_j vMF(mu_j, kappa_j) on S^{p-1}; ``kappa_j = 0`` gives the uniform law."""

    def __init__(self, name: str, mus: Tensor, kappas: Tensor, weights: Tensor):
        super().__init__(name)
        mus = torch.as_tensor(mus, dtype=torch.float64)
        kappas = torch.as_tensor(kappas, dtype=torch.float64).reshape(-1)
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if mus.ndim != 2 or mus.shape[0] != kappas.shape[0] or mus.shape[0] != weights.shape[0]:
            raise ValueError("mus (K, p), kappas (K,) and weights (K,) must agree in K")
        if torch.any(kappas < 0) or torch.any(weights <= 0):
            raise ValueError("kappas must be >= 0 and weights > 0")
        if not torch.allclose(mus.norm(dim=-1), torch.ones(mus.shape[0], dtype=torch.float64)):
            raise ValueError("vMF means must be unit vectors")
        self.mus, self.kappas = mus, kappas
        self.weights = weights / weights.sum()
        self.manifold = Sphere(mus.shape[1] - 1)
        vol = {1: "length (vol S^1 = 2 pi)", 2: "area (vol S^2 = 4 pi)"}
        self.log_prob_convention = vol.get(self.manifold.dim, f"area of S^{self.manifold.dim}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws (component by multinomial, then Wood's algorithm), float32."""
        dev = generator.device if generator is not None else torch.device("cpu")
        comp = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        mus, kappas = self.mus.to(dev)[comp], self.kappas.to(dev)[comp]
        return sample_vmf(mus, kappas, generator).float()

    def log_prob(self, x: Tensor) -> Tensor:
        """log sum_j w_j exp(k_j <mu_j, x>) / M_p(k_j) - log |S^{p-1}| (w.r.t. the area)."""
        p = self.mus.shape[1]
        mus, kappas = self.mus.to(x.device), self.kappas.to(x.device)
        lt = (
            self.weights.to(x.device).log()
            + kappas * (x.double() @ mus.T)
            - log_vmf_normaliser(p, kappas)
        )
        return (torch.logsumexp(lt, -1) - self.manifold.log_volume).to(x.dtype)

    def _noised(self, x: Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]:
        d = x.device
        lw = self.weights.to(d).log()
        return vmf_mixture_noised(x, sigma, self.mus.to(d), self.kappas.to(d), lw)

    def log_prob_noised(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """log (p_data * N(0, sigma^2 I))(x) w.r.t. Lebesgue measure on R^p, (n,) float64."""
        return self._noised(x, sigma)[0]

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return self._noised(x, sigma)[1].to(x.dtype)


class SphereUniform(VMFMixture):
    """Uniform law on S^d: log_prob = -log |S^d|, score = the MAD base score."""

    def __init__(self, name: str, dim: int):
        e1 = torch.zeros(1, dim + 1, dtype=torch.float64)
        e1[0, 0] = 1.0
        super().__init__(name, e1, torch.zeros(1), torch.ones(1))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.manifold.sample_uniform(n, generator)

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.full(x.shape[:1], -self.manifold.log_volume, dtype=x.dtype, device=x.device)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return self.manifold.base_score(x, sigma)


class TorusVonMises(Dataset):
    """Product of von Mises laws vM(a_i, kappa_i) on the n circles of ``Torus(n)``."""

    def __init__(self, name: str, mean_angles: list[float], kappas: list[float]):
        super().__init__(name)
        if len(mean_angles) != len(kappas):
            raise ValueError("mean_angles and kappas must have the same length")
        self.manifold = Torus(len(kappas))
        self.log_prob_convention = f"product length (vol T^{len(kappas)} = (2 pi)^{len(kappas)})"
        self.circles = [
            VMFMixture(f"{name}[{i}]", torch.tensor([[math.cos(a), math.sin(a)]]), [k], [1.0])
            for i, (a, k) in enumerate(zip(mean_angles, kappas, strict=True))
        ]

    def _pairs(self, x: Tensor) -> list[Tensor]:
        if x.ndim != 2 or x.shape[-1] != self.manifold.ambient_dim:
            raise ValueError(f"x must have shape (N, {self.manifold.ambient_dim})")
        return [x[:, 2 * i : 2 * i + 2] for i in range(len(self.circles))]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.cat([c.sample(n, generator) for c in self.circles], -1)

    def log_prob(self, x: Tensor) -> Tensor:
        """sum_i log vM(x_i) w.r.t. the product length measure."""
        return sum(c.log_prob(xi) for c, xi in zip(self.circles, self._pairs(x), strict=True))

    def log_prob_noised(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        pairs = self._pairs(x)
        return sum(c.log_prob_noised(xi, sigma) for c, xi in zip(self.circles, pairs, strict=True))

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        pairs = self._pairs(x)
        return torch.cat(
            [c.score(xi, sigma) for c, xi in zip(self.circles, pairs, strict=True)], -1
        )


class TorusUniform(TorusVonMises):
    """Uniform law on T^n: log_prob = -n log 2 pi, score = Torus(n).base_score."""

    def __init__(self, name: str, n: int):
        super().__init__(name, [0.0] * n, [0.0] * n)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.manifold.sample_uniform(n, generator)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return self.manifold.base_score(x, sigma)


#: Means of the S^2 mixtures: the vertices of a regular tetrahedron; weights 0.4, 0.3, 0.2, 0.1.
TETRAHEDRON = torch.tensor(
    [[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], dtype=torch.float64
) / math.sqrt(3.0)
MIXTURE_WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)


@register_dataset("sphere_uniform")
def _sphere_uniform() -> Dataset:
    return SphereUniform("sphere_uniform", 2)


@register_dataset("circle_uniform")
def _circle_uniform() -> Dataset:
    return SphereUniform("circle_uniform", 1)


@register_dataset("torus_uniform")
def _torus_uniform() -> Dataset:
    return TorusUniform("torus_uniform", 2)


@register_dataset("s2_vmf_single")
def _s2_vmf_single() -> Dataset:
    """vMF(e_3, 15) on S^2."""
    return VMFMixture("s2_vmf_single", torch.tensor([[0.0, 0.0, 1.0]]), [15.0], [1.0])


@register_dataset("s2_vmf_mixture_4")
def _s2_vmf_mixture_4() -> Dataset:
    """Four vMF(kappa = 15) at the tetrahedron vertices, weights 0.4/0.3/0.2/0.1."""
    return VMFMixture("s2_vmf_mixture_4", TETRAHEDRON, torch.full((4,), 15.0), MIXTURE_WEIGHTS)


@register_dataset("s2_vmf_mixture_sharp")
def _s2_vmf_mixture_sharp() -> Dataset:
    """As ``s2_vmf_mixture_4`` with kappa = 200."""
    return VMFMixture("s2_vmf_mixture_sharp", TETRAHEDRON, torch.full((4,), 200.0), MIXTURE_WEIGHTS)


@register_dataset("circle_vonmises")
def _circle_vonmises() -> Dataset:
    """von Mises(kappa = 4) with its mode at angle 0, i.e. at (1, 0): the rate-separation law."""
    return VMFMixture("circle_vonmises", torch.tensor([[1.0, 0.0]]), [4.0], [1.0])


@register_dataset("torus_vonmises")
def _torus_vonmises() -> Dataset:
    """Product vM(0, 4) x vM(pi/2, 2) on Torus(2)."""
    return TorusVonMises("torus_vonmises", [0.0, math.pi / 2], [4.0, 2.0])
