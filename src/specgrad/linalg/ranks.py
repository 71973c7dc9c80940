"""Rank measures the theory speaks in, and the three norms they are made of.

* stable rank ``st(A) = ||A||_F^2 / ||A||_op^2``, in ``[1, rank(A)]``;
* nuclear rank ``nr(G) = ||G||_*^2 / ||G||_F^2``, in ``[1, rank(G)]``;
* effective rank ``exp(H(s / sum(s)))`` (Roy & Vetterli, 2007).

All three are 0 for a zero matrix (the convention of ``rank``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .checks import check_matrix


class MatrixNorms(NamedTuple):
    """Frobenius, nuclear and operator norm, each of shape ``(...)``, in float64."""

    frobenius: Tensor
    nuclear: Tensor
    operator: Tensor


def matrix_norms(A: Tensor) -> MatrixNorms:
    """The three norms of every matrix of ``A`` (``(..., m, n)``) from one float64 SVD.

    Example:
        >>> n = matrix_norms(torch.eye(3))
        >>> round(float(n.frobenius) ** 2, 12), float(n.nuclear), float(n.operator)
        (3.0, 3.0, 1.0)
    """
    s = _svdvals(A, "A")
    return MatrixNorms(s.square().sum(-1).sqrt(), s.sum(-1), _top(s))


def _svdvals(A: Tensor, name: str) -> Tensor:
    check_matrix(A, name)
    return torch.linalg.svdvals(A.to(torch.float64))


def _top(s: Tensor) -> Tensor:
    return s[..., 0] if s.shape[-1] else s.sum(-1)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def stable_rank(A: Tensor) -> Tensor:
    """``||A||_F^2 / ||A||_op^2`` per matrix of ``A`` (``(..., m, n)``), float64, shape ``(...)``.

    Example:
        >>> round(float(stable_rank(torch.outer(torch.randn(4), torch.randn(6)))), 6)
        1.0
    """
    s = _svdvals(A, "A")
    return _ratio(s.square().sum(-1), _top(s).square())


def nuclear_rank(G: Tensor) -> Tensor:
    """``||G||_*^2 / ||G||_F^2`` per matrix of ``G`` (``(..., m, n)``), float64, shape ``(...)``.

    Example:
        >>> float(nuclear_rank(torch.eye(5)))
        5.0
    """
    s = _svdvals(G, "G")
    return _ratio(s.sum(-1).square(), s.square().sum(-1))


def effective_rank(B: Tensor) -> Tensor:
    """``exp`` of the entropy of the normalized singular values, per matrix, float64.

    Example:
        >>> round(float(effective_rank(torch.eye(4))), 6)
        4.0
    """
    s = _svdvals(B, "B")
    total = s.sum(-1, keepdim=True)
    p = _ratio(s, total)
    h = -(torch.special.xlogy(p, p)).sum(-1)
    return torch.where(total.squeeze(-1) > 0, h.exp(), torch.zeros_like(h))
