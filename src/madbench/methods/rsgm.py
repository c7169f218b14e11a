"""RSGM: Riemannian score matching with a Brownian forward process (De Bortoli et al. 2022).

Forward: Brownian motion on M (generator Laplace-Beltrami / 2, ambient-induced metric) run for
the heat time tau = schedule.heat_time(t) (dX = g(t) dB_M). Training pairs: x0 ~ data, t uniform
on [t_eps, T], x_t ~ p_tau(. | x0) drawn exactly (``manifold.sample_heat_kernel``, config
``rsgm_forward: exact``, default) or by a geodesic random walk (``random_walk``, with
``rsgm_walk_steps`` steps). Target: the heat-kernel score grad_x log p_tau(x_t | x0) (a tangent
vector). Model: score(x, t) = P_x net(x, log sqrt(tau)) / sqrt(tau) (P_x the tangent
projection). Loss: E tau || score - target ||^2 = E || P_x net - sqrt(tau) target ||^2.

Small times: for VE, heat_time(0) = 0 and the score blows up there, so RSGM uses the schedule
restricted to [t_eps, T] with t_eps = max(t_min, t(tau_min)), tau_min = config
``rsgm_tau_min`` (default 1e-4, a geodesic spread of 0.01). ``method.schedule`` *is* that
restricted schedule, so the geodesic random walk, the Riemannian ODE and the likelihood all stop
at heat time max(tau_min, heat_time(t_min)) > 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from madbench._utils import make_generator
from madbench.data.base import Dataset
from madbench.manifolds.base import RiemannianManifold
from madbench.methods.base import Method, register_method
from madbench.nets import call_net
from madbench.schedules import Schedule

FORWARD_SAMPLERS = ("exact", "random_walk")


def time_of_heat_time(schedule: Schedule, tau: float) -> float:
    """The t in [0, T] with heat_time(t) = tau (bisection in float64; heat_time increases)."""
    lo, hi = 0.0, float(schedule.T)
    if float(schedule.heat_time(torch.tensor(hi, dtype=torch.float64))) <= tau:
        raise ValueError(f"heat time {tau} is not reached by {schedule!r} before T = {hi}")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(schedule.heat_time(torch.tensor(mid, dtype=torch.float64))) < tau:
            lo = mid
        else:
            hi = mid
    return hi


class RestrictedSchedule(Schedule):
    """``base`` on [t_min, base.T] with a larger t_min; every function delegates to ``base``."""

    def __init__(self, base: Schedule, t_min: float):
        if not base.t_min <= t_min < base.T:
            raise ValueError(f"t_min = {t_min} outside [{base.t_min}, {base.T}) of {base!r}")
        self.base, self.t_min, self.T, self.name = base, float(t_min), base.T, base.name

    def alpha(self, t):
        return self.base.alpha(t)

    def std(self, t):
        return self.base.std(t)

    def beta(self, t):
        return self.base.beta(t)

    def heat_time(self, t):
        return self.base.heat_time(t)

    def t_of_sigma(self, sigma):
        return self.base.t_of_sigma(sigma)

    def drift(self, x, t):
        return self.base.drift(x, t)

    def __repr__(self) -> str:
        return f"{self.base!r} on [{self.t_min:.4g}, {self.T:.4g}]"


@register_method("rsgm")
class RSGM(Method):
    """Intrinsic score model: tangent-vector scores for Brownian motion on M (module doc)."""

    intrinsic = True

    def __init__(
        self,
        dataset: Dataset,
        schedule: Schedule,
        net: nn.Module | None = None,
        config: dict | None = None,
    ):
        super().__init__(dataset, schedule, net, config)
        self.forward_sampler = self.config.get("rsgm_forward", "exact")
        if self.forward_sampler not in FORWARD_SAMPLERS:
            raise ValueError(
                f"config key 'rsgm_forward' must be one of {FORWARD_SAMPLERS}, "
                f"got {self.forward_sampler!r}"
            )
        self.walk_steps = int(self.config.get("rsgm_walk_steps", 100))
        self.tau_min = float(self.config.get("rsgm_tau_min", 1e-4))
        if not self.tau_min > 0:
            raise ValueError(f"config key 'rsgm_tau_min' must be > 0, got {self.tau_min}")
        tau0 = float(schedule.heat_time(torch.tensor(schedule.t_min, dtype=torch.float64)))
        t_eps = (
            schedule.t_min if tau0 >= self.tau_min else time_of_heat_time(schedule, self.tau_min)
        )
        self.base_schedule = schedule
        self.schedule = RestrictedSchedule(schedule, t_eps)

    @classmethod
    def check_supported(cls, dataset: Dataset) -> None:
        man = dataset.manifold
        if not isinstance(man, RiemannianManifold):
            raise ValueError(
                f"method 'rsgm' needs a Riemannian manifold (sphere, SO(3), torus); dataset "
                f"{dataset.name!r} lives on {man!r}"
            )
        x = man.sample_uniform(2, generator=make_generator(0))
        try:
            man.heat_kernel_score(x, x.flip(0), 0.1)
        except NotImplementedError as e:
            raise ValueError(
                f"method 'rsgm' needs the heat kernel of {man!r} (dataset {dataset.name!r}): {e}"
            ) from e

    def heat_time(self, t: Tensor) -> Tensor:
        """tau(t) in float64, shape (n,)."""
        return self.schedule.heat_time(torch.as_tensor(t).double().reshape(-1))

    def scaled_score(self, x: Tensor, tau: Tensor) -> Tensor:
        """sqrt(tau) * score = P_x net(x, log sqrt(tau)); tau (n,) float64."""
        if self.net is None:
            raise RuntimeError("method 'rsgm' has no network")
        return self.manifold.to_tangent(x, call_net(self.net, x, 0.5 * torch.log(tau)))

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """P_x net(x, log sqrt(tau)) / sqrt(tau), a tangent vector at x (n, D)."""
        tau = self.heat_time(t)
        return self.scaled_score(x, tau) / tau.sqrt().to(x.dtype).unsqueeze(-1)

    def forward_sample(
        self, x0: Tensor, tau: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_tau ~ p_tau(. | x0): exact heat-kernel draw or geodesic random walk."""
        if self.forward_sampler == "exact":
            return self.manifold.sample_heat_kernel(x0, tau, generator=generator)
        return self.manifold.random_walk(
            x0, tau.to(x0.dtype), n_steps=self.walk_steps, generator=generator
        )

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """E || P_x net(x_t, log sqrt tau) - sqrt(tau) grad log p_tau(x_t | x0) ||^2."""
        t = self.schedule.sample_t(x0.shape[0], generator=generator, device=x0.device)
        tau = self.heat_time(t)
        xt = self.forward_sample(x0, tau, generator)
        target = self.manifold.heat_kernel_score(xt, x0, tau).to(x0.dtype)
        u = self.scaled_score(xt, tau)
        return (u - tau.sqrt().to(x0.dtype).unsqueeze(-1) * target).square().sum(-1).mean()
