"""Samplers for score models: ambient (DSM, MAD, oracle) and intrinsic (RSGM).

Ambient methods, forward SDE dx = f(x, t) dt + g(t) dW on [t_min, T] (``schedule``):

* ``"sde"`` (default): reverse SDE dx = [f - g^2 s] dt + g dW-bar by Euler-Maruyama on a grid
  uniform in t from T to t_min; the g^2 dt of each step is integrated exactly,
  d_tau = heat_time(t_k) - heat_time(t_{k+1}), so a step is
  x <- x - f(x, t_k) dt + d_tau s(x, t_k) + sqrt(d_tau) z.
* ``"pc"``: predictor-corrector (Song et al. 2021): at each t_k one Langevin corrector step
  x <- x + eps s + sqrt(2 eps) z with eps = 2 (snr |z| / |s|)^2 (norms averaged over the
  batch), then the Euler-Maruyama predictor step above.
* ``"ode"``: probability-flow ODE, written for y = x / alpha in lambda = log sigma
  (dy/dlambda = -sigma^2 s_VE(y, sigma), see :mod:`madbench.likelihood`), Heun's method with
  ``steps`` steps uniform in log sigma (2 score calls a step).
* ``"ode_adaptive"``: the same ODE with the adaptive dopri5 of :mod:`madbench.ode`
  (rtol = atol = 1e-5 by default).

Prior: x_T ~ N(0, std(T)^2 I) (the alpha(T) x0 part is neglected). Final denoising (default
``denoise="tweedie"``): the model's posterior mean at t_min, x0 = (x + std^2 s(x, t_min)) / alpha
(t_min); ``denoise="none"`` returns x_t_min / alpha(t_min). Both are on the data scale.
"projected" is ``manifold.project(raw)``.

Intrinsic methods (``method.intrinsic``), Brownian motion dX = g dB_M, heat time tau = heat_time:

* ``"grw"`` (default): geodesic random walk, the reverse SDE dX = g^2 s dt + g dB_M:
  x <- exp_x(d_tau P s(x, t_k) + sqrt(d_tau) P z) on a grid uniform in t.
* ``"ode"``: Riemannian probability-flow ODE dx/dlambda = -(tau / 2) P s, lambda = log tau, with
  ``steps`` exp-map midpoint steps (the midpoint's field is projected onto T_x M; second order).

Prior: ``manifold.sample_uniform``; no final denoising; raw = the last iterate (on M up to
rounding), projected = manifold.project(raw).

The state is float64 unless the method has a network (then the network's dtype); everything
runs on the method's device (``method.device``, else its network's, else the generator's);
noise is drawn on the generator's device, so a CPU generator seeds a CUDA run too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from madbench._utils import atomic_write
from madbench.likelihood import call_score, heat_time_range, ve_score
from madbench.ode import dopri5

AMBIENT_SAMPLERS = ("sde", "pc", "ode", "ode_adaptive")
INTRINSIC_SAMPLERS = ("grw", "ode")


def _setup(method: Any, generator: torch.Generator | None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the sampler state: the method's device (its ``device`` attribute, else
    its network's, else the generator's, else CPU) and the network's dtype (else float64)."""
    net = getattr(method, "net", None)
    params = list(net.parameters()) if net is not None else []
    dtype = params[0].dtype if params else torch.float64
    device = getattr(method, "device", None)
    if device is None:
        device = (
            params[0].device if params else (generator.device if generator is not None else "cpu")
        )
    return torch.device(device), dtype


def _randn(shape, generator, device, dtype) -> Tensor:
    """Gaussian noise drawn on the generator's device (seeded), then moved to ``device``."""
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def _heat(schedule, t: float) -> float:
    return float(schedule.heat_time(torch.tensor(t, dtype=torch.float64)))


