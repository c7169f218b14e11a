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

import math
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from madbench import metrics as M
from madbench._utils import atomic_write, make_generator
from madbench.config import EvalSettings
from madbench.likelihood import (
    ambient_log_likelihood,
    infer_score_dtype,
    intrinsic_log_likelihood,
    on_manifold_log_likelihood,
    ve_score,
)
from madbench.rundir import RunDir, read_csv, read_json, write_json
from madbench.runs import Run, load_run
from madbench.sampling import sample, save_samples

NORMALISATION_TOLERANCE = 0.05
#: finite sets with at most this many atoms get the exact normalisation sum over atoms
MAX_NORMALISATION_ATOMS = 64


class EvaluationError(RuntimeError):
    """A run cannot be evaluated (bad settings, non-finite samples); the message says why."""


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


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
    if manifold.kind == "sphere" and manifold.dim == 2:
        pts, w = _s2_grid(max(8, int(math.sqrt(n / 2))))
        return pts, w, f"lat-lon midpoint grid, {len(w)} points"
    x = manifold.sample_uniform(n, generator=g).double()
    return x, torch.full((n,), vol / n, dtype=torch.float64), "uniform Monte Carlo"


def log_likelihoods(method, x: Tensor, settings: EvalSettings) -> tuple[Tensor, dict]:
    """On-manifold log density (Frobenius volume) at points x of M, and solver info.

    Intrinsic methods: the Riemannian probability-flow ODE. Ambient methods: the ambient
    probability-flow ODE at t_min plus (codim / 2) log(2 pi sigma_min^2) (docs/science.md 4),
    and for discrete sets the same with codim = D, giving log p(atom).
    """
    sched, man = method.schedule, method.manifold
    kw = dict(rtol=settings.rtol, atol=settings.atol)
    if method.intrinsic:
        res = intrinsic_log_likelihood(method.score, man, sched, x, **kw)
        return res["logp"], {"nfe": res["nfe"]}
    a = float(sched.alpha(sched.t_min))
    res = ambient_log_likelihood(method.score, sched, a * x, **kw)
    logp_ve = res["logp"] + x.shape[1] * math.log(a)
    on_m = on_manifold_log_likelihood(logp_ve, sched.sigma_min, man.codim)
    return on_m, {"nfe": res["nfe"], "ambient_logp": logp_ve}


def likelihood_metrics(method, dataset, test: Tensor, settings: EvalSettings, seed: int) -> dict:
    """Test NLL in the reported convention plus the normalisation check of the density."""
    man = method.manifold
    shift = man.log_density_shift
    x = test[: settings.n_nll].double().to(method.device)
    t0 = time.perf_counter()
    logp, info = log_likelihoods(method, x, settings)
    out: dict[str, Any] = {
        "nll": float(-(logp + shift).mean()),
        "nll_sem": float((logp.std() / math.sqrt(len(logp))) if len(logp) > 1 else float("nan")),
        "nll_nfe": int(info["nfe"]),
        "nll_rtol": settings.rtol,
        "nll_atol": settings.atol,
        "nll_solver": "dopri5",
        "nll_time_s": time.perf_counter() - t0,
        "nll_convention": man.volume_convention,
        "nll_kind": "intrinsic_ode" if method.intrinsic else "ambient_ode_small_sigma",
    }
    if "ambient_logp" in info:
        out["nll_ambient"] = float(-info["ambient_logp"].mean())
    if dataset.has_log_prob:
        out["nll_true"] = float(-(dataset.log_prob(x) + shift).mean())
        # Same points, so the difference is the model's bias up to solver error; on the
        # oracle it is the bias of the likelihood estimator itself (docs/science.md 4).
        out["nll_gap"] = out["nll"] - out["nll_true"]
    out.update(normalisation_metrics(method, dataset, settings, seed))
    return out


def normalisation_metrics(method, dataset, settings: EvalSettings, seed: int) -> dict:
    """The model density integrated over M (``normalisation``, should be 1), how, and whether
    it is within NORMALISATION_TOLERANCE of 1; empty when M offers no way to integrate."""
    man = method.manifold
    if man.dim > 0 and settings.n_norm > 0:
        pts, w, how = normalisation_points(man, settings.n_norm, seed, dataset)
    elif man.dim == 0 and M.atom_law(dataset) is not None:
        atoms = getattr(man, "atoms", None)
        if atoms is None or atoms.shape[0] > MAX_NORMALISATION_ATOMS:
            return {}
        pts, w = atoms.double(), torch.ones(atoms.shape[0], dtype=torch.float64)
        how = f"exact sum over the {atoms.shape[0]} atoms"
    else:
        return {}
    lp, _ = log_likelihoods(method, pts.to(method.device), settings)
    mass = float((w * lp.double().cpu().exp()).sum())
    return {
        "normalisation": mass,
        "normalisation_method": how,
        "normalisation_ok": bool(abs(mass - 1) <= NORMALISATION_TOLERANCE),
    }


