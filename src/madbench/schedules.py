"""Noise schedules: variance exploding (VE) and variance preserving (VP, linear and cosine).

Forward SDE on R^D: dx = f(x, t) dt + g(t) dW, t in [t_min, T]. Its marginal given x0 is
N(alpha(t) x0, std(t)^2 I). Every formula of docs/science.md written for VE noise applies to
x / alpha(t) with the *equivalent VE noise level* sigma(t) = std(t) / alpha(t), and the score
picks up a factor 1 / alpha(t):  score_x(x, t) = score_VE(x / alpha, sigma) / alpha.

RSGM uses the same g(t) for Brownian motion on M, dX = g(t) dB_M, whose heat-kernel time is
``heat_time(t)`` = int_0^t g(s)^2 ds.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from madbench._utils import Registry
from madbench.settings import ConfigError


def _t(t: float | Tensor) -> Tensor:
    return torch.as_tensor(t, dtype=torch.get_default_dtype()) if not torch.is_tensor(t) else t


class Schedule(ABC):
    """Base class. ``t`` may be a float or a tensor; results broadcast like ``t``."""

    name: str
    t_min: float
    T: float = 1.0

    @abstractmethod
    def alpha(self, t: float | Tensor) -> Tensor:
        """Mean scale alpha(t): E[x_t | x0] = alpha(t) x0."""

    @abstractmethod
    def std(self, t: float | Tensor) -> Tensor:
        """Marginal standard deviation std(t) of x_t given x0."""

    @abstractmethod
    def beta(self, t: float | Tensor) -> Tensor:
        """g(t)^2, the squared diffusion coefficient."""

    @abstractmethod
    def heat_time(self, t: float | Tensor) -> Tensor:
        """int_0^t g(s)^2 ds, the Brownian time on M reached at t (RSGM)."""

    @abstractmethod
    def t_of_sigma(self, sigma: float | Tensor) -> Tensor:
        """Inverse of ``sigma``: the time at which std / alpha equals sigma."""

    def sigma(self, t: float | Tensor) -> Tensor:
        """Equivalent VE noise level std(t) / alpha(t)."""
        return self.std(t) / self.alpha(t)

    def diffusion(self, t: float | Tensor) -> Tensor:
        """g(t)."""
        return self.beta(t).sqrt()

    def drift(self, x: Tensor, t: float | Tensor) -> Tensor:
        """f(x, t); zero for VE, -beta(t) x / 2 for VP."""
        return torch.zeros_like(x)

    @property
    def sigma_min(self) -> float:
        """sigma(t_min), in float64 (a float32 evaluation rounds VE's 1e-3 to 1.00000005e-3,
        which then reads as above a stated level of 1e-3)."""
        return float(self.sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        """sigma(T), in float64."""
        return float(self.sigma(torch.tensor(self.T, dtype=torch.float64)))

    def t_of_heat_time(self, tau: float) -> float:
        """The smallest t in [0, T] with heat_time(t) >= tau, to float64 resolution (bisection;
        heat_time increases from heat_time(0) = 0)."""
        tau_max = float(self.heat_time(torch.tensor(float(self.T), dtype=torch.float64)))
        if not 0 <= tau <= tau_max * (1 + 1e-12):
            raise ValueError(f"heat time {tau} outside [0, heat_time(T) = {tau_max}] of {self!r}")
        lo, hi = 0.0, float(self.T)
        for _ in range(2000):  # float64 bisection ends long before (mid equals lo or hi)
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if float(self.heat_time(torch.tensor(mid, dtype=torch.float64))) < tau:
                lo = mid
            else:
                hi = mid
        return hi

    def time_scaled(self, scale: float) -> Schedule:
        """This schedule with the clock of Brownian motion on M ``scale`` times as fast."""
        return TimeScaledSchedule(self, scale)

    def restricted(self, t_min: float) -> Schedule:
        """This schedule on [t_min, T] with a larger t_min (every function delegates)."""
        return RestrictedSchedule(self, t_min)

    def sample_t(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> Tensor:
        """Training times, uniform on [t_min, T] (shape (n,), float32)."""
        u = torch.rand(n, generator=generator, device=device)
        return self.t_min + (self.T - self.t_min) * u

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sigma_min={self.sigma_min:.3g}, sigma_max={self.sigma_max:.3g})"
        )


class VE(Schedule):
    """Geometric VE: sigma(t) = sigma_min (sigma_max / sigma_min)^t on t in [0, 1].

    g(t)^2 = d sigma^2 / dt = 2 log(sigma_max / sigma_min) sigma(t)^2, alpha = 1.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 10.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.smin, self.smax = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(self.smax / self.smin)
        self.t_min, self.T = 0.0, 1.0

    def alpha(self, t):
        return torch.ones_like(_t(t))

    def std(self, t):
        return self.smin * torch.exp(self.log_ratio * _t(t))

    def beta(self, t):
        return 2 * self.log_ratio * self.std(t) ** 2

    def heat_time(self, t):
        # std^2 - smin^2 without cancellation near t = 0
        return self.smin**2 * torch.expm1(2 * self.log_ratio * _t(t))

    def t_of_sigma(self, sigma):
        return torch.log(_t(sigma) / self.smin) / self.log_ratio


