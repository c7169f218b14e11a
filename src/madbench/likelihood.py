"""Log-likelihoods through probability-flow ODEs with the exact divergence (docs/science.md 1, 4).

Ambient models (DSM, MAD, oracle) on R^D. Every schedule's marginal at t is the VE law
p_sigma = p_data * N(0, sigma^2 I) of y = x / alpha(t) with sigma = sigma(t), and its
probability-flow ODE is the VE one in y (Karras et al. 2022). We integrate it in
lambda = log sigma, which keeps it non-stiff as sigma -> 0 (near M the normal part of
-sigma^2 s has eigenvalues ~1 instead of ~1/sigma):

    dy/dlambda = v(y, lambda) = -sigma^2 s_VE(y, sigma),  s_VE(y, sigma) = alpha s(alpha y, t),
    log p_sigma_min(y(lambda_min)) = log N(y(lambda_max); 0, sigma_max^2 I) + int div_y v dlambda,

and log p_t_min(x) = log p_sigma_min(x / alpha) - D log alpha(t_min) (density of x w.r.t.
Lebesgue measure on R^D). The prior at T is the Gaussian N(0, sigma_max^2 I) in y, i.e.
N(0, std(T)^2 I) in x (the data's contribution alpha(T) x0 is neglected, as in the samplers).

Intrinsic models (RSGM) on a Riemannian manifold M (metric induced by the ambient space):
Brownian motion dX = g dB_M has marginals p_tau at heat time tau = heat_time(t); the Riemannian
probability-flow ODE is dx/dtau = -s(x, t(tau)) / 2 (s a tangent vector). Integrated in
lambda = log tau, with div_M f = tr(P_x J_f) (P_x the tangent projection, J_f the ambient
Jacobian of any extension of f):

    dx/dlambda = -(tau / 2) P_x s(x, t),   log p_tau_min(x) = -log vol(M) + int div_M v dlambda.

Densities on M are w.r.t. the Riemannian volume of the ambient-induced (Frobenius) metric.

Both use an adaptive solver (default: the dopri5 of :mod:`madbench.ode`, which never steps past
the end point; other names go to torchdiffeq) in float64 with an L-infinity error norm over the
whole batch (every point and the log-density accumulator meet the tolerance, not only their
RMS), and the exact divergence by D reverse-mode passes per evaluation (D <= ~20). ``nfe``
counts calls of the ODE right-hand side (each costs one score evaluation plus D backward passes;
with projection, one extra call per accepted step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from madbench.manifolds.base import RiemannianManifold
from madbench.ode import ODEStats, dopri5
from madbench.schedules import Schedule

ScoreFn = Callable[[Tensor, Tensor], Tensor]

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


# ------------------------------------------------------------------------------ score helpers
def infer_score_dtype(score_fn: ScoreFn) -> torch.dtype | None:
    """dtype of the network behind a bound ``Method.score`` (None: call it in the state dtype)."""
    net = getattr(getattr(score_fn, "__self__", None), "net", None)
    if isinstance(net, nn.Module):
        for p in net.parameters():
            return p.dtype
    return None


def call_score(
    score_fn: ScoreFn, x: Tensor, t: Tensor | float, dtype: torch.dtype | None
) -> Tensor:
    """score_fn(x, t) with t broadcast to shape (n,), x cast to ``dtype`` (if given) and the
    result cast back to x's dtype; raises if the shape is wrong."""
    xs = x if dtype is None else x.to(dtype)
    tt = torch.as_tensor(t, dtype=xs.dtype, device=x.device)
    tt = tt.expand(x.shape[0]) if tt.ndim == 0 else tt
    s = score_fn(xs, tt)
    if s.shape != x.shape:
        raise ValueError(f"score_fn returned shape {tuple(s.shape)} for x of {tuple(x.shape)}")
    return s.to(x.dtype)


def _f64(v: float | Tensor, device: torch.device | str = "cpu") -> Tensor:
    return torch.as_tensor(v, dtype=torch.float64, device=device)


