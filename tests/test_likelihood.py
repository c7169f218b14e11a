"""Probability-flow ODE log-likelihoods against exact densities (issue 3, "Oracle checks").

Every reference is an independent closed form: Gaussian laws, the noised two-point toy, the
uniform law on S^2 (log 4 pi), the matrix Fisher mixture's noised density through its
normaliser, and heat kernels (``heat_kernel_log_prob`` of the manifold classes, while the score
fed to the ODE comes from an independent Legendre series written here). Scores are built from
``dataset.score`` directly (no dependence on the Oracle method).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from madbench._utils import make_generator
from madbench.data import get_dataset
from madbench.likelihood import (
    ambient_log_likelihood,
    intrinsic_log_likelihood,
    on_manifold_log_likelihood,
)
from madbench.manifolds.sphere import Sphere
from madbench.ode import dopri5
from madbench.schedules import VE, VPCosine, VPLinear

LOG_4PI = math.log(4 * math.pi)
SCHEDULES = {"ve": VE(1e-3, 10.0), "vp": VPLinear(), "vp_cosine": VPCosine()}


def exact_score_fn(dataset, schedule):
    """s(x, t) = dataset.score(x / alpha, sigma(t)) / alpha (the schedule-time exact score)."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = schedule.alpha(t).reshape(-1, 1).to(x.dtype)
        return dataset.score(x / a, schedule.sigma(t)) / a

    return score


def _alpha_min(schedule) -> float:
    return float(schedule.alpha(torch.tensor(schedule.t_min, dtype=torch.float64)))


# ------------------------------------------------------------------------------ the solver
def test_dopri5_linear_system_matches_matrix_exponential_both_directions():
    a = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.0, 0.1, -1.0]], dtype=torch.float64)
    y0 = torch.randn(5, 3, generator=make_generator(0), dtype=torch.float64)
    seen = []

    def f(t, y):
        seen.append(t)
        return y @ a.T

    y1, st = dopri5(f, y0, 0.0, 3.0, rtol=1e-9, atol=1e-9)
    exact = y0 @ torch.linalg.matrix_exp(3.0 * a).T
    assert float((y1 - exact).abs().max()) < 1e-7
    assert st.nfe == len(seen) and min(seen) >= 0.0 and max(seen) <= 3.0
    back, _ = dopri5(lambda t, y: y @ a.T, y1, 3.0, 0.0, rtol=1e-9, atol=1e-9)
    assert float((back - y0).abs().max()) < 1e-7


