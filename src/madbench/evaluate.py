"""``madbench evaluate``: every per-run number the tables and figures need, in one flat json.

The keys, units and conventions of ``metrics.json`` are documented in ``docs/metrics.md`` (a
test checks that every key the evaluation writes has a row there).

Conventions
-----------
* Scores are compared in VE coordinates: at noise level sigma and time t = t_of_sigma(sigma),
  a point y = x0 + sigma z corresponds to x_t = alpha(t) y, and the model's VE-score is
  alpha(t) * method.score(alpha(t) y, t).
* On-manifold log densities are w.r.t. the Riemannian volume of the *reported* convention:
  area on spheres (vol S^2 = 4 pi), Haar with <A,B> = tr(A^T B)/2 on SO(3) (vol 8 pi^2, the
  convention of the published numbers), counting measure on finite sets.
"""

from __future__ import annotations

import json
import math
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from madbench import metrics as M
from madbench._utils import atomic_write, make_generator
from madbench.runs import EvaluationError

# Shift from log densities w.r.t. the Frobenius-induced volume (what the code computes) to the
# reported convention, per manifold class name.
LOG_DENSITY_SHIFT = {"SO3": 1.5 * math.log(2.0)}
VOLUME_CONVENTION = {
    "Sphere": "area measure of the unit sphere (vol S^2 = 4 pi, vol S^1 = 2 pi)",
    "Torus": "product of arc-length measures (vol = (2 pi)^n)",
    "SO3": "Haar with <A,B> = tr(A^T B)/2, vol SO(3) = 8 pi^2",
    "DiscreteSet": "counting measure",
    "Hypercube": "counting measure",
    "OneHot": "counting measure",
}
NORMALISATION_TOLERANCE = 0.05
#: finite sets with at most this many atoms get the exact normalisation sum over atoms
MAX_NORMALISATION_ATOMS = 64


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def manifold_kind(manifold) -> str:
    """'discrete', 'sphere', 'torus' or 'so3': decides which distances and metrics apply."""
    name = type(manifold).__name__
    if manifold.dim == 0:
        return "discrete"
    return {"Sphere": "sphere", "Torus": "torus", "SO3": "so3"}[name]


def reference_samples(dataset, n: int, seed: int, split: str = "random") -> tuple[Tensor, Tensor]:
    """Two independent samples of the data law: (reference, second) for metric noise floors.

    Synthetic laws: two fresh samples. Empirical (earth) data: the held-out test split (of the
    run's ``split`` kind and seed) is the reference and a same-size subsample of the train split
    the second.
    """
    if dataset.empirical:
        parts = dataset.split(kind=split, seed=seed)
        test, train = parts["test"], parts["train"]
        idx = torch.randperm(train.shape[0], generator=make_generator(seed + 7))[: test.shape[0]]
        return test, train[idx]
    return (
        dataset.sample(n, generator=make_generator(seed + 1000)),
        dataset.sample(n, generator=make_generator(seed + 2000)),
    )


#: Largest number of atoms for which a finite law is compared as a full histogram; above it
#: (e.g. the 2^20 vertices of hypercube_mixture_20) the comparison uses marginals and pairwise
#: correlations, which a sample of a few thousand points can resolve.
MAX_HISTOGRAM_ATOMS = 4096


def atom_law(dataset) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
    """(true probabilities over atoms, nearest-atom index function), or None when too many."""
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


