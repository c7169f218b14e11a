"""Figures of the rate-separation curves (seaborn; PNG + PDF) from curves / slopes tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from madbench.rate_separation.outputs import FIGURES  # noqa: E402


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def plot_anatomy(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Mean |normal| and |tangent| parts against sigma, one panel per manifold and family."""
    d = curves[curves.family.str.startswith("anatomy")].copy()
    if d.empty:
        return []
    d = d[d.value > 0]
    g = sns.relplot(
        data=d,
        x="sigma",
        y="value",
        hue="score",
        style="quantity",
        col="manifold",
        row="family",
        kind="line",
        markers=True,
        dashes=True,
        height=3,
        facet_kws=dict(sharey=False),
    )
    g.set(xscale="log", yscale="log")
    g.set_axis_labels("sigma", "E |part of score|")
    return _save(g.figure, out_dir, FIGURES[0])


def plot_tolerance(curves: pd.DataFrame, slopes: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Oracle curves (lines) with Langevin points, and fitted slopes against beta with the
    predicted slopes and the beta = -2 (concentration) and beta = 0 (distribution) thresholds."""
    d = curves[curves.family == "tolerance"]
    if d.empty:
        return []
    fig, ax = plt.subplots(1, 4, figsize=(19, 4))
    for q, error_type, a in (("dist", "normal", ax[0]), ("tv", "tangential", ax[1])):
        _tolerance_curves(d, q, error_type, a)
    for q, error_type, a in (("dist", "normal", ax[2]), ("tv", "tangential", ax[3])):
        _tolerance_slopes(slopes, q, error_type, a)
    fig.tight_layout()
    return _save(fig, out_dir, FIGURES[1])


def _tolerance_curves(d: pd.DataFrame, q: str, error_type: str, a) -> None:
    """Panel: quantity ``q`` against sigma at alpha = 0, one line per beta (oracle) with the
    Langevin estimates as crosses."""
    o = d[(d.quantity == q) & (d.error_type.isin([error_type, "none"])) & (d.alpha == 0)]
    o = o.assign(beta=[("exact" if b != b else f"{b:g}") for b in o.beta])
    order = sorted(o.beta.unique(), key=lambda b: np.inf if b == "exact" else float(b))
    pal = dict(zip(order, sns.color_palette("viridis", len(order)), strict=True))
    oracle = o[o.source == "oracle"]
    sns.lineplot(data=oracle, x="sigma", y="value", hue="beta", hue_order=order, palette=pal, ax=a)
    sampled = o[o.source == "langevin_data"]
    if not sampled.empty:
        sns.scatterplot(
            data=sampled, x="sigma", y="value", hue="beta", palette=pal, ax=a, marker="X", s=60,
            legend=False,
        )  # fmt: skip
    a.set(xscale="log", yscale="log", title=f"alpha=0, {error_type} error: {q}", xlabel="sigma")


def _tolerance_slopes(slopes: pd.DataFrame, q: str, error_type: str, a) -> None:
    """Panel: fitted slope of ``q`` against beta per alpha (dotted: predicted), Langevin fits
    with their intervals, and the two thresholds."""
    s = slopes[(slopes.family == "tolerance") & (slopes.source == "oracle")]
    # alpha > 0: the tangential error orthogonal to log p_data (see circle.py)
    if error_type == "tangential":
        pick = ((s.error_type == error_type) & (s.alpha == 0)) | (
            (s.error_type == "tangential_orth") & (s.alpha > 0)
        )
    else:
        pick = s.error_type == error_type
    e = s[(s.quantity == q) & pick]
    sns.lineplot(data=e, x="beta", y="slope", hue="alpha", marker="o", ax=a)
    sns.lineplot(data=e, x="beta", y="predicted", hue="alpha", linestyle=":", ax=a, legend=False)
    ls = slopes[
        (slopes.source == "langevin_data")
        & (slopes.quantity == q)
        & slopes.error_type.str.startswith(error_type)
    ]
    if not ls.empty:
        lo, hi = (ls.slope - ls.ci_low).clip(lower=0), (ls.ci_high - ls.slope).clip(lower=0)
        a.errorbar(ls.beta, ls.slope, yerr=[lo, hi], fmt="kx", label="Langevin (95% CI)")
    for thr, lab in ((-2.0, "beta=-2: concentration"), (0.0, "beta=0: distribution")):
        a.axvline(thr, color="red" if thr == -2 else "orange", ls="--", label=lab)
    a.set(title=f"slope of {q} ({error_type} error); dotted = predicted", ylabel="log-log slope")
    if error_type == "tangential":
        a.set_title("slope of tv (tangential; orth for alpha>0); dotted = predicted")
    a.legend(fontsize=7)


def plot_tempering(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Moment MMD of tempered Langevin to the uniform law against sigma, with the floor."""
    d = curves[(curves.family == "tempering") & curves.quantity.str.startswith("moment_mmd")]
    d = d[np.isfinite(d.value)]
    if d.empty:
        return []
    g = sns.relplot(
        data=d,
        x="sigma",
        y="value",
        hue="score",
        style="quantity",
        col="manifold",
        kind="line",
        markers=True,
        height=3.2,
        facet_kws=dict(sharey=False),
    )
    g.set(xscale="log", yscale="log")
    g.set_axis_labels("sigma", "moment MMD to uniform")
    return _save(g.figure, out_dir, FIGURES[2])
