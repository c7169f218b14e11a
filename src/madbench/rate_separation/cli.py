"""``madbench rate-separation``: run experiments A/B/C, write curves.csv, slopes.csv, figures.

Every argument is checked before anything runs (an unknown part or manifold is an error with
exit status 2), and nothing is written unless the experiments produced curves, so a typo never
replaces earlier results by empty files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from madbench._utils import atomic_write
from madbench.data import get_dataset
from madbench.rate_separation import experiments as ex
from madbench.rate_separation import figures
from madbench.rate_separation.learned import learned_score_fns
from madbench.rate_separation.outputs import (
    CURVES,
    META,
    SLOPE_COLUMNS,
    SLOPES,
    STATIONARITY,
    rate_separation_dir,
)
from madbench.rate_separation.targets import DATASET_FOR, get_target, resolve_dataset_name

PARTS = ("anatomy", "tolerance", "tempering")


class UsageError(Exception):
    """A bad argument: exit status 2 with this message."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="madbench rate-separation", description=__doc__)
    p.add_argument("--mode", choices=["quick", "full"], default="quick")
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma list of anatomy, tolerance (oracle + langevin), tempering",
    )
    p.add_argument(
        "--manifolds",
        default=",".join(DATASET_FOR),
        help=f"comma list of anatomy targets ({', '.join(DATASET_FOR)})",
    )
    p.add_argument("--results", default="results", help="results root directory")
    p.add_argument(
        "--run-dir",
        action="append",
        default=[],
        metavar="KIND:MANIFOLD=DIR",
        help="learned scores, e.g. dsm:s2=results/runs/... (KIND in dsm, mad)",
    )
    p.add_argument("--no-langevin", action="store_true", help="tolerance: oracle only")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p


def _names(text: str, known, what: str) -> list[str]:
    """The comma list ``text``, every name checked against ``known`` (UsageError otherwise)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise UsageError(f"unknown {what} {bad or text!r}; known: {', '.join(known)}")
    return names


def _parse_run_dirs(items: list[str]) -> dict[str, dict[str, str]]:
    """{manifold: {kind: run_dir}} from KIND:MANIFOLD=DIR arguments (UsageError otherwise)."""
    out: dict[str, dict[str, str]] = {}
    for it in items:
        head, eq, d = it.partition("=")
        kind, colon, man = head.partition(":")
        if not (eq and colon and d and kind in ("dsm", "mad") and man in DATASET_FOR):
            raise UsageError(
                "--run-dir must look like KIND:MANIFOLD=DIR with KIND dsm or mad and MANIFOLD "
                f"one of {', '.join(DATASET_FOR)}, got {it!r}"
            )
        out.setdefault(man, {})[kind] = d
    return out


def _targets(names: list[str], run_dirs: dict[str, dict[str, str]]):
    """Anatomy targets (learned scores attached where run dirs are given), and the full learned
    model scores per target for the tempering experiment."""
    out, full_learned = {}, {}
    for n in names:
        tg = get_target(n)
        if n in run_dirs:
            fns = learned_score_fns(run_dirs[n])
            tg.scores.update({k: v for k, v in fns.items() if k in ("dsm", "mad")})
            full_learned[n] = {f"{k}_model": v for k, v in fns.items() if k in ("dsm",)}
            if "mad_full" in fns:
                full_learned[n]["mad_model"] = fns["mad_full"]
        out[n] = tg
    return out, full_learned


def _uniform_sampler(name: str):
    """(n, generator) -> n uniform points (float64) on the manifold of target ``name``."""
    manifold = get_dataset(resolve_dataset_name(name)).manifold
    return lambda n, g: manifold.sample_uniform(n, generator=g).double()


def _run_parts(parts, cfg, targets, learned, langevin: bool, log):
    """Run the requested experiments: (curve rows, slope rows, stationarity rows, timings)."""
    curves, slopes, checks, timings = [], [], [], {}
    g = torch.Generator().manual_seed(cfg.seed)
    if "anatomy" in parts:
        for name, tg in targets.items():
            t = time.time()
            c, s = ex.run_anatomy(tg, cfg, g)
            curves, slopes = curves + c, slopes + s
            timings[f"anatomy_{name}"] = time.time() - t
            log(f"anatomy {name}: {timings[f'anatomy_{name}']:.1f}s")
    if "tolerance" in parts:
        t = time.time()
        c, s = ex.run_oracle(cfg)
        curves, slopes, timings["oracle"] = curves + c, slopes + s, time.time() - t
        log(f"oracle: {timings['oracle']:.1f}s")
        if langevin:
            t = time.time()
            c, s, checks = ex.run_langevin_curves(cfg, log)
            curves, slopes, timings["langevin"] = curves + c, slopes + s, time.time() - t
    if "tempering" in parts:
        t = time.time()
        tt = {n: (targets[n], _uniform_sampler(n)) for n in ("circle", "s2", "so3") if n in targets}
        c, s = ex.run_tempering(tt, cfg, learned, log)
        curves, slopes, timings["tempering"] = curves + c, slopes + s, time.time() - t
    return curves, slopes, checks, timings


def _write(out_dir: Path, curves, slopes, checks, meta: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """curves.csv, slopes.csv, stationarity.csv (if any) and meta.json, each atomically."""
    cdf, sdf = pd.DataFrame(curves), pd.DataFrame(slopes)
    if not sdf.empty:
        sdf = sdf[SLOPE_COLUMNS + [c for c in sdf.columns if c not in SLOPE_COLUMNS]]
    for df, name in ((cdf, CURVES), (sdf, SLOPES), (pd.DataFrame(checks), STATIONARITY)):
        if name != STATIONARITY or not df.empty:
            atomic_write(out_dir / name, lambda p, df=df: df.to_csv(p, index=False))
    atomic_write(out_dir / META, lambda p: p.write_text(json.dumps(meta, indent=1)))
    return cdf, sdf


def main(argv: list[str] | None = None) -> int:
    """Run the experiments and write RESULTS/rate_separation/{curves,slopes}.csv + figures.

    Returns 0, or 2 after one line on stderr for a bad argument (nothing is written then)."""
    args = _parser().parse_args(argv)
    try:
        parts = _names(args.parts, PARTS, "part(s)")
        names = _names(args.manifolds, list(DATASET_FOR), "manifold(s)")
        run_dirs = _parse_run_dirs(args.run_dir)
    except UsageError as e:
        print(f"madbench rate-separation: error: {e}", file=sys.stderr)
        return 2
    cfg = dataclasses.replace(ex.QUICK if args.mode == "quick" else ex.FULL, seed=args.seed)
    t0 = time.time()
    log = lambda m: print(m, flush=True)
    targets, learned = _targets(names, run_dirs)
    curves, slopes, checks, timings = _run_parts(
        parts, cfg, targets, learned, not args.no_langevin, log
    )
    if not curves:
        raise RuntimeError("the experiments produced no curve; nothing was written")
    timings["total"] = time.time() - t0
    meta = dict(mode=args.mode, seed=args.seed, timings_s=timings, config=str(cfg))
    out_dir = rate_separation_dir(args.results)
    cdf, sdf = _write(out_dir, curves, slopes, checks, meta)
    if not args.no_figures:
        fig_dir = Path(args.results) / "figures"
        figures.plot_anatomy(cdf, fig_dir)
        if not sdf.empty:
            figures.plot_tolerance(cdf, sdf, fig_dir)
        figures.plot_tempering(cdf, fig_dir)
    log(f"wrote {out_dir} ({len(cdf)} points, {len(sdf)} slopes) in {timings['total']:.0f}s")
    return 0
