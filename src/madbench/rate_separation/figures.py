"""Figures of the rate-separation curves (seaborn; PNG + PDF) from curves / slopes tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def plot_anatomy(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Mean |normal| and |tangent| parts against sigma, one panel per manifold and family."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

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
    return _save(g.figure, out_dir, "rate_separation_anatomy")


def plot_tolerance(curves: pd.DataFrame, slopes: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Oracle curves (lines) with Langevin points, and fitted slopes against beta with the
    predicted slopes and the beta = -2 (concentration) and beta = 0 (distribution) thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = curves[curves.family == "tolerance"]
    if d.empty:
        return []
    fig, ax = plt.subplots(1, 4, figsize=(19, 4))
    panels = [("dist", "normal", ax[0]), ("tv", "tangential", ax[1])]
    for q, et, a in panels:
        o = d[(d.quantity == q) & (d.error_type.isin([et, "none"])) & (d.alpha == 0)]
        o = o.assign(beta=[("exact" if b != b else f"{b:g}") for b in o.beta])
        order = sorted(o.beta.unique(), key=lambda b: np.inf if b == "exact" else float(b))
        pal = dict(zip(order, sns.color_palette("viridis", len(order)), strict=True))
        oo = o[o.source == "oracle"]
        sns.lineplot(data=oo, x="sigma", y="value", hue="beta", hue_order=order, palette=pal, ax=a)
        ls = o[o.source == "langevin_data"]
        if not ls.empty:
            sns.scatterplot(
                data=ls,
                x="sigma",
                y="value",
                hue="beta",
                palette=pal,
                ax=a,
                marker="X",
                s=60,
                legend=False,
            )
        a.set(xscale="log", yscale="log", title=f"alpha=0, {et} error: {q}", xlabel="sigma")
    s = slopes[(slopes.family == "tolerance") & (slopes.source == "oracle")]
    for q, et, a in (("dist", "normal", ax[2]), ("tv", "tangential", ax[3])):
        # alpha > 0: the tangential error orthogonal to log p_data (see circle.py)
        pick = (s.error_type == et) & (s.alpha == 0) if et == "tangential" else s.error_type == et
        if et == "tangential":
            pick |= (s.error_type == "tangential_orth") & (s.alpha > 0)
        e = s[(s.quantity == q) & pick]
        sns.lineplot(data=e, x="beta", y="slope", hue="alpha", marker="o", ax=a)
        sns.lineplot(
            data=e, x="beta", y="predicted", hue="alpha", linestyle=":", ax=a, legend=False
        )
        ls = slopes[
            (slopes.source == "langevin_data")
            & (slopes.quantity == q)
            & slopes.error_type.str.startswith(et)
        ]
        if not ls.empty:
            a.errorbar(
                ls.beta,
                ls.slope,
                yerr=[(ls.slope - ls.ci_low).clip(lower=0), (ls.ci_high - ls.slope).clip(lower=0)],
                fmt="kx",
                label="Langevin (95% CI)",
            )
        for thr, lab in ((-2.0, "beta=-2: concentration"), (0.0, "beta=0: distribution")):
            a.axvline(thr, color="red" if thr == -2 else "orange", ls="--", label=lab)
        a.set(title=f"slope of {q} ({et} error); dotted = predicted", ylabel="log-log slope")
        if et == "tangential":
            a.set_title("slope of tv (tangential; orth for alpha>0); dotted = predicted")
        a.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, "rate_separation_tolerance")


def plot_tempering(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Moment MMD of tempered Langevin to the uniform law against sigma, with the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

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
    return _save(g.figure, out_dir, "rate_separation_tempering")