def test_dopri5_nonlinear_matches_scipy_and_respects_tolerance():
    """Van der Pol (mu = 1) from t = 0 to 5 against scipy's DOP853 at rtol 1e-12."""

    def vdp(t, y):
        return np.array([y[1], (1 - y[0] ** 2) * y[1] - y[0]])

    ref = solve_ivp(vdp, (0, 5), [2.0, 0.0], method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    f = lambda t, y: torch.stack([y[:, 1], (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], -1)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    errs = []
    for tol in (1e-5, 1e-8):
        y, st = dopri5(f, y0, 0.0, 5.0, rtol=tol, atol=tol)
        errs.append(float(np.abs(y[0].numpy() - ref).max()))
        assert errs[-1] < 100 * tol, (tol, errs[-1], st)
    assert errs[1] < errs[0] / 30  # 5th order: the error falls with the tolerance


def test_dopri5_raises_on_non_finite_state_and_blow_up():
    y0 = torch.ones(1, 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="non-finite"):
        dopri5(lambda t, y: y * (float("nan") if t > 0.5 else 1.0), y0, 0.0, 2.0)
    with pytest.raises(RuntimeError, match="underflow"):  # y' = y^2 blows up at t = 1
        dopri5(lambda t, y: y**2, y0, 0.0, 2.0)


def test_t_of_heat_time_inverts_every_schedule():
    for sch in SCHEDULES.values():
        for t in (sch.t_min + 1e-6, 0.3 * sch.T, sch.T):
            tau = float(sch.heat_time(torch.tensor(t, dtype=torch.float64)))
            assert abs(sch.t_of_heat_time(tau) - t) <= 1e-12 * max(t, 1e-3)


# ------------------------------------------------------------------------------ ambient
def _gaussian_case(d: int = 4):
    g = make_generator(1)
    a = 0.5 * torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)
    m = torch.randn(d, generator=g, dtype=torch.float64)
    return m, cov


@pytest.mark.parametrize("schedule", ["ve", "vp", "vp_cosine"])
def test_ambient_ode_recovers_gaussian_log_density(schedule):
    """Data N(m, C) in R^4: p_sigma = N(m, C + sigma^2 I), score -(C + sigma^2 I)^-1 (y - m).
    With the exact prior N(m, C + sigma_max^2 I), the ODE's log p_t_min(x) must be exact."""
    sch, (m, cov) = SCHEDULES[schedule], _gaussian_case()
    eye = torch.eye(4, dtype=torch.float64)

    def score(x, t):
        a, s = sch.alpha(t).reshape(-1, 1, 1), sch.sigma(t).reshape(-1, 1, 1)
        prec = torch.linalg.inv(cov + s**2 * eye)
        return -(prec @ (x.unsqueeze(-1) / a - m.unsqueeze(-1))).squeeze(-1) / a.squeeze(-1)

    mvn = lambda s: torch.distributions.MultivariateNormal(m, cov + s**2 * eye)
    x0 = mvn(0.0).sample((32,))
    a_min = _alpha_min(sch)
    exact = mvn(sch.sigma_min).log_prob(x0) - 4 * math.log(a_min)
    prior = mvn(sch.sigma_max).log_prob
    for tol, bound in ((1e-5, 1e-3), (1e-8, 1e-5)):
        res = ambient_log_likelihood(
            score, sch, a_min * x0, rtol=tol, atol=tol, prior_log_prob=prior
        )
        err = float((res["logp"] - exact).abs().max())
        assert err < bound, f"tol {tol}: max error {err:.2e} nats (nfe {res['nfe']})"
        assert res["finite"] and res["nfe"] > 0


@pytest.mark.parametrize("schedule", ["ve", "vp"])
def test_ambient_ode_sphere_uniform_gives_log_4pi(schedule):
    """p_sigma(x0) = (2 pi sigma^2)^(-1/2) / (4 pi) exactly on |x0| = 1 (up to e^(-2/sigma^2)), so
    the small-sigma corrected NLL must be log 4 pi; the residual is the prior approximation."""
    ds, sch = get_dataset("sphere_uniform"), SCHEDULES[schedule]
    x0 = ds.sample(32, generator=make_generator(2)).double()
    res = ambient_log_likelihood(exact_score_fn(ds, sch), sch, _alpha_min(sch) * x0)
    logp_ve = res["logp"] + 3 * math.log(_alpha_min(sch))
    nll = -on_manifold_log_likelihood(logp_ve, sch.sigma_min, codim=1)
    assert float((nll - LOG_4PI).abs().max()) < 0.02, (nll.min(), nll.max(), res["nfe"])
    assert abs(float(nll.mean()) - LOG_4PI) < 0.005


@pytest.mark.parametrize("schedule", ["ve", "vp"])
def test_ambient_ode_toy_atoms_give_log_weights(schedule):
    """At the atoms of the toy, log p_sigma + (D/2) log(2 pi sigma^2) -> log p(atom) = log 0.1,
    log 0.9 (codim = D = 2: counting measure). With the exact prior
    sum_k p_k N(m_k, sigma_max^2 I) the ODE is the only error; the default Gaussian prior adds
    the prior mismatch (measured: 0.126 nats (VE, sigma_max = 10), 0.009 (VP) at the 0.1 atom)."""
    ds, sch = get_dataset("toy"), SCHEDULES[schedule]
    x0 = ds.atoms.clone()

    def prior(y):
        d2 = ((y.unsqueeze(1) - ds.atoms) ** 2).sum(-1)
        lse = torch.logsumexp(torch.log(ds.probs) - d2 / (2 * sch.sigma_max**2), -1)
        return lse - math.log(2 * math.pi * sch.sigma_max**2)

    res = ambient_log_likelihood(
        exact_score_fn(ds, sch), sch, _alpha_min(sch) * x0, prior_log_prob=prior
    )
    logp_ve = res["logp"] + 2 * math.log(_alpha_min(sch))
    lp = on_manifold_log_likelihood(logp_ve, sch.sigma_min, codim=2)
    err = (lp - torch.log(ds.probs)).abs().max()
    assert float(err) < 1e-3, (lp, res["nfe"])


def test_ambient_likelihood_errors_are_loud():
    sch = SCHEDULES["ve"]
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="not differentiable"):
        ambient_log_likelihood(lambda x, t: torch.zeros_like(x).detach(), sch, x)
    with pytest.raises(RuntimeError, match="non-finite"):
        ambient_log_likelihood(lambda x, t: x * float("nan"), sch, x)
    with pytest.raises(ValueError, match="shape"):
        ambient_log_likelihood(lambda x, t: x, sch, torch.zeros(3))
    with pytest.raises(ValueError, match="sigma"):
        on_manifold_log_likelihood(torch.zeros(2), 0.0, 1)


