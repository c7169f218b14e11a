"""Manifolds embedded in R^D with uniform laws, MAD base scores and RSGM geometry."""

from madbench.manifolds.base import Manifold, RiemannianManifold
from madbench.manifolds.discrete import DiscreteSet, FiniteSet, Hypercube, OneHot
from madbench.manifolds.so3 import SO3
from madbench.manifolds.sphere import Sphere
from madbench.manifolds.torus import Torus

__all__ = [
    "DiscreteSet",
    "FiniteSet",
    "Hypercube",
    "Manifold",
    "OneHot",
    "RiemannianManifold",
    "SO3",
    "Sphere",
    "Torus",
]
