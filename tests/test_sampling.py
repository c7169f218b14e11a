"""Samplers with the EXACT score reproduce the data law (issue 3, "Oracle checks").

Scores are built here from ``dataset.score`` (no dependence on the Oracle method):
s(x, t) = dataset.score(x / alpha, sigma(t)) / alpha. References are independent exact samples
(``dataset.sample``, ``manifold.sample_heat_kernel``) or closed-form laws; every tolerance is a
quantile of the statistic's null distribution (4-4.5 standard errors, KS/chi-square p > 1e-3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from madbench._utils import make_generator
from madbench.data import get_dataset
from madbench.manifolds.sphere import Sphere
from madbench.sampling import sample
from madbench.schedules import VE, VPCosine, VPLinear


class ExactScore:
    """The duck-typed Method interface that ``sample`` uses, with the dataset's exact score."""

    intrinsic = False
    net = None

    def __init__(self, dataset, schedule):
        self.dataset, self.manifold, self.schedule = dataset, dataset.manifold, schedule

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.schedule.alpha(t).reshape(-1, 1).to(x.dtype)
        return self.dataset.score(x / a, self.schedule.sigma(t)) / a


class HeatKernelScore:
    """Intrinsic method whose data law is the S^2 heat kernel around mu at heat time tau0:
    its noised law at heat time tau is the heat kernel at tau0 + tau (exact score)."""

    intrinsic = True
    net = None

    def __init__(self, manifold, schedule, mu: torch.Tensor, tau0: float):
        self.manifold, self.schedule, self.mu, self.tau0 = manifold, schedule, mu, tau0

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = self.tau0 + self.schedule.heat_time(t.double())
        return self.manifold.heat_kernel_score(x, self.mu.expand_as(x).to(x.dtype), tau)


SCHEDULES = {"ve": VE(1e-3, 10.0), "vp": VPLinear(), "vp_cosine": VPCosine()}


# ------------------------------------------------------------------------------ toy
@pytest.mark.parametrize("schedule", ["ve", "vp"])
def test_toy_reverse_sde_matches_atom_law(schedule):
    """TV over the two atoms = |p_hat(-1, 0) - 0.1|; sd sqrt(0.09 / n) = 0.0047 at n = 4000.

    Bias measured at n = 1e5: +0.0008 (VE) and +0.0011 (VP) at 1000 steps, +0.008 and +0.002 at
    200 steps (the VE prior N(0, 100 I) ignores the data mean 0.8; the SDE forgets it, the ODE
    keeps a 0.015 bias at any step count)."""
    ds, n = get_dataset("toy"), 4000
    out = sample(ExactScore(ds, SCHEDULES[schedule]), n, steps=500, generator=make_generator(1))
    assert out["raw"].shape == (n, 2) and out["projected"].shape == (n, 2)
    p_hat = float((ds.atom_index(out["raw"]) == 0).double().mean())
    tv = abs(p_hat - 0.1)
    assert tv < 4 * math.sqrt(0.09 / n), f"TV {tv:.4f}"
    # Tweedie at sigma_min = 1e-3 puts the exact-score samples on the atoms
    assert float(ds.manifold.distance_to_manifold(out["raw"]).max()) < 1e-6


@pytest.mark.parametrize("sampler", ["pc", "ode", "ode_adaptive"])
def test_toy_other_samplers_match_atom_law(sampler):
    ds, n = get_dataset("toy"), 2000
    out = sample(
        ExactScore(ds, SCHEDULES["vp"]), n, sampler=sampler, steps=100, generator=make_generator(2)
    )
    p_hat = float((ds.atom_index(out["raw"]) == 0).double().mean())
    assert abs(p_hat - 0.1) < 4.5 * math.sqrt(0.09 / n), f"{sampler}: p_hat {p_hat:.4f}"