# ------------------------------------------------------------------------------ SO(3)
def _matrix_fisher_pieces():
    """The SO(3) mixture dataset and the matrix Fisher module."""
    from madbench.manifolds import matrix_fisher

    return get_dataset("so3_mf_mixture_3"), matrix_fisher


def _so3_noised_log_density(ds, log_c, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log p_sigma(X) = -9/2 log(2 pi s^2) - (|X|^2 + 3)/(2 s^2)
    + logsumexp_k [log w_k + log c(F_k + X / s^2) - log c(F_k)] (c w.r.t. normalised Haar)."""
    f = ds.f.to(torch.float64)  # (K, 3, 3)
    xm = x.reshape(-1, 1, 3, 3)
    n, k = xm.shape[0], f.shape[0]
    g = (f.unsqueeze(0) + xm / sigma**2).reshape(n * k, 3, 3)
    lc = log_c(g).reshape(n, k) - log_c(f).unsqueeze(0)  # (n, K)
    lse = torch.logsumexp(torch.log(ds.weights.to(torch.float64)) + lc, -1)
    sq = (x * x).sum(-1)
    return -4.5 * math.log(2 * math.pi * sigma**2) - (sq + 3) / (2 * sigma**2) + lse


def test_ambient_ode_matrix_fisher_mixture_matches_exact_density():
    """Issue 3: within 0.05 nats of the closed form, with the model's own Gaussian prior (VP;
    measured 0.0055 on so3_mf_mixture_3, n = 8; VE with sigma_max = 10 is off by 0.08 nats,
    all of it the prior approximation, see the slow test)."""
    ds, mf = _matrix_fisher_pieces()
    sch = SCHEDULES["vp"]
    x0 = ds.sample(4, generator=make_generator(3)).double()
    res = ambient_log_likelihood(exact_score_fn(ds, sch), sch, _alpha_min(sch) * x0)
    logp_ve = res["logp"] + 9 * math.log(_alpha_min(sch))
    exact = _so3_noised_log_density(ds, mf.log_normaliser, x0, sch.sigma_min)
    assert float((logp_ve - exact).abs().max()) < 0.05, (logp_ve - exact, res["nfe"])


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["ve", "vp"])
@pytest.mark.parametrize("name", ["so3_mf_mixture_3", "so3_mf_mixture_6"])
def test_ambient_ode_matrix_fisher_exact_prior_slow(name, schedule):
    """With the exact prior p_sigma_max the ODE error alone: measured 4-7e-4 nats."""
    _matrix_fisher_pieces()
    ds, sch = get_dataset(name), SCHEDULES[schedule]
    x0 = ds.sample(8, generator=make_generator(3)).double()
    prior = lambda y: ds.log_prob_noised(y, sch.sigma_max).double()
    res = ambient_log_likelihood(
        exact_score_fn(ds, sch), sch, _alpha_min(sch) * x0, prior_log_prob=prior
    )
    logp_ve = res["logp"] + 9 * math.log(_alpha_min(sch))
    exact = _so3_noised_log_density(ds, mod_matrix_fisher().log_normaliser, x0, sch.sigma_min)
    assert float((logp_ve - exact).abs().max()) < 2e-3, (logp_ve - exact, res["nfe"])


def mod_matrix_fisher():
    from madbench.manifolds import matrix_fisher

    return matrix_fisher


# ------------------------------------------------------------------------------ intrinsic
def _s2_series_score(mu: torch.Tensor, tau_of_t, n_terms: int = 60):
    """Riemannian score of the S^2 heat kernel around mu, from the Legendre series
    log p = log sum_l (2l+1)/(4 pi) e^(-l(l+1) tau / 2) P_l(<x, mu>) differentiated by autograd
    (twice differentiable, so the ODE can take its divergence), plus a normal component (as an
    unprojected network output would have). Valid for tau >= 0.1."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = float(tau_of_t(t[:1]))
        with torch.enable_grad():
            z = (x * mu).sum(-1)
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            p_prev, p_cur = torch.ones_like(z), z
            s = torch.full_like(z, 1 / (4 * math.pi))
            for ell in range(1, n_terms):
                s = s + (2 * ell + 1) / (4 * math.pi) * math.exp(-ell * (ell + 1) * tau / 2) * p_cur
                p_prev, p_cur = p_cur, ((2 * ell + 1) * z * p_cur - ell * p_prev) / (ell + 1)
            (dz,) = torch.autograd.grad(s.log().sum(), z, create_graph=True)
        tangent = dz.unsqueeze(-1) * (mu - (x * mu).sum(-1, keepdim=True) * x)
        # a normal component, invisible on M: the divergence must be tr(P J), not tr J
        return tangent + (2.0 + z.unsqueeze(-1)) * x

    return score


