"""Dataset interface and the single registry of named datasets.

A dataset is a law p_data on a manifold M. Every dataset can ``sample``; where the law is known
it also gives ``log_prob`` (a density on M w.r.t. the reference measure named in
``log_prob_convention``) and ``score(x, sigma)``, the exact score of p_data * N(0, sigma^2 I_D)
in the ambient space.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from madbench._utils import Registry
from madbench.manifolds.base import Manifold


class Dataset:
    """Base class. Subclasses set ``manifold`` and override what they can compute exactly."""

    manifold: Manifold
    #: Reference measure of ``log_prob``; e.g. "counting", "area (vol S^2 = 4 pi)",
    #: "Haar, vol SO(3) = 8 pi^2 (metric tr(A^T B)/2)".
    log_prob_convention: str = ""
    #: Finite empirical datasets (earth) hold fixed train/val/test splits instead of a law.
    empirical: bool = False

    def __init__(self, name: str):
        self.name = name

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @property
    def family(self) -> str:
        """The results table of this dataset: its manifold's family (earth data: "earth")."""
        return self.manifold.family

    @property
    def has_log_prob(self) -> bool:
        return type(self).log_prob is not Dataset.log_prob

    @property
    def has_score(self) -> bool:
        return type(self).score is not Dataset.score

    @property
    def has_log_prob_noised(self) -> bool:
        return type(self).log_prob_noised is not Dataset.log_prob_noised

    def log_prob(self, x: Tensor) -> Tensor:
        """log p_data(x) for x on M, w.r.t. ``log_prob_convention``, shape (n,)."""
        raise NotImplementedError(f"dataset {self.name!r} has no closed-form density")

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact score of p_data * N(0, sigma^2 I) at ambient x, shape (n, D)."""
        raise NotImplementedError(f"dataset {self.name!r} has no closed-form noisy score")

    def log_prob_noised(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact log density of p_data * N(0, sigma^2 I) at ambient x w.r.t. Lebesgue measure on
        R^D, shape (n,), float64."""
        raise NotImplementedError(f"dataset {self.name!r} has no closed-form noised density")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, manifold={self.manifold!r})"


DATASETS: Registry[Callable[[], Dataset]] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Callable[[], Dataset]], Callable[[], Dataset]]:
    """Register a zero-argument factory under ``name``."""
    return DATASETS.register(name)


def get_dataset(name: str) -> Dataset:
    """Build the dataset registered as ``name``; unknown names list the known ones."""
    return DATASETS.get_or_raise(name)()


def list_datasets() -> list[str]:
    return sorted(DATASETS)
