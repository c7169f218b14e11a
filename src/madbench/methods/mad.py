"""MAD: manifold-aware DSM, model score = s_base + remainder (docs/science.md section 1).

With a = alpha(t), s = std(t), sigma = s / a, the base score of the schedule's variable is
s_base,t(x) = manifold.base_score(x / a, sigma) / a (uniform law on M noised like the data),
and the model is

    score(x, t) = s_base,t(x) + net(c_in x, log sigma) / s,

i.e. the scaled score u = s * score = sigma * base_score(x / a, sigma) + net. Loss, network,
input scaling, time sampling, optimiser and budget are those of DSM (:mod:`.dsm`): the only
difference is the analytic term, so the comparison isolates the decomposition. With the
zero-initialised output layer, MAD starts at the base score.
"""

from __future__ import annotations

from torch import Tensor

from madbench.methods.base import AmbientMethod, register_method


@register_method("mad")
class MAD(AmbientMethod):
    """u = sigma * s_base,VE(x / a, sigma) + net(c_in x, log sigma)."""

    def base_scaled(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """s * s_base,t(x) = sigma * manifold.base_score(x / a, sigma), shape (n, D)."""
        sigma = s / a
        return sigma * self.manifold.base_score(x / a, sigma.reshape(-1))

    def combine(self, out: Tensor, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return self.base_scaled(x, a, s) + out

    def remainder(self, x: Tensor, t: Tensor) -> Tensor:
        """The learned remainder r(x, t) = score - s_base,t = net / s (n, D)."""
        a, s = self.coefficients(t, x.dtype)
        return self.network(x, a, s) / s
