"""Streaming Gram accumulation: ``A^T A`` of activation rows fed chunk by chunk, in float64."""

from __future__ import annotations

import math

from typing import Optional

import torch
from torch import Tensor

from .checks import NonFiniteStatisticError, check_positive_int
from .eigen import top_eigenvalues
from .workspace import Workspace, buffer

# -- tuning ------------------------------------------------------------------------------
# Columns per block of a blocked X^T X: narrower blocks lose matmul speed.
GRAM_BLOCK = 384


def gram_product(X: Tensor, out: Tensor, *, accumulate: bool = False) -> Tensor:
    """``out = X^T X`` (``out += X^T X`` with ``accumulate``) for ``X`` ``(n, d)``, ``out``
    ``(d, d)``. From ``d >= 2 * GRAM_BLOCK`` it multiplies column blocks on and above the
    diagonal only and mirrors the rest: ``(b + 1) / 2b`` of the flops for ``b`` blocks.

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

    The norms refuse a Gram that holds NaN or Inf (a non-finite chunk, or entries whose
    squares overflow float32) with :class:`~specgrad.linalg.NonFiniteStatisticError`, which
    names the accumulator by ``name`` (e.g. the layer it measures).

    Example:
        >>> acc = GramAccumulator(3)
        >>> for chunk in torch.randn(100, 3).split(30):
        ...     _ = acc.update(chunk)
        >>> acc.rows
        100
        >>> 1.0 <= acc.stable_rank() <= 3.0
        True
        >>> _ = acc.update(torch.tensor([[float("nan"), 0.0, 0.0]]))
        >>> acc.name = "layer1"
        >>> acc.stable_rank()
        Traceback (most recent call last):
        ...
        specgrad.linalg.checks.NonFiniteStatisticError: activation Gram of 'layer1' is not finite (trace nan) after 101 rows: a chunk held NaN/Inf, or entries too large to square in float32
    """

    def __init__(self, dim: int, *, device=None, workspace: Optional[Workspace] = None, name: str = ""):
        self.dim = check_positive_int(dim, "dim")
        self.name = name
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
            # float32 activations carry float32 rounding anyway, and float64 products of the
            # dominant 2 n d^2 flops cost several times more; the sum over chunks stays float64
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
        fro_sq = float(self.gram.diagonal().sum())
        if not math.isfinite(fro_sq):
            # a NaN or Inf entry of A reaches its column's diagonal entry, so the trace sees it
            where = f"{self.name!r}" if self.name else f"GramAccumulator({self.dim})"
            raise NonFiniteStatisticError(
                f"activation Gram of {where} is not finite (trace {fro_sq}) after {self.rows} rows: "
                "a chunk held NaN/Inf, or entries too large to square in float32"
            )
        return fro_sq

    def operator_sq(self) -> float:
        """``||A||_op^2 = lambda_max(A^T A)`` (see :func:`~specgrad.linalg.top_eigenvalues`)."""
        self.frobenius_sq()  # raises on a non-finite Gram, which the eigensolver would choke on
        return top_eigenvalues([self.gram])[0]

    def stable_rank(self) -> float:
        """``||A||_F^2 / ||A||_op^2`` (0 when nothing nonzero was fed)."""
        fro_sq = self.frobenius_sq()
        op = top_eigenvalues([self.gram])[0]
        return fro_sq / op if op > 0 else 0.0
