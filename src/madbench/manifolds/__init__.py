"""Manifolds embedded in R^D with uniform laws, MAD base scores and RSGM geometry.

Classes are imported lazily (PEP 562) so that ``from madbench.manifolds import Hypercube`` does
not pay for the SO(3) quadrature tables.
"""

from importlib import import_module

from madbench.manifolds.base import Manifold, RiemannianManifold

_WHERE = {
    "DiscreteSet": "discrete",
    "Hypercube": "discrete",
    "OneHot": "discrete",
    "SO3": "so3",
    "Sphere": "sphere",
    "Torus": "torus",
}

__all__ = ["Manifold", "RiemannianManifold", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"madbench.manifolds.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'madbench.manifolds' has no attribute {name!r}")