def distribution_metrics(kind: str, dataset, x: Tensor, y: Tensor, prefix: str) -> dict:
    """Distributional distances between model samples x and reference samples y (both on M).

    Finite sets: TV and KL(p_data || p_model) over atoms after nearest-atom rounding, against
    the *true* probabilities (so y is unused); when there are too many atoms for a histogram,
    the mean absolute error of the +-1 marginals and of the pairwise correlations against y.
    Continuous manifolds: geodesic-kernel MMD^2 (unbiased, three bandwidths), exact OT W1 and
    W2 with geodesic cost, and for SO(3) the KS statistic of the rotation-angle marginal.
    """
    out: dict[str, float] = {}
    if kind == "discrete":
        law = atom_law(dataset)
        if law is not None:
            probs, index = law
            d = M.discrete_metrics(index(x).cpu(), probs)
            out.update({f"{prefix}tv": d["tv"], f"{prefix}kl": d["kl"]})
        else:
            mx, cx = _spin_marginals(x)
            my, cy = _spin_marginals(y)
            out[f"{prefix}marginal_mae"] = float((mx - my).abs().mean())
            out[f"{prefix}correlation_mae"] = float((cx - cy).abs().mean())
        return out

    dist_fn = lambda a, b: M.geodesic_cdist(kind, a, b)  # noqa: E731
    for h, v in M.mmd2_unbiased(x, y, dist_fn, bandwidths=(0.1, 0.3, 1.0)).items():
        out[f"{prefix}mmd2_h{h:g}"] = float(v)
    ot = M.ot_distances(x, y, dist_fn, max_points=2000, seed=0)
    out[f"{prefix}w1"], out[f"{prefix}w2"] = float(ot["w1"]), float(ot["w2"])
    if kind == "so3":
        out[f"{prefix}angle_ks"] = float(M.so3_angle_ks(x, y)["statistic"])
    return out


def score_sigma_grid(schedule, n_sigmas: int) -> np.ndarray:
    """The log-spaced sigma grid of the score-error curve: the schedule's range within
    [1e-3, 10] (where the exact targets are accurate and the training weight lives)."""
    lo, hi = max(schedule.sigma_min, 1e-3), min(schedule.sigma_max, 10.0)
    return M.log_sigma_grid(lo, hi, n_sigmas)


def score_error(method, dataset, x0: Tensor, n_sigmas: int, seed: int) -> pd.DataFrame | None:
    """E||s_model - s_true||^2 (and sigma^2-weighted) on a log-spaced sigma grid.

    Uses :func:`madbench.metrics.score_error_curve` with the model's VE-coordinate score and the
    dataset's exact noisy score, both in float64 at x = x0 + sigma z (common z over sigma).
    None for intrinsic methods (their score is a Riemannian score of the heat-kernel-noised
    law, not an ambient one) and for datasets without an exact score.
    """
    if method.intrinsic or not dataset.has_score:
        return None
    from madbench.likelihood import infer_score_dtype, ve_score

    dtype = infer_score_dtype(method.score)

    def model(y: Tensor, sigma: float) -> Tensor:
        return ve_score(method.score, method.schedule, y, sigma, dtype).double()

    def truth(y: Tensor, sigma: float) -> Tensor:
        return dataset.score(y.double(), sigma).double()

    return M.score_error_curve(
        model,
        truth,
        lambda n, g: x0[:n],
        sigmas=score_sigma_grid(method.schedule, n_sigmas),
        n=x0.shape[0],
        generator=make_generator(seed + 3000, x0.device),
    )


def _s2_grid(n_theta: int = 48) -> tuple[Tensor, Tensor]:
    """Midpoint lat-lon grid on S^2 and its area weights (sum 4 pi)."""
    th = (torch.arange(n_theta, dtype=torch.float64) + 0.5) * math.pi / n_theta
    ph = (torch.arange(2 * n_theta, dtype=torch.float64) + 0.5) * math.pi / n_theta
    T, P = torch.meshgrid(th, ph, indexing="ij")
    pts = torch.stack([T.sin() * P.cos(), T.sin() * P.sin(), T.cos()], -1).reshape(-1, 3)
    w = (T.sin() * (math.pi / n_theta) ** 2).reshape(-1)
    return pts, w