def ve_score(
    score_fn: ScoreFn, schedule: Schedule, y: Tensor, sigma: float, dtype: torch.dtype | None
) -> Tensor:
    """Score of p_data * N(0, sigma^2 I) at y from a schedule-time score: alpha s(alpha y, t),
    t = t_of_sigma(sigma)."""
    t = schedule.t_of_sigma(_f64(sigma, y.device))
    a = schedule.alpha(t).to(y.dtype)
    return a * call_score(score_fn, a * y, t, dtype)


class _Counted:
    """An ODE right-hand side that counts its calls (``n``: the number of function evaluations)."""

    def __init__(self, fn: Callable[[float, Tensor], Tensor]):
        self.fn, self.n = fn, 0

    def __call__(self, lam: float, state: Tensor) -> Tensor:
        self.n += 1
        return self.fn(lam, state)


# ------------------------------------------------------------------------------ divergence
def field_and_divergence(
    field: Callable[[Tensor], Tensor], x: Tensor, proj: Callable[[Tensor, Tensor], Tensor] | None
) -> tuple[Tensor, Tensor]:
    """v = field(x) (n, D) and its exact divergence (n,), by D reverse-mode passes.

    ``proj`` None: div v = tr J. Otherwise proj(x, w) is the tangent projection P_x w and the
    result is the Riemannian divergence tr(P_x J) = sum_j <grad v_j, P_x e_j>.
    """
    n, d = x.shape
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = field(xg)
        if not v.requires_grad:
            raise RuntimeError(
                "the score function is not differentiable w.r.t. x (its output has no autograd "
                "graph); the exact divergence needs it"
            )
        div = torch.zeros(n, dtype=x.dtype, device=x.device)
        for j in range(d):
            (g,) = torch.autograd.grad(v[:, j].sum(), xg, retain_graph=j < d - 1)
            if proj is None:
                div = div + g[:, j]
            else:
                e = torch.zeros_like(x)
                e[:, j] = 1.0
                div = div + (g * proj(x, e)).sum(-1)
    return v.detach(), div.detach()


def _linf_norm(err: Tensor) -> Tensor:
    return err.abs().max()


def _solve(
    rhs, state0: Tensor, lam0: float, lam1: float, rtol, atol, solver: str, project=None
) -> tuple[Tensor, ODEStats | None]:
    """Integrate state' = rhs(lam, state) from lam0 to lam1; returns (final state, stats).

    "dopri5": :func:`madbench.ode.dopri5` (never evaluates rhs outside [lam0, lam1]; projects
    accepted steps with ``project`` if given); any other name goes to torchdiffeq.odeint (its
    adaptive solvers may evaluate slightly beyond lam1; no projection; stats None).
    """
    if solver == "dopri5":
        return dopri5(rhs, state0, lam0, lam1, rtol=rtol, atol=atol, project=project)
    options = {"norm": _linf_norm} if solver in ADAPTIVE_SOLVERS else None
    lam = torch.tensor([lam0, lam1], dtype=state0.dtype, device=state0.device)
    f = lambda t, y: rhs(float(t), y)
    return odeint(f, state0, lam, rtol=rtol, atol=atol, method=solver, options=options)[-1], None


def _check_points(x: Tensor, d: int | None = None) -> None:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (n, D) with n > 0, got {tuple(x.shape)}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"x must have {d} columns, got {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains non-finite values")


def _finite_flags(logp: Tensor) -> dict[str, Any]:
    bad = int((~torch.isfinite(logp)).sum())
    return {"finite": bad == 0, "n_nonfinite": bad}


