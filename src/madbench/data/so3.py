"""Laws on SO(3) (points: 3x3 rotations flattened row-major to R^9), docs/science.md 2.3 and 3.

Convention of every ``log_prob`` here: density w.r.t. the Riemannian volume of the Frobenius
metric tr(A^T B) (the volume of :class:`~madbench.manifolds.SO3`, 8 pi^2 2^{3/2}). Add
``LOG_DENSITY_SHIFT`` = 1.5 log 2 for the published convention (metric tr(A^T B)/2, vol 8 pi^2).

Matrix Fisher mixtures sum_k w_k MF(F_k) (density exp(tr(F_k^T R)) / c(F_k) w.r.t. normalised
Haar) have an exact noisy law (derived, docs/science.md 2.3): with G_k = F_k + X / sigma^2,

    p_sigma(X) = (2 pi sigma^2)^{-9/2} e^{-(|X|^2 + 3) / (2 sigma^2)} sum_k w_k c(G_k) / c(F_k),
    score(X) = (sum_k pi_k E_{MF(G_k)}[R] - X) / sigma^2,  pi_k prop. to w_k c(G_k) / c(F_k).

Wrapped normal mixtures (RSGM protocol, De Bortoli et al. 2022, ``datasets/simple.py::Wrapped``):
M components with equal weights, Haar means mu_k, precisions lambda_k ~ Gamma(shape 100, rate 1),
samples mu_k Exp(hat(phi)), phi ~ N(0, I_3 / lambda_k) a rotation vector (radians; a standard
normal tangent vector of the metric tr(A^T B)/2 scaled by lambda_k^{-1/2}). Exact density
w.r.t. normalised Haar, theta the angle of mu_k^T R, s_k = lambda_k^{-1/2} (derived: sum over
all preimages |phi| = |theta + 2 pi j| of Exp, Haar Jacobian 2 (1 - cos|phi|) / |phi|^2 / (8 pi^2)):

    p_k(R) = 4 pi^2 / (1 - cos theta) sum_j (theta + 2 pi j)^2 N_3-radial,
    N_3-radial = (2 pi s_k^2)^{-3/2} exp(-(theta + 2 pi j)^2 / (2 s_k^2)),  |j| <= 2.

The j != 0 images (weight e^{-2 pi^2 / s^2} ~ e^{-2000} here) make p_k infinite exactly at
theta = 0; theta is clamped at 1e-12, where they are still below float64 resolution. No
closed-form noisy score exists for these mixtures (``score`` is not provided).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from madbench._utils import as_sigma, make_generator
from madbench.data.base import Dataset, register_dataset
from madbench.manifolds._rotations import angle_so3, exp_so3, quaternion_to_matrix
from madbench.manifolds.matrix_fisher import (
    log_normaliser,
    log_normaliser_and_mean,
    sample_matrix_fisher,
)
from madbench.manifolds.so3 import LOG_VOLUME_FROBENIUS, SO3

__all__ = ["MatrixFisherMixture", "SO3Uniform", "WrappedNormalMixture", "haar_rotations"]

CONVENTION = "Riemannian volume of the Frobenius metric (vol SO(3) = 8 pi^2 2^{3/2})"


def haar_rotations(k: int, seed: int) -> Tensor:
    """k Haar rotations (k, 3, 3), float64, from normalised Gaussian quaternions (seeded)."""
    g = make_generator(seed)
    return quaternion_to_matrix(torch.randn(k, 4, generator=g, dtype=torch.float64))


def _check_points(x: Tensor) -> Tensor:
    if x.ndim != 2 or x.shape[-1] != 9:
        raise ValueError(f"x must have shape (n, 9), got {tuple(x.shape)}")
    return x.double().reshape(-1, 3, 3)


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class SO3Uniform(Dataset):
    """Haar law: log_prob = -log vol (Frobenius), score = ``SO3().base_score``."""

    log_prob_convention = CONVENTION

    def __init__(self, name: str = "so3_uniform"):
        super().__init__(name)
        self.manifold = SO3()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.manifold.sample_uniform(n, generator)

    def log_prob(self, x: Tensor) -> Tensor:
        _check_points(x)
        return torch.full(x.shape[:1], -LOG_VOLUME_FROBENIUS, dtype=x.dtype, device=x.device)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return self.manifold.base_score(x, sigma)

    def log_prob_noised(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """log of Haar * N(0, sigma^2 I_9) at x w.r.t. Lebesgue measure on R^9, (n,) float64:
        log c(X / sigma^2) - (|X|^2 + 3) / (2 sigma^2) - (9/2) log(2 pi sigma^2)."""
        xm = _check_points(x)
        s2 = as_sigma(sigma, x).double().squeeze(-1) ** 2
        log_c = log_normaliser(xm / s2[:, None, None])
        sq = (xm.reshape(-1, 9) ** 2).sum(-1)
        return log_c - (sq + 3) / (2 * s2) - 4.5 * torch.log(2 * math.pi * s2)


class MatrixFisherMixture(Dataset):
    """sum_k w_k MF(F_k) with exact sampler, density and noisy score (module docstring)."""

    log_prob_convention = CONVENTION

    def __init__(self, name: str, f: Tensor, weights: Tensor):
        super().__init__(name)
        f = torch.as_tensor(f, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if f.ndim != 3 or f.shape[1:] != (3, 3) or f.shape[0] != weights.shape[0]:
            raise ValueError("F must have shape (K, 3, 3) and weights shape (K,)")
        if torch.any(weights <= 0):
            raise ValueError("mixture weights must be > 0")
        self.manifold = SO3()
        self.f = f
        self.weights = weights / weights.sum()
        self.log_c = log_normaliser(f)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws (component by multinomial, then Bingham/ACG rejection), float32."""
        dev = _device(generator)
        comp = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        return sample_matrix_fisher(self.f.to(dev)[comp], generator).reshape(n, 9).float()

    def log_prob(self, x: Tensor) -> Tensor:
        """log sum_k w_k exp(tr(F_k^T R) - log c(F_k)) - log vol_F."""
        r = _check_points(x)
        f, log_c, w = self.f.to(x.device), self.log_c.to(x.device), self.weights.to(x.device)
        tr = torch.einsum("kij,nij->nk", f, r)
        return (torch.logsumexp(w.log() + tr - log_c, -1) - LOG_VOLUME_FROBENIUS).to(x.dtype)

    def _noised(self, x: Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]:
        xm = _check_points(x)
        n, k = xm.shape[0], self.f.shape[0]
        s2 = as_sigma(sigma, x).double() ** 2  # (n, 1)
        if not torch.all(s2 > 0):
            raise ValueError("sigma must be > 0")
        g = self.f.to(x.device)[None] + xm[:, None] / s2[:, :, None, None]  # (n, K, 3, 3)
        log_cg, means = log_normaliser_and_mean(g.reshape(n * k, 3, 3))
        means = means.reshape(n, k, 9)
        log_terms = self.weights.to(x.device).log() + log_cg.reshape(n, k) - self.log_c.to(x.device)
        sq = (xm.reshape(n, 9) ** 2).sum(-1)
        sig2 = s2.squeeze(-1)
        log_p = (
            torch.logsumexp(log_terms, -1) - (sq + 3) / (2 * sig2)
            - 4.5 * torch.log(2 * math.pi * sig2)
        )  # fmt: skip
        post = torch.softmax(log_terms, -1)
        score = ((post[..., None] * means).sum(1) - xm.reshape(n, 9)) / s2
        return log_p, score

    def log_prob_noised(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """log (p_data * N(0, sigma^2 I_9))(x) w.r.t. Lebesgue measure on R^9, (n,) float64."""
        return self._noised(x, sigma)[0]

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return self._noised(x, sigma)[1].to(x.dtype)


class WrappedNormalMixture(Dataset):
    """Equal-weight mixture of wrapped normals mu_k Exp(N(0, s_k^2 I_3)) (RSGM protocol)."""

    log_prob_convention = CONVENTION

    def __init__(self, name: str, means: Tensor, scales: Tensor):
        super().__init__(name)
        means = torch.as_tensor(means, dtype=torch.float64)
        scales = torch.as_tensor(scales, dtype=torch.float64).reshape(-1)
        if means.ndim != 3 or means.shape[1:] != (3, 3) or means.shape[0] != scales.shape[0]:
            raise ValueError("means must have shape (K, 3, 3) and scales shape (K,)")
        if torch.any(scales <= 0):
            raise ValueError("scales must be > 0")
        self.manifold = SO3()
        self.means, self.scales = means, scales

    @classmethod
    def rsgm(cls, name: str, k: int, seed: int = 0, shape: float = 100.0):
        """Haar means and precisions ~ Gamma(shape, 1), both from ``seed``."""
        precision = np.random.default_rng(seed).gamma(shape, 1.0, size=k)
        return cls(name, haar_rotations(k, seed), torch.as_tensor(precision) ** -0.5)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dev = _device(generator)
        k = self.scales.shape[0]
        comp = torch.randint(k, (n,), generator=generator, device=dev)
        phi = torch.randn(n, 3, generator=generator, device=dev, dtype=torch.float64)
        phi = phi * self.scales.to(dev)[comp, None]
        return (self.means.to(dev)[comp] @ exp_so3(phi)).reshape(n, 9).float()

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact wrapped-normal mixture density (module docstring) w.r.t. the Frobenius volume."""
        r = _check_points(x)
        mu, s = self.means.to(x.device), self.scales.to(x.device)
        theta = angle_so3(mu[None].transpose(-1, -2) @ r[:, None]).clamp(min=1e-12)  # (n, K)
        j = torch.arange(-2, 3, dtype=torch.float64, device=x.device)
        th_j = (theta[..., None] + 2 * math.pi * j).abs()  # (n, K, 5)
        s2 = (s * s)[None, :, None]
        log_img = torch.logsumexp(2 * torch.log(th_j) - th_j**2 / (2 * s2), -1)
        log_1mc = math.log(2.0) + 2 * torch.log(torch.sin(theta / 2))
        log_pk = math.log(4 * math.pi**2) - log_1mc + log_img - 1.5 * torch.log(2 * math.pi * s * s)
        k = s.shape[0]
        return (torch.logsumexp(log_pk, -1) - math.log(k) - LOG_VOLUME_FROBENIUS).to(x.dtype)


# ----------------------------------------------------------------------------- registry
@register_dataset("so3_uniform")
def _so3_uniform() -> Dataset:
    return SO3Uniform("so3_uniform")


@register_dataset("so3_mf_mixture_3")
def _so3_mf_mixture_3() -> Dataset:
    """Three isotropic components F_k = 20 mu_k (mu_k Haar, seed 3), weights 0.5/0.3/0.2."""
    f = 20.0 * haar_rotations(3, seed=3)
    return MatrixFisherMixture("so3_mf_mixture_3", f, torch.tensor([0.5, 0.3, 0.2]))


@register_dataset("so3_mf_mixture_6")
def _so3_mf_mixture_6() -> Dataset:
    """Six anisotropic components F_k = mu_k Q_k diag(40, 20, 5) Q_k^T (mode mu_k; mu_k, Q_k
    Haar, seed 6), equal weights."""
    rot = haar_rotations(12, seed=6)
    mu, q = rot[:6], rot[6:]
    f = mu @ q @ torch.diag(torch.tensor([40.0, 20.0, 5.0], dtype=torch.float64)) @ q.mT
    return MatrixFisherMixture("so3_mf_mixture_6", f, torch.ones(6))


@register_dataset("so3_mf_mixture_sharp")
def _so3_mf_mixture_sharp() -> Dataset:
    """Four sharp isotropic components F_k = 200 mu_k (seed 4), weights 0.4/0.3/0.2/0.1."""
    f = 200.0 * haar_rotations(4, seed=4)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    return MatrixFisherMixture("so3_mf_mixture_sharp", f, weights)


def _wrapped(k: int):
    def factory() -> Dataset:
        return WrappedNormalMixture.rsgm(f"so3_wrapped_{k}", k, seed=0)

    factory.__doc__ = f"RSGM protocol with M = {k} wrapped normals (seed 0)."
    return factory


for _k in (16, 32, 64):
    register_dataset(f"so3_wrapped_{_k}")(_wrapped(_k))
