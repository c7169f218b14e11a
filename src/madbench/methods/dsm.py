"""Ambient denoising score matching (DSM): the network is the whole scaled score.

u(x, t) = net(c_in x, log sigma), i.e. the network predicts -eps; loss, time law, input
scaling and network are those of :class:`~madbench.methods.base.AmbientMethod`.
"""

from __future__ import annotations

from torch import Tensor

from madbench.methods.base import AmbientMethod, register_method


@register_method("dsm")
class DSM(AmbientMethod):
    """Ambient DSM: u = net(c_in x, log sigma)."""

    def scaled_score(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return self.network(x, a, s)
