"""Rank measures the theory speaks in, and streaming Gram accumulation.

* stable rank ``st(A) = ||A||_F^2 / ||A||_op^2``, in ``[1, rank(A)]``;
* nuclear rank ``nr(G) = ||G||_*^2 / ||G||_F^2``, in ``[1, rank(G)]``;
* effective rank ``exp(H(s / sum(s)))`` (Roy & Vetterli, 2007).

All three are 0 for a zero matrix (the convention of ``rank``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .checks import check_matrix, check_positive_int
from .workspace import Workspace, buffer


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


def operator_norm_estimate(
    A: Tensor,
    *,
    tol: float = 1e-6,
    max_iters: int = 200,
    generator: Optional[torch.Generator] = None,
) -> float:
    """``||A||_op`` of one ``(m, n)`` matrix by power iteration on ``A^T A``, in float64.

    Each iterate is a lower bound of the true norm. Stops when the eigenvalue residual
    ``||A^T A v - theta v||`` (``theta = ||A v||^2``, the Rayleigh quotient) is at most
    ``tol * theta``: some eigenvalue of ``A^T A`` then lies within ``tol * theta`` of
    ``theta``, and once ``v`` has turned towards the top singular vector that eigenvalue is
    ``||A||_op^2``, so the estimate is within ``tol`` relative of the norm. Convergence is
    geometric in ``(s_2 / s_1)^2``; when the top two singular values are close it may take
    more than ``max_iters`` iterations, and the last (less accurate) iterate is returned.

    Example:
        >>> A = torch.diag(torch.tensor([3.0, 1.0, 0.5]))
        >>> round(operator_norm_estimate(A), 6)
        3.0
    """
    check_matrix(A, "A")
    if A.ndim != 2:
        raise ValueError(f"A must be a single (m, n) matrix, got shape {tuple(A.shape)}")
    check_positive_int(max_iters, "max_iters")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    A = A.to(torch.float64)
    v = torch.randn(A.shape[1], dtype=A.dtype, device=A.device, generator=generator)
    v /= v.norm()
    est = 0.0
    for _ in range(max_iters):
        w = A.mT @ (A @ v)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0
        # theta <= ||A^T A v|| <= ||A||_op^2; a small step between iterates is no error
        # bound (it can stop far from the norm), the residual is.
        theta = float(v @ w)
        est = norm**0.5
        if float((w - theta * v).norm()) <= tol * theta:
            return est
        v = w / norm
    return est


GRAM_BLOCK = 384  # columns per block of a blocked X^T X; narrower blocks lose matmul speed


def gram_product(X: Tensor, out: Tensor, *, accumulate: bool = False) -> Tensor:
    """``out = X^T X`` (``out += X^T X`` with ``accumulate``) for ``X`` ``(n, d)``. From
    ``d >= 2 * GRAM_BLOCK`` it multiplies column blocks on and above the diagonal only and
    mirrors the rest: ``(b + 1) / 2b`` of the flops for ``b`` blocks, 0.63x the time of one
    matmul at ``16384 x 1536`` (a wide layer's activations).

    Example:
        >>> X = torch.randn(50, 800, dtype=torch.float64)
        >>> torch.allclose(gram_product(X, torch.empty(800, 800, dtype=torch.float64)), X.T @ X)
        True
    """
    d = X.shape[1]
    beta = 1 if accumulate else 0  # beta=0 ignores out, NaN included (an unset buffer)
    blocks = d // GRAM_BLOCK
    if blocks < 2:
        return out.addmm_(X.mT, X, beta=beta)
    edges = [round(i * d / blocks) for i in range(blocks + 1)]
    spans = list(zip(edges[:-1], edges[1:]))
    for i, (a, b) in enumerate(spans):
        for c, e in spans[i:]:
            out[a:b, c:e].addmm_(X[:, a:b].mT, X[:, c:e], beta=beta)
    for i, (a, b) in enumerate(spans):
        for c, e in spans[i + 1 :]:
            out[c:e, a:b] = out[a:b, c:e].mT
    return out


class GramAccumulator:
    """Stream rows of an activation matrix into a float64 ``d x d`` Gram ``A^T A``.

    Float64 chunks are multiplied in float64, others in float32 (each chunk's product
    exact to float32 rounding, ~1e-7 relative per entry) and summed in float64. Memory is
    ``O(d^2)`` whatever the number of rows fed. Rows are samples or tokens and
    columns features, so the activation matrix of the theory (columns = samples) is the
    transpose; its norms are the same.

    Example:
        >>> acc = GramAccumulator(3)
        >>> for chunk in torch.randn(100, 3).split(30):
        ...     _ = acc.update(chunk)
        >>> acc.rows
        100
        >>> 1.0 <= acc.stable_rank() <= 3.0
        True
    """

    def __init__(self, dim: int, *, device=None, workspace: Optional[Workspace] = None):
        self.dim = check_positive_int(dim, "dim")
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.rows = 0
        self.workspace = workspace  # holds the float32 product of each chunk, when given

    def update(self, chunk: Tensor) -> "GramAccumulator":
        """Add rows ``chunk`` of shape ``(rows, dim)`` (or ``(..., dim)``, flattened)."""
        if chunk.ndim < 1 or chunk.shape[-1] != self.dim:
            raise ValueError(f"chunk must have last dim {self.dim}, got shape {tuple(chunk.shape)}")
        X = chunk.detach().reshape(-1, self.dim).to(device=self.gram.device)
        if X.dtype == torch.float64:
            gram_product(X, self.gram, accumulate=True)
        else:
            # float32 activations carry float32 rounding anyway, and a float64 product of
            # the dominant 2 n d^2 flops costs ~3x; the sum over chunks stays float64
            X = X.to(torch.float32)
            self.gram += gram_product(X, buffer(self.workspace, "gram_product", self.gram.shape, X))
        self.rows += X.shape[0]
        return self

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.gram]

    def merge(self, other: "GramAccumulator") -> "GramAccumulator":
        """Add another accumulator's rows (e.g. from another micro-batch or rank)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dim {other.dim} into dim {self.dim}")
        self.gram += other.gram.to(self.gram.device)
        self.rows += other.rows
        return self

    def reset(self) -> None:
        self.gram.zero_()
        self.rows = 0

    def frobenius_sq(self) -> float:
        """``||A||_F^2 = tr(A^T A)``."""
        return float(self.gram.diagonal().sum())

    def operator_sq(self) -> float:
        """``||A||_op^2 = lambda_max(A^T A)``."""
        return float(torch.linalg.eigvalsh(self.gram)[-1].clamp_min(0))

    def stable_rank(self) -> float:
        """``||A||_F^2 / ||A||_op^2`` (0 when nothing nonzero was fed)."""
        op = self.operator_sq()
        return self.frobenius_sq() / op if op > 0 else 0.0
