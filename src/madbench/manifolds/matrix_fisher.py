"""Matrix Fisher law MF(F) on SO(3): normaliser, mean and exact sampler (docs/science.md 2.3).

MF(F) has density exp(tr(F^T R)) / c(F) w.r.t. the normalised Haar measure. With the proper
SVD F = U diag(s) V^T (U, V in SO(3), s1 >= s2 >= |s3|), c(F) = c(s) and
E[R] = U diag(d) V^T, d_i = d log c / d s_i. Lee (2018):

    c(s) = int_{-1}^{1} 1/2 I0(a) I0(b) exp(s3 u) du,  a = (s1-s2)(1-u)/2, b = (s1+s2)(1+u)/2.

Numerics (float64 throughout; inputs of any dtype):

* gamma = s2 + s3 < ``ASYMPTOTIC_GAMMA``: Lee's integral after u = -cos(2 theta), with
  exponentially scaled Bessel functions (log c = s1 + s2 + s3 + log J),

      J = int_0^{pi/2} sin(2 theta) i0e(2 alpha cos^2) i0e(2 beta sin^2) e^{-2 gamma cos^2} d theta,

  alpha = (s1-s2)/2, beta = (s1+s2)/2. The integrand is entire in theta, with end layers of
  widths ~ 1/sqrt(alpha + gamma) (theta = pi/2) and 1/sqrt(beta) (theta = 0).
  - scale = max(alpha + gamma, beta) < 128 (every point MAD trains on): a fixed
    Gauss-Legendre rule in theta, 16 / 24 / 32 / 48 nodes for scale below 2 / 8 / 24 / 128
    (error < 1e-12 against a 200-node log-variable rule, tests/test_so3.py). Below scale 24
    the Bessel functions (arguments <= 2 scale) may come from their power series (positive
    terms, Horner in float64): on CPU a few vectorised multiply-adds beat torch's scalar
    i0e/i1e (~30 ns a value) once a group has about a thousand nodes. Points are grouped by
    rule with one sort, so the cost is a few hundred vector operations per batch.
  - larger scales: each half theta in [0, pi/4], [pi/4, pi/2] is integrated in the
    logarithmic distance eps to its end (eps = (pi/4) e^{-lambda}, Gauss-Legendre in lambda on
    [0, Lambda]) plus a short Gauss-Legendre panel on [0, eps_min]; eps_min sits well below the
    end layer widths, so the integrand is resolved for any s.
* gamma >= ``ASYMPTOTIC_GAMMA``: the Laplace expansion of c as a Bingham integral on S^3
  (tr(S R(q)) = trS - sum_k lambda_k y_k^2, lambda_1 = 2(s2+s3), lambda_2 = 2(s1+s3),
  lambda_3 = 2(s1+s2), q = (q0, y)), exact up to O(e^{-2 gamma}) once summed:

      c = e^{trS} (8 pi)^{-1/2} prod_k (4 v_k)^{1/2} sum_n binom(2n, n) 4^{-n} E|Y|^{2n},
      Y ~ N(0, diag(v)), v_k = 1 / (2 lambda_k),

  an asymptotic series in v <= 1/60, summed by 8-node generalised Gauss-Laguerre quadrature of
  its Borel-type integral P = pi^{-1/2} int tau^{-1/2} e^{-tau} prod_k (1 - 2 tau v_k)^{-1/2}
  (exact for the first 16 terms; agrees with the dense quadrature to 1e-15 in d for
  gamma >= 15). The small-sigma limit E[R] -> U V^T (d_i -> 1) is its leading term,
  1 - d_i = sum_{k != i} 2 v_k + O(v^2).
"""

from __future__ import annotations

import math
from functools import cache, partial
from types import SimpleNamespace

import numpy as np
import torch
from scipy.special import roots_genlaguerre
from torch import Tensor

from madbench._utils import check_all, fixed_work, tensor_cache
from madbench.manifolds._rotations import quaternion_to_matrix
from madbench.manifolds._svd3 import proper_svd3

