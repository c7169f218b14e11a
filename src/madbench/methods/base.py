"""The interface every method implements, the shared ambient parametrisation, and the registry.

A method couples a dataset (a law on a manifold M), a noise schedule, its hyper-parameters
(``Params``, a small dataclass) and, if trainable, a score network. It exposes

* ``loss(x0, generator)``: the scalar training loss on a batch of data points x0 (n, D);
* ``score(x, t)``: the model score at diffusion times t (shape (n,)) used by the samplers and
  the likelihood code.

Ambient methods (``intrinsic = False``, subclasses of :class:`AmbientMethod`) define scores on
R^D for the forward SDE dx = f(x, t) dt + g(t) dW of the schedule. Intrinsic methods
(``intrinsic = True``) define tangent-vector scores on M for Brownian motion dX = g(t) dB_M,
whose heat-kernel time is ``schedule.heat_time(t)``.

Hyper-parameters: ``Params`` declares them with defaults and ``checks()``; the run config
stores them under ``method_params`` (command line: ``--set method.<field>=value``) and they are
validated once, by :func:`madbench.settings.from_mapping`.

Adding a method: one file in this package with a subclass decorated
``@register_method("name")``, and its import in ``madbench/methods/__init__.py``
(docs/architecture.md has the checklist).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from madbench._utils import Registry
from madbench.data.base import Dataset
from madbench.nets import call_net
from madbench.schedules import Schedule
from madbench.settings import from_mapping


@dataclasses.dataclass(frozen=True)
class MethodParams:
    """A method's hyper-parameters (none here). Subclasses add fields with defaults and may
    define ``checks()`` returning ``(field, ok, what)`` triples."""

    def checks(self) -> list[tuple[str, bool, str]]:
        return []

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Method(ABC):
    name: ClassVar[str]
    intrinsic: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(
        self,
        dataset: Dataset,
        schedule: Schedule,
        net: nn.Module | None = None,
        params: MethodParams | Mapping[str, Any] | None = None,
    ):
        self.check_supported(dataset)
        self.dataset = dataset
        self.manifold = dataset.manifold
        self.schedule = schedule
        self.net = net
        self.params = self.parse_params(params)
        self._device = torch.device("cpu")

    @classmethod
    def parse_params(cls, params: MethodParams | Mapping[str, Any] | None) -> MethodParams:
        """``params`` as this method's ``Params`` (a mapping is typed and checked; keys are
        named ``method.<field>`` in errors)."""
        if isinstance(params, cls.Params):
            return params
        return from_mapping(cls.Params, params, prefix="method.")

    @property
    def device(self) -> torch.device:
        """Device of the network's parameters; for methods without one, the device set by
        :meth:`to` (default CPU). Samplers put their state there."""
        if self.net is not None:
            for p in self.net.parameters():
                return p.device
        return self._device

    def to(self, device: str | torch.device) -> Method:
        """Move the network (if any) to ``device``; returns self."""
        self._device = torch.device(device)
        if self.net is not None:
            self.net.to(self._device)
        return self

    @property
    def n_parameters(self) -> int:
        """Number of network parameters (0 without a network)."""
        if self.net is None:
            return 0
        return sum(p.numel() for p in self.net.parameters())

    @classmethod  # noqa: B027 (an optional override, not abstract)
    def check_supported(cls, dataset: Dataset) -> None:
        """Raise ValueError (naming method and dataset) if the method cannot run on it."""

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scalar training loss on data points x0 of shape (n, D): :meth:`loss_inputs`, the
        network, then the mean of :meth:`example_losses` (the pieces a stack of runs batches:
        every run's draws, then one network call and one loss for the runs of one method)."""
        (x, log_level), context = self.loss_inputs(x0, generator)
        return self.example_losses(call_net(self.net, x, log_level), context).mean()

    def loss_inputs(
        self, x0: Tensor, generator: torch.Generator | None
    ) -> tuple[tuple[Tensor, Tensor], Any]:
        """The network's input ((n, D) points, (n,) log noise levels) and a context for
        :meth:`example_losses`: :meth:`loss_draws` from ``generator``, then
        :meth:`loss_inputs_from`."""
        return self.loss_inputs_from(x0, self.loss_draws(x0, generator))

    def loss_draws(self, x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """Every random draw of one training step on x0, each with one row per row of x0 (so
        the draws of several runs concatenate). Trainable methods define it."""
        raise NotImplementedError(f"method {self.name!r} has no network to train")

    def loss_inputs_from(
        self, x0: Tensor, draws: tuple[Tensor, ...]
    ) -> tuple[tuple[Tensor, Tensor], Any]:
        """The network's input and the loss context from x0 and its :meth:`loss_draws`
        (deterministic and row-wise: the rows of several runs may come in one call)."""
        raise NotImplementedError(f"method {self.name!r} has no network to train")

    def example_losses(self, out: Tensor, context: Any) -> Tensor:
        """Each example's loss (n,) from the network's output (n, D) and the context of
        :meth:`loss_inputs_from` (row-wise, like it)."""
        raise NotImplementedError(f"method {self.name!r} has no network to train")

    @abstractmethod
    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Model score at points x (n, D) and times t (n,)."""


# ---------------------------------------------------------------------- ambient methods
@dataclasses.dataclass(frozen=True)
class AmbientParams(MethodParams):
    #: network input scaled by 1 / sqrt(alpha^2 + std^2) (c_in of Karras et al. 2022)
    input_scaling: bool = True


class AmbientMethod(Method):
    """Base of the ambient methods (DSM, MAD, oracle): the scaled-score parametrisation.

    Forward process (any schedule): x_t = a x0 + s eps, a = alpha(t), s = std(t), eps ~ N(0,
    I_D); the equivalent VE noise level is sigma = s / a (madbench.schedules). A subclass
    defines the *scaled score* u(x, t) = s * score(x, t) (:meth:`scaled_score`), and

        score(x, t) = u(x, t) / s,    loss = E_{t, x0, eps} w(t) || u(x_t, t) + eps ||^2,

    DSM with lambda(t) = w(t) s^2 (the sigma^2 weighting in VE for the default w = 1). Two
    hooks change the objective without touching the rest: :meth:`sample_t` (the law of the
    training times, default uniform on [t_min, T]) and :meth:`loss_weight` (w). The shared
    network call :meth:`network` is net(c_in x_t, log sigma) with c_in = 1 / sqrt(a^2 + s^2)
    (``input_scaling``, default on: = 1 for VP, 1 / sqrt(1 + sigma^2) for VE).
    """

    intrinsic = False
    Params = AmbientParams

    def coefficients(self, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(a, s) = (alpha(t), std(t)) as (n, 1) tensors in ``dtype`` (computed in float64)."""
        t64 = torch.as_tensor(t).double().reshape(-1)
        a = self.schedule.alpha(t64).reshape(-1, 1)
        s = self.schedule.std(t64).reshape(-1, 1)
        return a.to(dtype), s.to(dtype)

    def network_inputs(self, x: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """(c_in x, log sigma): the network's input at x_t, c_in = 1/sqrt(a^2 + s^2) if
        ``input_scaling`` else 1."""
        scale = torch.rsqrt(a * a + s * s) if self.params.input_scaling else 1.0
        return scale * x, torch.log(s / a).reshape(-1)

    def network(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """net(c_in x, log sigma) (in the network's dtype; the result in x's dtype)."""
        if self.net is None:
            raise RuntimeError(f"method {self.name!r} has no network")
        return call_net(self.net, *self.network_inputs(x, a, s))

    def combine(self, out: Tensor, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """The scaled score from the network's output ``out`` at x_t (default: ``out`` itself,
        i.e. DSM; MAD adds the base score)."""
        return out

    def scaled_score(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """u = s * score at x_t (n, D) with a = alpha(t), s = std(t) of shape (n, 1)."""
        return self.combine(self.network(x, a, s), x, a, s)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Model score u(x, t) / std(t) at x (n, D), times t (n,)."""
        a, s = self.coefficients(t, x.dtype)
        return self.scaled_score(x, a, s) / s

    def sample_t(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Training times (n,): uniform on [t_min, T] (``schedule.sample_t``)."""
        return self.schedule.sample_t(n, generator=generator, device=device)

    def loss_weight(self, a: Tensor, s: Tensor) -> Tensor | None:
        """Weight w of each example's squared error, shape (n, 1) like a and s (None: w = 1)."""
        return None

    def loss_draws(self, x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(t ~ sample_t, eps Gaussian like x0)."""
        t = self.sample_t(x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return t, eps

    def noised(self, x0: Tensor, draws: tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        """(x_t = a x0 + s eps, a, s, eps) with a = alpha(t), s = std(t) of shape (n, 1)."""
        t, eps = draws
        a, s = self.coefficients(t, x0.dtype)
        return a * x0 + s * eps, a, s, eps

    def loss_inputs_from(self, x0: Tensor, draws: tuple[Tensor, Tensor]):
        """The network's input at x_t; the context :meth:`noised`."""
        context = self.noised(x0, draws)
        x_t, a, s, _ = context
        return self.network_inputs(x_t, a, s), context

    def example_losses(self, out: Tensor, context) -> Tensor:
        """The errors of the scaled score u = combine(out, x_t, a, s) (:meth:`scaled_errors`)."""
        x_t, a, s, _ = context
        return self.scaled_errors(self.combine(out, x_t, a, s), context)

    def scaled_errors(self, u: Tensor, context) -> Tensor:
        """w || u + eps ||^2 per example (n,) for the scaled score u at x_t (n, D)."""
        _, a, s, eps = context
        err = (u + eps).square().sum(-1)
        w = self.loss_weight(a, s)
        if w is not None:
            if w.shape != a.shape:
                raise ValueError(f"loss_weight must have shape {tuple(a.shape)}, got {w.shape}")
            err = w.reshape(-1) * err
        return err


# ---------------------------------------------------------------------- registry
METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def get_method(name: str) -> type[Method]:
    return METHODS.get_or_raise(name)


def list_methods() -> list[str]:
    return sorted(METHODS)
