"""Noise schedules against independent computations: simulated forward SDEs (Euler-Maruyama),
scipy quadrature of beta, finite differences of alpha and std, and round trips of t <-> sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from madbench.schedules import VE, VPCosine, VPLinear, get_schedule, list_schedules

NAMES = ["ve", "vp", "vp_cosine"]
#: non-default parameters too, so nothing is tuned to the defaults
CONFIGS = [
    ("ve", {}),
    ("ve", {"sigma_min": 0.01, "sigma_max": 50.0}),
    ("vp", {}),
    ("vp", {"beta_min": 0.0, "beta_max": 5.0}),
    ("vp", {"beta_min": 1.0, "beta_max": 1.0 + 1e-9}),
    ("vp_cosine", {}),
    ("vp_cosine", {"s": 0.02, "sigma_max": 10.0}),
]
IDS = [f"{n}{'-' + '-'.join(f'{k}={v}' for k, v in kw.items()) if kw else ''}" for n, kw in CONFIGS]


def _f64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def test_registry() -> None:
    assert list_schedules() == sorted(NAMES)
    assert isinstance(get_schedule("ve"), VE) and isinstance(get_schedule("vp"), VPLinear)
    assert isinstance(get_schedule("vp_cosine", s=0.01), VPCosine)
    with pytest.raises(KeyError, match="known schedules"):
        get_schedule("vx")
    with pytest.raises(ValueError, match="'schedule.beta_max' is not a parameter of schedule 've'"):
        get_schedule("ve", beta_max=3.0)
    with pytest.raises(ValueError, match="bad parameters for schedule 've'"):
        get_schedule("ve", sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError):
        VE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError):
        VPLinear(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError):
        VPCosine(sigma_max=1e-6)


def test_sigma_range() -> None:
    ve = VE(1e-3, 10.0)
    assert ve.sigma_min == pytest.approx(1e-3, rel=1e-6) and ve.sigma_max == pytest.approx(10.0)
    assert VPCosine(sigma_max=100.0).sigma_max == pytest.approx(100.0, rel=1e-5)
    vp = VPLinear(0.1, 20.0, t_min=1e-5)
    # sigma^2 = exp(int_0^t beta) - 1, checked at t_min and T by hand
    assert vp.sigma_min == pytest.approx(math.sqrt(math.expm1(0.1e-5 + 0.5 * 19.9e-10)), 1e-5)
    assert vp.sigma_max == pytest.approx(math.sqrt(math.expm1(10.05)), rel=1e-5)


def _simulate(sched, x0: float, t_grid: np.ndarray, n: int, steps: int, seed: int):
    """Euler-Maruyama for dx = f(x, t) dt + g(t) dW from the exact marginal at t_grid[0],
    coefficients at each step's midpoint; returns samples at every time of t_grid (float64)."""
    g = torch.Generator().manual_seed(seed)
    t0 = _f64(t_grid[0])
    x = sched.alpha(t0) * x0 + sched.std(t0) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = [x.clone()]
    for a, b in zip(t_grid[:-1], t_grid[1:], strict=True):
        dt = (b - a) / steps
        for k in range(steps):
            tm = _f64(a + (k + 0.5) * dt)
            z = torch.randn(n, 1, generator=g, dtype=torch.float64)
            x = x + sched.drift(x, tm) * dt + sched.diffusion(tm) * math.sqrt(dt) * z
        out.append(x.clone())
    return out


@pytest.mark.parametrize("name", NAMES)
def test_forward_sde_marginals_match_alpha_and_std(name: str) -> None:
    sched = get_schedule(name)
    grid = {"ve": [0.0, 0.3, 0.6], "vp": [1e-5, 0.1, 0.3], "vp_cosine": [1e-5, 0.3, 0.6]}[name]
    x0, n = 0.7, 100_000
    samples = _simulate(sched, x0, np.array(grid), n, steps=500, seed=1)
    for t, x in zip(grid[1:], samples[1:], strict=True):
        a, s = float(sched.alpha(_f64(t))), float(sched.std(_f64(t)))
        m, sd = x.mean().item(), x.std().item()
        assert abs(m - a * x0) < 5 * s / math.sqrt(n), f"{name} t={t}: mean {m} vs {a * x0}"
        assert abs(sd / s - 1) < 5 / math.sqrt(2 * n) + 2e-3, f"{name} t={t}: std {sd} vs {s}"
        ks = stats.kstest(((x - a * x0) / s).squeeze().numpy(), "norm")
        assert ks.pvalue > 1e-3, f"{name} t={t}: marginal not Gaussian (KS p={ks.pvalue:.1e})"


