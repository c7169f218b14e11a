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


class StackedMLP(nn.Module):
    """K ScoreMLPs of one architecture evaluated as one: each parameter of the ScoreMLP gets a
    leading axis K and the layers are batched matrix products (``torch.baddbmm``), so a stack of
    runs costs one network call per step instead of K.

    ``forward(x, log_level)`` takes x (K, n, in_dim) and log_level (K, n) and returns
    (K, n, out_dim); slice k equals ``nets[k](x[k], log_level[k])`` up to floating-point
    summation order. Parameter names are the ScoreMLP's with '.' replaced by '__'.
    """

    def __init__(self, nets: list[ScoreMLP]):
        super().__init__()
        first = nets[0]
        names = [n for n, _ in first.named_parameters()]
        for net in nets[1:]:
            if [(n, p.shape) for n, p in net.named_parameters()] != [
                (n, p.shape) for n, p in first.named_parameters()
            ] or type(net.body[1]) is not type(first.body[1]):
                raise ValueError("a stack needs networks of one architecture")
        self.n_fourier, self.names = first.n_fourier, names
        self.act = first.body[1]
        # pairs, not a dict: ParameterDict sorts a dict's keys, and the parameter order must be
        # the ScoreMLP's so that optimiser-state indices mean the same in both
        self.stacked = nn.ParameterDict(
            [
                (
                    n.replace(".", "__"),
                    nn.Parameter(
                        torch.stack([dict(m.named_parameters())[n].detach() for m in nets])
                    ),
                )
                for n in names
            ]
        )
        self.layers = [i for i, m in enumerate(first.body) if isinstance(m, nn.Linear)]

    def _linear(self, h: Tensor, name: str) -> Tensor:
        w, b = self.stacked[f"{name}__weight"], self.stacked[f"{name}__bias"]
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    def forward(self, x: Tensor, log_level: Tensor) -> Tensor:
        feats = fourier_features(log_level.reshape(-1), self.n_fourier)
        h = torch.cat([x, feats.reshape(*log_level.shape, -1)], -1)
        for i in self.layers:
            h = self.act(self._linear(h, f"body__{i}"))
        return self._linear(h, "out")

    def member_state(self, k: int, tensors: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Member k's slice of ``tensors`` (default: the parameters) as a ScoreMLP state dict."""
        src = dict(self.stacked) if tensors is None else tensors
        return {n: src[n.replace(".", "__")][k].detach().clone() for n in self.names}
