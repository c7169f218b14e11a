"""Tests of the rate-separation curves (docs/science.md 5) on the circle with exact scores.

Every closed form is checked against an independent computation: scipy quadrature of the noisy
density, finite differences, scipy's von Mises law, exact OU/ULA variances, and the reference
numbers of docs/science.md 5 (which the quadrature oracle must reproduce).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from madbench.rate_separation.anatomy import (
    mean_abs_gaussian_norm,
    predicted_anatomy_slope,
    score_anatomy,
)
from madbench.rate_separation.circle import (
    error_field,
    sample_vonmises_circle,
    vonmises_log_density,
    vonmises_score,
)
from madbench.rate_separation.langevin import run_langevin
from madbench.rate_separation.oracle import stationary_oracle
from madbench.rate_separation.stats import (
    bootstrap_mean_slope,
    circle_w1_samples,
    loglog_slope,
)
from madbench.rate_separation.targets import builtin_circle_target
from madbench.rate_separation.tolerance import (
    SamplerConfig,
    predicted_slope,
    reference_law,
    tolerance_point,
)

KAPPA = 4.0


# ---------------------------------------------------------------- closed forms on the circle
@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0])
def test_log_density_matches_quadrature(sigma):
    """log p_sigma(x) = log int vM(t) N(x; (cos t, sin t), sigma^2 I) dt, by scipy.quad."""
    pts = torch.tensor([[1.02, 0.1], [-0.5, 0.8], [0.3, -0.2]], dtype=torch.float64)
    ours = vonmises_log_density(pts, sigma, KAPPA)
    for x, lp in zip(pts.numpy(), ours.numpy(), strict=True):
        f = lambda t, x=x: (
            stats.vonmises.pdf(t, KAPPA)
            * stats.multivariate_normal.pdf(x, [math.cos(t), math.sin(t)], sigma**2)
        )
        val, _ = integrate.quad(f, -math.pi, math.pi, limit=400, epsabs=0, epsrel=1e-10)
        assert lp == pytest.approx(math.log(val), abs=1e-6)


@pytest.mark.parametrize("sigma", [1e-3, 0.1, 1.0])
@pytest.mark.parametrize("error_type", ["normal", "tangential", "tangential_orth"])
def test_score_and_error_fields_are_gradients(sigma, error_type):
    """Central finite differences of log p_sigma and of the error potential phi0."""
    from madbench.rate_separation.circle import error_potential_polar

    g = torch.Generator().manual_seed(1)
    x = sample_vonmises_circle(20, KAPPA, generator=g) + sigma * torch.randn(20, 2, generator=g)
    eps = 1e-6
    fd = torch.zeros_like(x)
    pot = lambda y: error_potential_polar(y.norm(dim=-1), torch.atan2(y[:, 1], y[:, 0]), error_type)
    fd_phi = torch.zeros_like(x)
    for j in range(2):
        e = torch.zeros(2, dtype=x.dtype)
        e[j] = eps
        fd[:, j] = (vonmises_log_density(x + e, sigma) - vonmises_log_density(x - e, sigma)) / (
            2 * eps
        )
        fd_phi[:, j] = (pot(x + e) - pot(x - e)) / (2 * eps)
    s = vonmises_score(x, sigma)
    assert torch.allclose(s, fd, rtol=1e-5, atol=1e-5 * s.abs().max().item())
    assert torch.allclose(error_field(x, error_type), fd_phi, atol=1e-5)


def test_vonmises_sampler_matches_scipy():
    x = sample_vonmises_circle(20000, KAPPA, generator=torch.Generator().manual_seed(0))
    t = torch.atan2(x[:, 1], x[:, 0]).numpy()
    assert stats.kstest(t, stats.vonmises(KAPPA).cdf).pvalue > 1e-3


def test_bad_inputs_raise():
    x = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        vonmises_score(x, 0.1)
    with pytest.raises(ValueError, match="sigma"):
        vonmises_score(torch.ones(2, 2), -1.0)
    with pytest.raises(ValueError, match="error type"):
        error_field(torch.ones(2, 2), "diagonal")
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([0.1, 0.2], [1.0, -1.0])


# ------------------------------------------------------------------------------- statistics
def test_bootstrap_slope_recovers_power_law():
    """Exponential samples with mean 3 sigma^-1.5: slope -1.5 inside the 95 % interval."""
    rng = np.random.default_rng(0)
    sig = np.logspace(-2, 0, 5)
    samples = [rng.exponential(3 * s**-1.5, 4000) for s in sig]
    fit = bootstrap_mean_slope(sig, samples, n_boot=500)
    assert fit.ci_low < -1.5 < fit.ci_high
    assert fit.ci_high - fit.ci_low < 0.1


def test_circle_w1_of_a_rotation():
    """W1 (geodesic cost) between vM(4) and its rotation by delta is delta."""
    grid = torch.linspace(-math.pi, math.pi, 4097, dtype=torch.float64)[:-1]
    cdf, _ = reference_law(0.0, grid, 64)
    x = sample_vonmises_circle(
        40000, KAPPA, mu_angle=0.3, generator=torch.Generator().manual_seed(3)
    )
    th = torch.atan2(x[:, 1], x[:, 0])
    assert circle_w1_samples(th, cdf, grid) == pytest.approx(0.3, abs=0.01)


# ------------------------------------------------------------------------ A: score anatomy
def test_anatomy_slopes_and_constant_on_the_circle():
    tg = builtin_circle_target(KAPPA)
    sig = np.logspace(-3, -1, 5)
    res = score_anatomy(tg, sig, 10000, generator=torch.Generator().manual_seed(0))
    normal = bootstrap_mean_slope(sig, list(res["exact"]["normal"]), n_boot=200).slope
    tangent = bootstrap_mean_slope(sig, list(res["exact"]["tangent"]), n_boot=200).slope
    remainder = bootstrap_mean_slope(sig, list(res["remainder"]["tangent"]), n_boot=200).slope
    assert normal == pytest.approx(-1.0, abs=0.05)
    assert tangent == pytest.approx(0.0, abs=0.05)
    assert remainder == pytest.approx(0.0, abs=0.05)
    # sigma E|normal| -> E|Z_1| = sqrt(2/pi); MC relative error 0.76 / sqrt(1e4) = 0.8 %
    const = sig[0] * res["exact"]["normal"][0].mean()
    assert mean_abs_gaussian_norm(1) == pytest.approx(math.sqrt(2 / math.pi))
    assert const == pytest.approx(mean_abs_gaussian_norm(1), rel=0.02)
    assert predicted_anatomy_slope("exact", "normal", False, False) == -1.0


def test_anatomy_at_fixed_offset_has_slope_minus_two():
    tg = builtin_circle_target(KAPPA)
    sig = np.logspace(-3, -1.7, 4)
    res = score_anatomy(tg, sig, 2000, offset=0.2, generator=torch.Generator().manual_seed(0))
    assert loglog_slope(sig, res["exact"]["normal"].mean(1))[0] == pytest.approx(-2.0, abs=0.05)


def test_gaussian_norm_constant_for_so3():
    assert mean_abs_gaussian_norm(6) == pytest.approx(2.35, abs=0.005)
    z = torch.randn(200000, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert mean_abs_gaussian_norm(6) == pytest.approx(z.norm(dim=1).mean().item(), rel=5e-3)


# ------------------------------------------------------------------- B: quadrature oracle
SIG = np.logspace(-3, -1.5, 4)


def _oracle_slopes(**kw):
    rs = [stationary_oracle(s, n_theta=512, n_r=1000, **kw) for s in SIG]
    return rs, loglog_slope(SIG, [r.dist for r in rs])[0], loglog_slope(SIG, [r.tv for r in rs])[0]


def test_oracle_exact_score_alpha0():
    rs, d, tv = _oracle_slopes(alpha=0.0)
    assert d == pytest.approx(1.0, abs=0.05) and tv == pytest.approx(2.0, abs=0.05)
    # E dist -> sigma E|Z_1| (the stationary law is p_sigma itself)
    assert rs[0].dist == pytest.approx(SIG[0] * math.sqrt(2 / math.pi), rel=1e-3)
    assert predicted_slope("dist", 0, 0, "none") == 1 and predicted_slope("tv", 0, 0, "none") == 2


def test_oracle_exact_score_alpha1():
    rs, d, tv = _oracle_slopes(alpha=1.0)
    assert d == pytest.approx(0.5, abs=0.05) and tv == pytest.approx(1.0, abs=0.05)
    assert rs[0].tv == pytest.approx(4 * SIG[0] / math.pi, rel=0.01)


def test_oracle_normal_error_thresholds():
    _, d15, _ = _oracle_slopes(error_type="normal", beta=-1.5, c=1.0)
    assert d15 == pytest.approx(0.5, abs=0.05)
    r = [stationary_oracle(s, 0, -2.0, 1.0, "normal", n_theta=256, n_r=1000) for s in SIG]
    assert all(x.dist == pytest.approx(1.0, rel=0.01) for x in r)  # shift c sigma^0 = 1
    assert predicted_slope("dist", 0, -1.5, "normal") == 0.5


def test_oracle_tangential_plateau_against_scipy():
    """beta = 0, c = 1: stationary angle law -> vM(kappa - 1); TV(vM(4), vM(3)) by quad."""
    r = stationary_oracle(1e-3, 0, 0.0, 1.0, "tangential", n_theta=1024, n_r=1000)
    tv, _ = integrate.quad(
        lambda t: 0.5 * abs(stats.vonmises.pdf(t, 4) - stats.vonmises.pdf(t, 3)), -math.pi, math.pi
    )
    assert tv == pytest.approx(0.078, abs=5e-4)
    assert r.tv == pytest.approx(tv, abs=1e-3)


# -------------------------------------------------------------------------- B: Langevin runner
def test_ula_matches_discrete_ou_variance():
    """ULA on s(x) = -lam x: stationary variance 2 / (lam (2 - h lam)) exactly."""
    lam, h = 4.0, 0.05
    x = torch.zeros(20000, 1, dtype=torch.float64)
    snaps = run_langevin(
        lambda y: -lam * y, x, 1.0, 0.0, h, 5.0, 5.0, 5, torch.Generator().manual_seed(0)
    )
    var = snaps[-1].var().item()
    expected = 2 / (lam * (2 - h * lam))
    assert var == pytest.approx(expected, rel=4 * math.sqrt(2 / 20000))


@pytest.mark.slow
@pytest.mark.parametrize(
    "alpha,error_type,beta,c",
    [
        (0.0, "none", 0.0, 0.0),
        (1.0, "none", 0.0, 0.0),
        (0.0, "tangential", 0.0, 1.0),
        (0.0, "normal", -1.5, 1.0),
        (0.5, "tangential", 0.0, 1.0),
    ],
)
def test_langevin_agrees_with_quadrature_oracle(alpha, error_type, beta, c):
    """Sampled stationary dist and W1 from two starts vs the oracle. ULA bias ~ step_frac / 4
    = 0.5 % on dist; W1 noise ~ 0.01 for 4096 chains x 10 snapshots."""
    cfg = SamplerConfig(n_chains=4096, step_frac=0.02, t_burn=4.0, t_collect=4.0)
    out = tolerance_point(0.1, alpha, error_type, beta, c, cfg, seed=0)
    orc = out["oracle"]
    for start in ("data", "far"):
        d = out[start]["dist"]
        se = d.std() / math.sqrt(d.size)
        assert abs(d.mean() - orc["dist"]) < 4 * se + 0.01 * orc["dist"]
        assert out[start]["w1"] == pytest.approx(orc["w1"], abs=0.02)
    assert abs(out["data"]["w1"] - out["far"]["w1"]) < 0.02


# ------------------------------------------------------------------- C: tempering statistic
def test_moment_mmd_against_bessel_moments():
    """vM(4) vs uniform on the circle: |E x|^2 + |E xx^T - I/2|_F^2 = A(4)^2 + (I2/I0)(4)^2 / 2."""
    from scipy.special import iv

    from madbench.rate_separation.tempering import moment_mmd2

    g = torch.Generator().manual_seed(5)
    x = sample_vonmises_circle(100000, KAPPA, generator=g)  # SE of mmd2 ~ 0.3 %
    t = (2 * torch.rand(100000, generator=g, dtype=torch.float64) - 1) * math.pi
    u = torch.stack([torch.cos(t), torch.sin(t)], -1)
    expected = (iv(1, 4) / iv(0, 4)) ** 2 + (iv(2, 4) / iv(0, 4)) ** 2 / 2
    assert moment_mmd2(x, u) == pytest.approx(expected, rel=0.01)
    assert abs(moment_mmd2(u[:20000], u[20000:])) < 5e-4  # unbiased: ~ 0 for equal laws


# ------------------------------------------------------------------------------------- CLI
def test_cli_quick_anatomy_writes_tables(tmp_path):
    import pandas as pd

    from madbench.rate_separation.cli import main
    from madbench.rate_separation.outputs import SLOPE_COLUMNS

    assert (
        main(
            [
                "--parts",
                "anatomy",
                "--manifolds",
                "circle",
                "--no-figures",
                "--results",
                str(tmp_path),
            ]
        )
        == 0
    )
    slopes = pd.read_csv(tmp_path / "rate_separation" / "slopes.csv")
    curves = pd.read_csv(tmp_path / "rate_separation" / "curves.csv")
    assert list(slopes.columns[: len(SLOPE_COLUMNS)]) == SLOPE_COLUMNS
    row = slopes[
        (slopes.quantity == "normal") & (slopes.score == "exact") & (slopes.family == "anatomy")
    ].iloc[0]
    assert row.ci_low <= row.slope <= row.ci_high and abs(row.slope + 1) < 0.05
    assert curves.sigma.max() / curves.sigma.min() >= 100
    before = (tmp_path / "rate_separation" / "slopes.csv").read_bytes()
    assert main(["--parts", "nonsense", "--results", str(tmp_path)]) == 2
    assert main(["--manifolds", "sphere", "--results", str(tmp_path)]) == 2  # a typo of s2
    assert main(["--run-dir", "dsm:s2", "--results", str(tmp_path)]) == 2
    assert (tmp_path / "rate_separation" / "slopes.csv").read_bytes() == before


# ------------------------------------------------------------------ learned-score adapter
@pytest.mark.parametrize("schedule_name", ["ve", "vp"])
def test_learned_adapter_converts_model_scores_to_ve_units(schedule_name):
    """A stand-in Method whose score is the exact circle score written in the schedule's own
    variables (x_t = a x, score_x = s_VE(x_t / a, sigma) / a) must come back as s_VE."""
    from types import SimpleNamespace

    from madbench.rate_separation.learned import ve_score_fn
    from madbench.schedules import get_schedule

    sched = get_schedule(schedule_name)

    def score(x, t):
        a = sched.alpha(t).reshape(-1, 1).to(x.dtype)
        sig = float(sched.sigma(t[:1].double()))
        return vonmises_score(x / a, sig) / a

    method = SimpleNamespace(schedule=sched, score=score, net=None)
    f = ve_score_fn(method)
    x = sample_vonmises_circle(50, generator=torch.Generator().manual_seed(0)) * 1.05
    for sigma in (0.05, 0.5):
        assert torch.allclose(f(x, sigma), vonmises_score(x, sigma), rtol=1e-6, atol=1e-6)