def test_intrinsic_ode_zero_score_on_uniform_gives_log_4pi():
    sphere = Sphere(2)
    x = sphere.sample_uniform(16, generator=make_generator(4)).double()
    res = intrinsic_log_likelihood(lambda x, t: 0.0 * x, sphere, SCHEDULES["vp"], x)
    assert float((res["logp"] + LOG_4PI).abs().max()) < 1e-12


@pytest.mark.parametrize("schedule", ["vp", pytest.param("vp_cosine", marks=pytest.mark.slow)])
def test_intrinsic_ode_recovers_s2_heat_kernel_density(schedule):
    """Data = heat kernel around mu at tau0 = 0.2; at heat time tau its law is the heat kernel
    at tau0 + tau. The ODE log-likelihood at t_min must equal heat_kernel_log_prob(x, mu,
    tau0 + heat_time(t_min)) (the Mehler/Legendre code of the sphere module)."""
    sphere, sch, tau0 = Sphere(2), SCHEDULES[schedule], 0.2
    mu = torch.tensor([[0.3, -0.4, math.sqrt(0.75)]], dtype=torch.float64)
    x = sphere.sample_heat_kernel(mu.expand(24, 3), tau0, generator=make_generator(5)).double()
    score = _s2_series_score(mu, lambda t: tau0 + sch.heat_time(t))
    res = intrinsic_log_likelihood(score, sphere, sch, x)
    exact = sphere.heat_kernel_log_prob(x, mu.expand_as(x), tau0 + res["tau_min"])
    err = float((res["logp"] - exact).abs().max())
    assert err < 2e-3, f"max error {err:.2e} nats, nfe {res['nfe']}"
    assert res["max_dist_to_manifold"] < 1e-4 and res["finite"]


def test_intrinsic_likelihood_needs_positive_end_heat_time():
    sphere = Sphere(2)
    x = sphere.sample_uniform(4, generator=make_generator(6)).double()
    with pytest.raises(ValueError, match="heat_time"):
        intrinsic_log_likelihood(lambda x, t: 0.0 * x, sphere, SCHEDULES["ve"], x)
    with pytest.raises(ValueError, match="columns"):
        intrinsic_log_likelihood(lambda x, t: 0.0 * x, sphere, SCHEDULES["vp"], x[:, :2])


