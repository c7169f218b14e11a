"""The paper figures (seaborn, PNG + PDF), from the library and from the run table.

Every figure function takes ``runs`` (the DataFrame of ``results/tables/runs.csv``) and the two
output paths. When the data a figure needs is missing (no run of that kind, no score-error curve,
no samples), it writes a placeholder figure saying so, so that the pipeline's outputs always
exist and the dashboard shows why a panel is empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from madbench.aggregate import headline_metrics, metric_columns  # noqa: E402
from madbench.data import get_dataset  # noqa: E402
from madbench.manifolds.so3 import rotation_angle  # noqa: E402
from madbench.rundir import HISTORY, PROBES, SCORE_ERROR, RunDir, read_csv  # noqa: E402

SAMPLE_KEYS = ("projected", "samples", "x", "raw")
#: Methods in this order and with these colours in every figure (others follow, sorted).
METHOD_ORDER = ("dsm", "mad", "rsgm", "oracle")


def method_hue(methods) -> dict:
    """hue_order and palette keyword arguments giving each method one colour in all figures."""
    present = set(methods)
    order = [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))
    colours = sns.color_palette("tab10", 10)
    known = {m: colours[i] for i, m in enumerate(METHOD_ORDER)}
    extra = iter(colours[len(METHOD_ORDER) :] * 10)
    return {"hue_order": order, "palette": {m: known.get(m) or next(extra) for m in order}}


def save(fig, png: str | Path, pdf: str | Path) -> None:
    """Save ``fig`` as PNG (150 dpi) and PDF, then close it."""
    for path in (png, pdf):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def placeholder(png: str | Path, pdf: str | Path, title: str, reason: str) -> None:
    """A small figure stating why there is nothing to plot."""
    fig, ax = plt.subplots(figsize=(5, 1.6))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.4, f"no data: {reason}", ha="center", va="center", wrap=True)
    save(fig, png, pdf)


def ok_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished runs; an empirical dataset's split is part of its label in figures."""
    ok = runs[runs["status"] == "ok"].copy()
    if "split" in ok:
        split = ok["split"].fillna("none")
        ok["dataset"] = ok["dataset"].where(split == "none", ok["dataset"] + " (" + split + ")")
    return ok


def facet_axes(n: int, ncols: int, size: float = 3.2, **kw):
    """A grid of n axes (extra ones hidden) as a flat list, and the figure."""
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(size * ncols, size * nrows),
        squeeze=False,
        layout="constrained",
        **kw,
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# --------------------------------------------------------------------------------------------
# MAD's toy figure (library only)
# --------------------------------------------------------------------------------------------


