"""Measured accuracy of the closed forms against independent references (float64, CPU).

Prints, per closed form, the largest error over a grid that spans the supported range, and one
JSON line. References: mpmath at high precision (Bessel ratios, heat-kernel series, posteriors),
scipy quadrature of Lee's integral, finite differences; the Lee and series references are the
test suite's own (tests/test_so3.py, tests/test_sphere.py), so script and tests agree.

    python benchmarks/accuracy.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import mpmath
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_so3 import lee_errors  # noqa: E402
from test_sphere import _mp_s2_log_heat  # noqa: E402

from madbench.data import get_dataset  # noqa: E402
from madbench.manifolds import SO3, Sphere  # noqa: E402
from madbench.manifolds import matrix_fisher as mf  # noqa: E402
from madbench.manifolds.sphere import s2_log_heat  # noqa: E402

F64 = torch.float64
SIGMAS = np.geomspace(1e-4, 1e2, 25)
RADII = np.geomspace(1e-3, 1e3, 25)


def sphere_base_score(dim: int) -> float:
    """s_base = (A(kappa) x/r - x) / sigma^2, A = I_{(d+1)/2} / I_{(d-1)/2}, kappa = r / sigma^2,
    against mpmath's Bessel ratio; error relative to (A + r) / sigma^2, the size of the two
    terms that cancel where r ~ A."""
    s, r = np.meshgrid(SIGMAS, RADII)
    s, r = s.ravel(), r.ravel()
    x = np.zeros((len(r), dim + 1))
    x[:, 0] = r
    got = Sphere(dim).base_score(torch.tensor(x), torch.tensor(s))[:, 0].numpy()
    nu = mpmath.mpf(dim - 1) / 2
    with mpmath.workdps(30):
        a = np.array([float(mpmath.besseli(nu + 1, k) / mpmath.besseli(nu, k)) for k in r / s**2])
    return float(np.max(np.abs(got - (a - r) / s**2) / ((a + r) / s**2)))


def so3_base_score_fd() -> float:
    """SO(3) s_base against central differences of log p_sigma = log c(X/sigma^2) - |X|^2/2s^2
    (the noised uniform law up to a constant), relative to |s_base|."""
    g = torch.Generator().manual_seed(0)
    x0 = SO3().sample_uniform(20, generator=g).double()
    worst = 0.0
    for sigma in (0.05, 0.3, 1.0, 3.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)

        def logp(y, sigma=sigma):
            return mf.log_normaliser(y / sigma**2) - (y * y).sum(-1) / (2 * sigma**2)

        h = 1e-5 * sigma
        fd = torch.stack(
            [(logp(x + h * e) - logp(x - h * e)) / (2 * h) for e in torch.eye(9, dtype=F64)], -1
        )
        got = SO3().base_score(x, sigma)
        worst = max(worst, float(((got - fd).norm(dim=-1) / fd.norm(dim=-1)).max()))
    return worst


def s2_heat_kernel() -> float:
    """log p_t(theta) on S^2 vs the mpmath Legendre series, t from 1e-4 to 10 (absolute)."""
    worst = 0.0
    for t in (1e-4, 1e-3, 0.05, 0.3, 0.5, 2.0, 10.0):
        th = [a * math.sqrt(t) for a in (0.0, 0.5, 2.9, 3.1, 8.0)] + [0.5, 1.5, 3.0, math.pi]
        th = [a for a in th if a <= math.pi and a * a / (2 * t) < 250]
        got = s2_log_heat(torch.tensor(th, dtype=F64), torch.full((len(th),), t, dtype=F64))[0]
        ref = np.array([_mp_s2_log_heat(a, t) for a in th])
        worst = max(worst, float(np.max(np.abs(got.numpy() - ref))))
    return worst


def toy_score() -> float:
    """MAD's toy: exact noisy score vs the posterior over the two atoms in mpmath."""
    ds = get_dataset("toy")
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for sigma in (1e-3, 0.1, 0.8, 10.0):
        x = ds.sample(50, generator=g).double() + sigma * torch.randn(50, 2, generator=g, dtype=F64)
        got = ds.score(x, sigma).numpy()
        for i in range(50):
            xi = [mpmath.mpf(float(v)) for v in x[i]]
            w = [
                mpmath.mpf(p) * mpmath.exp(-((xi[0] - a) ** 2 + xi[1] ** 2) / (2 * sigma**2))
                for p, a in ((0.1, -1), (0.9, 1))
            ]
            mean0 = (w[1] - w[0]) / (w[0] + w[1])
            ref = np.array([float((mean0 - xi[0]) / sigma**2), float(-xi[1] / sigma**2)])
            worst = max(worst, float(np.max(np.abs(got[i] - ref) / (np.abs(ref) + 1e-12))))
    return worst


def main() -> None:
    c, d = lee_errors()
    rows = {
        "circle base_score (rel, vs mpmath Bessel ratio)": sphere_base_score(1),
        "S^2 base_score (rel, vs mpmath Bessel ratio)": sphere_base_score(2),
        "S^3 base_score (rel, vs mpmath Bessel ratio)": sphere_base_score(3),
        "SO(3) log c (rel, vs scipy quad of Lee)": c,
        "SO(3) E[R] diag (abs, vs scipy quad of Lee)": d,
        "SO(3) base_score (rel, vs finite differences)": so3_base_score_fd(),
        "S^2 heat kernel log p (abs, vs mpmath series)": s2_heat_kernel(),
        "toy exact score (rel, vs mpmath posterior)": toy_score(),
    }
    print("sigma in [1e-4, 1e2], |x| in [1e-3, 1e3] for the sphere base scores (25 x 25 grid)")
    print(f"{'closed form':<52}{'max error':>12}")
    for k, v in rows.items():
        print(f"{k:<52}{v:>12.2e}")
    print("JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