__all__ = [
    "ASYMPTOTIC_GAMMA",
    "bingham_matrix",
    "log_normaliser",
    "log_normaliser_and_mean",
    "log_normaliser_and_mean_diag",
    "mean",
    "proper_svd",
    "sample_matrix_fisher",
]

ASYMPTOTIC_GAMMA = 15.0
_LAGUERRE_NODES = 8
# Fixed theta rule by scale: (largest scale, nodes, power-series terms of the Bessel functions,
# 0 = torch's i0e/i1e). The series needs 16 / 31 / 59 terms for arguments 2 scale <= 4 / 16 / 48.
_SERIES_MIN = 1024  # points x nodes of a group from which the Bessel series beats torch's
_MIN_GROUP = 32  # points: a smaller plain-rule group joins the next rule
_PLAIN_TIERS = ((2.0, 16, 16), (8.0, 24, 31), (24.0, 32, 59), (128.0, 48, 0))
# rows: 1 - d_i = [1, 1, 0]_i + row_i . (E_a, E_b, E[cos^2]) (see _plain_tier)
_MOMENTS_TO_DELTA = ((-1.0, -1.0, 0.0), (1.0, -1.0, 0.0), (0.0, 0.0, 2.0))
# Gauss-Legendre nodes per half in the log variable, by tier of the log-range Lambda.
_LOG_NODES = (24, 48, 96)
_TIER_LAMBDA = (4.0, 12.0)
_REM_NODES = 6  # nodes of the end panel [0, eps_min]
_EPS_FACTOR = 0.3  # eps_min = _EPS_FACTOR / sqrt(1 + 2 * scale)


def proper_svd(f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """F = U diag(s) V^T with U, V in SO(3), s1 >= s2 >= |s3| (s3 < 0 iff det F < 0).

    f: (..., 3, 3). Returns U (..., 3, 3), s (..., 3), V (..., 3, 3) in f's dtype. Elementwise
    torch (:mod:`madbench.manifolds._svd3`), ~6x faster than LAPACK's batched SVD at 4096
    matrices on a CPU and as accurate.
    """
    return proper_svd3(f)


# ----------------------------------------------------------------------------- asymptotics
@cache
def _laguerre() -> tuple[np.ndarray, np.ndarray]:
    """Gauss nodes/weights for int_0^inf tau^{-1/2} e^{-tau} g(tau) d tau / sqrt(pi)."""
    tau, w = roots_genlaguerre(_LAGUERRE_NODES, -0.5)
    return tau, w / math.sqrt(math.pi)


def _rule_bounds() -> list[float]:
    """Upper scale bounds of the quadrature rules, in the order of ``_diag``'s rule list: the
    plain theta rules, then the log-variable node tiers (their bounds _TIER_LAMBDA on the log
    range Lambda(scale) = log((pi/4) / _EPS_FACTOR) + log1p(2 scale) / 2, as scales)."""
    lam0 = math.log(math.pi / 4 / _EPS_FACTOR)
    log_tiers = [math.expm1(2 * (lam - lam0)) / 2 for lam in _TIER_LAMBDA]
    return [b for b, _, _ in _PLAIN_TIERS] + log_tiers


@tensor_cache
def _constants(dtype: torch.dtype, device: torch.device) -> SimpleNamespace:
    """Small constant tensors of the hot path, made once per dtype and device."""

    def tensor(x) -> Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)

    tau, w = _laguerre()
    return SimpleNamespace(
        others=tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0]]),  # x @ others = sums of the other two
        two_tau=tensor(2 * tau)[:, None],
        laguerre_tau=tensor(tau),
        laguerre_w=tensor(w),
        diff_sum=tensor([[1, 1], [-1, 1]]),  # (s1, s2) @ diff_sum = (s1 - s2, s1 + s2)
        moments_to_delta=tensor(_MOMENTS_TO_DELTA).t(),
        delta_offset=tensor([1, 1, 0]),
        rule_bounds=tensor(_rule_bounds()),
        # rows inside the range of the plain rule, the log-variable rule and the asymptotics
        fixed_work_stand_ins=tensor([[1.0, 0.5, 0.25], [300.0, 2.0, 1.0], [40.0, 30.0, 20.0]]),
    )


