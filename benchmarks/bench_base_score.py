"""Cost of MAD's analytic base score relative to one training step of the score network.

For each manifold: median wall time of ``manifold.base_score(x, sigma)`` on a batch of 4096
noisy points (per-point sigma, log-uniform in [1e-3, 10]) divided by the median time of one
forward + backward pass of a 4 x 256 SiLU MLP on the same batch (input x and log sigma).
MAD's claim is that this ratio is small: its per-step cost is DSM's plus this ratio.

    python benchmarks/bench_base_score.py [--device cuda] [--batch 4096] [--repeats 30]

Prints a table and one JSON line (prefix ``JSON``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from madbench.manifolds import SO3, DiscreteSet, Hypercube, OneHot, Sphere, Torus


def _timeit(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = torch.Generator(device=device).manual_seed(0)

    manifolds = {
        "toy": DiscreteSet([[-1.0, 0.0], [1.0, 0.0]]),
        "hypercube_20": Hypercube(20),
        "onehot_10": OneHot(10),
        "circle": Sphere(1),
        "s2": Sphere(2),
        "torus_2": Torus(2),
        "so3": SO3(),
    }
    rows = []
    for name, m in manifolds.items():
        n, d = args.batch, m.ambient_dim
        x0 = m.sample_uniform(n, generator=g).to(device=device, dtype=dtype)
        sigma = torch.exp(
            torch.empty(n, device=device, dtype=dtype).uniform_(-6.9, 2.3, generator=g)
        )
        x = x0 + sigma[:, None] * torch.randn(n, d, device=device, dtype=dtype, generator=g)
        net = nn.Sequential(
            nn.Linear(d + 1, 256),
            nn.SiLU(),
            *[layer for _ in range(2) for layer in (nn.Linear(256, 256), nn.SiLU())],
            nn.Linear(256, d),
        ).to(device=device, dtype=dtype)
        inp = torch.cat([x, sigma.log()[:, None]], dim=1)

        def step(net=net, inp=inp):
            net.zero_grad(set_to_none=True)
            net(inp).square().mean().backward()

        def base(m=m, x=x, sigma=sigma):
            return m.base_score(x, sigma)

        t_base = _timeit(base, device, args.repeats)
        t_step = _timeit(step, device, args.repeats)
        rows.append(
            dict(
                manifold=name,
                D=d,
                base_ms=1e3 * t_base,
                mlp_step_ms=1e3 * t_step,
                ratio=t_base / t_step,
            )
        )

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"base_score vs one 4x256 MLP fwd+bwd, batch {args.batch}, {args.dtype}, {dev_name}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'manifold':<14}{'D':>4}{'base ms':>10}{'MLP step ms':>13}{'ratio':>8}")
    for r in rows:
        print(
            f"{r['manifold']:<14}{r['D']:>4}{r['base_ms']:>10.3f}{r['mlp_step_ms']:>13.3f}"
            f"{r['ratio']:>8.3f}"
        )
    print(
        "JSON " + json.dumps(dict(device=dev_name, batch=args.batch, dtype=args.dtype, rows=rows))
    )


if __name__ == "__main__":
    main()