def normalisation_points(manifold, n: int, seed: int, dataset=None) -> tuple[Tensor, Tensor, str]:
    """Points, weights and a label such that sum_i w_i f(x_i) ~ int_M f dvol (Frobenius volume).

    * data law with a density: defensive importance sampling from q = (uniform + p_data) / 2,
      w = 1 / (n q(x)); unbiased for any model density, and accurate where the model is
      concentrated like the data (uniform Monte Carlo misses sharp modes: on the 3-component
      matrix-Fisher mixture it gives 0.35 of the mass with 500 points);
    * otherwise S^2: a lat-lon midpoint grid with area weights; other manifolds: uniform
      Monte Carlo (w = vol / n).
    """
    g = make_generator(seed + 4000)
    vol = math.exp(manifold.log_volume)
    if dataset is not None and dataset.has_log_prob:
        n_u = n // 2
        xu = manifold.sample_uniform(n_u, generator=g).double()
        xd = dataset.sample(n - n_u, generator=g).double()
        x = manifold.project(torch.cat([xu, xd]))
        q = 0.5 / vol + 0.5 * dataset.log_prob(x).double().exp()
        return x, 1.0 / (n * q), "importance sampling, q = (uniform + p_data) / 2"
    if type(manifold).__name__ == "Sphere" and manifold.dim == 2:
        pts, w = _s2_grid(max(8, int(math.sqrt(n / 2))))
        return pts, w, f"lat-lon midpoint grid, {len(w)} points"
    x = manifold.sample_uniform(n, generator=g).double()
    return x, torch.full((n,), vol / n, dtype=torch.float64), "uniform Monte Carlo"


def log_likelihoods(method, x: Tensor, cfg: dict) -> tuple[Tensor, dict]:
    """On-manifold log density (Frobenius volume) at points x of M, and solver info.

    Intrinsic methods: the Riemannian probability-flow ODE. Ambient methods: the ambient
    probability-flow ODE at t_min plus (codim / 2) log(2 pi sigma_min^2) (SCIENCE.md 4), and
    for discrete sets the same with codim = D, giving log p(atom).
    """
    from madbench import likelihood as L

    sched, man = method.schedule, method.manifold
    kw = dict(rtol=cfg["rtol"], atol=cfg["atol"])
    if method.intrinsic:
        res = L.intrinsic_log_likelihood(method.score, man, sched, x, **kw)
        return res["logp"], {"nfe": res["nfe"]}
    a = float(sched.alpha(sched.t_min))
    res = L.ambient_log_likelihood(method.score, sched, a * x, **kw)
    logp_ve = res["logp"] + x.shape[1] * math.log(a)
    on_m = L.on_manifold_log_likelihood(logp_ve, sched.sigma_min, man.codim)
    return on_m, {"nfe": res["nfe"], "ambient_logp": logp_ve}


def likelihood_metrics(method, dataset, test: Tensor, cfg: dict, seed: int) -> dict:
    """Test NLL in the reported convention plus the normalisation check of the density."""
    man = method.manifold
    shift = LOG_DENSITY_SHIFT.get(type(man).__name__, 0.0)
    x = test[: cfg["n_nll"]].double().to(method.device)
    t0 = time.perf_counter()
    logp, info = log_likelihoods(method, x, cfg)
    out: dict[str, Any] = {
        "nll": float(-(logp + shift).mean()),
        "nll_sem": float((logp.std() / math.sqrt(len(logp))) if len(logp) > 1 else float("nan")),
        "nll_nfe": int(info["nfe"]),
        "nll_rtol": cfg["rtol"],
        "nll_atol": cfg["atol"],
        "nll_solver": "dopri5",
        "nll_time_s": time.perf_counter() - t0,
        "nll_convention": VOLUME_CONVENTION.get(type(man).__name__, ""),
        "nll_kind": "intrinsic_ode" if method.intrinsic else "ambient_ode_small_sigma",
    }
    if "ambient_logp" in info:
        out["nll_ambient"] = float(-info["ambient_logp"].mean())
    if dataset.has_log_prob:
        out["nll_true"] = float(-(dataset.log_prob(x) + shift).mean())
        # Same points, so the difference is the model's bias up to solver error; on the
        # oracle it is the bias of the likelihood estimator itself (SCIENCE.md 4).
        out["nll_gap"] = out["nll"] - out["nll_true"]
    pts_w = None
    if man.dim > 0 and cfg["n_norm"] > 0:
        pts, w, how = normalisation_points(man, cfg["n_norm"], seed, dataset)
        pts_w = pts, w
    elif man.dim == 0:
        law = atom_law(dataset)
        atoms = getattr(man, "atoms", None)
        if law is not None and atoms is not None and atoms.shape[0] <= MAX_NORMALISATION_ATOMS:
            pts_w = atoms.double(), torch.ones(atoms.shape[0], dtype=torch.float64)
            how = f"exact sum over the {atoms.shape[0]} atoms"
    if pts_w is not None:
        pts, w = pts_w
        lp, _ = log_likelihoods(method, pts.to(x.device), cfg)
        mass = float((w * lp.double().cpu().exp()).sum())
        out["normalisation"] = mass
        out["normalisation_method"] = how
        out["normalisation_ok"] = bool(abs(mass - 1) <= NORMALISATION_TOLERANCE)
    return out


