"""The score network shared by every trainable method: an MLP on (x, log noise level).

Input: ``x`` (n, D) concatenated with a Fourier embedding of c = log(level) (n,), where the
level is the method's noise scale (ambient methods: sigma(t) = std / alpha; RSGM: sqrt(tau),
tau the heat time). The embedding is [c / 4, sin(w_k c), cos(w_k c)] with the fixed
frequencies w_k = 2^(k - 3), k = 0..n_fourier-1 (0.125 .. 16 for n_fourier = 8), deterministic
so that equal configs build equal networks.

Body: ``depth`` hidden layers of ``width`` units with SiLU or sin activations, default
PyTorch initialisation; output layer of size D, initialised to zero, so every method starts
from its parametrisation's zero (DSM: score 0; MAD: the base score; RSGM: score 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = ("silu", "sin")


class Sin(nn.Module):
    """Elementwise sin (RSGM's activation)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


def fourier_features(log_level: Tensor, n_fourier: int) -> Tensor:
    """(n,) -> (n, 1 + 2 n_fourier): [c / 4, sin(w_k c), cos(w_k c)], w_k = 2^(k - 3)."""
    w = 2.0 ** (torch.arange(n_fourier, device=log_level.device, dtype=log_level.dtype) - 3)
    arg = log_level.unsqueeze(-1) * w
    return torch.cat([log_level.unsqueeze(-1) / 4, torch.sin(arg), torch.cos(arg)], -1)


class ScoreMLP(nn.Module):
    """MLP f(x, log level) -> R^out_dim (see module docstring).

    x: (n, in_dim); log_level: (n,) or a scalar, broadcast to n rows. Returns (n, out_dim).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 256,
        depth: int = 4,
        activation: str = "silu",
        n_fourier: int = 8,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if min(in_dim, out_dim, width, depth) < 1 or n_fourier < 0:
            raise ValueError(
                f"need in_dim, out_dim, width, depth >= 1 and n_fourier >= 0, got {in_dim}, "
                f"{out_dim}, {width}, {depth}, {n_fourier}"
            )
        self.in_dim, self.out_dim, self.n_fourier = in_dim, out_dim, n_fourier
        act = nn.SiLU if activation == "silu" else Sin
        layers: list[nn.Module] = []
        d = in_dim + 1 + 2 * n_fourier
        for _ in range(depth):
            layers += [nn.Linear(d, width), act()]
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, log_level: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x must have shape (n, {self.in_dim}), got {tuple(x.shape)}")
        c = torch.as_tensor(log_level, dtype=x.dtype, device=x.device).reshape(-1)
        c = c.expand(x.shape[0]) if c.numel() == 1 else c
        if c.shape[0] != x.shape[0]:
            raise ValueError(f"log_level has {c.shape[0]} entries for {x.shape[0]} points")
        h = torch.cat([x, fourier_features(c, self.n_fourier)], -1)
        return self.out(self.body(h))


def call_net(net: nn.Module, x: Tensor, log_level: Tensor) -> Tensor:
    """net(x, log_level) evaluated in the network's dtype, returned in x's dtype (so float64
    callers, e.g. the likelihood and evaluation code, can use a float32 network)."""
    dtype = next(net.parameters()).dtype
    return net(x.to(dtype), log_level.to(dtype)).to(x.dtype)


def count_parameters(net: nn.Module | None) -> int:
    """Number of trainable parameters (0 for None)."""
    return 0 if net is None else sum(p.numel() for p in net.parameters() if p.requires_grad)
