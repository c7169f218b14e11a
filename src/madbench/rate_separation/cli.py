"""``madbench rate-separation``: run experiments A/B/C, write curves.csv, slopes.csv, figures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd
import torch

from madbench._utils import atomic_write
from madbench.rate_separation import experiments as ex
from madbench.rate_separation import figures
from madbench.rate_separation.targets import DATASET_FOR, get_target

SLOPE_COLUMNS = [
    "manifold",
    "family",
    "quantity",
    "score",
    "alpha",
    "beta",
    "error_type",
    "slope",
    "ci_low",
    "ci_high",
    "predicted",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="madbench rate-separation", description=__doc__)
    p.add_argument("--mode", choices=["quick", "full"], default="quick")
    p.add_argument(
        "--parts",
        default="anatomy,tolerance,tempering",
        help="comma list of anatomy, tolerance (oracle + langevin), tempering",
    )
    p.add_argument("--manifolds", default=",".join(DATASET_FOR))
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


def _parse_run_dirs(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for it in items:
        try:
            head, d = it.split("=", 1)
            kind, man = head.split(":", 1)
        except ValueError as e:
            raise SystemExit(f"--run-dir must look like KIND:MANIFOLD=DIR, got {it!r}") from e
        out.setdefault(man, {})[kind] = d
    return out


def _targets(names, run_dirs, log):
    """Anatomy targets (with learned scores attached where run dirs are given)."""
    from madbench.rate_separation.learned import learned_score_fns

    out, full_learned = {}, {}
    for n in names:
        try:
            tg = get_target(n)
        except (KeyError, ImportError, ValueError, NotImplementedError, AttributeError) as e:
            log(f"  skip {n}: {e}")
            continue
        if n in run_dirs:
            fns = learned_score_fns(run_dirs[n])
            tg.scores.update({k: v for k, v in fns.items() if k in ("dsm", "mad")})
            full_learned[n] = {f"{k}_model": v for k, v in fns.items() if k in ("dsm",)}
            if "mad_full" in fns:
                full_learned[n]["mad_model"] = fns["mad_full"]
        out[n] = tg
    return out, full_learned


def _uniform_sampler(name: str):
    if name == "circle":
        return lambda n, g: _circle_uniform(n, g)
    from madbench.data import get_dataset
    from madbench.rate_separation.targets import resolve_dataset_name

    m = get_dataset(resolve_dataset_name(name)).manifold
    return lambda n, g: m.sample_uniform(n, generator=g)


def _circle_uniform(n, g):
    t = (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * torch.pi
    return torch.stack([torch.cos(t), torch.sin(t)], -1)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda p: df.to_csv(p, index=False))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = dataclasses.replace(ex.QUICK if args.mode == "quick" else ex.FULL, seed=args.seed)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    bad = parts - {"anatomy", "tolerance", "tempering"}
    if bad:
        raise SystemExit(f"unknown parts {sorted(bad)}")
    out_dir, fig_dir = Path(args.results) / "rate_separation", Path(args.results) / "figures"
    t0, curves, slopes, timings, checks = time.time(), [], [], {}, []
    log = lambda m: print(m, flush=True)
    targets, learned = _targets(args.manifolds.split(","), _parse_run_dirs(args.run_dir), log)
    g = torch.Generator().manual_seed(args.seed)
    if "anatomy" in parts:
        for name, tg in targets.items():
            t = time.time()
            c, s = ex.run_anatomy(tg, cfg, g)
            curves += c
            slopes += s
            timings[f"anatomy_{name}"] = time.time() - t
            log(f"anatomy {name}: {timings[f'anatomy_{name}']:.1f}s")
    if "tolerance" in parts:
        t = time.time()
        c, s = ex.run_oracle(cfg)
        curves, slopes, timings["oracle"] = curves + c, slopes + s, time.time() - t
        log(f"oracle: {timings['oracle']:.1f}s")
        if not args.no_langevin:
            t = time.time()
            c, s, checks = ex.run_langevin_curves(cfg, log)
            curves, slopes, timings["langevin"] = curves + c, slopes + s, time.time() - t
    if "tempering" in parts:
        t = time.time()
        tt = {n: (targets[n], _uniform_sampler(n)) for n in ("circle", "s2", "so3") if n in targets}
        c, s = ex.run_tempering(tt, cfg, learned, log)
        curves, slopes, timings["tempering"] = curves + c, slopes + s, time.time() - t
    cdf, sdf = pd.DataFrame(curves), pd.DataFrame(slopes)
    if not sdf.empty:
        sdf = sdf[SLOPE_COLUMNS + [c for c in sdf.columns if c not in SLOPE_COLUMNS]]
    _write_csv(cdf, out_dir / "curves.csv")
    _write_csv(sdf, out_dir / "slopes.csv")
    if checks:
        _write_csv(pd.DataFrame(checks), out_dir / "stationarity.csv")
    timings["total"] = time.time() - t0
    meta = dict(mode=args.mode, seed=args.seed, timings_s=timings, config=str(cfg))
    atomic_write(out_dir / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=1)))
    if not args.no_figures and not cdf.empty:
        figures.plot_anatomy(cdf, fig_dir)
        if not sdf.empty:
            figures.plot_tolerance(cdf, sdf, fig_dir)
        figures.plot_tempering(cdf, fig_dir)
    log(f"wrote {out_dir} ({len(cdf)} points, {len(sdf)} slopes) in {timings['total']:.0f}s")
    return 0
