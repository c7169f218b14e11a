"""Wall time of ``madbench evaluate`` per manifold, against the quick configuration's training.

For each dataset (toy, S^2 vMF mixture, SO(3) matrix Fisher mixture) and method (mad; rsgm
where it applies), trains one run with config/quick.yaml's settings (steps, batch size, VE
schedule parameters), then times ``evaluate`` twice: with the quick configuration's evaluation
settings and with the full defaults (madbench.config.EvalSettings, what config/config.yaml runs).
Prints the training time, both evaluation times and their ratio to training, and one JSON line.

    python benchmarks/bench_evaluate.py [--device cpu] [--datasets toy s2_vmf_mixture_4 ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from madbench.config import EvalSettings, TrainConfig
from madbench.evaluate import evaluate_run
from madbench.training import device_name, train

REPO = Path(__file__).resolve().parents[1]


def quick_settings() -> tuple[int, dict, dict, dict]:
    """(steps, train --set pairs, evaluate settings, VE schedule params) of config/quick.yaml."""
    q = yaml.safe_load((REPO / "config/quick.yaml").read_text())
    pairs = dict(q["train"].get("set", {}))
    ev = {k.split(".", 1)[1]: v for k, v in pairs.items() if k.startswith("evaluate.")}
    tr = {k: v for k, v in pairs.items() if not k.startswith("evaluate.")}
    return int(q["train"]["steps"]), tr, ev, q["schedule_params"]["ve"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--datasets", nargs="+", default=["toy", "s2_vmf_mixture_4", "so3_mf_mixture_3"])
    p.add_argument("--methods", nargs="+", default=["mad", "rsgm"])
    a = p.parse_args()
    steps, tr, ev_quick, ve = quick_settings()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ds in a.datasets:
            for m in a.methods:
                cfg = TrainConfig.from_dict(
                    dict(
                        dataset=ds, method=m, schedule="ve", seed=0, steps=steps, device=a.device,
                        schedule_params=ve, **tr,
                    )
                )  # fmt: skip
                run = Path(tmp) / f"{ds}_{m}"
                try:
                    t0 = time.perf_counter()
                    train(cfg, run, progress=False)
                except ValueError as e:  # method does not support the dataset
                    print(f"skip {m} on {ds}: {e}")
                    continue
                t_train = time.perf_counter() - t0
                times = {}
                for label, over in (("quick", ev_quick), ("full", {})):
                    t0 = time.perf_counter()
                    evaluate_run(run, over, device=a.device)
                    times[label] = time.perf_counter() - t0
                rows.append(
                    dict(dataset=ds, method=m, train_s=t_train, eval_quick_s=times["quick"],
                         eval_full_s=times["full"])
                )  # fmt: skip
    dev = device_name(torch.device(a.device))
    print(
        f"\nevaluate vs training ({steps} steps, quick config), {dev}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; full = {EvalSettings()}"
    )
    print(f"{'dataset':<20}{'method':<8}{'train s':>9}{'eval quick s':>14}{'ratio':>7}"
          f"{'eval full s':>13}{'ratio':>7}")  # fmt: skip
    for r in rows:
        print(
            f"{r['dataset']:<20}{r['method']:<8}{r['train_s']:>9.1f}{r['eval_quick_s']:>14.1f}"
            f"{r['eval_quick_s'] / r['train_s']:>7.2f}{r['eval_full_s']:>13.1f}"
            f"{r['eval_full_s'] / r['train_s']:>7.2f}"
        )
    print("JSON " + json.dumps(dict(device=dev, steps=steps, rows=rows)))


if __name__ == "__main__":
    main()