def sample(
    method: Any,
    n: int,
    *,
    sampler: str | None = None,
    steps: int = 500,
    generator: torch.Generator | None = None,
    denoise: str = "tweedie",
    snr: float = 0.16,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> dict[str, Tensor]:
    """n samples of ``method`` (see module doc). Returns {"raw": (n, D), "projected": (n, D)}.

    ``sampler``: ambient "sde" (default), "pc", "ode", "ode_adaptive"; intrinsic "grw"
    (default), "ode". ``steps``: number of steps; ``denoise``: "tweedie" or "none" (ambient);
    ``snr``: the PC corrector's signal-to-noise ratio; ``rtol``/``atol``: "ode_adaptive" only.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    valid = INTRINSIC_SAMPLERS if method.intrinsic else AMBIENT_SAMPLERS
    sampler = sampler or valid[0]
    if sampler not in valid:
        kind = "intrinsic" if method.intrinsic else "ambient"
        raise ValueError(f"unknown {kind} sampler {sampler!r}; known: {', '.join(valid)}")
    if denoise not in ("tweedie", "none"):
        raise ValueError(f"denoise must be 'tweedie' or 'none', got {denoise!r}")
    device, dtype = _setup(method, generator)
    n, steps = int(n), int(steps)
    if method.intrinsic:
        # sample_uniform may be float32: re-project so the float64 state is on M to rounding
        x = method.manifold.sample_uniform(n, generator=generator).to(device, dtype)
        x = method.manifold.project(x)
        run = _grw if sampler == "grw" else _riemannian_ode
        raw = run(method, x, steps, generator)
        return {"raw": raw, "projected": method.manifold.project(raw)}
    if sampler in ("sde", "pc"):
        raw = _reverse_sde(method, n, steps, generator, device, dtype, sampler == "pc", snr)
        raw = _finish_x(method, raw, denoise)
    else:
        y = _pf_ode(method, n, steps, generator, device, dtype, sampler, rtol, atol)
        raw = _finish_y(method, y, denoise)
    return {"raw": raw, "projected": method.manifold.project(raw)}


def save_samples(
    path: str | Path,
    *,
    raw: Tensor,
    projected: Tensor,
    dist_to_manifold: Tensor,
    seed: int,
    steps: int,
    sampler: str | None,
    **extra: float,
) -> None:
    """Write samples as an .npz (atomically): raw, projected, dist_to_manifold, seed, steps,
    sampler ("default" for the method's default) and any extra scalar (e.g. wall_time_s).
    The format of ``madbench sample`` and of the samples.npz ``madbench evaluate`` writes."""
    arrays = dict(
        raw=raw.detach().cpu().numpy(),
        projected=projected.detach().cpu().numpy(),
        dist_to_manifold=dist_to_manifold.detach().cpu().numpy(),
        seed=np.int64(seed),
        steps=np.int64(steps),
        sampler=np.str_(sampler or "default"),
        **{k: np.float64(v) for k, v in extra.items()},
    )

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


# ------------------------------------------------------------------------------ ambient
def _reverse_sde(method, n, steps, generator, device, dtype, corrector: bool, snr: float):
    """Euler-Maruyama (optionally with a Langevin corrector) from T to t_min; returns x_t_min."""
    sch = method.schedule
    ts = torch.linspace(sch.T, sch.t_min, steps + 1, dtype=torch.float64).tolist()
    x = float(sch.std(torch.tensor(sch.T, dtype=torch.float64))) * _randn(
        (n, method.manifold.ambient_dim), generator, device, dtype
    )
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        if corrector:
            x = _langevin_step(method, x, t0, snr, generator)
        d_tau = _heat(sch, t0) - _heat(sch, t1)
        s = call_score(method.score, x, t0, None)
        drift = sch.drift(x, torch.tensor(t0, dtype=x.dtype, device=x.device)) * (t0 - t1)
        z = _randn(x.shape, generator, device, dtype)
        x = x - drift + d_tau * s + math.sqrt(d_tau) * z
    return x


def _langevin_step(method, x: Tensor, t: float, snr: float, generator) -> Tensor:
    """One corrector step x + eps s + sqrt(2 eps) z, eps = 2 (snr mean|z| / mean|s|)^2."""
    s = call_score(method.score, x, t, None)
    z = _randn(x.shape, generator, x.device, x.dtype)
    s_norm = s.norm(dim=-1).mean().clamp_min(torch.finfo(x.dtype).tiny)
    eps = 2 * (snr * z.norm(dim=-1).mean() / s_norm) ** 2
    return x + eps * s + torch.sqrt(2 * eps) * z


def _finish_x(method, x: Tensor, denoise: str) -> Tensor:
    """Data-scale output from x at t_min: Tweedie posterior mean or x / alpha(t_min)."""
    sch = method.schedule
    tm = torch.tensor(sch.t_min, dtype=torch.float64)
    a, sd = float(sch.alpha(tm)), float(sch.std(tm))
    if denoise == "tweedie":
        x = x + sd**2 * call_score(method.score, x, sch.t_min, None)
    return x / a


def _finish_y(method, y: Tensor, denoise: str) -> Tensor:
    """Data-scale output from y = x / alpha at sigma_min (Tweedie in y, or y itself)."""
    if denoise == "none":
        return y
    sch = method.schedule
    return y + sch.sigma_min**2 * ve_score(method.score, sch, y, sch.sigma_min, None)


def _pf_ode(method, n, steps, generator, device, dtype, sampler, rtol, atol) -> Tensor:
    """Probability-flow ODE in (y, log sigma) from sigma_max to sigma_min; returns y."""
    sch = method.schedule
    y = sch.sigma_max * _randn((n, method.manifold.ambient_dim), generator, device, dtype)

    def v(lam: float, yy: Tensor) -> Tensor:
        sigma = math.exp(lam)
        return -(sigma**2) * ve_score(method.score, sch, yy, sigma, None)

    lam0, lam1 = math.log(sch.sigma_max), math.log(sch.sigma_min)
    if sampler == "ode_adaptive":
        return dopri5(v, y, lam0, lam1, rtol=rtol, atol=atol)[0]
    h = (lam1 - lam0) / steps
    for k in range(steps):
        lam = lam0 + k * h
        k1 = v(lam, y)
        k2 = v(lam + h, y + h * k1)
        y = y + 0.5 * h * (k1 + k2)
    return y


# ------------------------------------------------------------------------------ intrinsic
def _grw(method, x: Tensor, steps: int, generator) -> Tensor:
    """Geodesic random walk for the reverse of dX = g dB_M from T to t_min."""
    sch, man = method.schedule, method.manifold
    ts = torch.linspace(sch.T, sch.t_min, steps + 1, dtype=torch.float64).tolist()
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        d_tau = _heat(sch, t0) - _heat(sch, t1)
        s = call_score(method.score, x, t0, None)
        z = _randn(x.shape, generator, x.device, x.dtype)
        x = man.exp(x, man.to_tangent(x, d_tau * s + math.sqrt(d_tau) * z))
    return x


def _riemannian_ode(method, x: Tensor, steps: int, generator) -> Tensor:
    """Riemannian PF ODE in lambda = log tau from tau(T) to tau(t_min), exp-map midpoint steps."""
    sch, man = method.schedule, method.manifold
    tau_min, tau_max = heat_time_range(sch)

    def v(lam: float, z: Tensor) -> Tensor:
        tau = math.exp(lam)
        s = call_score(method.score, z, sch.t_of_heat_time(tau), None)
        return -0.5 * tau * man.to_tangent(z, s)

    lam0, lam1 = math.log(tau_max), math.log(tau_min)
    h = (lam1 - lam0) / steps
    for k in range(steps):
        lam = lam0 + k * h
        x_mid = man.exp(x, 0.5 * h * v(lam, x))
        x = man.exp(x, h * man.to_tangent(x, v(lam + 0.5 * h, x_mid)))
    return x