def cost_metrics(run_dir: Path) -> dict:
    """Training cost from history.csv and run_info.json, and software/device facts."""
    out: dict[str, Any] = {"torch_version": torch.__version__, "python": platform.python_version()}
    info_path = run_dir / "run_info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        for k in (
            "device",
            "device_name",
            "git_commit",
            "seed",
            "peak_memory_mb",
            "train_wall_time_s",
            "n_parameters",
        ):
            if k in info:
                out[k if k != "peak_memory_mb" else "train_peak_memory_mb"] = info[k]
    hist = run_dir / "history.csv"
    if hist.exists():
        h = pd.read_csv(hist)
        if len(h):
            out["train_steps"] = int(h["step"].iloc[-1])
            out["train_wall_time_s"] = float(h["wall_time"].iloc[-1])
            out["train_steps_per_s"] = float(
                h["step"].iloc[-1] / max(h["wall_time"].iloc[-1], 1e-9)
            )
            out["final_loss"] = float(h["loss"].iloc[-min(len(h), 10) :].mean())
    return out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

DEFAULTS = dict(
    n_samples=2000,
    sampler=None,
    sample_steps=500,
    n_sigmas=16,
    n_score=2000,
    n_nll=256,
    n_norm=2000,
    rtol=1e-5,
    atol=1e-5,
    likelihood=True,
)