def test_sampling_is_seeded_and_validates_input():
    m = ExactScore(get_dataset("toy"), SCHEDULES["ve"])
    a = sample(m, 50, steps=20, generator=make_generator(3))["raw"]
    b = sample(m, 50, steps=20, generator=make_generator(3))["raw"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown ambient sampler 'grw'"):
        sample(m, 10, sampler="grw")
    with pytest.raises(ValueError, match="steps"):
        sample(m, 10, steps=0)
    with pytest.raises(ValueError, match="denoise"):
        sample(m, 10, denoise="maybe")


def test_denoise_none_returns_noisy_points():
    """Without Tweedie the raw points sit at distance ~ sigma_min sqrt(D) from the atoms."""
    m = ExactScore(get_dataset("toy"), SCHEDULES["ve"])
    raw = sample(m, 2000, steps=100, generator=make_generator(4), denoise="none")["raw"]
    d = m.manifold.distance_to_manifold(raw)
    # |N(0, sigma^2 I_2)| has mean sigma sqrt(pi / 2) = 1.25e-3 (+ the last-step noise)
    assert 0.9e-3 < float(d.mean()) < 1.6e-3


# ------------------------------------------------------------------------------ S^2 vMF mixture
def _cluster_stats(x: torch.Tensor, mus: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    c = x.double() @ mus.T
    return np.bincount(c.argmax(-1).numpy(), minlength=mus.shape[0]), c.max(-1).values.numpy()


def _check_vmf_mixture(x: torch.Tensor, ds, ref: torch.Tensor) -> None:
    n = x.shape[0]
    # mean: E x = sum_j w_j A_3(kappa_j) mu_j, A_3(k) = coth k - 1/k (closed form)
    a3 = 1 / torch.tanh(ds.kappas) - 1 / ds.kappas
    mean = (ds.weights[:, None] * a3[:, None] * ds.mus).sum(0)
    z = (x.double().mean(0) - mean) / (x.double().std(0) / math.sqrt(n))
    assert float(z.abs().max()) < 4.5, f"mean z-scores {z.tolist()}"
    counts, cos_x = _cluster_stats(x, ds.mus)
    counts_ref, cos_ref = _cluster_stats(ref, ds.mus)
    p_chi = stats.chi2_contingency(np.stack([counts, counts_ref])).pvalue
    assert p_chi > 1e-3, f"cluster counts {counts} vs exact {counts_ref}"
    p_ks = stats.ks_2samp(cos_x, cos_ref).pvalue
    assert p_ks > 1e-3, f"KS of the cosine to the nearest mean: p = {p_ks:.2g}"


def test_s2_vmf_mixture_reverse_sde_matches_law():
    """Mean (z-scores), cluster masses (chi-square vs exact samples), within-cluster spread (KS)."""
    ds, n = get_dataset("s2_vmf_mixture_4"), 2000
    out = sample(ExactScore(ds, SCHEDULES["ve"]), n, steps=500, generator=make_generator(5))
    ref = ds.sample(n, generator=make_generator(6))
    _check_vmf_mixture(out["projected"], ds, ref)
    assert float(out["raw"].norm(dim=-1).sub(1).abs().max()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["sde", "pc", "ode", "ode_adaptive"])
@pytest.mark.parametrize("schedule", ["ve", "vp", "vp_cosine"])
def test_s2_vmf_mixture_all_samplers_slow(sampler, schedule):
    ds, n = get_dataset("s2_vmf_mixture_4"), 8000
    out = sample(
        ExactScore(ds, SCHEDULES[schedule]),
        n,
        sampler=sampler,
        steps=1000,
        generator=make_generator(7),
    )
    _check_vmf_mixture(out["projected"], ds, ds.sample(n, generator=make_generator(8)))


# ------------------------------------------------------------------------------ SO(3)
def _so3_mixture():
    return get_dataset("so3_mf_mixture_3")


def _rotation_angle(r: torch.Tensor) -> np.ndarray:
    tr = r.reshape(-1, 3, 3).diagonal(dim1=-2, dim2=-1).sum(-1).double()
    return torch.arccos(((tr - 1) / 2).clamp(-1, 1)).numpy()


def _modes(f: torch.Tensor) -> torch.Tensor:
    """Modes of MF(F_k): the rotation nearest to F_k, U diag(1, 1, det(U V^T)) V^T, (K, 9)."""
    u, _, vh = torch.linalg.svd(f.double())
    d = torch.ones(f.shape[0], 3, dtype=torch.float64)
    d[:, 2] = torch.linalg.det(u @ vh)
    return ((u * d[:, None, :]) @ vh).reshape(-1, 9)


def _nearest_mode(x: torch.Tensor, modes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest mode and the rotation angle to it, per row of x (n, 9)."""
    k = (x.double() @ modes.T).argmax(-1)  # max tr(M_k^T R) = min |R - M_k|_F
    rel = modes.reshape(-1, 3, 3)[k].transpose(-1, -2) @ x.double().reshape(-1, 3, 3)
    return k.numpy(), _rotation_angle(rel)


def _check_so3_mixture(schedule: str, n: int, steps: int, seed: int) -> None:
    ds = _so3_mixture()
    out = sample(
        ExactScore(ds, SCHEDULES[schedule]), n, steps=steps, generator=make_generator(seed)
    )
    x = out["projected"].double()
    ref = ds.sample(20000, generator=make_generator(10)).double()
    se = torch.sqrt(x.var(0) / n + ref.var(0) / ref.shape[0])
    z = (x.mean(0) - ref.mean(0)) / se
    assert float(z.abs().max()) < 4.5, f"E[R] z-scores {z.tolist()}"
    modes = _modes(ds.f)
    (kx, ax), (kr, ar) = _nearest_mode(x, modes), _nearest_mode(ref, modes)
    counts = np.stack(
        [np.bincount(kx, minlength=len(modes)), np.bincount(kr, minlength=len(modes))]
    )
    assert stats.chi2_contingency(counts).pvalue > 1e-3, f"component counts {counts}"
    p_ks = stats.ks_2samp(ax, ar).pvalue
    assert p_ks > 1e-3, f"KS of the angle to the nearest mode: p = {p_ks:.2g}"
    assert float(ds.manifold.distance_to_manifold(out["raw"].double()).max()) < 1e-3


def test_so3_matrix_fisher_mixture_reverse_sde_matches_law():
    """E[R] (z-scores vs an exact sample of 20000), component masses (chi-square) and the
    angle to the nearest mode (two-sample KS). Power: a score scaled by 0.95 gives KS p ~ 1e-5
    at n = 1000; the VE discretisation bias at 200 steps (median angle +3 %) gives p = 4e-4 at
    n = 4000, hence 500 steps here."""
    _check_so3_mixture("ve", 1000, 500, 9)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["ve", "vp", "vp_cosine"])
def test_so3_matrix_fisher_mixture_reverse_sde_slow(schedule):
    _check_so3_mixture(schedule, 4000, 1000, 19)


# ------------------------------------------------------------------------------ intrinsic
def _s2_angle_cdf(sphere: Sphere, tau: float):
    """CDF of the angle to mu under the S^2 heat kernel at tau: int_0^th 2 pi sin(p) p_tau(p) dp
    by the trapezoid rule on 20001 nodes (from ``heat_kernel_log_prob``)."""
    th = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    pts = torch.stack([torch.sin(th), torch.zeros_like(th), torch.cos(th)], -1)
    mu = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).expand_as(pts)
    f = 2 * math.pi * torch.sin(th) * sphere.heat_kernel_log_prob(pts, mu, tau).exp()
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]).numpy() * float(th[1]))])
    assert abs(cdf[-1] - 1) < 1e-6
    return lambda a: np.interp(a, th.numpy(), cdf)


@pytest.mark.parametrize(("sampler", "steps"), [("grw", 200), ("ode", 100)])
def test_s2_intrinsic_samplers_reproduce_heat_kernel(sampler, steps):
    """Data = heat kernel around mu at tau0 = 0.2; the sample's angle to mu must follow the heat
    kernel at tau0 + heat_time(t_min) (one-sample KS against its exact CDF)."""
    sphere, sched, tau0, n = Sphere(2), VPLinear(), 0.2, 2000
    mu = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    m = HeatKernelScore(sphere, sched, mu, tau0)
    out = sample(m, n, sampler=sampler, steps=steps, generator=make_generator(11))
    x = out["raw"]
    assert float((x.norm(dim=-1) - 1).abs().max()) < 1e-12
    assert torch.allclose(out["projected"], x, atol=1e-12)
    theta = sphere.geodesic_distance(x, mu.expand_as(x)).numpy()
    cdf = _s2_angle_cdf(sphere, tau0 + float(sched.heat_time(sched.t_min)))
    p = stats.kstest(theta, cdf).pvalue
    assert p > 1e-3, f"{sampler}: KS p = {p:.2g}"
    # and the azimuth is uniform (rotational symmetry about mu)
    phi = np.arctan2(x[:, 1].numpy(), x[:, 0].numpy())
    assert stats.kstest(phi, stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3


def _so3_angle_cdf(so3, tau: float):
    """CDF of the rotation angle of r0^T R under the SO(3) heat kernel at Frobenius time tau:
    density f(omega) (1 - cos omega) / pi, f w.r.t. normalised Haar from heat_kernel_log_prob
    (trapezoid rule on 20001 nodes)."""
    from madbench.manifolds.so3 import LOG_VOLUME_FROBENIUS

    om = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    c, s = torch.cos(om), torch.sin(om)
    z, o = torch.zeros_like(om), torch.ones_like(om)
    rz = torch.stack([c, -s, z, s, c, z, z, z, o], -1)  # rotation by omega about e_3
    eye = torch.eye(3, dtype=torch.float64).reshape(1, 9).expand_as(rz)
    log_f = so3.heat_kernel_log_prob(rz, eye, tau) + LOG_VOLUME_FROBENIUS
    dens = log_f.exp() * (1 - c) / math.pi
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]).numpy() * float(om[1]))])
    assert abs(cdf[-1] - 1) < 1e-6
    return lambda a: np.interp(a, om.numpy(), cdf)


@pytest.mark.parametrize(("sampler", "steps"), [("grw", 200), ("ode", 100)])
def test_so3_intrinsic_samplers_reproduce_heat_kernel(sampler, steps):
    """Data = SO(3) heat kernel around r0 at Frobenius time tau0 = 0.5: the angle of r0^T R must
    follow the heat kernel at tau0 + heat_time(t_min) (one-sample KS against its exact CDF).
    The sampler starts from Haar, so slow SO(3) mixing (e^{-tau/2}) is part of what is tested."""
    from madbench.manifolds import so3 as so3_mod

    so3, sched, tau0, n = so3_mod.SO3(), VPLinear(), 0.5, 2000
    r0 = so3.sample_uniform(1, generator=make_generator(12)).double()
    m = HeatKernelScore(so3, sched, r0, tau0)
    x = sample(m, n, sampler=sampler, steps=steps, generator=make_generator(13))["raw"]
    assert float(so3.distance_to_manifold(x).max()) < 1e-10
    rel = r0.reshape(3, 3).T @ x.reshape(-1, 3, 3)
    omega = torch.arccos(((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    cdf = _so3_angle_cdf(so3, tau0 + float(sched.heat_time(sched.t_min)))
    p = stats.kstest(omega.numpy(), cdf).pvalue
    assert p > 1e-3, f"{sampler}: KS p = {p:.2g}"


def test_intrinsic_sampler_validates_input():
    m = HeatKernelScore(Sphere(2), VPLinear(), torch.tensor([[0.0, 0.0, 1.0]]), 0.2)
    with pytest.raises(ValueError, match="unknown intrinsic sampler 'sde'"):
        sample(m, 10, sampler="sde")
    m.schedule = VE(1e-3, 10.0)  # heat_time(t_min) = 0: the ODE has no positive end time
    with pytest.raises(ValueError, match="heat_time"):
        sample(m, 10, sampler="ode")


def test_sampler_uses_the_network_dtype():
    """A method with a float32 network is sampled in float32 (state and output)."""

    class Net32(ExactScore):
        def __init__(self, dataset, schedule):
            super().__init__(dataset, schedule)
            self.net = torch.nn.Linear(2, 2)  # float32 parameters: sets the state dtype

        def score(self, x, t):
            assert x.dtype == torch.float32
            return super().score(x, t)

    out = sample(Net32(get_dataset("toy"), SCHEDULES["vp"]), 100, steps=20)
    assert out["raw"].dtype == torch.float32 and torch.isfinite(out["raw"]).all()
