"""Streaming statistics of incoming activations, one accumulator per monitored block."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..linalg import GramAccumulator


class SketchedActivation:
    """``||A||_F^2`` exactly and ``||A||_op^2`` from a Gaussian row sketch, for layers too
    wide for a ``d x d`` Gram.

    Rows ``x`` of ``A`` (``n x d``) are folded into ``S = Phi A`` with ``Phi`` a ``k x n``
    matrix of independent ``N(0, 1/k)`` entries drawn chunk by chunk, so memory is ``O(k d)``.
    ``E[S^T S] = A^T A``, and ``st(S)`` estimates ``st(A)`` with relative error of order
    ``sqrt(st(A) / k)`` (a subspace embedding of the dominant directions; exact for rank
    one); with the default ``k = 256`` and the small stable ranks of post-activations that
    is a few percent. ``||A||_F^2`` is exact; ``||A||_op^2`` is reported as ``||A||_F^2 / st(S)``.

    Example:
        >>> acc = SketchedActivation(8, sketch_rows=64, generator=torch.Generator().manual_seed(0))
        >>> _ = acc.update(torch.ones(100, 8))
        >>> round(acc.stable_rank(), 6)  # rank one: the sketch keeps it rank one
        1.0
    """

    def __init__(self, dim: int, sketch_rows: int = 256, *, device=None,
                 generator: Optional[torch.Generator] = None):  # fmt: skip
        self.dim = dim
        self.sketch = torch.zeros(sketch_rows, dim, dtype=torch.float64, device=device)
        self.generator = generator
        self._fro_sq = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = 0

    def update(self, chunk: Tensor) -> "SketchedActivation":
        X = chunk.detach().reshape(-1, self.dim).to(self.sketch.device, torch.float64)
        k = self.sketch.shape[0]
        phi = torch.randn(k, X.shape[0], dtype=torch.float64, device="cpu", generator=self.generator)
        self.sketch.addmm_(phi.to(X.device), X, alpha=k**-0.5)
        self._fro_sq += X.square().sum()
        self.rows += X.shape[0]
        return self

    def merge(self, other: "SketchedActivation") -> "SketchedActivation":
        self.sketch += other.sketch
        self._fro_sq += other._fro_sq
        self.rows += other.rows
        return self

    def frobenius_sq(self) -> float:
        return float(self._fro_sq)

    def operator_sq(self) -> float:
        """``||A||_F^2 / st(S)``: the exact Frobenius norm over the sketch's stable rank,
        whose numerator and denominator share the sketch's scale error."""
        s_op_sq = float(torch.linalg.matrix_norm(self.sketch, ord=2)) ** 2
        s_fro_sq = float(self.sketch.square().sum())
        return self.frobenius_sq() * s_op_sq / s_fro_sq if s_fro_sq > 0 else 0.0

    def stable_rank(self) -> float:
        op = self.operator_sq()
        return self.frobenius_sq() / op if op > 0 else 0.0


class TokenCounts:
    """Statistics of the token-indicator matrix of an embedding (one row per token, a one
    in the column of its id): ``A^T A = diag(counts)``, so ``||A||_F^2 = n``,
    ``||A||_op^2 = max count`` and ``st = 1 / p_max``, without a dense one-hot.

    Example:
        >>> tc = TokenCounts(5)
        >>> _ = tc.update(torch.tensor([0, 1, 1, 1, 4]))
        >>> tc.stable_rank()  # 5 tokens, the most frequent appears 3 times
        1.6666666666666667
    """

    def __init__(self, num_embeddings: int, *, device=None):
        self.counts = torch.zeros(num_embeddings, dtype=torch.float64, device=device)
        self.rows = 0

    def update(self, ids: Tensor) -> "TokenCounts":
        flat = ids.detach().reshape(-1).to(self.counts.device)
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).to(torch.float64)
        self.rows += flat.numel()
        return self

    def merge(self, other: "TokenCounts") -> "TokenCounts":
        self.counts += other.counts
        self.rows += other.rows
        return self

    def frobenius_sq(self) -> float:
        return float(self.rows)

    def operator_sq(self) -> float:
        return float(self.counts.max()) if self.rows else 0.0

    def stable_rank(self) -> float:
        op = self.operator_sq()
        return self.rows / op if op > 0 else 0.0


def make_accumulator(kind: str, dim: int, max_dim: int, device=None, seed: int = 0):
    """The right streaming statistic for a block: exact Gram up to ``max_dim`` features,
    a sketch above it, token counts for embeddings."""
    if kind == "embedding":
        return TokenCounts(dim, device=device)
    if dim <= max_dim:
        return GramAccumulator(dim, device=device)
    return SketchedActivation(dim, device=device, generator=torch.Generator().manual_seed(seed))