class VPLinear(Schedule):
    """VP with linear beta(t) = beta_min + t (beta_max - beta_min) on [t_min, 1] (Song et al. 2021).

    alpha(t) = exp(-B(t) / 2), B(t) = int_0^t beta; std(t) = sqrt(1 - alpha^2);
    drift -beta x / 2, g = sqrt(beta).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
        self.b0, self.b1, self.t_min, self.T = float(beta_min), float(beta_max), float(t_min), 1.0

    def beta(self, t):
        return self.b0 + _t(t) * (self.b1 - self.b0)

    def heat_time(self, t):
        t = _t(t)
        return self.b0 * t + 0.5 * (self.b1 - self.b0) * t**2

    def alpha(self, t):
        return torch.exp(-0.5 * self.heat_time(t))

    def std(self, t):
        return (-torch.expm1(-self.heat_time(t))).sqrt()

    def drift(self, x, t):
        b = self.beta(t)
        return -0.5 * (b.reshape(-1, 1) if b.ndim else b) * x

    def t_of_sigma(self, sigma):
        # sigma^2 = 1/alpha^2 - 1 = exp(B) - 1  =>  B = log1p(sigma^2), solve the quadratic in t.
        # (stable root 2B / (b0 + sqrt(b0^2 + 4 a2 B)): no cancellation at small sigma)
        b = torch.log1p(_t(sigma) ** 2)
        a2 = 0.5 * (self.b1 - self.b0)
        if self.b0 == 0:
            return torch.sqrt(b / a2)
        return 2 * b / (self.b0 + torch.sqrt(self.b0**2 + 4 * a2 * b))


class VPCosine(Schedule):
    """Cosine VP (Nichol & Dhariwal 2021): alpha(t)^2 = cos^2(phi(t)) / cos^2(phi(0)),
    phi(t) = (t + s) / (1 + s) * pi / 2, on [t_min, T] with T chosen so sigma(T) = sigma_max.

    beta(t) = -d log alpha^2 / dt = pi / (1 + s) tan(phi(t)).

    Evaluated without cancellation (float32 stays accurate at t_min): with phi0 = phi(0) and
    d = phi(t) - phi0 = t pi / (2 (1 + s)),
    std^2 = 1 - alpha^2 = sin(d) sin(d + 2 phi0) / cos^2 phi0 and
    cos(phi(t)) = sin((1 - t) pi / (2 (1 + s))).
    """

    name = "vp_cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-5, sigma_max: float = 100.0):
        if s <= 0 or sigma_max <= 0:
            raise ValueError(f"need s > 0 and sigma_max > 0, got s={s}, sigma_max={sigma_max}")
        self.s, self.t_min = float(s), float(t_min)
        self._rate = math.pi / (2 * (1 + self.s))  # d phi / dt
        self._phi0 = self.s * self._rate
        self._cos0 = math.cos(self._phi0)
        self.T = float(self.t_of_sigma(torch.tensor(sigma_max, dtype=torch.float64)))
        if not self.t_min < self.T <= 1:
            raise ValueError(f"sigma_max={sigma_max} is below sigma(t_min)")

    def _phi(self, t):
        return (_t(t) + self.s) / (1 + self.s) * math.pi / 2

    def alpha(self, t):
        return torch.sin((1 - _t(t)) * self._rate) / self._cos0

    def std(self, t):
        d = _t(t) * self._rate
        return (torch.sin(d) * torch.sin(d + 2 * self._phi0)).clamp_min(0).sqrt() / self._cos0

    def beta(self, t):
        return 2 * self._rate / torch.tan((1 - _t(t)) * self._rate)

    def heat_time(self, t):
        # int_0^t beta = -log alpha(t)^2 = -log1p(-std^2); each form where it is accurate
        var = self.std(t) ** 2
        return torch.where(
            var < 0.5, -torch.log1p(-var.clamp_max(0.5)), -2 * torch.log(self.alpha(t))
        )

    def drift(self, x, t):
        b = self.beta(t)
        return -0.5 * (b.reshape(-1, 1) if b.ndim else b) * x

    def t_of_sigma(self, sigma):
        # tan^2 phi = tan^2 phi0 + sigma^2 / cos^2 phi0, and
        # tan(phi - phi0) = (tan^2 phi - tan^2 phi0) / ((tan phi + tan phi0)(1 + tan phi tan phi0))
        u = _t(sigma) ** 2 / self._cos0**2
        tan0 = math.tan(self._phi0)
        tan_phi = torch.sqrt(tan0**2 + u)
        d = torch.atan2(u / (tan_phi + tan0), 1 + tan_phi * tan0)
        return d / self._rate


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


class TimeScaledSchedule(RestrictedSchedule):
    """``base`` for Brownian motion dX = sqrt(scale beta(t)) dB_M: beta and heat_time are
    ``scale`` times base's (alpha, std and sigma, which describe the ambient process, are base's).

    RSGM's ``time_scale``: the same beta schedule then reaches the heat time of another metric
    (scale 2 on SO(3) with the Frobenius metric: the published code's tr(A^T B)/2 clock).
    """

    def __init__(self, base: Schedule, scale: float):
        if not scale > 0:
            raise ValueError(f"time scale {scale} must be > 0")
        super().__init__(base, base.t_min)
        self.scale = float(scale)

    def beta(self, t):
        return self.scale * self.base.beta(t)

    def heat_time(self, t):
        return self.scale * self.base.heat_time(t)

    def __repr__(self) -> str:
        return f"{self.base!r} at {self.scale:g}x heat time"


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")
SCHEDULES.register("ve")(VE)
SCHEDULES.register("vp")(VPLinear)
SCHEDULES.register("vp_cosine")(VPCosine)


def schedule_parameters(name: str) -> list[str]:
    """The constructor parameters of the schedule registered as ``name``."""
    cls = SCHEDULES.get_or_raise(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def get_schedule(name: str, **params: float) -> Schedule:
    """The schedule registered as ``name`` built with ``params`` (config keys ``schedule.*``).

    An unknown name is a KeyError listing the known ones; an unknown or invalid parameter a
    ConfigError naming ``schedule.<param>``.
    """
    cls, known = SCHEDULES.get_or_raise(name), schedule_parameters(name)
    for k in params:
        if k not in known:
            raise ConfigError(
                f"config key 'schedule.{k}' is not a parameter of schedule {name!r}; "
                f"known: {', '.join(known)}"
            )
    try:
        return cls(**params)
    except ValueError as e:
        raise ConfigError(
            f"bad parameters for schedule {name!r} (config keys 'schedule.*'): {e}"
        ) from e


def list_schedules() -> list[str]:
    return sorted(SCHEDULES)
