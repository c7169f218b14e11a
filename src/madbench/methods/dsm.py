"""Ambient denoising score matching (DSM), and the parametrisation every ambient method shares.

Forward process (any schedule): x_t = a x0 + s eps, a = alpha(t), s = std(t), eps ~ N(0, I_D);
the equivalent VE noise level is sigma = s / a (madbench.schedules).

Parametrisation: an ambient method defines the *scaled score* u(x, t) = s * score(x, t) and

    score(x, t) = u(x, t) / s,        loss = E_{t, x0, eps} || u(x_t, t) + eps ||^2,

which is DSM with lambda(t) = s^2 (the sigma^2 weighting in VE). For DSM, u = net(c_in x_t,
log sigma) with the input scaling c_in = 1 / sqrt(a^2 + s^2) (= 1 for VP, 1 / sqrt(1 +
sigma^2) for VE; config ``input_scaling``, default on), i.e. the network predicts -eps.
Times t are uniform on [t_min, T] (``schedule.sample_t``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from madbench.methods.base import Method, register_method
from madbench.nets import call_net


class AmbientMethod(Method):
    """Base of the ambient methods (DSM, MAD, oracle): subclasses define :meth:`scaled_score`."""

    intrinsic = False

    def coefficients(self, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(a, s) = (alpha(t), std(t)) as (n, 1) tensors in ``dtype`` (computed in float64)."""
        t64 = torch.as_tensor(t).double().reshape(-1)
        a = self.schedule.alpha(t64).reshape(-1, 1)
        s = self.schedule.std(t64).reshape(-1, 1)
        return a.to(dtype), s.to(dtype)

    def network(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """net(c_in x, log sigma), c_in = 1/sqrt(a^2 + s^2) if ``input_scaling`` else 1 (in the
        network's dtype; the result in x's dtype)."""
        if self.net is None:
            raise RuntimeError(f"method {self.name!r} has no network")
        scale = torch.rsqrt(a * a + s * s) if self.config.get("input_scaling", True) else 1.0
        return call_net(self.net, scale * x, torch.log(s / a).reshape(-1))

    def scaled_score(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """u = s * score at x_t (n, D) with a = alpha(t), s = std(t) of shape (n, 1)."""
        raise NotImplementedError

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Model score u(x, t) / std(t) at x (n, D), times t (n,)."""
        a, s = self.coefficients(t, x.dtype)
        return self.scaled_score(x, a, s) / s

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """E || u(a x0 + s eps, t) + eps ||^2 over the batch (t uniform, eps Gaussian)."""
        t = self.schedule.sample_t(x0.shape[0], generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a, s = self.coefficients(t, x0.dtype)
        u = self.scaled_score(a * x0 + s * eps, a, s)
        return (u + eps).square().sum(-1).mean()


@register_method("dsm")
class DSM(AmbientMethod):
    """Ambient DSM: u = net(c_in x, log sigma) (module docstring)."""

    def scaled_score(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return self.network(x, a, s)
