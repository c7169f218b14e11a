"""The elementwise 3x3 proper SVD (madbench.manifolds._svd3) against numpy's LAPACK SVD.

Families cover what MAD feeds it (noisy rotations at every scale), what breaks naive 3x3
eigensolvers (exactly and nearly repeated singular values, rank 0/1/2, near-rank-deficient,
huge and tiny entries) and float32 inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from madbench.manifolds._svd3 import proper_svd3
from madbench.manifolds.matrix_fisher import proper_svd

F64 = torch.float64


def _rotations(n: int, seed: int) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, 3, 3)))
    return torch.from_numpy(q * np.linalg.det(q)[:, None, None])  # det +1


def _families() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    n = 2000
    r, r2 = _rotations(n, 1), _rotations(n, 2)

    def with_singular_values(s) -> torch.Tensor:
        return r @ torch.diag_embed(torch.as_tensor(s, dtype=F64).expand(n, 3)) @ r2.mT

    gauss = torch.from_numpy(rng.standard_normal((n, 3, 3)))
    sigma = torch.from_numpy(np.exp(rng.uniform(np.log(1e-4), np.log(10.0), n)))
    noisy = r + sigma[:, None, None] * torch.from_numpy(rng.standard_normal((n, 3, 3)))
    return {
        "gaussian": gauss,
        "noisy rotations / sigma^2 (MAD's input)": noisy / sigma[:, None, None] ** 2,
        "exact rotations (triple tie)": r,
        "reflections (det -1)": -r,
        "double tie, top": with_singular_values([2.0, 2.0, 1.0]),
        "double tie, bottom": with_singular_values([2.0, 1.0, 1.0]),
        "near triple tie": with_singular_values([1.0, 1.0 - 1e-9, 1.0 - 2e-9]),
        "rank 2": with_singular_values([3.0, 1.0, 0.0]),
        "rank 1": with_singular_values([3.0, 0.0, 0.0]),
        "near rank 1": with_singular_values([1.0, 1e-6, 1e-9]),
        "near rank 1, tie": with_singular_values([1.0, 1e-6, 1e-6 * (1 + 1e-9)]),
        "diagonal with ties": torch.diag_embed(
            torch.tensor([[3.0, 2, 1], [1, 2, 3], [2, 2, 1], [1, 1, 2], [1, 0, 0], [0, 0, 1]])
        ).to(F64),
        "zero": torch.zeros(4, 3, 3, dtype=F64),
        "huge": gauss * 1e150,
        "tiny": gauss * 1e-150,
    }


FAMILIES = _families()


def _check(f: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, tol: float):
    eye = torch.eye(3, dtype=f.dtype)
    ref = torch.from_numpy(np.linalg.svd(f.double().numpy(), compute_uv=False))  # LAPACK
    scale = ref[:, :1].clamp_min(1e-300)
    rec = (u * s[:, None, :]) @ v.mT
    assert ((rec - f).abs().amax((-1, -2)) / scale[:, 0]).max() < tol, "U diag(s) V^T != F"
    assert ((s.abs().double() - ref).abs() / scale).max() < tol, "singular values"
    assert (u.mT @ u - eye).abs().max() < tol and (v.mT @ v - eye).abs().max() < tol
    assert (torch.linalg.det(u.double()) > 0).all() and (torch.linalg.det(v.double()) > 0).all()
    assert (s[:, 0] >= s[:, 1]).all() and (s[:, 1] >= s[:, 2].abs()).all(), "order"
    clear = ref[:, 2] > 1e-12 * ref[:, 0]  # the sign of s3 is the sign of det F
    with np.errstate(all="ignore"):  # singular (e.g. zero) matrices: LU divides by zero
        det_f = torch.from_numpy(np.linalg.det((f.double() / scale[:, :, None]).numpy()))
    assert ((s[:, 2] < 0) == (det_f < 0))[clear].all(), "sign of s3"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_proper_svd_matches_lapack(family):
    f = FAMILIES[family]
    u, s, v = proper_svd3(f)
    _check(f, u, s, v, 5e-15)


@pytest.mark.parametrize("family", ["gaussian", "noisy rotations / sigma^2 (MAD's input)"])
def test_proper_svd_float32(family):
    f = FAMILIES[family].float()
    u, s, v = proper_svd3(f)
    assert u.dtype == s.dtype == v.dtype == torch.float32
    _check(f, u, s, v, 5e-6)


def test_proper_svd_batch_shapes_and_public_alias():
    f = FAMILIES["gaussian"][:24].reshape(2, 3, 4, 3, 3)
    u, s, v = proper_svd(f)
    assert u.shape == (2, 3, 4, 3, 3) and s.shape == (2, 3, 4, 3) and v.shape == u.shape
    u1, s1, v1 = proper_svd3(f.reshape(-1, 3, 3))
    assert torch.equal(s.reshape(-1, 3), s1)
    with pytest.raises(ValueError, match="3, 3"):
        proper_svd3(torch.zeros(4, 2, 3))


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, (3, 3), elements=st.floats(-1e3, 1e3, allow_subnormal=False)),
    st.integers(-8, 8),
)
def test_proper_svd_property(a, log_scale):
    f = torch.from_numpy(a)[None] * 10.0**log_scale
    u, s, v = proper_svd3(f)
    assert torch.isfinite(u).all() and torch.isfinite(s).all() and torch.isfinite(v).all()
    _check(f, u, s, v, 5e-14)
