"""Anatomy targets: the built-in circle (self-contained closed forms) and registered datasets.

``dataset_target(name)`` wraps any registered dataset with an exact ``score`` and its manifold
(``project``, ``to_tangent`` for Riemannian manifolds, ``base_score``); finite sets have no
tangent space, so their whole score counts as normal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from madbench.rate_separation.anatomy import AnatomyTarget, ScoreAt
from madbench.rate_separation.circle import (
    circle_base_score,
    sample_vonmises_circle,
    vonmises_score,
)

#: anatomy name -> dataset name (the first existing of the candidates is used)
DATASET_FOR = {
    "circle": ("circle_vonmises",),
    "torus": ("torus_vonmises",),
    "s2": ("s2_vmf_mixture_4",),
    "so3": ("so3_mf_mixture_4", "so3_mf_mixture_2", "so3_mf_mixture_8", "so3_mf_mixture_16"),
    "discrete": ("toy",),
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
    """The registered dataset used for ``anatomy_name`` (clear error if none is registered)."""
    from madbench.data import list_datasets

    if anatomy_name not in DATASET_FOR:
        raise KeyError(f"unknown anatomy target {anatomy_name!r}; known: {', '.join(DATASET_FOR)}")
    have = set(list_datasets())
    for cand in DATASET_FOR[anatomy_name]:
        if cand in have:
            return cand
    so3 = sorted(d for d in have if d.startswith("so3_mf_mixture"))
    if anatomy_name == "so3" and so3:
        return so3[0]
    raise KeyError(
        f"no registered dataset for {anatomy_name!r} (tried {DATASET_FOR[anatomy_name]})"
    )


def dataset_target(anatomy_name: str) -> AnatomyTarget:
    """AnatomyTarget for a registered dataset with an exact score (float64 evaluation)."""
    from madbench.data import get_dataset

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
    """Registered dataset if available; the circle falls back to the built-in closed forms."""
    try:
        return dataset_target(anatomy_name)
    except (KeyError, ImportError, AttributeError, NotImplementedError):
        if anatomy_name == "circle":
            return builtin_circle_target()
        raise


def torch_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))
