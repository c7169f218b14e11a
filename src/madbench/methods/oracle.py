"""The exact-score oracle: no training, the dataset's closed-form noisy score.

score(x, t) = dataset.score(x / a, sigma) / a with a = alpha(t), sigma = std(t) / alpha(t)
(docs/science.md section 1, VP scaling). It runs through the same samplers and likelihood code
as the learned methods: the ceiling of every table and the end-to-end test of that code. Its
``loss`` is the ambient DSM loss evaluated at the exact score (no gradient): by the DSM
identity the smallest expected loss any ambient model can reach, a reference for training
curves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from madbench.data.base import Dataset
from madbench.methods.base import AmbientMethod, MethodParams, register_method


@register_method("oracle")
class Oracle(AmbientMethod):
    """u = sigma * dataset.score(x / a, sigma); no network, not trainable."""

    trainable = False
    Params = MethodParams  # no network, so no input scaling

    @classmethod
    def check_supported(cls, dataset: Dataset) -> None:
        if not dataset.has_score:
            raise ValueError(
                f"method 'oracle' needs a dataset with an exact noisy score; dataset "
                f"{dataset.name!r} has none"
            )

    def scaled_score(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        sigma = s / a
        return sigma * self.dataset.score(x / a, sigma.reshape(-1)).to(x.dtype)

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The DSM loss at the exact score (a reference value; nothing to train)."""
        with torch.no_grad():
            context = self.noised(x0, self.loss_draws(x0, generator))
            x_t, a, s, _ = context
            return self.scaled_errors(self.scaled_score(x_t, a, s), context).mean()
