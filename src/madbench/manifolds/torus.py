"""The flat torus T^n = (S^1)^n embedded in R^(2n) as (cos a1, sin a1, ..., cos an, sin an).

Each pair of coordinates is a unit circle; the metric is the product of the circles' induced
metrics, so the volume is (2 pi)^n, geodesic distance is sqrt(sum_i theta_i^2), and the base
score, exp/log, heat kernel (a product of wrapped normals) and its score all factorise over the
circles. Every method reshapes (N, 2n) -> (N n, 2) and defers to ``Sphere(1)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from madbench._utils import as_sigma
from madbench.manifolds._distances import torus_geodesic_cdist
from madbench.manifolds.base import RiemannianManifold, as_heat_time
from madbench.manifolds.sphere import Sphere

_CIRCLE = Sphere(1)


class Torus(RiemannianManifold):
    """Product of ``n`` unit circles in R^(2n)."""

    kind = "torus"
    volume_convention = "product of arc-length measures (vol = (2 pi)^n)"

    def __init__(self, n: int):
        if int(n) != n or n < 1:
            raise ValueError(f"Torus needs an integer number of circles n >= 1, got {n}")
        self.n = int(n)
        self.dim = self.n
        self.ambient_dim = 2 * self.n

    def __repr__(self) -> str:
        return f"Torus({self.n})"

    @property
    def log_volume(self) -> float:
        """n log(2 pi)."""
        return self.n * math.log(2.0 * math.pi)

    def metric_cdist(self, x: Tensor, y: Tensor) -> Tensor:
        """Flat-torus geodesic distances sqrt(sum_i angle_i^2) (radians)."""
        return torus_geodesic_cdist(x, y)

    def _split(self, x: Tensor, name: str = "x") -> Tensor:
        if x.ndim != 2 or x.shape[-1] != self.ambient_dim:
            raise ValueError(
                f"{name} must have shape (N, {self.ambient_dim}), got {tuple(x.shape)}"
            )
        return x.reshape(-1, 2)

    def _join(self, y: Tensor) -> Tensor:
        return y.reshape(-1, self.ambient_dim)

    def _per_circle(self, v: Tensor) -> Tensor:
        """Repeat a per-point quantity (N,) or (N, 1) for each of the n circles: (N n,)."""
        return v.reshape(-1).repeat_interleave(self.n)

    def angles(self, x: Tensor) -> Tensor:
        """The n angles a_i = atan2(x_{2i+1}, x_{2i}) in (-pi, pi], shape (N, n)."""
        y = self._split(x)
        return torch.atan2(y[:, 1], y[:, 0]).reshape(-1, self.n)

    def from_angles(self, a: Tensor) -> Tensor:
        """(N, n) angles -> (N, 2n) points."""
        return torch.stack([torch.cos(a), torch.sin(a)], -1).reshape(a.shape[0], -1)

    def project(self, x: Tensor) -> Tensor:
        """Each coordinate pair normalised (a zero pair maps to (1, 0))."""
        return self._join(_CIRCLE.project(self._split(x)))

    def distance_to_manifold(self, x: Tensor) -> Tensor:
        """sqrt(sum_i (|x_i| - 1)^2) over the n coordinate pairs."""
        r = self._split(x).norm(dim=-1).reshape(-1, self.n)
        return (r - 1.0).norm(dim=-1)

    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Independent uniform angles, float32, on the generator's device."""
        device = generator.device if generator is not None else torch.device("cpu")
        a = 2.0 * math.pi * torch.rand(n, self.n, generator=generator, device=device)
        return self.from_angles(a)

    def base_score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Per circle (I_1/I_0(k_i) x_i/|x_i| - x_i)/sigma^2, k_i = |x_i|/sigma^2, concatenated."""
        sig = as_sigma(sigma, x)
        return self._join(_CIRCLE.base_score(self._split(x), self._per_circle(sig)))

    def geodesic_distance(self, x: Tensor, y: Tensor) -> Tensor:
        """sqrt(sum_i theta_i^2), theta_i the angle between the i-th circle coordinates."""
        th = _CIRCLE.geodesic_distance(self._split(x), self._split(y, "y"))
        return th.reshape(-1, self.n).norm(dim=-1)

    def to_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        return self._join(_CIRCLE.to_tangent(self._split(x), self._split(v, "v")))

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        return self._join(_CIRCLE.exp(self._split(x), self._split(v, "v")))

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        return self._join(_CIRCLE.log(self._split(x), self._split(y, "y")))

    def heat_kernel_log_prob(self, x: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        """sum_i log wrapped-normal(theta_i; t), w.r.t. the volume (2 pi)^n measure, (N,)."""
        tt = self._per_circle(as_heat_time(t, x.shape[0], x.device))
        lp = _CIRCLE.heat_kernel_log_prob(self._split(x), self._split(x0, "x0"), tt)
        return lp.reshape(-1, self.n).sum(-1)

    def heat_kernel_score(self, x: Tensor, x0: Tensor, t: float | Tensor) -> Tensor:
        tt = self._per_circle(as_heat_time(t, x.shape[0], x.device))
        return self._join(_CIRCLE.heat_kernel_score(self._split(x), self._split(x0, "x0"), tt))

    def sample_heat_kernel(
        self, x0: Tensor, t: float | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact: independent wrapped normals with variance t on each circle."""
        tt = self._per_circle(as_heat_time(t, x0.shape[0], x0.device))
        return self._join(_CIRCLE.sample_heat_kernel(self._split(x0, "x0"), tt, generator))
