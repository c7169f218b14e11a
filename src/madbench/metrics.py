"""Evaluation metrics on samples (docs/science.md section 4): adherence, geodesic MMD and OT,
discrete TV/KL, SO(3) angle KS tests, noise floors and exact score-error curves, plus the
distributional metrics of a dataset (:func:`distribution_metrics`).

Conventions
-----------
* Point sets are tensors of shape (n, D) (numpy arrays are accepted); SO(3) points are 3x3
  rotation matrices flattened to 9 numbers (row-major, as in ``madbench.manifolds``).
* Distances come from the manifold (``Manifold.metric_cdist``, float64, radians for geodesic
  distances; on SO(3) the rotation angle, i.e. the geodesic distance of the published metric
  <A,B> = tr(A^T B)/2).
* Every random choice takes a seed or a ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor

from madbench._utils import make_generator
from madbench.manifolds._distances import as_f64, as_f64_pair
from madbench.manifolds.so3 import rotation_angle

DistFn = Callable[[Tensor, Tensor], Tensor]
ScoreFn = Callable[[Tensor, float], Tensor]


# ----------------------------------------------------------------------------- adherence


def adherence_stats(dist: Tensor | np.ndarray) -> dict[str, float]:
    """Summary of distances to M, shape (n,), in ambient units (Euclidean/Frobenius).

    Keys: mean, median, p90, p99 (quantiles with linear interpolation, as numpy's default),
    frac_within_1e-2 and frac_within_1e-3 (fraction of samples with dist <= tol). +inf (a
    diverged sample) is allowed and propagates; NaN raises.
    """
    d = as_f64(dist, "dist", ndim=1)
    if (d < 0).any():
        raise ValueError("dist contains negative distances")
    q = torch.quantile(d, torch.tensor([0.5, 0.9, 0.99], dtype=d.dtype, device=d.device))
    return {
        "mean": d.mean().item(),
        "median": q[0].item(),
        "p90": q[1].item(),
        "p99": q[2].item(),
        "frac_within_1e-2": (d <= 1e-2).double().mean().item(),
        "frac_within_1e-3": (d <= 1e-3).double().mean().item(),
    }


# ----------------------------------------------------------------------------- MMD


def _offdiag_mean(k: Tensor) -> Tensor:
    n = k.shape[0]
    if n < 2:
        raise ValueError("the unbiased MMD needs at least 2 points in each sample")
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def mmd2_unbiased(
    x: Tensor, y: Tensor, dist_fn: DistFn, bandwidths: Sequence[float]
) -> dict[float, float]:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) for each bandwidth h, x (n, D), y (m, D).

    k(a, b) = exp(-d(a, b)^2 / (2 h^2)) with d = ``dist_fn`` (a callable (n, D) x (m, D) ->
    (n, m), e.g. a manifold's ``metric_cdist``); h in the units of d (radians for geodesic
    distances). MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j}
    k(x_i, y_j). Caveats: a Gaussian kernel of a geodesic distance need not be positive definite
    on a curved space (Feragen et al. 2015: p.d. for every h only on flat spaces), so the
    population value is not guaranteed to be >= 0 or to vanish only for equal laws; and the
    unbiased estimate fluctuates around it by O(1/n), so it can be slightly negative even for a
    p.d. kernel (for y = x it equals -2 (1 - mean_{i != j} k(x_i, x_j)) / n).
    Compare values with ``noise_floor``.
    """
    fn = dist_fn
    dxx, dyy, dxy = fn(x, x), fn(y, y), fn(x, y)
    out: dict[float, float] = {}
    for h in bandwidths:
        h = float(h)
        if not (h > 0 and math.isfinite(h)):
            raise ValueError(f"bandwidths must be positive and finite, got {h}")
        c = -0.5 / h**2
        kxx, kyy, kxy = (torch.exp(c * d.square()) for d in (dxx, dyy, dxy))
        out[h] = (_offdiag_mean(kxx) + _offdiag_mean(kyy) - 2.0 * kxy.mean()).item()
    return out


# ----------------------------------------------------------------------------- optimal transport


def _subsample(x: Tensor, max_points: int, generator: torch.Generator) -> Tensor:
    if x.shape[0] <= max_points:
        return x
    idx = torch.randperm(x.shape[0], generator=generator)[:max_points]
    return x[idx.to(x.device)]


def _emd2(cost: np.ndarray) -> float:
    import ot

    n, m = cost.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    value, log = ot.emd2(a, b, cost, numItermax=max(100_000, 100 * n * m), log=True)
    if log["result_code"] != 1:
        raise RuntimeError(f"exact OT did not converge: {log['warning']}")
    return max(float(value), 0.0)


def ot_distances(
    x: Tensor,
    y: Tensor,
    dist_fn: DistFn,
    max_points: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Exact Wasserstein distances between the empirical laws of x (n, D) and y (m, D).

    Uniform weights; cost d = ``dist_fn`` (e.g. ``manifold.metric_cdist``) for W1 and d^2 for
    W2 (returned as sqrt of the optimal cost), solved by POT's network simplex (``ot.emd2``). A
    sample larger than ``max_points`` is replaced by a uniform subsample without replacement of
    that size (seeded by ``seed``; x and y subsampled independently). Units are those of d.
    Cost O(n^2) memory, about O(n^3) time: keep max_points at a few thousand.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    g = make_generator(seed)
    x, y = as_f64_pair(x, y)
    x, y = _subsample(x, max_points, g), _subsample(y, max_points, g)
    d = dist_fn(x, y).detach().cpu().numpy().astype(np.float64)
    if not np.isfinite(d).all():
        raise ValueError("the cost matrix has non-finite entries")
    return {"w1": _emd2(d), "w2": math.sqrt(_emd2(d * d))}


def circle_w1(theta_x: Tensor | np.ndarray, theta_y: Tensor | np.ndarray) -> float:
    """Exact W1 on the unit circle (arc-length cost) between two empirical laws of angles (rad).

    W1 = min_c int_0^{2 pi} |F_x(t) - F_y(t) - c| dt (Rabin, Delon & Gousseau 2011); F_x - F_y is
    piecewise constant between the pooled sorted points, and the optimal c is a weighted median
    of its values with the interval lengths as weights. Angles are reduced mod 2 pi; O((n+m) log).
    """
    tx = np.mod(as_f64(theta_x, "theta_x", ndim=1).cpu().numpy(), 2 * np.pi)
    ty = np.mod(as_f64(theta_y, "theta_y", ndim=1).cpu().numpy(), 2 * np.pi)
    t = np.concatenate([tx, ty])
    jumps = np.concatenate([np.full(tx.size, 1.0 / tx.size), np.full(ty.size, -1.0 / ty.size)])
    order = np.argsort(t, kind="stable")
    t, g = t[order], np.cumsum(jumps[order])  # g = F_x - F_y on [t_k, t_{k+1})
    lengths = np.diff(np.append(t, t[0] + 2 * np.pi))  # last interval wraps to t_0 + 2 pi
    # On [0, t_0) the difference is 0 = g[-1] (up to rounding): it belongs to the wrap interval.
    srt = np.argsort(g, kind="stable")
    cum = np.cumsum(lengths[srt])
    c = g[srt][np.searchsorted(cum, 0.5 * cum[-1])]
    return float(np.sum(lengths * np.abs(g - c)))


# ----------------------------------------------------------------------------- discrete


def categorical_from_samples(indices: Tensor | np.ndarray, K: int) -> Tensor:
    """Empirical law over K atoms of integer atom indices (n,) in [0, K): (K,) float64."""
    idx = torch.as_tensor(indices)
    if idx.ndim != 1 or idx.numel() == 0:
        raise ValueError(f"indices must be a non-empty 1-d tensor, got shape {tuple(idx.shape)}")
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise TypeError(f"indices must be integers, got {idx.dtype}")
    if K < 1 or idx.min() < 0 or idx.max() >= K:
        raise ValueError(f"indices must lie in [0, {K}), got range [{idx.min()}, {idx.max()}]")
    return torch.bincount(idx.long(), minlength=K).to(torch.float64) / idx.numel()


def _probs(p: Tensor | np.ndarray, name: str) -> Tensor:
    p = as_f64(p, name, ndim=1)
    if (p < 0).any() or abs(p.sum().item() - 1.0) > 1e-6:
        raise ValueError(f"{name} must be nonnegative and sum to 1 (sum {p.sum().item():.6g})")
    return p


def tv_distance(p: Tensor | np.ndarray, q: Tensor | np.ndarray) -> float:
    """Total variation (1/2) sum_k |p_k - q_k| between two laws on the same K atoms, in [0, 1]."""
    p, q = _probs(p, "p"), _probs(q, "q")
    q = q.to(p.device)
    if p.shape != q.shape:
        raise ValueError(f"p and q have {p.numel()} and {q.numel()} atoms")
    return 0.5 * (p - q).abs().sum().item()


def kl_divergence(p: Tensor | np.ndarray, q: Tensor | np.ndarray, eps: float = 1e-12) -> float:
    """KL(p || q) = sum_k p_k log(p_k / q_k) in nats, after additive smoothing of both laws.

    Smoothing (for empty bins): p <- (p + eps) / (1 + K eps), likewise q. With eps = 0 the
    unsmoothed value is returned (0 log 0 = 0; +inf if some q_k = 0 < p_k).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    p, q = _probs(p, "p"), _probs(q, "q")
    q = q.to(p.device)
    if p.shape != q.shape:
        raise ValueError(f"p and q have {p.numel()} and {q.numel()} atoms")
    k = p.numel()
    p, q = (p + eps) / (1 + k * eps), (q + eps) / (1 + k * eps)
    return torch.special.xlogy(p, p).sum().item() - torch.special.xlogy(p, q).sum().item()


def discrete_metrics(
    projected_indices: Tensor | np.ndarray,
    true_probs: Tensor | np.ndarray,
    eps: float | None = None,
) -> dict[str, float]:
    """TV and KL between the law of nearest-atom indices (n,) and the true law over K atoms (K,).

    tv = TV(p_model, p_true) from the raw empirical law; kl = KL(p_true || p_model) (forward KL:
    infinite penalty for missed atoms, hence smoothing) with ``kl_divergence`` smoothing
    eps = 0.5 / n (half a pseudo-count per atom) unless given. The empirical KL has a positive
    bias about (K - 1) / (2 n) nats: read it against ``noise_floor``.
    """
    q = _probs(true_probs, "true_probs")
    p_model = categorical_from_samples(projected_indices, q.numel()).to(q.device)
    n = torch.as_tensor(projected_indices).numel()
    eps = 0.5 / n if eps is None else eps
    return {"tv": tv_distance(p_model, q), "kl": kl_divergence(q, p_model, eps)}


# ----------------------------------------------------------------------------- SO(3) KS


def _angles_np(x: Tensor) -> np.ndarray:
    return rotation_angle(as_f64(x, "x")).cpu().numpy()


def so3_angle_ks(x: Tensor, y: Tensor) -> dict[str, float]:
    """Two-sample KS test of the rotation-angle marginals of x (n, 9) and y (m, 9).

    Returns statistic (sup |F_x - F_y| of the angle CDFs) and the two-sided p-value
    (``scipy.stats.ks_2samp``, exact or asymptotic by scipy's default).
    """
    res = stats.ks_2samp(_angles_np(x), _angles_np(y))
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def haar_angle_cdf(w: np.ndarray) -> np.ndarray:
    """CDF of the rotation angle of a Haar rotation: (w - sin w) / pi on [0, pi]."""
    w = np.clip(w, 0.0, np.pi)
    return (w - np.sin(w)) / np.pi


def so3_angle_ks_haar(x: Tensor) -> dict[str, float]:
    """One-sample KS test of the rotation angles of x (n, 9) against the Haar angle law.

    Haar density (1 - cos w) / pi on [0, pi], CDF (w - sin w) / pi (``scipy.stats.kstest``).
    """
    res = stats.kstest(_angles_np(x), haar_angle_cdf)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


# ----------------------------------------------------------------------------- noise floor


def noise_floor(
    metric_fn: Callable[[Tensor, Tensor], object],
    sampler: Callable[[int, torch.Generator], Tensor],
    n: int,
    seed: int,
) -> object:
    """``metric_fn(x, y)`` for two independent samples x, y of size n of the data law.

    ``sampler(n, generator)`` draws n points; both draws use one CPU generator seeded by
    ``seed``. The value is what a perfect model scores at this sample size: the reference for
    MMD, OT, TV/KL and KS numbers computed with the same n.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    g = make_generator(seed)
    x = sampler(n, g)
    y = sampler(n, g)
    return metric_fn(x, y)


# ----------------------------------------------------------------------------- score error


def log_sigma_grid(sigma_min: float = 1e-3, sigma_max: float = 10.0, num: int = 21) -> np.ndarray:
    """The fixed log-spaced noise grid of the score-error curves (default 5 points per decade)."""
    if not 0 < sigma_min < sigma_max or num < 2:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max and num >= 2, got {sigma_min}, {sigma_max}, {num}"
        )
    return np.geomspace(sigma_min, sigma_max, num)


def _sq_err(score_model: ScoreFn, score_true: ScoreFn, x: Tensor, sigma: float, bs: int):
    err, ref = [], []
    for xb in x.split(bs):
        sm, st = score_model(xb, sigma), score_true(xb, sigma)
        if sm.shape != xb.shape or st.shape != xb.shape:
            raise ValueError(
                f"scores must have shape {tuple(xb.shape)}, got "
                f"{tuple(sm.shape)} and {tuple(st.shape)}"
            )
        sm, st = sm.to(torch.float64), st.to(torch.float64)
        err.append((sm - st).square().sum(-1))
        ref.append(st.square().sum(-1))
    return torch.cat(err), torch.cat(ref)


@torch.no_grad()
def score_error_curve(
    score_model: ScoreFn,
    score_true: ScoreFn,
    sample_data: Callable[[int, torch.Generator | None], Tensor],
    sigmas: Sequence[float] | np.ndarray | None = None,
    n: int = 4096,
    generator: torch.Generator | None = None,
    batch_size: int = 8192,
) -> pd.DataFrame:
    """Exact score error E ||s_model(x, sigma) - s_true(x, sigma)||^2 on a sigma grid.

    x = x0 + sigma z with x0 ~ ``sample_data(n, generator)`` (n, D) and z ~ N(0, I_D); the same
    (x0, z) are reused at every sigma (common random numbers: a smoother curve, and two models
    evaluated with equally seeded generators see the same points). Scores are callables
    s(x (b, D), sigma: float) -> (b, D) in the VE convention (score of p_sigma in x), evaluated
    in batches of ``batch_size`` under no_grad. ``sigmas`` defaults to ``log_sigma_grid()``.

    Returns one row per sigma (increasing): sigma, mse (E||Delta||^2, units 1/length^2), mse_se
    (its Monte Carlo standard error), weighted_mse = sigma^2 mse (dimensionless, the DSM
    weighting lambda = sigma^2), true_sq_norm = E||s_true||^2 (scale reference), n.
    """
    sig = np.sort(np.asarray(log_sigma_grid() if sigmas is None else sigmas, dtype=np.float64))
    if sig.ndim != 1 or sig.size == 0 or not (sig > 0).all() or not np.isfinite(sig).all():
        raise ValueError("sigmas must be a non-empty 1-d sequence of positive finite numbers")
    x0 = sample_data(n, generator)
    if x0.ndim != 2 or x0.shape[0] != n:
        raise ValueError(f"sample_data must return shape (n={n}, D), got {tuple(x0.shape)}")
    dev = generator.device if generator is not None else x0.device
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=dev).to(x0.device)
    rows = []
    for s in sig:
        err, ref = _sq_err(score_model, score_true, x0 + float(s) * z, float(s), batch_size)
        mse = err.mean().item()
        se = err.std().item() / math.sqrt(n) if n > 1 else math.nan
        rows.append((s, mse, se, s * s * mse, ref.mean().item(), n))
    cols = ["sigma", "mse", "mse_se", "weighted_mse", "true_sq_norm", "n"]
    return pd.DataFrame(rows, columns=cols)


def weighted_integral(curve: pd.DataFrame | Mapping[str, Sequence[float]]) -> float:
    """Integral over log sigma of the sigma^2-weighted score error, by the trapezoid rule.

    I = int sigma^2 E||s_model - s_true||^2 d(log sigma) over [sigma_min, sigma_max] of the
    curve's grid (dimensionless): the DSM loss excess (lambda = sigma^2) for log sigma
    uniform on that range, times its length. Needs columns/keys sigma (strictly increasing,
    positive) and weighted_mse.
    """
    sig = np.asarray(curve["sigma"], dtype=np.float64)
    w = np.asarray(curve["weighted_mse"], dtype=np.float64)
    if sig.ndim != 1 or sig.shape != w.shape or sig.size < 2:
        raise ValueError("curve needs at least 2 sigmas with one weighted_mse each")
    if not (sig > 0).all() or not (np.diff(sig) > 0).all():
        raise ValueError("curve sigmas must be positive and strictly increasing")
    return float(np.trapezoid(w, np.log(sig)))


# ----------------------------------------------------------------------------- a dataset's metrics

#: Largest number of atoms for which a finite law is compared as a full histogram; above it
#: (e.g. the 2^20 vertices of hypercube_mixture_20) the comparison uses marginals and pairwise
#: correlations, which a sample of a few thousand points can resolve.
MAX_HISTOGRAM_ATOMS = 4096
#: Kernel bandwidths of the geodesic MMD (radians).
MMD_BANDWIDTHS = (0.1, 0.3, 1.0)


def atom_law(dataset) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
    """(true probabilities over atoms, nearest-atom index function) of a law on a finite set,
    or None when it has too many atoms for a histogram (or none is known)."""
    man = dataset.manifold
    if hasattr(dataset, "probs") and hasattr(dataset, "atom_index"):
        if dataset.probs.numel() <= MAX_HISTOGRAM_ATOMS:
            return dataset.probs.double(), dataset.atom_index
        return None
    if hasattr(man, "all_atoms") and dataset.has_log_prob:
        if 2**man.ambient_dim > MAX_HISTOGRAM_ATOMS:  # Hypercube(d): 2^d vertices
            return None
        atoms = man.all_atoms().double()
        return dataset.log_prob(atoms).exp().double(), man.nearest_atom_index
    return None


def _spin_marginals(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rounded +-1 coordinates: their means (d,) and pairwise correlations (d(d-1)/2,)."""
    s = torch.where(x >= 0, 1.0, -1.0).double()
    iu = torch.triu_indices(s.shape[1], s.shape[1], offset=1)
    return s.mean(0), (s.T @ s / s.shape[0])[iu[0], iu[1]]


def distribution_metrics(dataset, x: Tensor, y: Tensor, prefix: str = "") -> dict[str, float]:
    """Distributional distances between model samples x and reference samples y (both on M).

    Finite sets: TV and KL(p_data || p_model) over atoms after nearest-atom rounding, against
    the *true* probabilities (so y is unused); when there are too many atoms for a histogram,
    the mean absolute error of the +-1 marginals and of the pairwise correlations against y.
    Continuous manifolds: MMD^2 (unbiased) with a Gaussian kernel of ``metric_cdist`` at three
    bandwidths, exact OT W1 and W2 with that cost, and on SO(3) the KS statistic of the
    rotation-angle marginal. Keys are prefixed by ``prefix`` (``floor_`` for noise floors).
    """
    out: dict[str, float] = {}
    man = dataset.manifold
    if man.kind == "discrete":
        law = atom_law(dataset)
        if law is not None:
            probs, index = law
            d = discrete_metrics(index(x).cpu(), probs)
            out.update({f"{prefix}tv": d["tv"], f"{prefix}kl": d["kl"]})
        else:
            mx, cx = _spin_marginals(x)
            my, cy = _spin_marginals(y)
            out[f"{prefix}marginal_mae"] = float((mx - my).abs().mean())
            out[f"{prefix}correlation_mae"] = float((cx - cy).abs().mean())
        return out
    for h, v in mmd2_unbiased(x, y, man.metric_cdist, bandwidths=MMD_BANDWIDTHS).items():
        out[f"{prefix}mmd2_h{h:g}"] = float(v)
    ot = ot_distances(x, y, man.metric_cdist, max_points=2000, seed=0)
    out[f"{prefix}w1"], out[f"{prefix}w2"] = float(ot["w1"]), float(ot["w2"])
    if man.kind == "so3":
        out[f"{prefix}angle_ks"] = float(so3_angle_ks(x, y)["statistic"])
    return out