def _asymptotic(s: Tensor) -> tuple[Tensor, Tensor]:
    """(log c, 1 - d) for gamma = s2 + s3 >= ``ASYMPTOTIC_GAMMA`` (module docstring), float64.

    P = sum_n binom(2n, n) 4^{-n} E|Y|^{2n} is the Gauss-Laguerre sum
    sum_k w_k prod_i (1 - 2 tau_k v_i)^{-1/2} (generalised Laguerre weight tau^{-1/2} e^{-tau}),
    exact for its first 2N terms; dP/dv_i = sum_k w_k f(tau_k) tau_k / (1 - 2 tau_k v_i).
    """
    k = _constants(s.dtype, s.device)
    v = 0.25 / (s @ k.others)  # (m, 3): 1 / (4 lambda_k), lambda_k = sum of the other two
    inv = 1 / (1 - k.two_tau * v[:, None, :])  # (m, N, 3); 1 - ... > 0.2 for gamma >= 15
    wf = k.laguerre_w * torch.sqrt(inv.prod(-1))  # (m, N)
    big_p = wf.sum(-1)
    d_p = torch.bmm((wf * k.laguerre_tau)[:, None, :], inv).squeeze(1)  # (m, 3)
    log_c = s.sum(-1) + torch.log(big_p * (4 * v).prod(-1).sqrt()) - 0.5 * math.log(8 * math.pi)
    term = 2 * v + 4 * v * v * d_p / big_p[:, None]  # (m, 3), index k
    return log_c, term @ k.others  # 1 - d_i = sum over k != i


