"""Training steps per second of each method on toy, S^2 and SO(3) at batch 512 and 4096.

One step is exactly the training loop's: draw a batch (on the device), loss, backward,
gradient clipping, AdamW step, EMA update, with the default network (4 x 256 SiLU MLP). For
each dataset and batch the methods' runs are built once and warmed up (``--warmup`` steps),
then timed in ``--rounds`` interleaved rounds (dsm, mad, rsgm, dsm, ...), each of at most
``--steps`` steps or ``--seconds`` / ``--rounds`` seconds; a method's steps/s is the median over
rounds. Interleaving makes slow drifts of a shared machine hit every method alike instead of
whichever happened to run during them. Reports steps/s, the MAD/DSM and RSGM/MAD
time-per-step ratios per dataset and batch, a table and one JSON line (prefix ``JSON``).

    python benchmarks/bench_train.py [--device cuda] [--batch 512 4096] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from madbench.build import build_dataset, build_method, build_schedule
from madbench.config import TrainConfig
from madbench.training import DataStream, device_name, make_state, optimisation_step

DATASETS = {"toy": "toy", "s2": "s2_vmf_mixture_4", "so3": "so3_mf_mixture_3"}
METHODS = ("dsm", "mad", "rsgm")


def make_stepper(cfg: TrainConfig, device: torch.device) -> Callable[[int], None] | None:
    """One training step of ``cfg`` as a function of the step index (None if the method does
    not support the dataset)."""
    ds, sch = build_dataset(cfg), build_schedule(cfg)
    try:
        method = build_method(cfg, ds, sch, device)
    except ValueError:
        return None
    st = make_state(cfg, method, device)
    stream = DataStream(ds, cfg.batch_size, st.data_gen)
    params = list(method.net.parameters())

    def step(k: int) -> None:
        optimisation_step(method, st.optimizer, stream.next(), st.noise_gen, params, 1.0)
        st.ema.update(k)

    return step


def steps_per_second(
    step: Callable[[int], None], device: torch.device, start: int, n: int, budget: float
) -> float:
    """Timed steps/s of ``step`` over at most n steps or ``budget`` seconds (at least 3)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, done = time.perf_counter(), 0
    while done < n and (done < 3 or time.perf_counter() - t0 < budget):
        step(start + done)
        done += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def _ratio(sps: dict, a: str, b: str) -> float | None:
    """Time per step of a over time per step of b = sps[b] / sps[a]."""
    return sps[b] / sps[a] if sps[a] and sps[b] else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0, help="time budget per cell")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per cell")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for short in args.datasets:
        for batch in args.batch:
            steppers = {
                m: make_stepper(
                    TrainConfig(
                        dataset=DATASETS[short],
                        method=m,
                        batch_size=batch,
                        device=str(device),
                        steps=10**6,
                    ),
                    device,
                )
                for m in METHODS
            }
            runs = {m: s for m, s in steppers.items() if s is not None}
            for step in runs.values():
                for k in range(args.warmup):
                    step(k)
            rates: dict[str, list[float]] = {m: [] for m in runs}
            budget = args.seconds / args.rounds
            for r in range(args.rounds):
                for m, step in runs.items():
                    start = args.warmup + r * args.steps
                    rates[m].append(steps_per_second(step, device, start, args.steps, budget))
            sps = {m: statistics.median(rates[m]) if m in rates else None for m in METHODS}
            rows.append(
                {
                    "dataset": short,
                    "batch": batch,
                    **{f"{m}_steps_per_s": sps[m] for m in METHODS},
                    "mad_over_dsm": _ratio(sps, "mad", "dsm"),
                    "rsgm_over_mad": _ratio(sps, "rsgm", "mad"),
                }
            )
    fmt = lambda v: "-" if v is None else f"{v:8.2f}"  # noqa: E731
    print(f"device: {device} ({device_name(device)}), torch threads {torch.get_num_threads()}")
    print("time-per-step ratios: mad/dsm = dsm_steps_per_s / mad_steps_per_s, likewise rsgm/mad")
    print(
        f"{'dataset':8s} {'batch':>6s} {'dsm/s':>8s} {'mad/s':>8s} {'rsgm/s':>8s} "
        f"{'mad/dsm':>8s} {'rsgm/mad':>8s}"
    )
    for r in rows:
        print(
            f"{r['dataset']:8s} {r['batch']:6d} {fmt(r['dsm_steps_per_s'])} "
            f"{fmt(r['mad_steps_per_s'])} {fmt(r['rsgm_steps_per_s'])} "
            f"{fmt(r['mad_over_dsm'])} {fmt(r['rsgm_over_mad'])}"
        )
    info = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "rows": rows,
    }
    print("JSON " + json.dumps(info))


if __name__ == "__main__":
    main()
