"""Rotation helpers shared by SO(3) and the matrix Fisher law (batched, device-agnostic).

Quaternions are (w, x, y, z) with w the scalar part; R(q) is the usual rotation matrix
(R(q) v = q v q^*). Rotation vectors phi (axis * angle, radians) map to skew matrices by
hat(phi) v = phi x v. Matrices are (..., 3, 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def hat(phi: Tensor) -> Tensor:
    """Skew matrix of phi (..., 3): hat(phi) v = phi x v, shape (..., 3, 3)."""
    a, b, c = phi.unbind(-1)
    z = torch.zeros_like(a)
    return torch.stack([z, -c, b, c, z, -a, -b, a, z], -1).reshape(*phi.shape[:-1], 3, 3)


def vee(omega: Tensor) -> Tensor:
    """Inverse of :func:`hat` on the skew part of omega (..., 3, 3), shape (..., 3)."""
    return 0.5 * torch.stack(
        [
            omega[..., 2, 1] - omega[..., 1, 2],
            omega[..., 0, 2] - omega[..., 2, 0],
            omega[..., 1, 0] - omega[..., 0, 1],
        ],
        -1,
    )


def exp_so3(phi: Tensor) -> Tensor:
    """Rodrigues: expm(hat(phi)) = I + sinc(th) W + (1 - cos th)/th^2 W^2, th = |phi|."""
    th = phi.norm(dim=-1)[..., None, None]
    w = hat(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device)
    c1 = torch.special.sinc(th / math.pi)
    c2 = 0.5 * torch.special.sinc(th / (2 * math.pi)) ** 2
    return eye + c1 * w + c2 * (w @ w)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """R(q) for (not necessarily unit) quaternions q (..., 4); q is normalised first."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    r = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    )
    return r.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(r: Tensor) -> Tensor:
    """Unit quaternion with w >= 0 of a rotation matrix (..., 3, 3) (Shepperd's method).

    Uses the row of the symmetric 4x4 matrix 4 q q^T with the largest diagonal entry, so it is
    accurate for every angle, including near 0 and near pi.
    """
    r00, r01, r02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    r10, r11, r12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    r20, r21, r22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    k0, k1 = 1 + r00 + r11 + r22, 1 + r00 - r11 - r22
    k2, k3 = 1 - r00 + r11 - r22, 1 - r00 - r11 + r22
    a, b, c = r21 - r12, r02 - r20, r10 - r01
    d, e, f = r01 + r10, r02 + r20, r12 + r21
    rows = torch.stack(
        [
            torch.stack([k0, a, b, c], -1),
            torch.stack([a, k1, d, e], -1),
            torch.stack([b, d, k2, f], -1),
            torch.stack([c, e, f, k3], -1),
        ],
        -2,
    )  # (..., 4, 4), row i = 4 q_i q
    idx = torch.stack([k0, k1, k2, k3], -1).argmax(-1)
    q = torch.gather(rows, -2, idx[..., None, None].expand(*idx.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def log_so3(r: Tensor) -> Tensor:
    """Rotation vector phi (..., 3), |phi| in [0, pi], with exp_so3(phi) = r (stable at 0, pi)."""
    q = matrix_to_quaternion(r)
    w, v = q[..., 0], q[..., 1:]
    s = v.norm(dim=-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    factor = torch.where(s > 0, 2 * torch.atan2(s, w) / safe, 2 / w)
    return factor[..., None] * v


def angle_so3(r: Tensor) -> Tensor:
    """Rotation angle in [0, pi] of r (..., 3, 3): 2 atan2(|v|, |w|) of its quaternion."""
    q = matrix_to_quaternion(r)
    return 2 * torch.atan2(q[..., 1:].norm(dim=-1), q[..., 0].abs())
