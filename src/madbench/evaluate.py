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
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from madbench import metrics as M
from madbench._utils import atomic_write, make_generator
from madbench.config import ConfigError, EvalSettings
from madbench.likelihood import (
    ambient_log_likelihood,
    gaussian_mixture_log_prob,
    heat_kernel_mixture_log_prob,
    heat_time_range,
    infer_score_dtype,
    intrinsic_log_likelihood,
    on_manifold_log_likelihood,
    ve_score,
)
from madbench.rundir import (
    CHECKPOINT,
    METRICS,
    RunDir,
    RunLoadError,
    evaluation_files,
    lock,
    read_csv,
    read_json,
    write_json,
)
from madbench.runs import Run, load_run
from madbench.sampling import sample, save_samples

#: keys of metrics.json whose values are text (every other value is a number, a bool or null)
TEXT_KEYS = frozenset(
    {
        "dataset",
        "method",
        "schedule",
        "manifold",
        "device",
        "device_name",
        "git_commit",
        "torch_version",
        "python",
        "nll_solver",
        "nll_convention",
        "nll_kind",
        "nll_prior",
        "normalisation_method",
    }
)
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


#: centres of the mixture estimate of the ODE's end-point density (synthetic data)
N_PRIOR_CENTRES = 2048
#: test points of a synthetic law's NLL when ``n_nll`` is not set
N_NLL_SYNTHETIC = 256


@dataclass
class EndPointPrior:
    """The density at the far end of the probability-flow ODE (sigma_max, or heat time tau_max
    for RSGM): exact where the dataset has its noised density, else a mixture over data points
    (a consistent estimate) whose standard errors are collected in ``ses``."""

    log_prob: Callable[[Tensor], Tensor]
    label: str
    ses: list[Tensor] = field(default_factory=list)

    @property
    def se(self) -> float:
        """Mean standard error (nats) of the estimated log densities so far (0 if exact)."""
        return float(torch.cat(self.ses).mean()) if self.ses else 0.0


def prior_centres(dataset, seed: int, split: str) -> Tensor:
    """Data points for the mixture estimate: the train split (empirical data), else
    N_PRIOR_CENTRES fresh samples (seeded)."""
    if dataset.empirical:
        return dataset.split(split, seed)["train"].double()
    return dataset.sample(N_PRIOR_CENTRES, generator=make_generator(seed + 9000)).double()


def end_point_prior(method, dataset, seed: int, split: str) -> EndPointPrior:
    """The end-point density of ``method``'s likelihood ODE (see :class:`EndPointPrior`)."""
    sched, man = method.schedule, method.manifold
    if not method.intrinsic and dataset.has_log_prob_noised:
        s_max = sched.sigma_max
        return EndPointPrior(lambda y: dataset.log_prob_noised(y, s_max), "exact p_sigma_max")
    centres = prior_centres(dataset, seed, split)
    prior = EndPointPrior(lambda y: y, f"mixture over {len(centres)} data points")
    if method.intrinsic:
        tau_max = heat_time_range(sched)[1]

        def log_prob(x: Tensor) -> Tensor:
            lp, se = heat_kernel_mixture_log_prob(man, x, centres.to(x.device), tau_max)
            prior.ses.append(se.cpu())
            return lp
    else:

        def log_prob(y: Tensor) -> Tensor:
            lp, se = gaussian_mixture_log_prob(y, centres.to(y.device), sched.sigma_max)
            prior.ses.append(se.cpu())
            return lp

    prior.log_prob = log_prob
    return prior


def nll_level(method, settings: EvalSettings) -> float:
    """The noise level sigma at which the likelihoods are read: ``evaluate.nll_sigma``, else
    the method's own smallest level (sigma_min; RSGM: sqrt of its smallest heat time)."""
    sched = method.schedule
    own = math.sqrt(heat_time_range(sched)[0]) if method.intrinsic else sched.sigma_min
    if settings.nll_sigma is None:
        return own
    if settings.nll_sigma < own * (1 - 1e-9):
        hint = " (lower the method parameter tau_min)" if method.intrinsic else ""
        raise ConfigError(
            f"config key 'evaluate.nll_sigma' ({settings.nll_sigma:g}) is below the smallest "
            f"noise level {own:.3g} of method {method.name!r} under {sched!r}{hint}"
        )
    return settings.nll_sigma


def log_likelihoods(method, x: Tensor, settings: EvalSettings, prior: EndPointPrior):
    """On-manifold log density (Frobenius volume) at points x of M, read at the noise level
    :func:`nll_level`, and solver info.

    Intrinsic methods: the Riemannian probability-flow ODE from heat time sigma^2. Ambient
    methods: the ambient probability-flow ODE from sigma plus (codim / 2) log(2 pi sigma^2)
    (docs/science.md 4), and for discrete sets the same with codim = D, giving log p(atom).
    """
    sched, man = method.schedule, method.manifold
    sigma = nll_level(method, settings)
    kw = dict(rtol=settings.rtol, atol=settings.atol, prior_log_prob=prior.log_prob)
    if method.intrinsic:
        res = intrinsic_log_likelihood(method.score, man, sched, x, tau_start=sigma**2, **kw)
        return res["logp"], {"nfe": res["nfe"]}
    a = float(sched.alpha(sched.t_of_sigma(torch.tensor(sigma, dtype=torch.float64))))
    res = ambient_log_likelihood(method.score, sched, a * x, sigma_start=sigma, **kw)
    logp_ve = res["logp"] + x.shape[1] * math.log(a)
    on_m = on_manifold_log_likelihood(logp_ve, sigma, man.codim)
    return on_m, {"nfe": res["nfe"], "ambient_logp": logp_ve}