def _progress(msg: str, t0: float) -> None:
    print(f"[evaluate {time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def evaluation_settings(run_config: dict, overrides: dict | None = None) -> dict:
    """DEFAULTS, then the run's ``evaluate`` section, then ``overrides``; unknown keys raise."""
    cfg = dict(DEFAULTS)
    for source, values in (
        ("the run's evaluate section", run_config.get("evaluate") or {}),
        ("evaluate overrides", overrides or {}),
    ):
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise EvaluationError(
                f"unknown evaluate key(s) {', '.join(unknown)} in {source}; "
                f"known: {', '.join(sorted(DEFAULTS))}"
            )
        cfg.update({k: _coerce(k, v, source) for k, v in values.items()})
    return cfg


def _coerce(key: str, value: Any, source: str) -> Any:
    """``value`` as the type of ``DEFAULTS[key]`` (YAML reads '1e-4' as a string)."""
    default = DEFAULTS[key]
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(default, int):
            if float(value) != int(float(value)) or int(float(value)) < 0:
                raise ValueError
            return int(float(value))
        if isinstance(default, float):
            v = float(value)
            if not (math.isfinite(v) and v > 0):
                raise ValueError
            return v
        return None if value in (None, "", "none", "None", "default") else str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__ if default is not None else "sampler name"
        raise EvaluationError(
            f"evaluate key {key!r} in {source} must be a {kind}"
            f"{' > 0' if isinstance(default, float) else ''}, got {value!r}"
        ) from None


def evaluate_run(
    run_dir: str | Path, overrides: dict | None = None, device: str | None = None
) -> tuple[dict, dict, dict]:
    """Compute metrics for one run without writing anything.

    Returns (metrics, extra tables, samples): samples holds the evaluation's own draws (raw,
    projected, dist_to_manifold, seed, steps, sampler): the arguments of
    :func:`madbench.sampling.save_samples`.
    """
    from madbench.runs import load_run
    from madbench.sampling import sample

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    run = load_run(run_dir, device)
    method, dataset, seed = run.method, run.dataset, int(run.config.get("seed", 0))
    cfg = evaluation_settings(run.config, overrides)
    _progress(f"{run_dir}: {method.name} on {dataset.name} ({run.device})", t_start)
    kind = manifold_kind(method.manifold)
    out: dict[str, Any] = {
        "dataset": dataset.name,
        "method": method.name,
        "schedule": method.schedule.name,
        "seed": seed,
        "manifold": kind,
    }
    out.update(cost_metrics(run_dir))
    out["train_complete"] = bool(run.complete)

    _progress(f"sampling {cfg['n_samples']} points", t_start)
    gen = make_generator(seed + 5000, run.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        s = sample(
            method,
            cfg["n_samples"],
            sampler=cfg["sampler"],
            steps=cfg["sample_steps"],
            generator=gen,
        )
    out["sample_time_per_1000_s"] = (time.perf_counter() - t0) * 1000 / cfg["n_samples"]
    raw, proj = s["raw"].double().cpu(), s["projected"].double().cpu()
    if not torch.isfinite(raw).all():
        raise EvaluationError(f"{run_dir}: the sampler produced non-finite samples")
    dist = method.manifold.distance_to_manifold(raw)
    samples = dict(
        raw=raw.float(),
        projected=proj.float(),
        dist_to_manifold=dist,
        seed=seed + 5000,
        steps=cfg["sample_steps"],
        sampler=cfg["sampler"],
    )
    out.update({f"dist_{k}": float(v) for k, v in M.adherence_stats(dist).items()})

    _progress("distribution metrics (MMD, OT, ...) and their noise floors", t_start)
    ref, ref2 = reference_samples(
        dataset, cfg["n_samples"], seed, run.config.get("split", "random")
    )
    ref, ref2 = ref.double(), ref2.double()
    out.update(distribution_metrics(kind, dataset, proj, ref, prefix=""))
    out.update(distribution_metrics(kind, dataset, ref2, ref, prefix="floor_"))

    tables: dict[str, pd.DataFrame] = {}
    x0 = (
        dataset.sample(cfg["n_score"], generator=make_generator(seed + 6000))
        if not dataset.empirical
        else ref
    )
    if not method.intrinsic and dataset.has_score:
        _progress("exact score error curve", t_start)
    curve = score_error(method, dataset, x0.double().to(run.device), cfg["n_sigmas"], seed)
    if curve is not None:
        tables["score_error"] = curve
        out["score_error_integral"] = M.weighted_integral(curve)
        out["score_error_small_sigma"] = float(curve["mse"].iloc[0])

    if cfg["likelihood"]:
        _progress(f"likelihood of {min(cfg['n_nll'], len(ref))} test points (ODE)", t_start)
        out.update(likelihood_metrics(method, dataset, ref, cfg, seed))
    out["eval_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out, tables, samples


def _finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def main(
    run_dir: str | Path, out: str | Path, overrides: dict | None = None, device: str | None = None
) -> dict:
    """Evaluate ``run_dir``; write ``out`` (json), score_error.csv and samples.npz beside it.

    Nothing is written unless the whole evaluation succeeds, so an earlier metrics file is
    never replaced by a partial one.
    """
    from madbench.sampling import save_samples

    out = Path(out)
    t0 = time.perf_counter()
    metrics, tables, samples = evaluate_run(run_dir, overrides, device)
    metrics["eval_wall_time_s"] = time.perf_counter() - t0
    for name, df in tables.items():
        atomic_write(out.parent / f"{name}.csv", lambda p, df=df: df.to_csv(p, index=False))
    save_samples(out.parent / "samples.npz", **samples)
    clean = {k: _finite_or_none(v) for k, v in metrics.items()}
    atomic_write(out, lambda p: p.write_text(json.dumps(clean, indent=1, sort_keys=True)))
    return metrics
