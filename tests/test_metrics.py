"""Tests of madbench.metrics against independent computations (scipy, POT, loops, hand values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.linalg import logm
from scipy.spatial.transform import Rotation

from madbench import metrics as M
from madbench.manifolds import SO3, Sphere, Torus
from madbench.manifolds import _distances as D
from madbench.manifolds.so3 import rotation_angle


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sphere(n: int, seed: int, p: int = 3) -> torch.Tensor:
    x = torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _haar(n: int, seed: int) -> torch.Tensor:
    r = stats.special_ortho_group.rvs(3, size=n, random_state=seed)
    return torch.from_numpy(r.reshape(n, 9))


def _concentrated_so3(n: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    rotvec = scale * np.random.default_rng(seed).standard_normal((n, 3))
    return torch.from_numpy(Rotation.from_rotvec(rotvec).as_matrix().reshape(n, 9))


def _rotate_so3(r: np.ndarray, x: torch.Tensor, side: str) -> torch.Tensor:
    mats = x.reshape(-1, 3, 3).numpy()
    out = r @ mats if side == "left" else mats @ r
    return torch.from_numpy(out.reshape(-1, 9))


# ----------------------------------------------------------------------------- adherence


def test_adherence_stats_match_numpy():
    d = torch.from_numpy(np.random.default_rng(0).exponential(3e-3, size=1001))
    s = M.adherence_stats(d)
    dn = d.numpy()
    assert s["mean"] == pytest.approx(dn.mean(), rel=1e-12)
    assert s["median"] == pytest.approx(np.median(dn), rel=1e-12)
    assert s["p90"] == pytest.approx(np.percentile(dn, 90), rel=1e-12)
    assert s["p99"] == pytest.approx(np.percentile(dn, 99), rel=1e-12)
    assert s["frac_within_1e-2"] == pytest.approx(np.mean(dn <= 1e-2), abs=0)
    assert s["frac_within_1e-3"] == pytest.approx(np.mean(dn <= 1e-3), abs=0)
    # exponential law: P(d <= t) = 1 - exp(-t / 3e-3); sampling sd ~ 0.015
    assert s["frac_within_1e-3"] == pytest.approx(1 - math.exp(-1 / 3), abs=0.06)


def test_adherence_stats_even_median_and_bad_input():
    assert M.adherence_stats(torch.tensor([0.0, 1.0, 2.0, 3.0]))["median"] == 1.5
    with pytest.raises(ValueError, match="NaN"):
        M.adherence_stats(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="negative"):
        M.adherence_stats(torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="dimensions"):
        M.adherence_stats(torch.zeros(3, 2))


# ----------------------------------------------------------------------------- distances


@pytest.mark.parametrize("p", [2, 3, 5])
def test_sphere_geodesic_matches_arccos_when_well_conditioned(p):
    x, y = _sphere(40, 1, p), _sphere(30, 2, p)
    ref = np.arccos(np.clip(x.numpy() @ y.numpy().T, -1, 1))
    mask = np.abs(x.numpy() @ y.numpy().T) < 0.99
    d = D.sphere_geodesic_cdist(x, y).numpy()
    assert d.shape == (40, 30)
    np.testing.assert_allclose(d[mask], ref[mask], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("a", [0.0, 1e-12, 1e-8, 1e-4, 1.0, math.pi - 1e-6, math.pi])
def test_sphere_geodesic_exact_at_zero_and_pi(a):
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[math.cos(a), math.sin(a), 0.0]], dtype=torch.float64)
    d = D.sphere_geodesic_cdist(x, y).item()
    assert d == pytest.approx(a, rel=1e-12, abs=1e-15)
    assert D.sphere_geodesic_cdist(x, -x).item() == math.pi


def test_so3_angle_matches_scipy_relative_rotation():
    x, y = _haar(30, 3), _haar(20, 4)
    rx = Rotation.from_matrix(x.numpy().reshape(-1, 3, 3))
    ry = Rotation.from_matrix(y.numpy().reshape(-1, 3, 3))
    ref = np.array([[(rx[i].inv() * ry[j]).magnitude() for j in range(20)] for i in range(30)])
    d = D.so3_angle_cdist(x, y).numpy()
    np.testing.assert_allclose(d, ref, atol=1e-7)  # trace formula: sqrt(eps) near pi
    far = ref < 3.0
    np.testing.assert_allclose(d[far], ref[far], rtol=1e-10, atol=1e-12)
    ang = rotation_angle(x).numpy()
    np.testing.assert_allclose(ang, rx.magnitude(), atol=1e-7)


@pytest.mark.parametrize("w", [1e-9, 1e-6, 1e-3, 2.0, math.pi - 1e-3])
def test_so3_angle_small_and_large_angles(w):
    axis = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    r0 = Rotation.from_rotvec([0.3, 1.1, -0.7])
    r1 = r0 * Rotation.from_rotvec(w * axis)
    x = torch.from_numpy(r0.as_matrix().reshape(1, 9))
    y = torch.from_numpy(r1.as_matrix().reshape(1, 9))
    d = D.so3_angle_cdist(x, y).item()
    assert d == pytest.approx(w, rel=1e-6 if w < 3 else 0, abs=1e-7 if w > 3 else 0)


def test_so3_frobenius_distance_is_norm_of_matrix_log():
    x, y = _haar(25, 5), _haar(25, 6)
    d = SO3().geodesic_distance(x, y).numpy()
    for i in range(25):
        r1, r2 = x[i].numpy().reshape(3, 3), y[i].numpy().reshape(3, 3)
        ref = np.linalg.norm(np.real(logm(r1.T @ r2)))
        if d[i] < 3.0 * math.sqrt(2):  # logm is ill-conditioned near pi
            assert d[i] == pytest.approx(ref, rel=1e-8)
    # the metric distance is the rotation angle: the geodesic distance of tr(A^T B) / 2
    np.testing.assert_allclose(
        SO3().metric_cdist(x, y).diagonal().numpy() * math.sqrt(2), d, rtol=1e-7, atol=1e-7
    )


def test_torus_and_euclidean_distances():
    rng = np.random.default_rng(7)
    ta, tb = rng.uniform(0, 2 * np.pi, (6, 2)), rng.uniform(0, 2 * np.pi, (4, 2))

    def emb(t):
        return torch.from_numpy(np.stack([np.cos(t), np.sin(t)], -1).reshape(len(t), -1))

    diff = np.abs(ta[:, None, :] - tb[None, :, :])
    ref = np.sqrt((np.minimum(diff, 2 * np.pi - diff) ** 2).sum(-1))
    np.testing.assert_allclose(Torus(2).metric_cdist(emb(ta), emb(tb)), ref, rtol=1e-12)
    a, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    ref_e = np.linalg.norm(a.numpy()[:, None] - b.numpy()[None], axis=-1)
    np.testing.assert_allclose(D.euclidean_cdist(a, b), ref_e, rtol=1e-12)


def test_distance_bad_input():
    with pytest.raises(ValueError, match="9 coordinates"):
        D.so3_angle_cdist(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="columns"):
        D.euclidean_cdist(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="nonzero"):
        D.sphere_geodesic_cdist(torch.zeros(2, 3), torch.ones(2, 3))


# ----------------------------------------------------------------------------- MMD


def _mmd_loop(x: np.ndarray, y: np.ndarray, h: float) -> float:
    def k(a, b):
        return math.exp(-(math.acos(max(-1.0, min(1.0, float(a @ b)))) ** 2) / (2 * h * h))

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_definition_loop():
    x, y = _sphere(12, 8), _sphere(9, 9)
    val = M.mmd2_unbiased(x, y, Sphere(2).metric_cdist, [0.3, 1.0])
    for h in (0.3, 1.0):
        assert val[h] == pytest.approx(_mmd_loop(x.numpy(), y.numpy(), h), rel=1e-10, abs=1e-13)


def test_mmd_of_a_sample_with_itself():
    x = _sphere(50, 10)
    h = 0.5
    val = M.mmd2_unbiased(x, x, D.sphere_geodesic_cdist, [h])[h]
    d = np.arccos(np.clip(x.numpy() @ x.numpy().T, -1, 1))
    k = np.exp(-(d**2) / (2 * h * h))
    off = (k.sum() - np.trace(k)) / (50 * 49)
    assert val == pytest.approx(-2 * (1 - off) / 50, rel=1e-8)
    assert -2 / 50 <= val <= 0


@pytest.mark.parametrize("kind", ["sphere", "so3"])
def test_mmd_and_ot_invariant_under_isometries(kind):
    if kind == "sphere":
        x, y = _sphere(80, 11), _sphere(70, 12)
        r = torch.from_numpy(stats.special_ortho_group.rvs(3, random_state=13))
        moves = [(x @ r.T, y @ r.T)]
    else:
        x, y = _haar(80, 11), _concentrated_so3(70, 12)
        r = stats.special_ortho_group.rvs(3, random_state=13)
        moves = [(_rotate_so3(r, x, s), _rotate_so3(r, y, s)) for s in ("left", "right")]
    hs = [0.2, 0.5, 1.0]
    dist = Sphere(2).metric_cdist if kind == "sphere" else SO3().metric_cdist
    ref_mmd, ref_ot = M.mmd2_unbiased(x, y, dist, hs), M.ot_distances(x, y, dist)
    assert ref_ot["w1"] > 0.1 if kind == "so3" else ref_ot["w1"] > 0.05
    for rx, ry in moves:
        mmd, ot = M.mmd2_unbiased(rx, ry, dist, hs), M.ot_distances(rx, ry, dist)
        for h in hs:
            assert mmd[h] == pytest.approx(ref_mmd[h], rel=1e-9, abs=1e-12)
        assert ot["w1"] == pytest.approx(ref_ot["w1"], rel=1e-7)
        assert ot["w2"] == pytest.approx(ref_ot["w2"], rel=1e-7)


def test_mmd_exceeds_noise_floor_for_different_laws():
    def uniform(n, g):
        z = torch.randn(n, 3, generator=g, dtype=torch.float64)
        return z / z.norm(dim=-1, keepdim=True)

    def cap(n, g):  # concentrated around the north pole
        z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) + 0.4 * torch.randn(
            n, 3, generator=g, dtype=torch.float64
        )
        return z / z.norm(dim=-1, keepdim=True)

    hs = [0.2, 0.5, 1.0]
    g = torch.Generator().manual_seed(5)
    diff = M.mmd2_unbiased(uniform(300, g), cap(300, g), Sphere(2).metric_cdist, hs)
    for sampler in (uniform, cap):
        floor = M.noise_floor(
            lambda a, b: M.mmd2_unbiased(a, b, Sphere(2).metric_cdist, hs), sampler, 300, 1
        )
        for h in hs:
            # null sd of the MMD estimate is O(1/n) ~ 3e-3; the laws differ by far more
            assert abs(floor[h]) < 0.02
            assert diff[h] > 0.05 and diff[h] > 10 * abs(floor[h])


def test_mmd_bad_bandwidth():
    x = _sphere(5, 0)
    with pytest.raises(ValueError, match="positive"):
        M.mmd2_unbiased(x, x, Sphere(2).metric_cdist, [0.0])


# ----------------------------------------------------------------------------- OT


def test_ot_of_a_sample_with_itself_is_zero():
    x = _haar(60, 21)
    ot = M.ot_distances(x, x, SO3().metric_cdist)
    assert ot["w1"] == pytest.approx(0.0, abs=1e-12)
    assert ot["w2"] == pytest.approx(0.0, abs=1e-6)


def test_ot_two_atoms_hand_values():
    # {0, pi/2} vs {pi, 3 pi/2} on the circle: 0 -> 3 pi/2 and pi/2 -> pi, each an arc of pi/2
    t = torch.tensor([0.0, math.pi / 2], dtype=torch.float64)
    s = torch.tensor([math.pi, 3 * math.pi / 2], dtype=torch.float64)
    x = torch.stack([t.cos(), t.sin()], -1)
    y = torch.stack([s.cos(), s.sin()], -1)
    ot = M.ot_distances(x, y, Sphere(1).metric_cdist)
    assert ot["w1"] == pytest.approx(math.pi / 2, rel=1e-12)
    assert ot["w2"] == pytest.approx(math.pi / 2, rel=1e-12)


@pytest.mark.parametrize("sizes", [(60, 60), (80, 50)])
def test_circle_w1_closed_form_matches_pot(sizes):
    rng = np.random.default_rng(sizes[1])
    tx = np.concatenate([rng.vonmises(0.5, 4.0, sizes[0] // 2), rng.uniform(0, 7, sizes[0] // 2)])
    ty = rng.vonmises(2.5, 2.0, sizes[1])
    emb = lambda t: torch.from_numpy(np.stack([np.cos(t), np.sin(t)], -1))
    pot = M.ot_distances(emb(tx), emb(ty), Sphere(1).metric_cdist)["w1"]
    closed = M.circle_w1(tx, ty)
    assert closed == pytest.approx(pot, rel=1e-9)
    assert pot > 0.1


def test_circle_w1_hand_values():
    assert M.circle_w1(np.array([0.0]), np.array([np.pi / 2])) == pytest.approx(np.pi / 2)
    assert M.circle_w1(np.array([0.1]), np.array([2 * np.pi - 0.1])) == pytest.approx(0.2)
    assert M.circle_w1(np.array([-0.1]), np.array([0.1 + 4 * np.pi])) == pytest.approx(0.2)
    # uniform grid vs the same grid rotated by half a step: every point moves pi / n
    n = 16
    grid = 2 * np.pi * np.arange(n) / n
    assert M.circle_w1(grid, grid + np.pi / n) == pytest.approx(np.pi / n, rel=1e-12)


def test_ot_subsampling_is_seeded():
    x, y = _sphere(300, 31), _sphere(250, 32)
    a = M.ot_distances(x, y, Sphere(2).metric_cdist, max_points=100, seed=3)
    b = M.ot_distances(x, y, Sphere(2).metric_cdist, max_points=100, seed=3)
    c = M.ot_distances(x, y, Sphere(2).metric_cdist, max_points=100, seed=4)
    assert a == b and a != c
    full = M.ot_distances(x, y, Sphere(2).metric_cdist, max_points=300)
    assert full == M.ot_distances(x, y, Sphere(2).metric_cdist, max_points=10_000)
    assert full["w1"] <= full["w2"] + 1e-12  # Jensen


# ----------------------------------------------------------------------------- discrete


def test_categorical_tv_kl_hand_values():
    p = M.categorical_from_samples(torch.tensor([0, 0, 2, 0, 2, 1, 0, 0, 1, 2]), 4)
    np.testing.assert_array_equal(p.numpy(), [0.5, 0.2, 0.3, 0.0])
    a, b = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    assert M.tv_distance(a, b) == pytest.approx(0.3, rel=1e-14)
    assert M.kl_divergence(a, b, eps=0) == pytest.approx(0.3 * math.log(2.5), rel=1e-14)
    assert M.kl_divergence(a, b, eps=0) == pytest.approx(stats.entropy(a, b), rel=1e-14)
    assert M.kl_divergence(a, a, eps=0) == 0.0


def test_kl_smoothing_of_empty_bins():
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    assert M.kl_divergence(p, q, eps=0) == math.inf
    qs = np.array([1.01, 0.01]) / 1.02  # (q + eps) / (1 + K eps); p stays (0.5, 0.5)
    ref = 0.5 * math.log(0.5 / qs[0]) + 0.5 * math.log(0.5 / qs[1])
    assert M.kl_divergence(p, q, eps=0.01) == pytest.approx(ref, rel=1e-12)


def test_discrete_metrics_known_counts():
    idx = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)  # empirical (0.6, 0.3, 0.1, 0)
    true = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    out = M.discrete_metrics(idx, true)
    assert out["tv"] == pytest.approx(0.5 * (0.1 + 0.05 + 0.025 + 0.125), rel=1e-12)
    eps = 0.05  # half a pseudo-count for n = 10
    q = (np.array([0.6, 0.3, 0.1, 0.0]) + eps) / (1 + 4 * eps)
    p = (true.numpy() + eps) / (1 + 4 * eps)
    assert out["kl"] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)


def test_discrete_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        M.categorical_from_samples(torch.tensor([0, 3]), 3)
    with pytest.raises(TypeError, match="integers"):
        M.categorical_from_samples(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match="sum to 1"):
        M.tv_distance(np.array([0.5, 0.6]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="atoms"):
        M.kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0, 0.0]))


# ----------------------------------------------------------------------------- SO(3) KS


def test_haar_angle_cdf_is_integral_of_density():
    for w in (0.3, 1.5, 3.0, math.pi):
        ref = integrate.quad(lambda u: (1 - math.cos(u)) / math.pi, 0, w)[0]
        assert M.haar_angle_cdf(np.array(w)) == pytest.approx(ref, rel=1e-12)


def test_ks_haar_accepts_haar_and_rejects_concentrated():
    haar = _haar(2000, 41)
    res = M.so3_angle_ks_haar(haar)
    assert res["pvalue"] > 0.01 and res["statistic"] < 0.04  # critical value 1.36/sqrt(n) = 0.03
    bad = M.so3_angle_ks_haar(_concentrated_so3(2000, 42, scale=1.0))
    assert bad["pvalue"] < 1e-10


def test_ks_two_sample():
    same = M.so3_angle_ks(_haar(1500, 51), _haar(1000, 52))
    assert same["pvalue"] > 0.01
    diff = M.so3_angle_ks(_haar(1500, 51), _concentrated_so3(1000, 53, scale=1.0))
    assert diff["pvalue"] < 1e-10 and diff["statistic"] > 0.2


# ----------------------------------------------------------------------------- noise floor


def test_noise_floor_draws_two_independent_seeded_samples():
    sampler = lambda n, g: torch.randn(n, 2, generator=g)
    a = M.noise_floor(lambda x, y: (x, y), sampler, 5, seed=9)
    b = M.noise_floor(lambda x, y: (x, y), sampler, 5, seed=9)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])


# ----------------------------------------------------------------------------- score error


def _sphere_data(n, g):
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return z / z.norm(dim=-1, keepdim=True)


def _score_true(x, sigma):  # any callable works: here the score of N(0, sigma^2 I)
    return -x / sigma**2


def test_score_error_zero_for_identical_and_offset_exact():
    c = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    sig = M.log_sigma_grid(1e-3, 10.0, 9)
    same = M.score_error_curve(_score_true, _score_true, _sphere_data, sig, 500, _gen(0))
    assert (same["mse"] == 0.0).all() and (same["weighted_mse"] == 0.0).all()
    off = M.score_error_curve(
        lambda x, s: _score_true(x, s) + c, _score_true, _sphere_data, sig, 500, _gen(0)
    )
    np.testing.assert_allclose(off["mse"], c.square().sum().item(), rtol=1e-8)
    np.testing.assert_allclose(off["weighted_mse"], sig**2 * c.square().sum().item(), rtol=1e-8)
    np.testing.assert_allclose(off["sigma"], sig)


def test_score_error_monte_carlo_linear_error():
    # error a x with x = x0 + sigma z, |x0| = 1: E|a x|^2 = a^2 (1 + 3 sigma^2)
    a, n = 0.7, 4000
    sig = np.array([0.01, 0.3, 1.0, 3.0])
    cur = M.score_error_curve(
        lambda x, s: _score_true(x, s) + a * x, _score_true, _sphere_data, sig, n, _gen(1), 1000
    )
    ref = a**2 * (1 + 3 * sig**2)
    assert (np.abs(cur["mse"] - ref) < 4 * cur["mse_se"]).all()
    assert (cur["mse_se"] < 0.05 * ref).all()


def test_weighted_integral_of_constant_error():
    c2, lo, hi = 2.0, 1e-3, 10.0
    sig = M.log_sigma_grid(lo, hi, 401)
    curve = {"sigma": sig, "weighted_mse": c2 * sig**2}
    exact = c2 * (hi**2 - lo**2) / 2  # int sigma^2 c2 dlog sigma
    # trapezoid error ~ h^2/12 * 4 relative for e^{2u}, h = ln(1e4)/400: 1e-4
    assert M.weighted_integral(curve) == pytest.approx(exact, rel=3e-4)
    with pytest.raises(ValueError, match="increasing"):
        M.weighted_integral({"sigma": sig[::-1], "weighted_mse": sig})


def test_score_error_bad_shapes():
    with pytest.raises(ValueError, match="scores must have shape"):
        M.score_error_curve(lambda x, s: x[:, :2], _score_true, _sphere_data, [1.0], 10, _gen(0))
    with pytest.raises(ValueError, match="positive"):
        M.score_error_curve(_score_true, _score_true, _sphere_data, [0.0, 1.0], 10, _gen(0))