@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_t_of_sigma_inverts_sigma(name: str, kw: dict) -> None:
    sched = get_schedule(name, **kw)
    t = _f64(np.linspace(sched.t_min, sched.T, 201))
    sig = sched.sigma(t)
    assert torch.all(sig[1:] > sig[:-1])  # increasing
    torch.testing.assert_close(sched.t_of_sigma(sig), t, rtol=1e-9, atol=1e-12)
    s = _f64(np.geomspace(sched.sigma_min, sched.sigma_max, 201))
    torch.testing.assert_close(sched.sigma(sched.t_of_sigma(s)), s, rtol=1e-9, atol=0)
    # float32: no cancellation anywhere, down to sigma_min (relative error near eps32 / slope)
    t32 = sched.t_of_sigma(s.float()).double()
    dlogsig_dlogt = (t / sig) * torch.gradient(sig, spacing=(t,))[0]
    cond = float((1 / dlogsig_dlogt.clamp_min(1e-3)).max())
    rel = ((t32 - sched.t_of_sigma(s)).abs() / sched.t_of_sigma(s).clamp_min(1e-30)).max()
    if name != "ve":  # VE's t = log(sigma/sigma_min)/log r is ill-conditioned near t = 0
        assert float(rel) < 1e-6 * max(cond, 1.0), f"float32 t_of_sigma relative error {rel:.1e}"


@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_heat_time_is_integral_of_beta(name: str, kw: dict) -> None:
    sched = get_schedule(name, **kw)
    beta = lambda u: float(sched.beta(_f64(u)))
    for t in [sched.t_min, 1e-4, 1e-2, 0.3, 0.8, sched.T]:
        ref, abserr = integrate.quad(beta, 0.0, t, epsabs=0, epsrel=1e-12, limit=200)
        got = float(sched.heat_time(_f64(t)))
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-300), f"t={t}"
        got32 = float(sched.heat_time(torch.tensor(t, dtype=torch.float32)))
        assert got32 == pytest.approx(ref, rel=2e-6, abs=1e-300), f"float32 t={t}"


@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_beta_matches_marginals(name: str, kw: dict) -> None:
    """VP: beta = -d log alpha^2 / dt and std^2 = 1 - alpha^2; VE: beta = d std^2 / dt."""
    sched = get_schedule(name, **kw)
    t = _f64(np.linspace(max(sched.t_min, 1e-3), 0.98 * sched.T, 50))
    h = 1e-6
    if name == "ve":
        fd = (sched.std(t + h) ** 2 - sched.std(t - h) ** 2) / (2 * h)
        torch.testing.assert_close(sched.alpha(t), torch.ones_like(t))
    else:
        fd = -(torch.log(sched.alpha(t + h) ** 2) - torch.log(sched.alpha(t - h) ** 2)) / (2 * h)
        torch.testing.assert_close(sched.std(t) ** 2 + sched.alpha(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(sched.beta(t), fd, rtol=1e-6, atol=0)
    torch.testing.assert_close(sched.diffusion(t) ** 2, sched.beta(t))


@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_float32_accuracy_at_small_t(name: str, kw: dict) -> None:
    sched = get_schedule(name, **kw)
    for t in [sched.t_min, 1e-4, 1e-3]:
        for f in (sched.alpha, sched.std, sched.sigma, sched.beta):
            ref = f(_f64(t))
            got = f(torch.tensor(t, dtype=torch.float32)).double()
            assert float((got - ref).abs() / ref.abs()) < 5e-6, f"{f.__name__} at t={t}"


@pytest.mark.parametrize("name", NAMES)
def test_drift_and_sample_t(name: str) -> None:
    sched = get_schedule(name)
    x = torch.randn(5, 3, dtype=torch.float64)
    t = _f64([0.1, 0.2, 0.3, 0.4, 0.5])
    expect = torch.zeros_like(x) if name == "ve" else -0.5 * sched.beta(t)[:, None] * x
    torch.testing.assert_close(sched.drift(x, t), expect)
    u = sched.sample_t(20_000, torch.Generator().manual_seed(3))
    assert u.dtype == torch.float32 and u.shape == (20_000,)
    assert torch.equal(u, sched.sample_t(20_000, torch.Generator().manual_seed(3)))
    assert float(u.min()) >= sched.t_min and float(u.max()) <= sched.T
    ks = stats.kstest(u.numpy(), "uniform", args=(sched.t_min, sched.T - sched.t_min))
    assert ks.pvalue > 1e-3
