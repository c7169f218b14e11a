"""Drivers of experiments A, B, C: measured points (curve rows) and fitted slopes (slope rows)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from madbench.rate_separation.anatomy import (
    AnatomyTarget,
    mean_abs_gaussian_norm,
    predicted_anatomy_slope,
    score_anatomy,
)
from madbench.rate_separation.oracle import stationary_oracle
from madbench.rate_separation.stats import (
    bootstrap_mean_slope,
    bootstrap_slope,
    circle_w1_samples,
    histogram_tv,
    loglog_slope,
)
from madbench.rate_separation.tempering import positive_sqrt, tempering_point
from madbench.rate_separation.tolerance import SamplerConfig, predicted_slope, tolerance_point


@dataclass
class Config:
    """Grids and sizes; ``QUICK`` for CI, ``FULL`` for the published curves."""

    anatomy_sigmas: list = field(default_factory=lambda: list(np.logspace(-3, -1, 9)))
    offset_sigmas: list = field(default_factory=lambda: list(np.logspace(-3, -1.7, 6)))
    offset: float = 0.2
    anatomy_n: int = 20000
    oracle_sigmas: list = field(default_factory=lambda: list(np.logspace(-3, -1, 9)))
    oracle_alphas: tuple = (0.0, 0.5, 1.0)
    normal_betas: tuple = (-2.5, -2.0, -1.75, -1.5, -1.0, -0.5, 0.0, 1.0)
    tangential_betas: tuple = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    c: float = 1.0
    oracle_grid: tuple = (1024, 2000)  # (n_theta, n_r)
    langevin_sigmas: list = field(default_factory=lambda: [0.05, 0.08, 0.13, 0.2, 0.3])
    langevin_cases: tuple = (
        (0.0, "none", 0.0),
        (0.0, "normal", -1.5),
        (0.0, "normal", -2.0),
        (0.0, "normal", -2.5),
        (0.0, "tangential", 0.0),
        (0.0, "tangential", 1.0),
        (0.0, "tangential", -0.5),
        (1.0, "none", 0.0),
        (1.0, "tangential_orth", 0.0),
        (1.0, "tangential_orth", -0.5),
        (0.5, "none", 0.0),
    )
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    tempering_sigmas: list = field(default_factory=lambda: [0.3, 0.16, 0.08, 0.04])
    tempering_alpha: float = 1.0
    tempering_n: int = 4096
    n_boot: int = 500
    seed: int = 0


QUICK = Config(
    anatomy_sigmas=list(np.logspace(-3, -1, 5)),
    offset_sigmas=list(np.logspace(-3, -1.7, 3)),
    anatomy_n=2000,
    oracle_sigmas=list(np.logspace(-3, -1, 5)),
    oracle_alphas=(0.0, 1.0),
    oracle_grid=(256, 600),
    normal_betas=(-2.5, -2.0, -1.5, -1.0, 0.0),
    tangential_betas=(-0.5, 0.0, 1.0, 2.0),
    langevin_sigmas=[0.1, 0.2, 0.3],
    langevin_cases=((0.0, "none", 0.0), (0.0, "tangential", 0.0), (1.0, "none", 0.0)),
    sampler=SamplerConfig(n_chains=512, t_burn=2.0, t_collect=2.0, n_snapshots=5, n_bins=32),
    tempering_sigmas=[0.3, 0.15],
    tempering_n=512,
    n_boot=100,
)
FULL = Config()


#: Coordinates shared by curve rows and slope rows (their first columns, in this order).
_COORDS = dict(
    manifold="circle",
    family="",
    quantity="",
    score="exact",
    alpha=0.0,
    beta=np.nan,
    error_type="none",
)


def _row(**kw) -> dict:
    return {**_COORDS, "c": 0.0, "sigma": np.nan, "value": np.nan, "se": np.nan, "source": "", **kw}


def _slope_row(fit_slope, lo, hi, pred, **kw) -> dict:
    return {**_COORDS, "slope": fit_slope, "ci_low": lo, "ci_high": hi, "predicted": pred, **kw}


def run_anatomy(target: AnatomyTarget, cfg: Config, generator: torch.Generator):
    """Curve rows and slope rows of experiment A for one target (both families)."""
    curves, slopes = [], []
    finite = target.to_tangent is None
    for fam, sig, off in (
        ("anatomy", cfg.anatomy_sigmas, None),
        ("anatomy_offset", cfg.offset_sigmas, cfg.offset),
    ):
        res = score_anatomy(target, sig, cfg.anatomy_n, offset=off, generator=generator)
        for score, parts in res.items():
            for part, arr in parts.items():
                if finite and part == "tangent":
                    continue
                m, se = arr.mean(1), arr.std(1) / math.sqrt(arr.shape[1])
                for s, v, e in zip(sig, m, se, strict=True):
                    curves.append(
                        _row(
                            manifold=target.name,
                            family=fam,
                            quantity=part,
                            score=score,
                            sigma=s,
                            value=v,
                            se=e,
                            source="exact"
                            if score in ("exact", "base", "remainder")
                            else "learned",
                        )
                    )
                kw = dict(
                    manifold=target.name,
                    family=fam,
                    quantity=part,
                    score=score,
                    source="bootstrap",
                    sigma_min=min(sig),
                    sigma_max=max(sig),
                )
                if np.all(m > 0):
                    fit = bootstrap_mean_slope(sig, list(arr), cfg.n_boot, cfg.seed)
                    pred = predicted_anatomy_slope(score, part, off is not None, finite)
                    slopes.append(_slope_row(fit.slope, fit.ci_low, fit.ci_high, pred, **kw))
        if off is None and "exact" in res:
            const = sig[0] * res["exact"]["normal"][0].mean()
            slopes.append(
                _slope_row(
                    const,
                    np.nan,
                    np.nan,
                    mean_abs_gaussian_norm(target.codim),
                    manifold=target.name,
                    family=fam,
                    quantity="sigma_times_normal_at_min_sigma",
                    score="exact",
                    source="constant",
                    sigma_min=sig[0],
                    sigma_max=sig[0],
                )
            )
    return curves, slopes


def _oracle_cases(cfg: Config):
    for a in cfg.oracle_alphas:
        yield a, "none", np.nan
        for b in cfg.normal_betas:
            yield a, "normal", b
        for b in cfg.tangential_betas:
            yield a, "tangential", b
            yield a, "tangential_orth", b


def run_oracle(cfg: Config):
    """Quadrature curves and exact (CI-free) slopes for every oracle case."""
    curves, slopes = [], []
    sig = cfg.oracle_sigmas
    for a, et, b in _oracle_cases(cfg):
        c = 0.0 if et == "none" else cfg.c
        nt, nr = cfg.oracle_grid
        rs = [
            stationary_oracle(s, a, 0.0 if et == "none" else b, c, et, n_theta=nt, n_r=nr)
            for s in sig
        ]
        for q in ("dist", "tv", "w1"):
            vals = [getattr(r, q) for r in rs]
            for s, v in zip(sig, vals, strict=True):
                curves.append(
                    _row(
                        family="tolerance",
                        quantity=q,
                        alpha=a,
                        beta=b,
                        error_type=et,
                        c=c,
                        sigma=s,
                        value=v,
                        se=0.0,
                        source="oracle",
                    )
                )
            sl = loglog_slope(sig[:3], vals[:3])[0] if min(vals) > 0 else np.nan
            slopes.append(
                _slope_row(
                    sl,
                    np.nan,
                    np.nan,
                    predicted_slope(q, a, b if b == b else 0, et),
                    family="tolerance",
                    quantity=q,
                    alpha=a,
                    beta=b,
                    error_type=et,
                    c=c,
                    source="oracle",
                    sigma_min=sig[0],
                    sigma_max=sig[2],
                )
            )
    return curves, slopes


def _tv_stat(ref_bins):
    return lambda th: histogram_tv(torch.from_numpy(th), ref_bins)


def _w1_stat(ref_cdf, grid):
    return lambda th: circle_w1_samples(torch.from_numpy(th), ref_cdf, grid)


def run_langevin_curves(cfg: Config, log=print):
    """Sampled tolerance curves (two starts) with chain-bootstrap slopes; returns curve rows,
    slope rows and a stationarity table (|difference of the two starts| / combined SE for the
    distance, absolute for W1)."""
    curves, slopes, checks = [], [], []
    for alpha, error_type, beta in cfg.langevin_cases:
        c, s, k = _langevin_case(cfg, alpha, error_type, beta, log)
        curves, slopes, checks = curves + c, slopes + s, checks + k
    return curves, slopes, checks


def _langevin_case(cfg: Config, alpha: float, error_type: str, beta: float, log):
    """Curves, slopes and checks of one (alpha, error type, beta) over cfg.langevin_sigmas."""
    case = dict(
        family="tolerance",
        alpha=alpha,
        beta=beta if error_type != "none" else np.nan,
        error_type=error_type,
        c=0.0 if error_type == "none" else cfg.c,
    )
    curves, checks = [], []
    by_start = {"data": [], "far": []}
    oracle = {"dist": [], "tv": [], "w1": []}
    for sigma in cfg.langevin_sigmas:
        point = tolerance_point(sigma, alpha, error_type, beta, case["c"], cfg.sampler, cfg.seed)
        data, far = point["data"], point["far"]
        log(
            f"  langevin alpha={alpha} {error_type} beta={beta} sigma={sigma:.3g}: "
            f"{data['n_steps']} steps, dist {data['dist'].mean():.4g} "
            f"(oracle {point['oracle']['dist']:.4g}), w1 {data['w1']:.4g} "
            f"(oracle {point['oracle']['w1']:.4g})"
        )
        curves += _langevin_point_rows(point, sigma, case)
        for start in by_start:
            by_start[start].append(point[start])
        for q in oracle:
            oracle[q].append(point["oracle"][q])
        se2 = data["dist"].var() / data["dist"].size + far["dist"].var() / far["dist"].size
        checks.append(
            dict(
                alpha=alpha,
                error_type=error_type,
                beta=case["beta"],
                sigma=sigma,
                dist_z=abs(data["dist"].mean() - far["dist"].mean()) / math.sqrt(se2),
                w1_diff=abs(data["w1"] - far["w1"]),
                dist_rel_to_oracle=data["dist"].mean() / point["oracle"]["dist"] - 1,
            )
        )
    slopes = _langevin_slopes(cfg, case, beta, by_start, oracle, point)
    return curves, slopes, checks


def _langevin_point_rows(point: dict, sigma: float, case: dict) -> list[dict]:
    """Curve rows of one sigma: dist, tv and w1 from both starts, and the binned oracle TV."""
    rows = []
    for start in ("data", "far"):
        out = point[start]
        d = out["dist"]
        common = dict(case, sigma=sigma, source=f"langevin_{start}")
        rows.append(_row(quantity="dist", value=d.mean(), se=d.std() / math.sqrt(d.size), **common))
        rows.append(_row(quantity="tv", value=out["tv"], **common))
        rows.append(_row(quantity="w1", value=out["w1"], **common))
    rows.append(
        _row(
            quantity="tv_binned",
            value=point["oracle"]["tv_binned"],
            source="oracle_binned",
            **dict(case, sigma=sigma),
        )
    )
    return rows


def _langevin_slopes(cfg: Config, case: dict, beta: float, by_start, oracle, last_point):
    """Bootstrap slopes of dist (chain means), tv and w1 for both starts, with the predicted
    slopes and the oracle's slope over the same sigmas."""
    sig = cfg.langevin_sigmas
    ref_bins, ref_cdf, grid = last_point["ref_bins"], last_point["ref_cdf"], last_point["grid"]
    oracle_slope = {q: loglog_slope(sig, v)[0] if min(v) > 0 else np.nan for q, v in oracle.items()}
    alpha, error_type = case["alpha"], case["error_type"]
    rows = []
    for start, outputs in by_start.items():
        kw = dict(case, source=f"langevin_{start}", sigma_min=min(sig), sigma_max=max(sig))
        fit = bootstrap_mean_slope(sig, [o["dist"] for o in outputs], cfg.n_boot, cfg.seed)
        rows.append(
            _slope_row(
                fit.slope,
                fit.ci_low,
                fit.ci_high,
                predicted_slope("dist", alpha, beta, error_type),
                quantity="dist",
                oracle_slope_same_sigmas=oracle_slope["dist"],
                **kw,
            )
        )
        for q, stat in (("tv", _tv_stat(ref_bins)), ("w1", _w1_stat(ref_cdf, grid))):
            thetas = [o["theta"] for o in outputs]
            try:
                fit = bootstrap_slope(sig, thetas, stat, max(cfg.n_boot // 5, 50), cfg.seed)
                vals = (fit.slope, fit.ci_low, fit.ci_high)
            except ValueError:  # a statistic that is zero at some sigma has no log slope
                vals = (np.nan, np.nan, np.nan)
            pred = predicted_slope(q, alpha, beta, error_type)
            rows.append(
                _slope_row(*vals, pred, quantity=q, oracle_slope_same_sigmas=oracle_slope[q], **kw)
            )
    return rows


def run_tempering(targets: dict, cfg: Config, extra_scores: dict | None = None, log=print):
    """Experiment C: moment-MMD of tempered Langevin to uniform against sigma, per target and
    score ('exact' plus any learned full scores in ``extra_scores[target]``)."""
    curves, slopes = [], []
    a = cfg.tempering_alpha
    for name, (tg, sample_uniform) in targets.items():
        g = torch.Generator().manual_seed(cfg.seed + 17)
        ref = sample_uniform(cfg.tempering_n + 50000, g).double()
        scores = {"exact": tg.scores["exact"], **(extra_scores or {}).get(name, {})}
        for sname, f in scores.items():
            vals = []
            for s in cfg.tempering_sigmas:
                o = tempering_point(
                    f,
                    tg.sample,
                    tg.project,
                    ref,
                    s,
                    a,
                    cfg.tempering_n,
                    cfg.sampler.step_frac,
                    seed=cfg.seed,
                    dtype=torch.float64 if name in ("so3",) else torch.float32,
                )
                log(
                    f"  tempering {name} {sname} sigma={s:.3g}: mmd2 {o['mmd2']:.3g} "
                    f"(floor {o['mmd2_floor']:.3g}, data {o['mmd2_data']:.3g}), "
                    f"{o['n_steps']} steps"
                )
                common = dict(manifold=name, family="tempering", score=sname, alpha=a, sigma=s)
                for quantity, key, source in (
                    ("moment_mmd", "mmd2", "langevin_data"),
                    ("moment_mmd_floor", "mmd2_floor", "uniform"),
                    ("moment_mmd_data", "mmd2_data", "data"),
                ):
                    value = positive_sqrt(o[key])
                    curves.append(_row(quantity=quantity, value=value, source=source, **common))
                curves.append(
                    _row(quantity="dist", value=o["dist"], source="langevin_data", **common)
                )
                vals.append(positive_sqrt(o["mmd2"]))
            ok = np.isfinite(vals).all()
            sl = loglog_slope(cfg.tempering_sigmas, vals)[0] if ok else np.nan
            slopes.append(
                _slope_row(
                    sl,
                    np.nan,
                    np.nan,
                    a,
                    manifold=name,
                    family="tempering",
                    quantity="moment_mmd",
                    score=sname,
                    alpha=a,
                    source="langevin_data",
                    sigma_min=min(cfg.tempering_sigmas),
                    sigma_max=max(cfg.tempering_sigmas),
                )
            )
    return curves, slopes
