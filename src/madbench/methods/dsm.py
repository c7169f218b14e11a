"""Ambient denoising score matching (DSM): the network is the whole scaled score.

u(x, t) = net(c_in x, log sigma), i.e. the network predicts -eps; loss, time law, input
scaling and network are those of :class:`~madbench.methods.base.AmbientMethod`, whose default
``combine`` (the scaled score is the network's output) is DSM.
"""

from __future__ import annotations

from madbench.methods.base import AmbientMethod, register_method


@register_method("dsm")
class DSM(AmbientMethod):
    """Ambient DSM: u = net(c_in x, log sigma)."""
