"""Batched proper SVD of 3x3 matrices in plain elementwise torch (CPU and CUDA).

LAPACK's batched ``torch.linalg.svd`` spends ~1.7 us per 3x3 matrix on a CPU core (7 ms for
MAD's 4096-point SO(3) batch, more than a third of a network step), and batched small SVDs are
slow on GPUs too. Here every step is one elementwise torch call over all n matrices, ~200 calls
in all whatever n is:

1. G = F^T F for F / max |F_ij| (no under- or overflow); its best separated eigenvalue (the
   largest or the smallest) from the trigonometric closed form, and its eigenvector as the
   longest cross product of two rows of G - lambda I (Eberly, "A Robust Eigensolver for 3x3
   Symmetric Matrices", 2014): accurate to ~eps / (relative gap), and the gap is the largest;
2. any orthonormal completion (Duff et al., "Building an Orthonormal Basis, Revisited", 2017)
   to a rotation V0, W = F V0, and one Hestenes (one-sided Jacobi) rotation of the other two
   columns of W, which diagonalises the remaining 2x2 block exactly and with the high relative
   accuracy of one-sided Jacobi (singular values near zero included);
3. of the two rotations that do it, the one leaving the longer column first; a cyclic shift
   moves the separated column last where its eigenvalue is the smallest (both keep det V = 1);
   u1 = w1 / |w1|, u2 = w2 orthogonalised against u1 (twice), u3 = u1 x u2 and
   s = (u1 . w1, u2 . w2, u3 . w3): U and V are rotations and the sign of det F lands on s3.

Accuracy (float64, tests/test_svd3.py against numpy's LAPACK SVD): U diag(s) V^T reproduces F
to ~1e-15 |F|, singular values to ~1e-15 s1, U and V are orthogonal to ~1e-15; near-rank-
deficient and exactly repeated singular values included. Where singular values nearly coincide
individual singular vectors are ill-determined by nature (any basis of their span is returned),
but spectral functions U diag(g(s)) V^T with g_i ~ g_j there are unaffected. Entries below
~1e-150 of the largest one of their matrix count as zero (their squares underflow).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from madbench._utils import fixed_work, tensor_cache

# Layout: the component axis comes first, the batch axis n last: vectors (3, ..., n), matrices
# (3 rows, 3 columns, n). Dot products then reduce over the leading axis (fast on CPU; torch's
# reductions over a middle axis of length 3 are several times slower) and each step is one
# elementwise call over all n matrices: ~200 calls in all, whatever n is.


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(0)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    # rolled copies: torch.linalg.cross over the leading axis is ~10x slower on CPU
    return a.roll(-1, 0) * b.roll(-2, 0) - a.roll(-2, 0) * b.roll(-1, 0)


@tensor_cache
def _eye(dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.eye(3, dtype=dtype, device=device)[:, :, None]


def _complete(e: Tensor) -> tuple[Tensor, Tensor]:
    """Unit vectors p, q (3, n) with (e, p, q) a rotation, for unit vectors e (3, n): the
    branch-free basis of Duff et al. (2017), continuous except across e_z = 0."""
    x, y, z = e.unbind(0)
    sign = 1 - 2 * (z < 0).to(e.dtype)
    a = -1 / (sign + z)
    b = x * y * a
    p = torch.stack([1 + sign * a * x * x, sign * b, -sign * x])
    q = torch.stack([b, sign + a * y * y, -y])
    return p, q


def _separated_eigvec(g: Tensor) -> tuple[Tensor, Tensor]:
    """(e, top) for symmetric g (3, 3, n) with max |g| <= 1: e (3, n) a unit eigenvector of the
    best separated eigenvalue, the largest where top (n,) is True, else the smallest; e_x where
    g is a multiple of I (then every vector is an eigenvector)."""
    eye = _eye(g.dtype, g.device)
    q = (g * eye).sum((0, 1)) / 3
    b = g - q * eye
    p2 = (b * b).sum((0, 1)) / 6
    scalar = p2 <= 1e-30  # |g - q I| <= 1e-15: every basis is an eigenbasis to rounding
    p = torch.sqrt(p2 + scalar)
    half_det = (_dot(b[0], _cross(b[1], b[2])) / (2 * p * p * p)).clamp(-1, 1)
    top = half_det >= 0
    # eigenvalues q + 2 p cos(acos(half_det) / 3 + 2 pi k / 3): k = 0 largest, k = 1 smallest
    angle = torch.acos(half_det) / 3 + (2 * math.pi / 3) * (~top).to(g.dtype)
    r = g - (q + 2 * p * torch.cos(angle)) * eye  # rows = columns (g symmetric)
    c = _cross(r[:, [0, 0, 1]], r[:, [1, 2, 2]])  # (3, 3 pairs, n), all parallel to e
    d = _dot(c, c)
    best = torch.where(d[0] >= d[1], c[:, 0], c[:, 1])
    best = torch.where(torch.maximum(d[0], d[1]) >= d[2], best, c[:, 2])
    e = best * torch.rsqrt(_dot(best, best) + scalar)
    return torch.where(scalar, eye[:, 0], e), top


def _hestenes_sorted(wv: Tensor) -> None:
    """One Hestenes (one-sided Jacobi) rotation, in place, of columns 1 and 2 of
    wv = stack(W, V) (3 components, 2, 3 columns, n): it makes w1 and w2 orthogonal (the 2x2
    eigenproblem of W^T W in that plane, solved exactly) with |w1| >= |w2|, and turns v1, v2
    alike. Of the two rotations that do it (90 degrees apart) the one leaving the longer
    column first is taken: the other would swap them with a sign change."""
    wi, wj = wv[:, 0, 1], wv[:, 0, 2]
    a, b, g = _dot(wi, wi), _dot(wj, wj), _dot(wi, wj)
    h = (b - a) / 2
    sgn = 1 - 2 * (h < 0).to(h.dtype)
    den = h.abs() + torch.hypot(h, g)
    t = sgn * g / (den + (den == 0))  # tan of the smaller turn, |t| <= 1 (0 if g = h = 0)
    c = torch.rsqrt(1 + t * t)
    s = c * t
    flip = a - t * g < b + t * g  # |w1| < |w2| after the smaller turn: turn 90 degrees more
    c, s = torch.where(flip, -s, c), torch.where(flip, c, s)
    xi, xj = wv[:, :, 1].clone(), wv[:, :, 2]
    wv[:, :, 1] = c * xi - s * xj
    wv[:, :, 2] = s * xi + c * xj


def proper_svd3(f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """F = U diag(s) V^T with U, V in SO(3), s1 >= s2 >= |s3| (s3 < 0 iff det F < 0).

    f: (..., 3, 3), any floating dtype and device. Returns U (..., 3, 3), s (..., 3),
    V (..., 3, 3) in f's dtype. Not meant for autograd (the eigenvector construction has
    kinks at repeated singular values); callers needing gradients supply their own backward.
    """
    if f.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) matrices, got {tuple(f.shape)}")
    batch = f.shape[:-2]
    # ft[i, j] = F_ij (3, 3, n), contiguous: strided operands make every step several times slower
    ft = f.reshape(-1, 9).t().contiguous().reshape(3, 3, -1)
    scale = ft.abs().amax((0, 1))  # F / max |F_ij|: no under- or overflow in F^T F
    zero = scale == 0
    ft = ft / (scale + zero)
    g = (ft[:, :, None] * ft[:, None]).sum(0)  # F^T F, max |G_ij| <= 3
    e, largest = _separated_eigvec(g / 3)
    v = torch.stack([e, *_complete(e)], 1)  # (3, 3 columns, n), a rotation
    w = (ft.transpose(0, 1).contiguous()[:, :, None] * v[:, None]).sum(0)  # W = F V
    wv = torch.stack([w, v], 1)  # (3, 2, 3 columns, n)
    _hestenes_sorted(wv)
    # the separated column goes last where it belongs to the smallest eigenvalue (cyclic shift)
    wv = torch.where(largest, wv, wv[:, :, [1, 2, 0]])
    w, v = wv[:, 0], wv[:, 1]
    u1 = w[:, 0] * torch.rsqrt(_dot(w[:, 0], w[:, 0]))  # |w1| = s1 >= max |F_ij| = 1
    if fixed_work(zero) or zero.any():  # F = 0
        u1 = torch.where(zero, v[:, 0], u1)
    w2 = w[:, 1]
    u2 = w2 - u1 * _dot(u1, w2)
    u2 = u2 - u1 * _dot(u1, u2)  # twice is enough (Kahan): orthogonal to rounding
    n2 = _dot(u2, u2)
    # w2 was rounding along u1 (s2 = 0 to working precision), or so small that its square
    # lost precision: any unit vector orthogonal to u1
    info = torch.finfo(f.dtype)
    lost = (n2 <= (16 * info.eps) ** 2 * _dot(w2, w2)) | (n2 < info.tiny / info.eps)
    u2 = u2 * torch.rsqrt(n2 + lost)
    if fixed_work(lost) or lost.any():
        u2 = torch.where(lost, _complete(u1)[0], u2)
    u = torch.stack([u1, u2, _cross(u1, u2)], 1)
    s = (u * w).sum(0)  # (3, n): u_i . w_i, the last one signed
    # exact order also where singular values tie to rounding
    s2 = torch.minimum(s[1].clamp_min(0), s[0])
    s = torch.stack([s[0], s2, s[2].clamp(-s2, s2)]) * scale
    u, v = u.permute(2, 0, 1), v.permute(2, 0, 1)
    return u.reshape(*batch, 3, 3), s.t().reshape(*batch, 3), v.reshape(*batch, 3, 3)