def nll_points(dataset, test: Tensor, settings: EvalSettings, seed: int) -> Tensor:
    """The test points of the NLL (see ``EvalSettings.n_nll``): a seeded random subset when
    fewer than the test set are asked for (the earth files are sorted by time or region)."""
    n = settings.n_nll or (len(test) if dataset.empirical else N_NLL_SYNTHETIC)
    if n >= len(test):
        return test
    if not dataset.empirical:
        return test[:n]  # fresh draws of the law: any n of them are a random subset
    return test[torch.randperm(len(test), generator=make_generator(seed + 8000))[:n]]


def likelihood_metrics(
    method, dataset, test: Tensor, settings: EvalSettings, seed: int, split: str
) -> dict:
    """Test NLL in the reported convention plus the normalisation check of the density."""
    man = method.manifold
    shift = man.log_density_shift
    x = nll_points(dataset, test, settings, seed).double().to(method.device)
    prior = end_point_prior(method, dataset, seed, split)
    t0 = time.perf_counter()
    logp, info = log_likelihoods(method, x, settings, prior)
    out: dict[str, Any] = {
        "nll": float(-(logp + shift).mean()),
        "nll_sem": float((logp.std() / math.sqrt(len(logp))) if len(logp) > 1 else float("nan")),
        "nll_n": len(x),
        "nll_sigma": nll_level(method, settings),
        "nll_prior": prior.label,
        "nll_prior_se": prior.se,
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
    out.update(normalisation_metrics(method, dataset, settings, seed, prior))
    return out


def normalisation_metrics(
    method, dataset, settings: EvalSettings, seed: int, prior: EndPointPrior
) -> dict:
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
    lp, _ = log_likelihoods(method, pts.to(method.device), settings, prior)
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
    run_dir: str | Path,
    overrides: dict | None = None,
    device: str | None = None,
    checkpoint: str = CHECKPOINT,
) -> tuple[dict, dict, dict]:
    """Compute metrics for one run (the weights of ``checkpoint``) without writing anything.

    Returns (metrics, extra tables, samples): samples holds the evaluation's own draws (raw,
    projected, dist_to_manifold, seed, steps, sampler): the arguments of
    :func:`madbench.sampling.save_samples`.
    """
    t_start = time.perf_counter()
    run = load_run(run_dir, device, checkpoint=checkpoint)
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
        "eval_step": run.step,
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
        _progress(
            f"likelihood of {len(nll_points(dataset, ref, settings, seed))} test points (ODE)",
            t_start,
        )
        out.update(likelihood_metrics(method, dataset, ref, settings, seed, run.cfg.split))
    out["eval_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out, tables, samples


def _finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def check_output(run_dir: str | Path, out: str | Path) -> dict[str, Path]:
    """The files ``--out`` names (:func:`madbench.rundir.evaluation_files`), after checking that
    they can be written: not a directory, a writable place, and not another run's own results
    (ConfigError naming the path: bad input). Creates out's directory."""
    files = evaluation_files(out)
    out = files["metrics"]
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as metrics.json")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the directory of --out {out}: {e}") from e
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"--out {out}: directory {out.parent} is not writable")
    other = RunDir(out.parent)
    same = Path(run_dir).resolve() == out.parent.resolve()
    if other.config.exists() and not same and out.name == METRICS:
        raise ConfigError(
            f"--out {out} would overwrite the results of the run in {out.parent}, not of "
            f"{run_dir}; choose another name or directory"
        )
    return files


def main(
    run_dir: str | Path,
    out: str | Path,
    overrides: dict | None = None,
    device: str | None = None,
    checkpoint: str = CHECKPOINT,
) -> dict:
    """Evaluate ``run_dir``; write ``out`` (json) and its samples and score-error curve beside it
    (:func:`madbench.rundir.evaluation_files`).

    The output is checked first and locked while the evaluation runs (the run directory with a
    shared lock: a training of it is refused meanwhile). Nothing is written unless the whole
    evaluation succeeds, so an earlier metrics file is never replaced by a partial one.
    """
    if not RunDir(run_dir).config.is_file():
        raise RunLoadError(f"{RunDir(run_dir).config} not found: {run_dir} is not a run directory")
    files = check_output(run_dir, out)
    t0 = time.perf_counter()
    out_lock = f".{files['metrics'].name}.lock"
    with (
        lock(run_dir, exclusive=False, what="madbench evaluate"),
        lock(files["metrics"].parent, exclusive=True, what="madbench evaluate", name=out_lock),
    ):
        metrics, tables, samples = evaluate_run(run_dir, overrides, device, checkpoint)
        metrics["eval_wall_time_s"] = time.perf_counter() - t0
        if "score_error" in tables:
            df = tables["score_error"]
            atomic_write(files["score_error"], lambda p: df.to_csv(p, index=False))
        save_samples(files["samples"], **samples)
        write_json(files["metrics"], {k: _finite_or_none(v) for k, v in metrics.items()})
    return metrics