def _so3_series_score(r0: torch.Tensor, tau_of_t, n_terms: int = 40):
    """Riemannian (Frobenius) score of the SO(3) heat kernel around r0 (Brownian time tau =
    IGSO(3) time tau / 2 of the half-trace metric), from the character series
    f = sum_l (2l+1) e^(-l(l+1) tau/4) chi_l(c), chi_l = 1 + 2 sum_{m<=l} T_m(c),
    c = cos omega = (tr(r0^T X) - 1) / 2: smooth in X, differentiated by autograd; plus a normal
    component that the tangent projection must remove. Valid for tau >= 0.4."""
    r0m = r0.reshape(3, 3)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        th = float(tau_of_t(t[:1])) / 2
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            c = ((r0m.reshape(1, 9) * xg).sum(-1) - 1) / 2
            t_prev, t_cur = torch.ones_like(c), c  # T_0, T_1
            chi, f = torch.ones_like(c), torch.ones_like(c)  # chi_0, l = 0 term
            for ell in range(1, n_terms):
                chi = chi + 2 * t_cur
                f = f + (2 * ell + 1) * math.exp(-ell * (ell + 1) * th / 2) * chi
                t_prev, t_cur = t_cur, 2 * c * t_cur - t_prev
            (grad,) = torch.autograd.grad(f.log().sum(), xg, create_graph=True)
        xm, gm = x.reshape(-1, 3, 3), grad.reshape(-1, 3, 3)
        a = xm.transpose(-1, -2) @ gm
        tangent = (xm @ (a - a.transpose(-1, -2)) / 2).reshape(-1, 9)
        return tangent + 0.5 * x

    return score


def test_intrinsic_ode_recovers_so3_heat_kernel_density():
    """As the S^2 test on SO(3) (Frobenius metric, tau0 = 0.5): the ODE log-likelihood must equal
    SO3.heat_kernel_log_prob(x, r0, tau0 + heat_time(t_min)) (w.r.t. the Frobenius volume)."""
    from madbench.manifolds import so3 as so3_mod

    so3, sch, tau0 = so3_mod.SO3(), SCHEDULES["vp"], 0.5
    r0 = so3.sample_uniform(1, generator=make_generator(7)).double()
    x = so3.sample_heat_kernel(r0.expand(6, 9), tau0, generator=make_generator(8)).double()
    score = _so3_series_score(r0, lambda t: tau0 + sch.heat_time(t))
    tau_max = float(sch.heat_time(sch.T))
    # the exact prior: SO(3) mixes slowly (e^{-tau/2}); the uniform prior at tau_max = 10.05 is
    # off by up to 0.03 nats at these points (measured), which is not what this test checks
    prior = lambda y: so3.heat_kernel_log_prob(y, r0.expand_as(y), tau0 + tau_max)
    res = intrinsic_log_likelihood(score, so3, sch, x, prior_log_prob=prior)
    exact = so3.heat_kernel_log_prob(x, r0.expand_as(x), tau0 + res["tau_min"])
    err = float((res["logp"] - exact).abs().max())
    assert err < 2e-3, f"max error {err:.2e} nats, nfe {res['nfe']}"


class _LinearNetMethod:
    """A Method-like object whose bound ``score`` runs a float32 network: the likelihood must call
    it in float32 (inferred from ``method.net``) while integrating in float64."""

    def __init__(self, schedule, dtype=torch.float32):
        self.schedule = schedule
        self.net = torch.nn.Linear(2, 2).to(dtype)
        with torch.no_grad():
            self.net.weight.copy_(torch.tensor([[-1.0, 0.2], [0.1, -0.5]]))
            self.net.bias.copy_(torch.tensor([0.3, -0.1]))

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.net.weight.dtype:
            raise TypeError(f"x is {x.dtype}, the net is {self.net.weight.dtype}")
        s2 = self.schedule.sigma(t).to(x.dtype).reshape(-1, 1) ** 2
        return self.net(x) / (1 + s2)


def test_float32_network_score_is_called_in_its_dtype():
    sch = SCHEDULES["ve"]
    x = torch.randn(8, 2, generator=make_generator(9), dtype=torch.float64)
    m32, m64 = _LinearNetMethod(sch), _LinearNetMethod(sch, torch.float64)
    r32 = ambient_log_likelihood(m32.score, sch, x)
    r64 = ambient_log_likelihood(m64.score, sch, x)
    assert r32["logp"].dtype == torch.float64 and r32["finite"]
    assert float((r32["logp"] - r64["logp"]).abs().max()) < 1e-3