def toy_magnitudes(ds, sigmas: np.ndarray, n: int = 2000) -> pd.DataFrame:
    """|s| and |s - s_base| at x = (1, 0) and their means over x = (1, 0) + sigma z, z ~ N(0, I)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    rows = []
    for sg in sigmas:
        for where, x in (("at (1, 0)", x0), ("E over (1, 0) + sigma z", x0 + sg * z)):
            s, sb = ds.score(x, float(sg)), ds.manifold.base_score(x, float(sg))
            rows.append(
                {
                    "sigma": sg,
                    "where": where,
                    "field": "|s|",
                    "magnitude": s.norm(dim=1).mean().item(),
                }
            )
            rows.append(
                {
                    "sigma": sg,
                    "where": where,
                    "field": "|s - s_base|",
                    "magnitude": (s - sb).norm(dim=1).mean().item(),
                }
            )
    mag = pd.DataFrame(rows)
    return mag[mag["magnitude"] > 0]


def toy_fields(png: str | Path, pdf: str | Path, sigma: float = 0.8) -> None:
    """Fields s, s_base, s - s_base at ``sigma`` and |s|, |s - s_base| against sigma at (1, 0)."""
    ds = get_dataset("toy")
    g = torch.linspace(-2.0, 2.0, 21, dtype=torch.float64)
    xy = torch.cartesian_prod(g, g)
    s, sb = ds.score(xy, sigma), ds.manifold.base_score(xy, sigma)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4), layout="constrained")
    for ax, field, title in zip(axes, (s, sb, s - sb), ("s", "s_base", "s - s_base"), strict=False):
        u, v = field[:, 0].numpy(), field[:, 1].numpy()
        ax.quiver(xy[:, 0], xy[:, 1], u, v, np.hypot(u, v), cmap="viridis")
        ax.scatter([-1, 1], [0, 0], c="red", s=30, zorder=3)
        ax.set(title=f"{title} at sigma = {sigma}", aspect="equal", xlabel="x1", ylabel="x2")
    mag = toy_magnitudes(ds, np.geomspace(1e-3, 1e1, 50))
    sns.lineplot(mag, x="sigma", y="magnitude", hue="field", style="where", ax=axes[3])
    axes[3].set(xscale="log", yscale="log", title="magnitudes near x = (1, 0)")
    save(fig, png, pdf)


# --------------------------------------------------------------------------------------------
# Figures from runs
# --------------------------------------------------------------------------------------------


def read_run_csvs(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """Concatenate RUN/name over the ok runs that have it, with the run coordinates added."""
    frames = []
    for r in ok_runs(runs).itertuples():
        f = read_csv(RunDir(r.run_dir) / name)
        if f is not None:
            frames.append(
                f.assign(dataset=r.dataset, schedule=r.schedule, method=r.method, seed=r.seed)
            )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def pick_metric(ok: pd.DataFrame, metric: str | None) -> str | None:
    """``metric`` if the runs have it, else the first headline metric they have, else None."""
    if ok.empty:
        return None
    if metric is not None:
        return metric if metric in ok else None
    return next(iter(headline_metrics(metric_columns(ok))), None)


def training_curves(runs: pd.DataFrame, png: str | Path, pdf: str | Path) -> None:
    """Training loss against step and against wall time, per dataset, hue = method (history.csv)."""
    h = read_run_csvs(runs, HISTORY)
    if h.empty or "loss" not in h:
        return placeholder(png, pdf, "training curves", "no history.csv with a loss column")
    datasets = sorted(h["dataset"].unique())
    fig, axes = plt.subplots(
        len(datasets), 2, figsize=(9, 2.8 * len(datasets)), squeeze=False, layout="constrained"
    )
    for row, d in zip(axes, datasets, strict=True):
        sub = h[h["dataset"] == d]
        for ax, x in zip(row, ("step", "wall_time"), strict=True):
            if x in sub:
                sns.lineplot(
                    sub,
                    x=x,
                    y="loss",
                    hue="method",
                    **method_hue(h["method"]),
                    style="schedule",
                    ax=ax,
                    errorbar=None,
                    legend=ax is axes[0][0],
                )
            ax.set(
                yscale="symlog" if (sub["loss"] <= 0).any() else "log", title=f"{d}: loss vs {x}"
            )
    save(fig, png, pdf)


def efficiency(
    runs: pd.DataFrame, png: str | Path, pdf: str | Path, metric: str | None = None
) -> None:
    """Quality per compute: distance to M and a distributional metric of the EMA model against
    training steps and training wall time (RUN/probes.csv, written when probe_every > 0), one row
    per dataset, mean over seeds. Without probes: the final headline metric against wall time."""
    pr = read_run_csvs(runs, PROBES)
    if not pr.empty and "dist_mean" in pr:
        return _efficiency_probes(pr, png, pdf)
    ok = ok_runs(runs)
    metric = pick_metric(ok, metric)
    wall = next(
        (c for c in ("train_wall_time_s", "hist.wall_time", "bench.train_s") if c in ok), None
    )
    if metric is None or wall is None:
        return placeholder(png, pdf, "quality per compute", "no metric or wall time in the runs")
    data = ok.assign(**{metric: pd.to_numeric(ok[metric], errors="coerce")}).dropna(
        subset=[metric, wall]
    )
    datasets = sorted(data["dataset"].unique())
    fig, axes = facet_axes(len(datasets), min(3, max(1, len(datasets))))
    for ax, d in zip(axes, datasets, strict=True):
        sns.scatterplot(
            data[data["dataset"] == d],
            x=wall,
            y=metric,
            hue="method",
            style="schedule",
            ax=ax,
            **method_hue(data["method"]),
        )
        ax.set(xscale="log", title=d)
    save(fig, png, pdf)


#: distributional metric of the efficiency figure, first one a dataset's probes have
PROBE_METRICS = ("tv", "mmd2_h0.3", "marginal_mae")


def _efficiency_probes(pr: pd.DataFrame, png: str | Path, pdf: str | Path) -> None:
    datasets = sorted(pr["dataset"].unique())
    fig, axes = plt.subplots(
        len(datasets), 4, figsize=(13, 2.9 * len(datasets)), squeeze=False, layout="constrained"
    )
    hue = method_hue(pr["method"])
    for row, d in zip(axes, datasets, strict=True):
        sub = pr[pr["dataset"] == d]
        metric = next((m for m in PROBE_METRICS if m in sub and sub[m].notna().any()), None)
        for ax, (y, x) in zip(
            row,
            [("dist_mean", "step"), ("dist_mean", "wall_time"), (metric, "step"),
             (metric, "wall_time")],
            strict=True,
        ):  # fmt: skip
            if y is None:
                ax.set_visible(False)
                continue
            # against steps: mean over seeds; against wall time (which differs by seed): one
            # line per seed
            per_seed = {"units": "seed", "estimator": None} if x == "wall_time" else {}
            sns.lineplot(
                sub, x=x, y=y, hue="method", style="schedule", errorbar=None, marker="o",
                ax=ax, legend=ax is axes[0][0], **hue, **per_seed,
            )  # fmt: skip
            positive = (sub[y].dropna() > 0).all()
            ax.set(
                yscale="log" if positive else "symlog",
                xlabel="training step" if x == "step" else "training wall time (s)",
                ylabel="mean distance to M" if y == "dist_mean" else y,
                title=d,
            )
    save(fig, png, pdf)


def score_error(runs: pd.DataFrame, png: str | Path, pdf: str | Path) -> None:
    """Relative exact score error E|s_model - s_true|^2 / E|s_true|^2 against sigma per method
    (RUN/score_error.csv), log-log, 95 % CI band over seeds. The oracle's error is zero up to
    rounding (~1e-30) and is left out, so that the learned methods' range is readable."""
    c = read_run_csvs(runs, SCORE_ERROR)
    if c.empty or not {"sigma", "mse", "true_sq_norm"} <= set(c.columns):
        return placeholder(png, pdf, "exact score error", "no run wrote score_error.csv")
    c = c[c["method"] != "oracle"].assign(relative=lambda d: d["mse"] / d["true_sq_norm"])
    if c.empty:
        return placeholder(png, pdf, "exact score error", "only the oracle (error 0) ran")
    datasets = sorted(c["dataset"].unique())
    fig, axes = facet_axes(len(datasets), min(3, len(datasets)))
    for ax, d in zip(axes, datasets, strict=True):
        sns.lineplot(
            c[c["dataset"] == d],
            x="sigma",
            y="relative",
            hue="method",
            style="schedule",
            **method_hue(c["method"]),
            errorbar=("ci", 95),
            seed=0,
            ax=ax,
        )
        ax.set(xscale="log", yscale="log", title=d, ylabel="E|s - s_true|^2 / E|s_true|^2")
    fig.suptitle("relative exact score error (the oracle's is 0)", y=1.02)
    save(fig, png, pdf)


