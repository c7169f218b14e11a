"""The interface every method implements, and the explicit method registry.

A method couples a dataset (a law on a manifold M), a noise schedule and (if trainable) a score
network. It exposes

* ``loss(x0, generator)``: the scalar training loss on a batch of data points x0 (n, D);
* ``score(x, t)``: the model score at diffusion times t (shape (n,)) used by the samplers and
  the likelihood code.

Ambient methods (``intrinsic = False``) define scores on R^D for the forward SDE
dx = f(x, t) dt + g(t) dW of the schedule. Intrinsic methods (``intrinsic = True``) define
tangent-vector scores on M for Brownian motion dX = g(t) dB_M, whose heat-kernel time is
``schedule.heat_time(t)``.

Adding a method: one file in this package that subclasses :class:`Method` and decorates it with
``@register_method("name")``, plus one import line in ``madbench/methods/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from madbench._utils import Registry
from madbench.data.base import Dataset
from madbench.schedules import Schedule


class Method(ABC):
    name: ClassVar[str]
    intrinsic: ClassVar[bool] = False
    trainable: ClassVar[bool] = True

    def __init__(
        self,
        dataset: Dataset,
        schedule: Schedule,
        net: nn.Module | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.check_supported(dataset)
        self.dataset = dataset
        self.manifold = dataset.manifold
        self.schedule = schedule
        self.net = net
        self.config = dict(config or {})
        self._device = torch.device("cpu")

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

    @abstractmethod
    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scalar training loss on data points x0 of shape (n, D)."""

    @abstractmethod
    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Model score at points x (n, D) and times t (n,)."""


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
