"""Anatomy targets: registered datasets with exact scores, and the built-in circle (its closed
forms, self-contained: an independent check of the circle dataset).

``dataset_target(name)`` wraps any registered dataset with an exact ``score`` and its manifold
(``project``, ``to_tangent`` for Riemannian manifolds, ``base_score``); finite sets have no
tangent space, so their whole score counts as normal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from madbench.data import get_dataset
from madbench.rate_separation.anatomy import AnatomyTarget, ScoreAt
from madbench.rate_separation.circle import (
    circle_base_score,
    sample_vonmises_circle,
    vonmises_score,
)

#: anatomy target -> the registered dataset it uses
DATASET_FOR = {
    "circle": "circle_vonmises",
    "torus": "torus_vonmises",
    "s2": "s2_vmf_mixture_4",
    "so3": "so3_mf_mixture_3",
    "discrete": "toy",
}


def _circle_project(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _circle_to_tangent(p: Tensor, v: Tensor) -> Tensor:
    return v - (v * p).sum(-1, keepdim=True) * p


def with_remainder(exact: ScoreAt, base: ScoreAt) -> dict[str, ScoreAt]:
    """{'exact', 'base', 'remainder' = exact - base}."""
    return {"exact": exact, "base": base, "remainder": lambda x, s: exact(x, s) - base(x, s)}


def builtin_circle_target(kappa: float = 4.0) -> AnatomyTarget:
    """vM(kappa) on the unit circle with the closed forms of ``circle.py`` (float64)."""
    return AnatomyTarget(
        name="circle",
        codim=1,
        sample=lambda n, g: sample_vonmises_circle(n, kappa, generator=g),
        project=_circle_project,
        to_tangent=_circle_to_tangent,
        scores=with_remainder(
            lambda x, s: vonmises_score(x, s, kappa), lambda x, s: circle_base_score(x, s)
        ),
    )


def resolve_dataset_name(anatomy_name: str) -> str:
    """The registered dataset of the anatomy target ``anatomy_name`` (KeyError listing the
    known targets for any other name)."""
    if anatomy_name not in DATASET_FOR:
        raise KeyError(f"unknown anatomy target {anatomy_name!r}; known: {', '.join(DATASET_FOR)}")
    return DATASET_FOR[anatomy_name]


def dataset_target(anatomy_name: str) -> AnatomyTarget:
    """AnatomyTarget for a registered dataset with an exact score (float64 evaluation)."""
    ds = get_dataset(resolve_dataset_name(anatomy_name))
    if not ds.has_score:
        raise ValueError(f"dataset {ds.name!r} has no exact score")
    m = ds.manifold
    to_tangent = getattr(m, "to_tangent", None) if m.dim > 0 else None
    return AnatomyTarget(
        name=anatomy_name,
        codim=m.codim,
        sample=lambda n, g: ds.sample(n, generator=g).double(),
        project=m.project,
        to_tangent=to_tangent,
        scores=with_remainder(ds.score, m.base_score),
    )


def get_target(anatomy_name: str) -> AnatomyTarget:
    """The anatomy target ``anatomy_name``: its registered dataset (``DATASET_FOR``)."""
    return dataset_target(anatomy_name)


def torch_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))