def schedules(
    runs: pd.DataFrame, png: str | Path, pdf: str | Path, metric: str | None = None
) -> None:
    """Noise-schedule comparison: the headline metric per schedule and method (mean, 95 % CI)."""
    ok = ok_runs(runs)
    metric = pick_metric(ok, metric)
    if metric is None:
        return placeholder(png, pdf, "schedule comparison", "no finished run with a metric")
    data = ok.assign(**{metric: pd.to_numeric(ok[metric], errors="coerce")}).dropna(subset=[metric])
    datasets = sorted(data["dataset"].unique())
    fig, axes = facet_axes(len(datasets), min(3, len(datasets)))
    for ax, d in zip(axes, datasets, strict=True):
        sns.pointplot(
            data[data["dataset"] == d],
            x="schedule",
            y=metric,
            hue="method",
            errorbar=("ci", 95),
            seed=0,
            dodge=0.3,
            ax=ax,
            **method_hue(data["method"]),
        )
        ax.set(title=d)
    save(fig, png, pdf)


def load_samples(run_dir: str | Path) -> np.ndarray | None:
    """Points of RUN/samples.npz (the projected ones when stored), shape (n, D), or None."""
    path = RunDir(run_dir).samples
    if not path.exists():
        return None
    with np.load(path) as z:
        key = next((k for k in SAMPLE_KEYS if k in z.files), z.files[0] if z.files else None)
        return None if key is None else np.asarray(z[key], dtype=float).reshape(len(z[key]), -1)