def cost_metrics(run_dir: Path) -> dict:
    """Training cost from history.csv and run_info.json, and software/device facts."""
    out: dict[str, Any] = {"torch_version": torch.__version__, "python": platform.python_version()}
    run = RunDir(run_dir)
    info = read_json(run.run_info) or {}
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
    h = read_csv(run.history)
    if h is not None:
        out["train_steps"] = int(h["step"].iloc[-1])
        out["train_wall_time_s"] = float(h["wall_time"].iloc[-1])
        out["train_steps_per_s"] = float(h["step"].iloc[-1] / max(h["wall_time"].iloc[-1], 1e-9))
        out["final_loss"] = float(h["loss"].iloc[-min(len(h), 10) :].mean())
    return out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _progress(msg: str, t0: float) -> None:
    print(f"[evaluate {time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def sample_metrics(run: Run, settings: EvalSettings, seed: int) -> tuple[dict, dict, Tensor]:
    """Draw the evaluation's samples: (metrics: sampling time, distances to M; the arguments
    of :func:`madbench.sampling.save_samples`; the projected samples in float64).
    EvaluationError on non-finite samples."""
    method = run.method
    gen = make_generator(seed + 5000, run.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        s = sample(
            method,
            settings.n_samples,
            sampler=settings.sampler,
            steps=settings.sample_steps,
            generator=gen,
        )
    out = {"sample_time_per_1000_s": (time.perf_counter() - t0) * 1000 / settings.n_samples}
    raw, proj = s["raw"].double().cpu(), s["projected"].double().cpu()
    if not torch.isfinite(raw).all():
        raise EvaluationError(f"{run.run_dir}: the sampler produced non-finite samples")
    dist = method.manifold.distance_to_manifold(raw)
    out.update({f"dist_{k}": float(v) for k, v in M.adherence_stats(dist).items()})
    samples = dict(
        raw=raw.float(),
        projected=proj.float(),
        dist_to_manifold=dist,
        seed=seed + 5000,
        steps=settings.sample_steps,
        sampler=settings.sampler,
    )
    return out, samples, proj


def evaluate_run(
    run_dir: str | Path, overrides: dict | None = None, device: str | None = None
) -> tuple[dict, dict, dict]:
    """Compute metrics for one run without writing anything.

    Returns (metrics, extra tables, samples): samples holds the evaluation's own draws (raw,
    projected, dist_to_manifold, seed, steps, sampler): the arguments of
    :func:`madbench.sampling.save_samples`.
    """
    t_start = time.perf_counter()
    run = load_run(run_dir, device)
    method, dataset, seed = run.method, run.dataset, run.cfg.seed
    settings = run.cfg.eval_settings(overrides)
    _progress(f"{run.run_dir}: {method.name} on {dataset.name} ({run.device})", t_start)
    out: dict[str, Any] = {
        "dataset": dataset.name,
        "method": method.name,
        "schedule": method.schedule.name,
        "seed": seed,
        "manifold": method.manifold.kind,
        **cost_metrics(run.run_dir),
        "train_complete": bool(run.complete),
    }
    _progress(f"sampling {settings.n_samples} points", t_start)
    sampled, samples, proj = sample_metrics(run, settings, seed)
    out.update(sampled)

    _progress("distribution metrics (MMD, OT, ...) and their noise floors", t_start)
    ref, ref2 = reference_samples(dataset, settings.n_samples, seed, run.cfg.split)
    ref, ref2 = ref.double(), ref2.double()
    out.update(M.distribution_metrics(dataset, proj, ref))
    out.update(M.distribution_metrics(dataset, ref2, ref, prefix="floor_"))

    tables: dict[str, pd.DataFrame] = {}
    x0 = (
        dataset.sample(settings.n_score, generator=make_generator(seed + 6000))
        if not dataset.empirical
        else ref
    )
    if not method.intrinsic and dataset.has_score:
        _progress("exact score error curve", t_start)
    curve = score_error(method, dataset, x0.double().to(run.device), settings.n_sigmas, seed)
    if curve is not None:
        tables["score_error"] = curve
        out["score_error_integral"] = M.weighted_integral(curve)
        out["score_error_small_sigma"] = float(curve["mse"].iloc[0])

    if settings.likelihood:
        _progress(f"likelihood of {min(settings.n_nll, len(ref))} test points (ODE)", t_start)
        out.update(likelihood_metrics(method, dataset, ref, settings, seed))
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
    out = Path(out)
    t0 = time.perf_counter()
    metrics, tables, samples = evaluate_run(run_dir, overrides, device)
    metrics["eval_wall_time_s"] = time.perf_counter() - t0
    for name, df in tables.items():
        atomic_write(out.parent / f"{name}.csv", lambda p, df=df: df.to_csv(p, index=False))
    save_samples(out.parent / "samples.npz", **samples)
    write_json(out, {k: _finite_or_none(v) for k, v in metrics.items()})
    return metrics