# ----------------------------------------------------------------------------- quadrature
@cache
def _gl(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def _log_range(scale: Tensor) -> Tensor:
    """Lambda = log((pi/4) / eps_min) for a half whose end layer has width 1/sqrt(2 scale)."""
    return math.log(math.pi / 4 / _EPS_FACTOR) + 0.5 * torch.log1p(2 * scale)


def _half_nodes(scale: Tensor, n_log: int) -> tuple[Tensor, Tensor]:
    """Distances eps to one end of [0, pi/2] and log weights (incl. d theta), (m, N)."""
    dev, dt = scale.device, scale.dtype
    x, w = (torch.as_tensor(a, dtype=dt, device=dev) for a in _gl(n_log))
    xr, wr = (torch.as_tensor(a, dtype=dt, device=dev) for a in _gl(_REM_NODES))
    lam_max = _log_range(scale)[:, None]
    eps_min = (math.pi / 4) * torch.exp(-lam_max)
    lam = lam_max * (x + 1) / 2
    eps_log = (math.pi / 4) * torch.exp(-lam)
    logw_log = torch.log(lam_max * w / 2) + torch.log(eps_log)  # d theta = eps d lambda
    eps_rem = eps_min * (xr + 1) / 2
    logw_rem = torch.log(eps_min * wr / 2).expand_as(eps_rem)
    return torch.cat([eps_log, eps_rem], -1), torch.cat([logw_log, logw_rem], -1)


@tensor_cache
def _theta_rule(n: int, dtype: torch.dtype, device: torch.device) -> SimpleNamespace:
    """The n-node Gauss-Legendre rule on theta in [0, pi/2], as the tensors _plain_tier uses:
    cs = (cos^2, sin^2) (2, 1, n), minus_2c2 = -2 cos^2 (n,), w = sin(2 theta) d theta (n,)
    and moments = (cos^2, sin^2, cos^2, 1) (4, n, 1)."""
    x, w = _gl(n)
    theta = (x + 1) * math.pi / 4
    c2 = np.cos(theta) ** 2

    def tensor(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return SimpleNamespace(
        cs=tensor(np.stack([c2, 1 - c2])[:, None, :]),
        minus_2c2=tensor(-2 * c2),
        w=tensor(w * math.pi / 4 * np.sin(2 * theta)),
        moments=tensor(np.stack([c2, 1 - c2, c2, np.ones_like(c2)])[:, :, None]),
    )


@tensor_cache
def _series_coefficients(
    n_terms: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, ...]:
    """n_terms tensors (2, 1, 1, 1) of 1/(k!)^2 and 1/(k! (k+1)!), highest k first."""
    c = [
        [1 / math.factorial(k) ** 2, 1 / (math.factorial(k) * math.factorial(k + 1))]
        for k in reversed(range(n_terms))
    ]
    return tuple(torch.tensor(c, dtype=dtype, device=device)[:, :, None, None, None].unbind(0))


def _bessel_i01_series(x: Tensor, n_terms: int) -> tuple[Tensor, Tensor]:
    """(I0(x), I1(x)) for 0 <= x (unscaled): I0 = sum t^k / k!^2, I1 = x/2 sum t^k / (k! (k+1)!),
    t = x^2 / 4, by Horner. Every term is positive, so float64 keeps ~1e-16 relative accuracy;
    16 / 31 / 59 terms reach it for x <= 4 / 16 / 48."""
    coef = _series_coefficients(n_terms, x.dtype, x.device)
    t = x * x / 4
    p = coef[0].expand(2, *x.shape)
    for c in coef[1:]:
        p = torch.addcmul(c, p, t)
    return p[0], p[1] * (x / 2)


def _plain_tier(s: Tensor, n_nodes: int, n_terms: int) -> tuple[Tensor, Tensor]:
    """(log c, 1 - d) by the fixed n_nodes-point theta rule, float64 (m, 3) -> (m,), (m, 3).

    With u = 1 - 2 cos^2 theta, c = e^{s3} int sin(2 theta) I0(a) I0(b) e^{-2 s3 cos^2} d theta,
    a = (s1 - s2) cos^2, b = (s1 + s2) sin^2. With g the integrand at the nodes,
    J = sum g and E the g-weighted mean, the derivatives of log c are
    1 - d1 = 1 - E_a - E_b, 1 - d2 = 1 + E_a - E_b, 1 - d3 = 2 E[cos^2], with
    E_a = E[cos^2 I1(a) / I0(a)], E_b = E[sin^2 I1(b) / I0(b)] (as in :func:`_quadrature_tier`).
    Bessel functions: by their n_terms-term power series (arguments <= 2 scale; the integrand
    stays below ~1e61 for scale <= 24) on CPU for groups of at least _SERIES_MIN points x nodes
    (a few vectorised multiply-adds beat torch's scalar i0e/i1e there; for fewer, the one call
    does); else torch's scaled i0e / i1e, their factor e^{-a-b} = e^{-(s1+s2) + 2 s2 cos^2}
    moved into the exponent and the offset.
    """
    rule = _theta_rule(n_nodes, s.dtype, s.device)
    k = _constants(s.dtype, s.device)
    args = (s[:, :2] @ k.diff_sum).t()[:, :, None] * rule.cs  # a, b: (2, m, N)
    if n_terms and s.device.type == "cpu" and s.shape[0] * n_nodes >= _SERIES_MIN:
        i0, i1 = _bessel_i01_series(args, n_terms)
        lin, offset = s[:, 2:], s[:, 2]
    else:
        i0, i1 = torch.special.i0e(args), torch.special.i1e(args)
        lin, offset = s[:, 1:2] + s[:, 2:], s.sum(-1)
    g = rule.w * torch.exp(lin * rule.minus_2c2)
    i00 = (i0[0] * i0[1])[None]
    # integrands of J E_a, J E_b, J E[cos^2], J, weighted and summed by one bmm: (4, m)
    sums = torch.bmm(torch.cat([i1 * i0.flip(0), i00, i00]) * g, rule.moments)[..., 0]
    e = sums[:3] / sums[3]
    return offset + torch.log(sums[3]), torch.addmm(k.delta_offset, e.t(), k.moments_to_delta)


def _quadrature_tier(s: Tensor, n_log: int) -> tuple[Tensor, Tensor]:
    """(log c, 1 - d) with n_log log-variable nodes per half, float64 (m, 3) -> (m,), (m, 3)."""
    s1, s2, s3 = s[:, :1], s[:, 1:2], s[:, 2:]
    alpha, beta, gamma = (s1 - s2) / 2, (s1 + s2) / 2, s2 + s3
    eps_r, lw_r = _half_nodes((alpha + gamma).squeeze(-1), n_log)  # u = 1 end: cos th = sin eps
    eps_l, lw_l = _half_nodes(beta.squeeze(-1), n_log)  # u = -1 end: sin th = sin eps
    c2 = torch.cat([torch.sin(eps_r) ** 2, torch.cos(eps_l) ** 2], -1)  # cos^2 theta
    s2t = torch.cat([torch.cos(eps_r) ** 2, torch.sin(eps_l) ** 2], -1)  # sin^2 theta
    sin2t = torch.sin(2 * torch.cat([eps_r, eps_l], -1))  # 2 sin cos theta
    a = 2 * alpha * c2
    b = 2 * beta * s2t
    i0a, i0b = torch.special.i0e(a), torch.special.i0e(b)
    log_int = torch.log(sin2t) + torch.log(i0a) + torch.log(i0b) - 2 * gamma * c2
    log_int = log_int + torch.cat([lw_r, lw_l], -1)
    log_j = torch.logsumexp(log_int, -1)
    p = torch.softmax(log_int, -1)
    ra = torch.special.i1e(a) / i0a
    rb = torch.special.i1e(b) / i0b
    delta1 = (p * (c2 * (1 - ra) + s2t * (1 - rb))).sum(-1)
    delta2 = (p * (c2 * (1 + ra) + s2t * (1 - rb))).sum(-1)
    delta3 = (p * 2 * c2).sum(-1)
    return s.sum(-1) + log_j, torch.stack([delta1, delta2, delta3], -1)


def log_normaliser_and_mean_diag(s: Tensor) -> tuple[Tensor, Tensor]:
    """log c(s) and 1 - d_i (d_i = d log c / d s_i) for proper singular values s (n, 3).

    Returns float64 tensors (n,) and (n, 3). ``1 - d`` is returned (not d) because it is the
    accurate quantity in the concentrated regime; E[R] = U diag(1 - (1 - d)) V^T.
    """
    s = s.double()
    if s.ndim != 2 or s.shape[-1] != 3:
        raise ValueError(f"s must have shape (n, 3), got {tuple(s.shape)}")
    check_all(torch.isfinite(s), "singular values must be finite")
    return _diag(s)


def _diag(s: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`log_normaliser_and_mean_diag` without its input checks (s finite, float64)."""
    if fixed_work(s):
        return _diag_fixed_work(s)
    # Rule of each point: by scale, the plain theta rules then the log-variable tiers; the
    # asymptotics where gamma is large. Points are grouped by rule with one sort. A plain-rule
    # group of fewer than _MIN_GROUP points joins the next one if that uses the Bessel series
    # (more nodes and terms, same accuracy): fewer calls at small batches.
    k = _constants(s.dtype, s.device)
    rules = [partial(_plain_tier, n_nodes=n, n_terms=m) for _, n, m in _PLAIN_TIERS]
    rules += [partial(_quadrature_tier, n_log=n) for n in _LOG_NODES]
    rules += [_asymptotic]
    half_sum = (s[:, 0] + s[:, 1]) / 2
    scale = torch.maximum(half_sum + s[:, 2], half_sum)  # alpha + gamma and beta
    rule = torch.bucketize(scale, k.rule_bounds, right=True)
    rule = torch.where((s[:, 1] + s[:, 2]) >= ASYMPTOTIC_GAMMA, len(rules) - 1, rule)
    counts = torch.bincount(rule, minlength=len(rules)).tolist()
    for i in range(len(_PLAIN_TIERS) - 1):
        if counts[i] < _MIN_GROUP and _PLAIN_TIERS[i + 1][2]:  # into a series rule only
            # sorted next to group i + 1: it simply takes them
            counts[i + 1] += counts[i]
            counts[i] = 0
    order = torch.argsort(rule)
    groups = s.index_select(0, order).split(counts)
    parts = [rule_k(g) for rule_k, g in zip(rules, groups, strict=True) if g.shape[0]]
    log_c = torch.empty_like(s[:, 0]).index_copy_(0, order, torch.cat([p[0] for p in parts]))
    delta = torch.empty_like(s).index_copy_(0, order, torch.cat([p[1] for p in parts]))
    return log_c, delta


def _diag_fixed_work(s: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_diag` without host synchronisation: three rules on every row, then a selection.

    The largest plain theta rule (accurate for every scale below its bound), the densest
    log-variable rule (any scale) and the asymptotic series; each row takes the one of its
    range, the others see a stand-in row of their own range (so that no rule meets a value
    outside it, and autograd stays finite). Same numbers as the grouped path to its accuracy
    (tests/test_so3.py), at about four times its arithmetic, which accelerators do not notice.
    """
    k = _constants(s.dtype, s.device)
    half_sum = (s[:, 0] + s[:, 1]) / 2
    scale = torch.maximum(half_sum + s[:, 2], half_sum)
    asym = ((s[:, 1] + s[:, 2]) >= ASYMPTOTIC_GAMMA)[:, None]
    plain = ((scale < _PLAIN_TIERS[-1][0])[:, None]) & ~asym
    stand_in = k.fixed_work_stand_ins  # (3, 3): a row in range of each rule
    n_log = _LOG_NODES[-1]
    outs = [
        _plain_tier(torch.where(plain, s, stand_in[0]), *_PLAIN_TIERS[-1][1:]),
        _quadrature_tier(torch.where(plain | asym, stand_in[1], s), n_log=n_log),
        _asymptotic(torch.where(asym, s, stand_in[2])),
    ]
    log_c = torch.where(asym[:, 0], outs[2][0], torch.where(plain[:, 0], outs[0][0], outs[1][0]))
    delta = torch.where(asym, outs[2][1], torch.where(plain, outs[0][1], outs[1][1]))
    return log_c, delta


def _as_matrices(f: Tensor) -> Tensor:
    if f.shape[-2:] == (3, 3):
        return f
    if f.shape[-1] == 9:
        return f.reshape(*f.shape[:-1], 3, 3)
    raise ValueError(f"F must have shape (n, 3, 3) or (n, 9), got {tuple(f.shape)}")


def _mean_jacobian(s: Tensor) -> Tensor:
    """H[:, i, k] = d m_i / d s_k, m = d log c / d s (the Hessian of log c), shape (n, 3, 3).

    Autograd through the Bessel terms is wrong at exact ties of singular values (d|z|/dz = 0 at
    z = 0), so tied rows take it at a point split by O(1e-5 (1 + max s)): error of that order.
    """
    tol = 1e-5 * (1 + s.abs().amax(-1))[:, None]
    tied = ((s[:, :, None] - s[:, None, :]).abs() <= tol[:, :, None]).sum((-1, -2)) > 3
    split = torch.tensor([2.0, 1.0, 0.0], dtype=s.dtype, device=s.device)
    s_h = torch.where(tied[:, None], s + tol * split, s)
    with torch.enable_grad():
        s_ = s_h.detach().requires_grad_(True)
        m_ = 1 - _diag(s_)[1]  # s finite float64 already
        rows = [torch.autograd.grad(m_[:, i].sum(), s_, retain_graph=i < 2)[0] for i in range(3)]
    return torch.stack(rows, 1).detach()


def _forward(f: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """(log c, E[R], (U, s, V, m)) for finite float64 F (n, 3, 3), m = d log c / d s."""
    u, s, v = proper_svd(f)
    log_c, delta = _diag(s)
    m = 1 - delta
    return log_c, (u * m[:, None, :]) @ v.transpose(-1, -2), (u, s, v, m)


class _LogNormaliserAndMean(torch.autograd.Function):
    """F -> (log c(F), E_MF(F)[R] = U diag(m(s)) V^T), m = d log c / d s, from one SVD, with a
    backward that stays exact when singular values coincide.

    The gradient of log c(F) is E[R] itself. For E[R]:

    Autograd through ``torch.linalg.svd`` divides by s_i^2 - s_j^2 and returns NaN (or wrong
    values) at repeated singular values, which is exactly where MAD evaluates s_base: at points
    X on SO(3), X / sigma^2 has three equal singular values. The map is a smooth spectral
    function, whose derivative in the SVD frame Omega = U^T dF V is
        Gamma_ii = sum_k H_ik Omega_kk                (H = d m / d s, the Hessian of log c)
        Gamma_ij = (m_i - m_j)/(s_i - s_j) sym(Omega)_ij + (m_i + m_j)/(s_i + s_j) skew(Omega)_ij
    with the divided difference replaced by its limit (H_ii + H_jj)/2 - H_ij when s_i ~ s_j.
    The map Omega -> Gamma is self-adjoint, so the backward applies the same formula to
    U^T grad V. Only first derivatives are supported (enough for divergences).
    """

    @staticmethod
    def forward(ctx, f: Tensor) -> tuple[Tensor, Tensor]:
        log_c, mean, (u, s, v, m) = _forward(f)
        # The Hessian once here, not in every backward: a divergence takes D = 9 backwards.
        h = _mean_jacobian(s) if ctx.needs_input_grad[0] else None
        ctx.save_for_backward(u, s, v, m, h, mean)
        return log_c, mean

    @staticmethod
    def backward(ctx, grad_log_c: Tensor, grad: Tensor) -> Tensor:
        u, s, v, m, h, mean = ctx.saved_tensors
        tol = 1e-5 * (1 + s.abs().amax(-1))[:, None, None]
        om = u.transpose(-1, -2) @ grad @ v
        ds = s[:, :, None] - s[:, None, :]
        dm = m[:, :, None] - m[:, None, :]
        hd = torch.diagonal(h, dim1=-2, dim2=-1)
        limit = (hd[:, :, None] + hd[:, None, :]) / 2 - (h + h.transpose(-1, -2)) / 2
        close = ds.abs() <= tol
        c_sym = torch.where(close, limit, dm / torch.where(close, torch.ones_like(ds), ds))
        ss = s[:, :, None] + s[:, None, :]
        ms = m[:, :, None] + m[:, None, :]
        tiny = ss.abs() <= tol
        c_skew = torch.where(tiny, limit, ms / torch.where(tiny, torch.ones_like(ss), ss))
        sym, skew = (om + om.transpose(-1, -2)) / 2, (om - om.transpose(-1, -2)) / 2
        gam = c_sym * sym + c_skew * skew
        eye = torch.eye(3, dtype=om.dtype, device=om.device)
        diag = (h @ torch.diagonal(om, dim1=-2, dim2=-1)[..., None])[..., 0]
        gam = gam * (1 - eye) + torch.diag_embed(diag)
        return grad_log_c[:, None, None] * mean + u @ gam @ v.transpose(-1, -2)


def log_normaliser_and_mean(f: Tensor, *, check: bool = True) -> tuple[Tensor, Tensor]:
    """(log c(F) (n,), E[R] = U diag(d log c / d s) V^T (n, 3, 3)) for F (n, 3, 3) or (n, 9),
    float64, from one SVD; differentiable in F, also at repeated singular values (see
    :class:`_LogNormaliserAndMean`). ``check=False`` skips the finiteness check (for callers
    that made it already)."""
    f = _as_matrices(f).double()
    if check:
        check_all(torch.isfinite(f), "F must be finite")
    if torch.is_grad_enabled() and f.requires_grad:
        return _LogNormaliserAndMean.apply(f)
    # No graph to build: skip the autograd.Function machinery, and run the few hundred small
    # operations in inference mode (~15% less dispatch overhead); the clones hand back
    # ordinary tensors, which later autograd may save.
    with torch.inference_mode():
        log_c, mean_r = _forward(f)[:2]
    return log_c.clone(), mean_r.clone()


def log_normaliser(f: Tensor) -> Tensor:
    """log c(F) = log E_Haar exp(tr(F^T R)) for F (n, 3, 3) or (n, 9); float64 (n,)."""
    return log_normaliser_and_mean(f)[0]


def mean(f: Tensor, *, check: bool = True) -> Tensor:
    """E[R] under MF(F), float64 (n, 3, 3) (see :func:`log_normaliser_and_mean`)."""
    return log_normaliser_and_mean(f, check=check)[1]


# ----------------------------------------------------------------------------- sampler
def bingham_matrix(f: Tensor) -> Tensor:
    """B (n, 4, 4) with tr(F^T R(q)) = q^T B q for unit quaternions q = (w, x, y, z)."""
    f = _as_matrices(f)
    f11, f12, f13 = f[..., 0, 0], f[..., 0, 1], f[..., 0, 2]
    f21, f22, f23 = f[..., 1, 0], f[..., 1, 1], f[..., 1, 2]
    f31, f32, f33 = f[..., 2, 0], f[..., 2, 1], f[..., 2, 2]
    rows = [
        [f11 + f22 + f33, f32 - f23, f13 - f31, f21 - f12],
        [f32 - f23, f11 - f22 - f33, f12 + f21, f13 + f31],
        [f13 - f31, f12 + f21, -f11 + f22 - f33, f23 + f32],
        [f21 - f12, f13 + f31, f23 + f32, -f11 - f22 + f33],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


#: Newton steps for the ACG constant: from b = 1 the error is below 1e-15 relative after 8
_ACG_NEWTON_STEPS = 10


def _acg_b(lam: Tensor) -> Tensor:
    """Root b in [1, 4] of g(b) = sum_i 1 / (b + 2 lam_i) - 1 = 0 (lam (n, 4) >= 0 with one zero).

    g is convex and decreasing, and g(1) >= 0 (the zero eigenvalue alone gives 1/b), so Newton
    from b = 1 increases monotonically to the root: a fixed number of steps, no host sync
    (the 80-step bisection this replaces cost ten times more per training batch)."""
    b = torch.ones_like(lam[:, 0])
    for _ in range(_ACG_NEWTON_STEPS):
        r = 1.0 / (b[:, None] + 2 * lam)
        b = b + (r.sum(-1) - 1) / (r * r).sum(-1)
    return b


def sample_matrix_fisher(f: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One exact draw of MF(F_i) per row of F (n, 3, 3) or (n, 9); float64 (n, 3, 3).

    Bingham on S^3 (density prop. to exp(q^T B q), B = :func:`bingham_matrix`) by rejection from
    the angular central Gaussian (Kent, Ganeiber & Mardia 2013): with A = lam_max(B) I - B,
    eigenvalues lam_i of A, b the root of sum 1/(b + 2 lam_i) = 1 and Omega = I + 2A/b,
    propose q = y/|y|, y ~ N(0, Omega^{-1}), accept with probability
    exp(-q^T A q) (q^T Omega q)^2 / (exp(-(4 - b)/2) (4/b)^2). Vectorised over rows; rounds
    repeat only for the rows not yet accepted.
    """
    f = _as_matrices(f).double()
    n, dev = f.shape[0], f.device
    evals, evecs = torch.linalg.eigh(bingham_matrix(f))
    lam = evals[:, -1:] - evals  # eigenvalues of A, >= 0, last one 0
    b = _acg_b(lam)
    omega_diag = 1 + 2 * lam / b[:, None]
    log_m = -(4 - b) / 2 + 2 * torch.log(4 / b)
    q_out = torch.zeros(n, 4, dtype=torch.float64, device=dev)
    todo = torch.arange(n, device=dev)
    while todo.numel() > 0:
        k = todo.numel()
        z = torch.randn(k, 4, generator=generator, device=dev, dtype=torch.float64)
        y = z / torch.sqrt(omega_diag[todo])  # eigen-coordinates of A
        y = y / y.norm(dim=-1, keepdim=True)
        qa = (lam[todo] * y * y).sum(-1)
        qo = (omega_diag[todo] * y * y).sum(-1)
        u = torch.rand(k, generator=generator, device=dev, dtype=torch.float64)
        acc = torch.log(u) < -qa + 2 * torch.log(qo) - log_m[todo]
        q_out[todo[acc]] = (evecs[todo[acc]] @ y[acc].unsqueeze(-1)).squeeze(-1)
        todo = todo[~acc]
    return quaternion_to_matrix(q_out)