def sample_panels(runs: pd.DataFrame, dim: int, limit: int = 12) -> list[tuple[str, np.ndarray]]:
    """(title, samples) of the first seed of each (dataset, method, schedule) with D = dim."""
    out = []
    first = ok_runs(runs).sort_values("seed").drop_duplicates(["dataset", "method", "schedule"])
    for r in first.itertuples():
        x = load_samples(r.run_dir)
        if x is not None and x.shape[1] == dim:
            out.append((f"{r.dataset}\n{r.method} ({r.schedule})", x))
    return out[:limit]


def samples_s2(runs: pd.DataFrame, png: str | Path, pdf: str | Path) -> None:
    """Samples on S^2 in a Mollweide projection (longitude, latitude), one panel per run."""
    panels = sample_panels(runs, 3)
    if not panels:
        return placeholder(png, pdf, "samples on S^2", "no finished S^2 run wrote samples.npz")
    fig, axes = facet_axes(
        len(panels), min(3, len(panels)), size=4.0, subplot_kw={"projection": "mollweide"}
    )
    for ax, (title, x) in zip(axes, panels, strict=True):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        lon, lat = np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1, 1))
        ax.scatter(lon, lat, s=1, alpha=0.4)
        ax.set_title(title, fontsize=8)
        ax.grid(True, alpha=0.3)
    save(fig, png, pdf)


def samples_so3(runs: pd.DataFrame, png: str | Path, pdf: str | Path) -> None:
    """Histograms of the rotation angle of SO(3) samples against the Haar law (1 - cos w)/pi."""
    panels = sample_panels(runs, 9)
    if not panels:
        return placeholder(png, pdf, "samples on SO(3)", "no finished SO(3) run wrote samples.npz")
    fig, axes = facet_axes(len(panels), min(3, len(panels)))
    w = np.linspace(0, np.pi, 200)
    for ax, (title, x) in zip(axes, panels, strict=True):
        sns.histplot(rotation_angle(torch.as_tensor(x)).numpy(), bins=40, stat="density", ax=ax)
        ax.plot(w, (1 - np.cos(w)) / np.pi, "k--", label="Haar")
        ax.set(title=title, xlabel="rotation angle (rad)")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7)
    save(fig, png, pdf)


#: Figures drawn from the run table: name -> function(runs, png, pdf).
RUN_FIGURES: dict[str, Callable[..., None]] = {
    "training_curves": training_curves,
    "efficiency": efficiency,
    "score_error": score_error,
    "samples_s2": samples_s2,
    "samples_so3": samples_so3,
    "schedules": schedules,
}


def make_figure(
    name: str, runs_csv: str | Path, png: str | Path, pdf: str | Path, metric: str | None = None
) -> None:
    """Draw the run figure ``name`` from runs.csv (``metric`` for efficiency and schedules)."""
    runs = pd.read_csv(runs_csv)
    sns.set_theme(style="whitegrid", context="paper")
    fn = RUN_FIGURES[name]
    if name in ("efficiency", "schedules"):
        fn(runs, png, pdf, metric)
    else:
        fn(runs, png, pdf)
