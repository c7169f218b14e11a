"""Abstract manifold interface shared by every embedded manifold and finite set.

Conventions
-----------
* Points are tensors of shape (n, ambient_dim); SO(3) points are 3x3 matrices flattened
  row-major to 9 numbers.
* ``sigma`` is a float or a tensor of shape (n,); the ambient noise is N(0, sigma^2 I_D).
* ``base_score(x, sigma)`` is the score of the uniform law on M (Haar, surface or counting
  measure) convolved with N(0, sigma^2 I_D), evaluated at ambient points x.
* The Riemannian metric is the one induced by the ambient Euclidean (Frobenius) inner product.
  Heat kernels and log densities on M are w.r.t. its Riemannian volume measure, of total mass
  exp(``log_volume``); Brownian motion has generator Laplace-Beltrami / 2 in that metric.
* What evaluation reports is stated by the class: ``kind`` (which metrics apply),
  ``volume_convention`` and ``log_density_shift`` (reported log density = computed one + shift;
  SO(3) reports w.r.t. <A,B> = tr(A^T B)/2), ``metric_cdist`` (the distance of the
  distributional metrics) and ``family`` (the results table of its datasets).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from madbench._utils import check_all
from madbench.manifolds._distances import euclidean_cdist


class Manifold(ABC):
    """A subset M of R^D with a uniform law and the MAD base score."""

    ambient_dim: int
    dim: int  # intrinsic dimension; 0 for finite sets
    #: what evaluation treats M as: "discrete", "sphere", "torus" or "so3"
    kind: ClassVar[str]
    #: reference measure of the reported log densities (the ``nll`` of metrics.json)
    volume_convention: ClassVar[str]
    #: reported log density = log density w.r.t. the ambient-induced volume + this (nats)
    log_density_shift: ClassVar[float] = 0.0

    @property
    def codim(self) -> int:
        return self.ambient_dim - self.dim

    @property
    def family(self) -> str:
        """The results table of datasets on M (``kind`` unless the class says otherwise)."""
        return self.kind

    def metric_cdist(self, x: Tensor, y: Tensor) -> Tensor:
        """Pairwise distances (n, m), float64, for the distributional metrics (MMD kernel, OT
        cost): the geodesic distance of the reported convention; Euclidean for finite sets."""
        return euclidean_cdist(x, y)

    @abstractmethod
    def project(self, x: Tensor) -> Tensor:
        """Nearest point of M to each row of x, shape (n, D)."""

    def distance_to_manifold(self, x: Tensor) -> Tensor:
        """Euclidean distance of each row of x to M, shape (n,)."""
        return (x - self.project(x)).norm(dim=-1)

    @abstractmethod
    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n points from the uniform law on M (float32, on the generator's device)."""

    @abstractmethod
    def base_score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """MAD's s_base: score of Uniform(M) * N(0, sigma^2 I) at x, shape (n, D)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ambient_dim={self.ambient_dim}, dim={self.dim})"


class RiemannianManifold(Manifold):
    """A compact embedded Riemannian manifold with the geometry RSGM needs."""

    @property
    @abstractmethod
    def log_volume(self) -> float:
        """log of the Riemannian volume of M (metric stated by the subclass)."""

    @abstractmethod
    def geodesic_distance(self, x: Tensor, y: Tensor) -> Tensor:
        """Geodesic distance between rows of x and y, shape (n,)."""

    @abstractmethod
    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        """Exponential map at x of the tangent vector v (both (n, D))."""

    @abstractmethod
    def log(self, x: Tensor, y: Tensor) -> Tensor:
        """Riemannian logarithm: the tangent vector at x pointing to y, (n, D)."""

    @abstractmethod
    def to_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """Orthogonal projection of the ambient vector v onto the tangent space at x ∈ M."""

    @abstractmethod
    def heat_kernel_log_prob(self, x: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(x | x0) of Brownian motion (generator Laplace-Beltrami / 2), shape (n,)."""

    @abstractmethod
    def heat_kernel_score(self, x: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """Riemannian gradient in x of log p_t(x | x0), a tangent vector at x, (n, D)."""

    @abstractmethod
    def sample_heat_kernel(
        self, x0: Tensor, t: float | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """One draw of Brownian motion at time t started at each row of x0."""

    def random_walk(
        self,
        x0: Tensor,
        t: float | Tensor,
        n_steps: int = 100,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Geodesic random walk approximation of Brownian motion at time t from x0.

        x_{k+1} = exp(x_k, sqrt(dt) * P_{x_k} z_k), z_k ~ N(0, I_D), dt = t / n_steps, which
        has generator Laplace-Beltrami / 2 in the ambient-induced metric.
        """
        x = x0
        tt = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
        dt = (tt / n_steps).reshape(-1, 1) if tt.ndim else tt / n_steps
        for _ in range(n_steps):
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = self.exp(x, torch.sqrt(dt) * self.to_tangent(x, z))
        return x


def as_heat_time(t: float | Tensor, n: int, device: torch.device) -> Tensor:
    """Heat-kernel time t (a float or shape (n,)) as a float64 tensor (n,), checked > 0."""
    tt = torch.as_tensor(t, dtype=torch.float64, device=device)
    if tt.ndim == 0:
        tt = tt.expand(n)
    tt = tt.reshape(-1)
    if tt.shape != (n,):
        raise ValueError(f"t must be a float or have shape ({n},), got {tuple(tt.shape)}")
    check_all(tt > 0, "heat-kernel time t must be > 0")
    return tt
