"""``||A||_op`` of the large activation matrices of this study, in float64, and the stable rank
from it, for matrices too large for a full SVD.

Example:
    >>> fast_stable_rank(torch.eye(3))
    3.0
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import scipy.sparse.linalg
import torch
from torch import Tensor


def top_singular_value(A: Tensor) -> float:
    """``||A||_op`` of one ``(m, n)`` matrix, in float64: the exact SVD up to
    ``min(m, n) = 256``, ARPACK (``scipy.sparse.linalg.svds``, fixed start vector, ``tol=1e-10``)
    above it."""
    A = A.detach().to(torch.float64)
    if min(A.shape) <= 256:
        return float(torch.linalg.svdvals(A)[0])
    a = A.cpu().numpy()
    s = scipy.sparse.linalg.svds(a, k=1, tol=1e-10, return_singular_vectors=False,
                                 v0=np.ones(min(a.shape)))  # fmt: skip
    return float(s[0])


def fast_stable_rank(A: Tensor) -> float:
    """``||A||_F^2 / ||A||_op^2`` in float64 (0 for a zero matrix), for matrices too large for a
    full SVD (see :func:`top_singular_value`)."""
    top = top_singular_value(A)
    return float(A.detach().to(torch.float64).square().sum()) / top**2 if top > 0 else 0.0


class TopSingular:
    """``||A||_op`` of a sequence of slowly changing matrices by power iteration on ``A^T A``,
    warm-started from the previous top right singular vector; stops when the eigen-residual
    ``||A^T A v - theta v|| <= tol theta`` and falls back to the exact SVD after ``max_iters``."""

    def __init__(self, tol: float = 1e-10, max_iters: int = 300):
        self.v: Optional[Tensor] = None
        self.tol, self.max_iters = tol, max_iters

    def __call__(self, A: Tensor) -> float:
        v = self.v if self.v is not None and self.v.shape[0] == A.shape[1] else torch.ones(A.shape[1], dtype=A.dtype)
        v = v / v.norm()
        for _ in range(self.max_iters):
            w = A.mT @ (A @ v)
            norm = float(w.norm())
            if norm == 0.0:
                return 0.0
            theta = float(v @ w)
            if float((w - theta * v).norm()) <= self.tol * theta:
                self.v = w / norm
                return math.sqrt(theta)
            v = w / norm
        self.v = v
        return float(torch.linalg.matrix_norm(A, ord=2))