def gaussian_mixture_log_prob(
    y: Tensor, centers: Tensor, std: float, chunk: int = 2**22
) -> tuple[Tensor, Tensor]:
    """log (1/N) sum_i N(y; c_i, std^2 I) at y (n, D) for centres c (N, D), and the delta-method
    standard error of that log (both (n,), float64).

    With centres drawn from the data law it is a consistent estimate of the data law noised by
    N(0, std^2 I): the end-point density of the probability-flow ODE when no closed form
    exists. The standard error is sqrt(var_i w_i / N) / mean_i w_i, w_i = N(y; c_i, std^2 I).
    """
    y64, c = y.double(), centers.to(device=y.device, dtype=torch.float64)
    rows = max(1, chunk // max(1, c.shape[0]))
    logs, ses = [], []
    for yb in y64.split(rows):
        logw = -((yb[:, None, :] - c[None]) ** 2).sum(-1) / (2 * std**2)  # (b, N)
        lse = torch.logsumexp(logw, -1)
        w = torch.exp(logw - lse[:, None]) * c.shape[0]  # w_i / mean w
        logs.append(lse - math.log(c.shape[0]))
        ses.append(w.std(-1) / math.sqrt(c.shape[0]))
    d = y.shape[1]
    return torch.cat(logs) - 0.5 * d * math.log(2 * math.pi * std**2), torch.cat(ses)


def heat_kernel_mixture_log_prob(
    manifold: RiemannianManifold, x: Tensor, centers: Tensor, tau: float, chunk: int = 2**20
) -> tuple[Tensor, Tensor]:
    """log (1/N) sum_i p_tau(x | c_i) at x (n, D) on M for centres c (N, D), w.r.t. the
    Riemannian volume, and the delta-method standard error of that log (both (n,), float64):
    with centres from the data law, a consistent estimate of the data law after Brownian motion
    for heat time tau (the end-point density of the Riemannian probability-flow ODE)."""
    c = centers.to(device=x.device, dtype=torch.float64)
    rows = max(1, chunk // max(1, c.shape[0]))
    logs, ses = [], []
    for xb in x.double().split(rows):
        b, n_c = xb.shape[0], c.shape[0]
        xr = xb[:, None, :].expand(b, n_c, -1).reshape(b * n_c, -1)
        cr = c[None].expand(b, n_c, -1).reshape(b * n_c, -1)
        logw = manifold.heat_kernel_log_prob(xr, cr, tau).double().reshape(b, n_c)
        lse = torch.logsumexp(logw, -1)
        w = torch.exp(logw - lse[:, None]) * n_c
        logs.append(lse - math.log(n_c))
        ses.append(w.std(-1) / math.sqrt(n_c))
    return torch.cat(logs), torch.cat(ses)


def gaussian_log_prob(y: Tensor, std: float) -> Tensor:
    """log N(y; 0, std^2 I_D), shape (n,)."""
    d = y.shape[1]
    return -0.5 * (y * y).sum(-1) / std**2 - 0.5 * d * math.log(2 * math.pi * std**2)


# ------------------------------------------------------------------------------ ambient
def ambient_log_likelihood(
    score_fn: ScoreFn,
    schedule: Schedule,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "dopri5",
    score_dtype: torch.dtype | None = None,
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
    sigma_start: float | None = None,
) -> dict[str, Any]:
    """log p_t0(x) of an ambient score model, w.r.t. Lebesgue measure on R^D (module doc), at the
    time t0 = t_of_sigma(sigma_start) of noise level ``sigma_start`` (default: t_min).

    x: (n, D) points in the schedule's variable at t0 (for VP: alpha(t0) times a data point).
    ``prior_log_prob(y)``: log density at sigma_max of the VE-scale end point y (n, D); default
    log N(y; 0, sigma_max^2 I), which neglects the data (see :func:`gaussian_mixture_log_prob`
    for a consistent estimate of the exact p_sigma_max). ``score_dtype``: dtype the score is
    called in (default: the network's dtype behind a bound ``Method.score``, else float64).
    Returns logp (n,) float64, nfe, prior_logp, delta_logp (the divergence integral), y_T (the
    ODE end point at sigma_max, VE scale), finite / n_nonfinite and the solver facts.
    """
    _check_points(x)
    dtype = score_dtype if score_dtype is not None else infer_score_dtype(score_fn)
    n, d = x.shape
    s_min, a_min = _ambient_start(schedule, sigma_start)
    s_max = schedule.sigma_max
    rhs = _Counted(_ve_flow(score_fn, schedule, dtype, d))
    y0 = x.double() / a_min
    state0 = torch.cat([y0, torch.zeros(n, 1, dtype=torch.float64, device=x.device)], -1)
    end, _ = _solve(rhs, state0, math.log(s_min), math.log(s_max), rtol, atol, solver)
    y_t, delta = end[:, :d], end[:, d]
    prior = gaussian_log_prob(y_t, s_max) if prior_log_prob is None else prior_log_prob(y_t)
    logp = prior + delta - d * math.log(a_min)
    return {
        "logp": logp,
        "nfe": rhs.n,
        "prior_logp": prior,
        "delta_logp": delta,
        "y_T": y_t,
        **_finite_flags(logp),
        "solver": solver,
        "rtol": rtol,
        "atol": atol,
        "variable": "log sigma (VE-equivalent noise level)",
        "sigma_min": s_min,
        "sigma_max": s_max,
    }


def _ve_flow(score_fn: ScoreFn, schedule: Schedule, dtype, d: int):
    """(lambda, state) -> d state / d lambda of the VE probability-flow ODE in lambda = log sigma
    with the log-density accumulator: state = [y (n, D), delta (n, 1)]."""

    def rhs(lam: float, state: Tensor) -> Tensor:
        sigma = math.exp(lam)
        v, div = field_and_divergence(
            lambda y: -(sigma**2) * ve_score(score_fn, schedule, y, sigma, dtype),
            state[:, :d],
            None,
        )
        return torch.cat([v, div.unsqueeze(-1)], -1)

    return rhs


def _ambient_start(schedule: Schedule, sigma_start: float | None) -> tuple[float, float]:
    """(sigma, alpha) where the ambient ODE starts: sigma_start (default sigma_min), checked to
    lie in [sigma_min, sigma_max), and alpha at its time."""
    s_min, s_max = schedule.sigma_min, schedule.sigma_max
    if sigma_start is None:
        return s_min, float(schedule.alpha(_f64(schedule.t_min)))
    if not s_min * (1 - 1e-9) <= sigma_start < s_max:
        raise ValueError(f"sigma_start {sigma_start} outside [{s_min}, {s_max}) of {schedule!r}")
    return float(sigma_start), float(schedule.alpha(schedule.t_of_sigma(_f64(sigma_start))))


def on_manifold_log_likelihood(logp_ambient: Tensor, sigma: float | Tensor, codim: int) -> Tensor:
    """Small-sigma estimate of log p_data on M: log p_sigma(x0) + (codim / 2) log(2 pi sigma^2).

    For x0 on M this tends to log p_data(x0) as sigma -> 0 (docs/science.md 4), a density w.r.t. the
    volume that the ambient metric induces on M (counting measure for finite sets, codim = D).
    ``logp_ambient`` must be the VE-scale density (of y = x / alpha) at noise level sigma.
    """
    s = torch.as_tensor(sigma, dtype=logp_ambient.dtype, device=logp_ambient.device)
    if not torch.all(s > 0):
        raise ValueError("sigma must be > 0")
    if codim < 0:
        raise ValueError(f"codim must be >= 0, got {codim}")
    return logp_ambient + 0.5 * codim * torch.log(2 * math.pi * s**2)


# ------------------------------------------------------------------------------ intrinsic
def heat_time_range(schedule: Schedule, tau_start: float | None = None) -> tuple[float, float]:
    """(heat_time(t_min), heat_time(T)): the range of a Riemannian probability-flow ODE, which
    needs a positive end heat time (ValueError otherwise); with ``tau_start`` (checked to lie
    in that range) in place of heat_time(t_min)."""
    tau_min = float(schedule.heat_time(_f64(schedule.t_min)))
    tau_max = float(schedule.heat_time(_f64(schedule.T)))
    if not tau_min > 0:
        raise ValueError(
            f"heat_time(t_min) = {tau_min}: the Riemannian ODE needs a positive end heat time "
            f"(schedule {schedule!r}); use a schedule with heat_time(t_min) > 0"
        )
    if tau_start is not None and not tau_min * (1 - 1e-9) <= tau_start < tau_max:
        raise ValueError(f"tau_start {tau_start} outside [{tau_min}, {tau_max}) of {schedule!r}")
    return (tau_min if tau_start is None else float(tau_start)), tau_max


def _riemannian_flow(score_fn, manifold, schedule, dtype, tau_range: tuple[float, float]):
    """(lambda, state) -> d state / d lambda of the Riemannian probability-flow ODE in
    lambda = log tau with the log-density accumulator: state = [x (n, D), delta (n, 1)]."""
    tau_min, tau_max = tau_range
    d = manifold.ambient_dim

    def rhs(lam: float, state: Tensor) -> Tensor:
        tau = math.exp(lam)
        t = schedule.t_of_heat_time(min(max(tau, tau_min), tau_max))  # torchdiffeq overshoots

        def field(z: Tensor) -> Tensor:
            return -0.5 * tau * manifold.to_tangent(z, call_score(score_fn, z, t, dtype))

        v, div = field_and_divergence(field, state[:, :d], manifold.to_tangent)
        return torch.cat([v, div.unsqueeze(-1)], -1)

    return rhs


def intrinsic_log_likelihood(
    score_fn: ScoreFn,
    manifold: RiemannianManifold,
    schedule: Schedule,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "dopri5",
    score_dtype: torch.dtype | None = None,
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
    tau_start: float | None = None,
) -> dict[str, Any]:
    """log p_tau0(x) of an intrinsic (RSGM) score model at x on M, w.r.t. the Riemannian
    volume of the ambient-induced metric (module doc), at heat time tau0 = ``tau_start``
    (default tau_min = heat_time(t_min), which must be > 0).
    ``prior_log_prob(x_T)``: log density at tau_max = heat_time(T) (default: uniform, whose
    error is O(e^{-lambda_1 tau_max}), lambda_1 = 1 on S^2 and 1/2 on SO(3) (Frobenius): see
    :func:`heat_kernel_mixture_log_prob` for a consistent estimate).

    The ODE is integrated in ambient coordinates; with ``solver="dopri5"`` every accepted step
    is projected back onto M (projection method; ``max_projection`` is the largest correction,
    a measure of the drift per step). Returns logp (n,) float64, nfe, delta_logp, x_T (end point
    at heat time tau_max), max_dist_to_manifold (of x_T), max_projection, finite flags.
    """
    _check_points(x, manifold.ambient_dim)
    dtype = score_dtype if score_dtype is not None else infer_score_dtype(score_fn)
    n, d = x.shape
    tau_min, tau_max = heat_time_range(schedule, tau_start)
    rhs = _Counted(_riemannian_flow(score_fn, manifold, schedule, dtype, (tau_min, tau_max)))
    state0 = torch.cat([x.double(), torch.zeros(n, 1, dtype=torch.float64, device=x.device)], -1)

    def project(state: Tensor) -> Tensor:
        return torch.cat([manifold.project(state[:, :d]), state[:, d:]], -1)

    lam0, lam1 = math.log(tau_min), math.log(tau_max)
    end, stats = _solve(rhs, state0, lam0, lam1, rtol, atol, solver, project)
    x_t, delta = end[:, :d], end[:, d]
    uniform = torch.full_like(delta, -manifold.log_volume)
    prior = uniform if prior_log_prob is None else prior_log_prob(x_t)
    logp = prior + delta
    return {
        "logp": logp,
        "nfe": rhs.n,
        "prior_logp": prior,
        "delta_logp": delta,
        "x_T": x_t,
        "max_dist_to_manifold": float(manifold.distance_to_manifold(x_t).max()),
        "max_projection": stats.max_projection if stats is not None else float("nan"),
        **_finite_flags(logp),
        "solver": solver,
        "rtol": rtol,
        "atol": atol,
        "variable": "log heat time",
        "tau_min": tau_min,
        "tau_max": tau_max,
        "volume_convention": "Riemannian volume of the ambient-induced metric",
    }
