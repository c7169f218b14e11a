"""Stacked training: model-steps per second against stack size K, and the paper grid's cost.

For each dataset family (one representative dataset each) and trainable method, a stack of K
runs (seeds 0..K-1, VE) of the paper network (5 x 512 sin MLP, batch 512, AdamW, EMA) trains
as ``madbench.stack`` trains it; a model-step is one run's optimisation step, so a stack of K
makes K per stacked step. Every cell runs in a fresh process (its peak memory is its own: CUDA
max_memory_allocated, else the process's peak RSS) with ``--warmup`` untimed steps, then
``--steps`` timed ones (at least 2, at most ``--seconds``; synthetic data in blocks of
``--data-block`` batches). Per cell it also reports the aten operations dispatched per stacked
step (a proxy for kernel launches on a GPU, counted on one extra step) and, on CUDA, the GPU
utilisation NVML reports after the timed steps.

The projection: the paper grid (config/config.yaml: its trainable runs and their steps) at the
measured rates, each run at the rate of its family and method with K its stack's size under
the pipeline's default on this device (train.stack auto: 64 on CUDA, 1 elsewhere), and with
the best measured K; rates between measured K are interpolated in log K. And, for a GPU this
machine may not have, a model from the measured operation counts (see modelled_gpu_hours; its
assumptions are options and are printed with it).

    python benchmarks/bench_stack.py [--device cuda] [--stacks 1 4 16 64 256] [--steps 3]

Prints a table and one JSON line (prefix ``JSON``).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from madbench._utils import make_generator
from madbench.aggregate import dataset_family
from madbench.build import build_run
from madbench.config import TrainConfig
from madbench.data import get_dataset
from madbench.pipeline import base_method, build_grid, run_settings, stack_groups, stack_size
from madbench.rundir import RunDir
from madbench.stack import Member, build_stack, stack_step
from madbench.training import DataStream, device_name

REPO = Path(__file__).resolve().parents[1]
#: one dataset per family of the paper grid
FAMILIES = {
    "discrete": "hypercube_product_10",
    "sphere": "s2_vmf_mixture_4",
    "so3": "so3_mf_mixture_3",
    "torus": "torus_vonmises",
    "earth": "earth_volcano",
}
METHODS = ("dsm", "mad", "rsgm")


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def paper_config(dataset: str, method: str, seed: int, device: str, block: int) -> TrainConfig:
    """The paper grid's training config of one run (config/config.yaml, schedule VE)."""
    cfg = TrainConfig(dataset=dataset, method=method, seed=seed, device=device, steps=10**6)
    cfg.batch_size, cfg.lr, cfg.ema, cfg.data_block = 512, 2e-4, 0.999, block
    cfg.net.width, cfg.net.depth, cfg.net.activation = 512, 5, "sin"
    return cfg.validate()


def make_stack(dataset: str, method: str, k: int, device: torch.device, tmp: Path, block: int):
    """A stack of k runs of ``method`` on ``dataset`` (seeds 0..k-1), fresh weights."""
    members = []
    for seed in range(k):
        cfg = paper_config(dataset, method, seed, str(device), block)
        meth = build_run(cfg, device)
        gens = make_generator(seed, device), make_generator(seed + 1, device)
        m = Member(cfg, RunDir(tmp / f"m{seed}"), meth, *gens, log=None, info={})
        m.stream = DataStream(meth.dataset, cfg.batch_size, m.data_gen, cfg.data_block)
        members.append(m)
    return build_stack(members, [None] * k)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_cell(family: str, method: str, k: int, args) -> dict:
    """One cell, in this process: model-steps/s, peak memory, ops per step, utilisation."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        stack = make_stack(FAMILIES[family], method, k, device, Path(tmp), args.data_block)
        for _ in range(args.warmup):
            stack_step(stack)
        sync(device)
        t0, done = time.perf_counter(), 0
        while done < args.steps and (done < 2 or time.perf_counter() - t0 < args.seconds):
            stack_step(stack)
            done += 1
        sync(device)
        elapsed = time.perf_counter() - t0
        util = _utilisation(device)
        with OpCounter() as ops:
            stack_step(stack)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"family": family, "dataset": FAMILIES[family], "method": method, "K": k,
            "stacked_steps_per_s": done / elapsed, "model_steps_per_s": k * done / elapsed,
            "timed_steps": done, "peak_memory_mb": peak, "ops_per_step": ops.n,
            "gpu_utilisation": util}  # fmt: skip


def _utilisation(device: torch.device) -> float | None:
    """NVML's GPU utilisation (percent) on CUDA; None elsewhere or without pynvml."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 (pynvml missing or unsupported: not measured)
        return None


def run_cell(family: str, method: str, k: int, args) -> dict | None:
    """measure_cell in a fresh process (None when the method does not run on the family)."""
    from madbench.pipeline import unsupported_reason

    if unsupported_reason(method, FAMILIES[family]):
        return None
    argv = [sys.executable, __file__, "--cell", family, method, str(k), "--device", args.device,
            "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--seconds", str(args.seconds), "--data-block", str(args.data_block)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"cell {family}/{method}/K={k} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def rate_at(rows: list[dict], family: str, method: str, k: float) -> float | None:
    """Model-steps/s of (family, method) at stack size k, interpolated in log K (None: not
    measured)."""
    pts = sorted((r["K"], r["model_steps_per_s"]) for r in rows
                 if r["family"] == family and r["method"] == method)  # fmt: skip
    if not pts:
        return None
    ks, rates = np.log([p[0] for p in pts]), [p[1] for p in pts]
    return float(np.interp(math.log(k), ks, rates))


def projection(rows: list[dict], device: torch.device) -> dict:
    """Hours of training for the paper grid at the measured rates."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    grid, _ = build_grid(cfg)
    size = stack_size(cfg, device.type == "cuda")
    sizes = {}
    for runs in stack_groups(cfg, grid, max(size, 2)).values():
        for r in runs.itertuples():
            sizes[(r.dataset, r.split, r.schedule, r.method, r.seed)] = len(runs)
    best_k = max(r["K"] for r in rows)
    seconds = {"pipeline_default": 0.0, "best_k": 0.0}
    steps_total = unmeasured = 0
    for r in grid.itertuples():
        method = base_method(cfg, r.method)
        key = (r.dataset, r.split, r.schedule, r.method, r.seed)
        if key not in sizes:  # not trained (the oracle)
            continue
        steps, _ = run_settings(cfg, r.dataset, r.schedule, r.method)
        fam, k_default = dataset_family(r.dataset), 1 if size == 1 else sizes[key]
        rates = rate_at(rows, fam, method, k_default), rate_at(rows, fam, method, best_k)
        steps_total += steps
        if rates[0] is None:
            unmeasured += steps  # left out of the hours
            continue
        seconds["pipeline_default"] += steps / rates[0]
        seconds["best_k"] += steps / rates[1]
    return {"model_steps": steps_total, "unmeasured_model_steps": unmeasured,
            "stack_default": size, "best_k": best_k,
            **{f"hours_{k}": v / 3600 for k, v in seconds.items()}}  # fmt: skip


def flops_per_model_step(batch: int = 512) -> float:
    """Forward and backward FLOPs of one run's step: 6 x batch x the network's weights."""
    cfg = paper_config("so3_mf_mixture_3", "mad", 0, "cpu", 0)
    n = build_run(cfg, torch.device("cpu")).n_parameters
    return 6.0 * batch * n


def loss_group_sizes(cfg: dict, grid) -> dict[tuple, int]:
    """Per trained run of the paper grid on a GPU (stacks of 64): how many members of its stack
    share its loss computation (same method, schedule and manifold)."""
    sizes = {}
    for runs in stack_groups(cfg, grid, 64).values():
        kind = runs.dataset.map(lambda d: repr(get_dataset(d).manifold))
        counts = runs.assign(kind=kind).groupby(["method", "schedule", "kind"]).size()
        for r, k in zip(runs.itertuples(), kind, strict=True):
            sizes[(r.dataset, r.split, r.schedule, r.method, r.seed)] = counts[
                (r.method, r.schedule, k)
            ]
    return sizes


def modelled_gpu_hours(
    rows: list[dict], peak_tflops: float, efficiency: float, op_us: float
) -> dict[str, float]:
    """The paper grid's training on one GPU by a two-term model, from the measured operation
    counts: a run's step in a stack costs max(its FLOPs at efficiency x peak, its share of the
    stack's operations x op_us), its share being ops(K_g) / K_g for the K_g members of its loss
    group (stacks of 64 as the pipeline forms them on a GPU). Hours per method and in all."""
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    grid, _ = build_grid(cfg)
    flop_s = flops_per_model_step() / (efficiency * peak_tflops * 1e12)
    seconds: dict[str, float] = {}
    for key, k_g in loss_group_sizes(cfg, grid).items():
        dataset, _, schedule, method, _ = key
        fam = dataset_family(dataset)
        pts = sorted((r["K"], r["ops_per_step"]) for r in rows
                     if r["family"] == fam and r["method"] == method)  # fmt: skip
        if not pts:
            continue
        ops = float(np.interp(math.log(k_g), np.log([p[0] for p in pts]), [p[1] for p in pts]))
        steps, _ = run_settings(cfg, dataset, schedule, method)
        cost = steps * max(flop_s, ops / k_g * op_us * 1e-6)
        seconds[method] = seconds.get(method, 0.0) + cost
    hours = {m: v / 3600 for m, v in sorted(seconds.items())}
    return {**hours, "all": sum(hours.values())}


def _earlier_cells(path: Path | None) -> list[dict]:
    """The cells of an earlier run's output (its JSON line), to project with the new ones."""
    if path is None:
        return []
    line = next(ln for ln in path.read_text().splitlines() if ln.startswith("JSON "))
    return json.loads(line.removeprefix("JSON "))["cells"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stacks", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=3, help="timed stacked steps per cell")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seconds", type=float, default=60.0, help="time budget per cell")
    p.add_argument(
        "--data-block",
        type=int,
        default=0,
        help="TrainConfig.data_block (0: the device's default, 64 on CUDA, 1 else)",
    )
    p.add_argument(
        "--model-tflops",
        type=float,
        default=495.0,
        help="the modelled GPU's dense TF32 rate (495: H100/H200 SXM datasheets)",
    )
    p.add_argument(
        "--model-efficiency",
        type=float,
        default=0.5,
        help="the fraction of it the network's products reach",
    )
    p.add_argument(
        "--model-op-us",
        type=float,
        nargs=2,
        default=[8.0, 2.0],
        help="microseconds per dispatched operation: eager, and replayed in a graph",
    )
    p.add_argument(
        "--cells-from",
        type=Path,
        default=None,
        help="an earlier run's output: its cells of the families not measured now "
        "join the projection",
    )
    p.add_argument("--cell", nargs=3, metavar=("FAMILY", "METHOD", "K"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        print(json.dumps(measure_cell(args.cell[0], args.cell[1], int(args.cell[2]), args)))
        return
    device = torch.device(args.device)
    print(f"device: {device} ({device_name(device)}), torch threads {torch.get_num_threads()}")
    print(f"{'family':9} {'method':6} {'K':>4} {'model-steps/s':>14} {'x K=1':>7} "
          f"{'peak MB':>9} {'ops/step':>9}")  # fmt: skip
    rows = [r for r in _earlier_cells(args.cells_from) if r["family"] not in args.families]
    for family in args.families:
        for method in args.methods:
            base = None
            for k in args.stacks:
                row = run_cell(family, method, k, args)
                if row is None:
                    break
                rows.append(row)
                base = base or row["model_steps_per_s"]
                print(f"{family:9} {method:6} {k:>4} {row['model_steps_per_s']:>14.1f} "
                      f"{row['model_steps_per_s'] / base:>7.2f} {row['peak_memory_mb']:>9.0f} "
                      f"{row['ops_per_step']:>9}", flush=True)  # fmt: skip
    proj = projection(rows, device)
    model = {
        f"{name}_hours": modelled_gpu_hours(rows, args.model_tflops, args.model_efficiency, us)
        for name, us in zip(("eager", "graphs"), args.model_op_us, strict=True)
    }
    per_method = ", ".join(
        f"{m} {model['eager_hours'][m]:.1f} / {model['graphs_hours'][m]:.1f} h"
        for m in model["eager_hours"]
        if m != "all"
    )
    model.update(peak_tflops=args.model_tflops, efficiency=args.model_efficiency,
                 op_us=args.model_op_us)  # fmt: skip
    left = proj["unmeasured_model_steps"] / proj["model_steps"]
    print(
        f"paper grid: {proj['model_steps'] / 1e6:.0f} M model-steps; training projected at "
        f"{proj['hours_pipeline_default']:.1f} h with train.stack {proj['stack_default']} "
        f"(this device's default), {proj['hours_best_k']:.1f} h at K = {proj['best_k']}"
        + (f" ({left:.0%} of the model-steps not measured, left out)" if left else "")
    )
    print(
        f"modelled for one GPU of {args.model_tflops:g} TFLOP/s (TF32) at "
        f"{args.model_efficiency:.0%} and {args.model_op_us[0]:g} / {args.model_op_us[1]:g} "
        f"us per operation (eager / CUDA graphs), from the operation counts above: "
        f"{model['eager_hours']['all']:.1f} h / {model['graphs_hours']['all']:.1f} h "
        f"({per_method}; a model, not a measurement)"
    )
    print("JSON " + json.dumps({"device": str(device), "device_name": device_name(device),
                                "threads": torch.get_num_threads(), "cells": rows,
                                "projection": proj, "gpu_model": model}))  # fmt: skip


if __name__ == "__main__":
    main()
