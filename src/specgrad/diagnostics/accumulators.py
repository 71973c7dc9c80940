"""Streaming statistics of incoming activations, one accumulator per monitored block.

Each has ``update``, ``merge``, ``reset``, ``state`` (the tensors a sum over ranks
reduces), ``rows``, ``frobenius_sq()`` (``||A||_F^2``), ``operator_sq()`` (``||A||_op^2``)
and ``stable_rank()``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..linalg import (GramAccumulator, GramOf, NonFiniteStatisticError, Workspace, check_positive_int, operator_norm,
                      top_eigenvalues)
from ..linalg.eigen import DIRECT_BELOW


def check_finite(fro_sq: float, acc) -> None:
    """Raise :class:`~specgrad.linalg.NonFiniteStatisticError` unless ``||A||_F^2`` of
    accumulator ``acc`` is finite: a NaN or Inf entry of ``A`` always reaches it."""
    if not math.isfinite(fro_sq):
        raise NonFiniteStatisticError(f"{type(acc).__name__}({acc.dim}): ||A||_F^2 = {fro_sq} after {acc.rows} rows; "
                                      "the activations held NaN or Inf")  # fmt: skip


def frobenius_sq_or_nan(stats) -> float:
    """``stats.frobenius_sq()``, NaN where it is not finite (for a caller that names the block)."""
    try:
        return stats.frobenius_sq()
    except NonFiniteStatisticError:
        return math.nan


def check_blocks(names: list[str], what: str, step: int, cause: Optional[BaseException] = None) -> None:
    """Raise :class:`~specgrad.linalg.NonFiniteStatisticError` naming the blocks ``names`` whose
    ``what`` (``"activation"`` or ``"gradient"``) statistic is not finite, if there are any.

    Example:
        >>> check_blocks(["fc1", "fc2"], "gradient", 7)
        Traceback (most recent call last):
        ...
        specgrad.linalg.checks.NonFiniteStatisticError: non-finite gradient at step 7 in block(s) 'fc1', 'fc2': NaN or Inf; nothing was recorded for this step
    """
    if not names:
        return
    listed = ", ".join(map(repr, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    why = "NaN or Inf" + (" (or entries too large to square in float32)" if what == "activation" else "")
    raise NonFiniteStatisticError(f"non-finite {what} at step {step} in block(s) {listed}: {why}; "
                                  "nothing was recorded for this step") from cause  # fmt: skip


class ActivationGram:
    """``||A||_F^2`` and ``||A||_op^2`` of the rows streamed in (``A``: ``n x d``), exactly,
    in memory ``O(d^2)``: the monitor's statistic for blocks up to ``max_dim`` wide.

    While the rows fit in the bytes of the float64 Gram (``2 d`` rows of float32, ``d`` of
    float64) they are kept as they are: Lanczos on ``v -> A^T (A v)`` costs ``4 n d`` flops
    a step instead of the ``2 n d^2`` of forming ``A^T A`` (the wide MLP-output layer on a
    small batch). Past that they fold into a :class:`~specgrad.linalg.GramAccumulator`
    (float64 sums of float32 products).

    ``update(chunk, borrow=True)`` keeps a reference instead of a copy: for the monitor's
    forward hooks, whose chunk is alive and unchanged until backward anyway, where
    :meth:`merge` copies it into the accumulator that outlives the step. Buffers survive
    :meth:`reset`, so a monitor's sampled steps reuse them instead of allocating (on CPU,
    each fresh page costs a fault). Products go through ``workspace`` (a
    :class:`~specgrad.linalg.Workspace`, shared by accumulators) when given.

    Example:
        >>> acc = ActivationGram(4)
        >>> _ = acc.update(torch.ones(3, 4))  # 3 <= 8 float32 rows: kept, not multiplied
        >>> acc.kept.shape, round(acc.frobenius_sq(), 5), round(acc.operator_sq(), 5)
        (torch.Size([3, 4]), 12.0, 12.0)
        >>> _ = acc.update(torch.ones(6, 4))  # 9 rows: folded into the Gram
        >>> acc.kept is None, acc.stable_rank()
        (True, 1.0)
    """

    def __init__(self, dim: int, *, device=None, workspace: Optional[Workspace] = None):
        self.dim = check_positive_int(dim, "dim")
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.workspace = workspace
        self.rows = 0
        self._borrowed: list[Tensor] = []
        self._rows_buf: Optional[Tensor] = None  # (capacity, dim): kept rows, a prefix of it
        self._n_kept = 0
        self._acc: Optional[GramAccumulator] = None
        self._folded = False  # whether _acc holds this step's rows (else it is stale)

    # -- streaming ---------------------------------------------------------------------------
    def update(self, chunk: Tensor, *, borrow: bool = False) -> "ActivationGram":
        """Add rows ``chunk`` ``(rows, dim)`` (or ``(..., dim)``, flattened)."""
        if chunk.ndim < 1 or chunk.shape[-1] != self.dim:
            raise ValueError(f"chunk must have last dim {self.dim}, got shape {tuple(chunk.shape)}")
        X = chunk.detach().reshape(-1, self.dim).to(self.device)
        X = X if X.dtype == torch.float64 else X.to(torch.float32)
        if borrow:
            self._borrowed.append(X)
        elif (not self._folded and self._n_kept + X.shape[0] <= self.capacity(X.dtype)
              and (self._n_kept == 0 or self._rows_buf.dtype == X.dtype)):  # type: ignore[union-attr]  # fmt: skip
            if self._rows_buf is None or self._rows_buf.dtype != X.dtype:
                self._rows_buf = torch.empty(self.capacity(X.dtype), self.dim, dtype=X.dtype, device=self.device)
            self._rows_buf[self._n_kept : self._n_kept + X.shape[0]].copy_(X)
            self._n_kept += X.shape[0]
        else:
            self._fold()
            self._acc.update(X)  # type: ignore[union-attr]
        self.rows += X.shape[0]
        return self

    def capacity(self, dtype: torch.dtype) -> int:
        """How many rows of ``dtype`` are kept: as many as fill the bytes of the float64 Gram."""
        return 8 * self.dim // dtype.itemsize

    def _fold(self) -> None:
        if not self._folded:
            if self._acc is None:
                self._acc = GramAccumulator(self.dim, device=self.device, workspace=self.workspace)
            else:
                self._acc.reset()
            self._folded = True
        kept = [self._rows_buf[: self._n_kept]] if self._n_kept else []  # type: ignore[index]
        self._n_kept = 0
        borrowed, self._borrowed = self._borrowed, []
        for X in kept + borrowed:
            self._acc.update(X)  # type: ignore[union-attr]

    def merge(self, other: "ActivationGram") -> "ActivationGram":
        """Add another accumulator's rows (another micro-batch's or rank's), copying what it
        borrowed."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dim {other.dim} into dim {self.dim}")
        pieces = ([other._rows_buf[: other._n_kept]] if other._n_kept else []) + other._borrowed  # type: ignore[index]
        if other._folded:
            self._fold()
            self._acc.merge(other._acc)  # type: ignore[union-attr, arg-type]
            self.rows += other.rows - sum(X.shape[0] for X in pieces)
        for X in pieces:
            self.update(X)
        return self

    def _settle(self) -> None:
        """Take borrowed rows in (copied or folded)."""
        borrowed, self._borrowed = self._borrowed, []
        self.rows -= sum(X.shape[0] for X in borrowed)
        for X in borrowed:
            self.update(X)

    def reset(self) -> None:
        """Forget all rows; buffers are kept for the next ones."""
        self.rows, self._n_kept, self._borrowed, self._folded = 0, 0, [], False

    # -- results -----------------------------------------------------------------------------
    @property
    def kept(self) -> Optional[Tensor]:
        """The rows themselves ``(rows, dim)`` while they are kept, else ``None``."""
        self._settle()
        return None if self._folded or not self._n_kept else self._rows_buf[: self._n_kept]  # type: ignore[index]

    @property
    def gram(self) -> Tensor:
        """``A^T A`` in float64 ``(dim, dim)`` (kept rows are folded in for good)."""
        self._settle()
        self._fold()
        return self._acc.gram  # type: ignore[union-attr]

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.gram]

    def frobenius_sq(self) -> float:
        """``||A||_F^2``: the Gram's trace plus the kept rows' squares."""
        A = self.kept
        kept = float(torch.linalg.vector_norm(A)) ** 2 if A is not None else 0.0  # no temporary
        return kept + (self._acc.frobenius_sq() if self._folded else 0.0)  # type: ignore[union-attr]

    def operator(self, direct_below: int = DIRECT_BELOW) -> Union[Tensor, GramOf]:
        """``A^T A`` as :func:`~specgrad.linalg.top_eigenpairs` reads it: the kept rows
        (:class:`~specgrad.linalg.GramOf`, never multiplied out) while there are any and
        ``dim > direct_below``; else the Gram (kept rows folded in for good), whose top
        eigenpair of a small ``dim`` comes cheaper from ``eigh``."""
        A = self.kept
        return self.gram if self.dim <= direct_below or A is None else GramOf(A)

    def operator_sq(self) -> float:
        """``||A||_op^2 = lambda_max(A^T A)`` (see :func:`~specgrad.linalg.top_eigenvalues`);
        :class:`~specgrad.linalg.NonFiniteStatisticError` if the rows held NaN or Inf."""
        if not self.rows:
            return 0.0
        check_finite(self.frobenius_sq(), self)
        return top_eigenvalues([self.operator()])[0]

    def stable_rank(self) -> float:
        """``||A||_F^2 / ||A||_op^2`` (0 when nothing nonzero was fed)."""
        op = self.operator_sq()
        return self.frobenius_sq() / op if op > 0 else 0.0


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
        self.device = self.sketch.device
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

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.sketch, self._fro_sq]

    def reset(self) -> None:
        self.sketch.zero_()
        self._fro_sq.zero_()
        self.rows = 0

    def frobenius_sq(self) -> float:
        return float(self._fro_sq)

    def operator_sq(self) -> float:
        """``||A||_F^2 / st(S)``: the exact Frobenius norm over the sketch's stable rank,
        whose numerator and denominator share the sketch's scale error."""
        check_finite(self.frobenius_sq(), self)
        s_fro_sq = float(self.sketch.square().sum())
        if not s_fro_sq > 0:
            return 0.0
        return self.frobenius_sq() * operator_norm(self.sketch)[0] ** 2 / s_fro_sq

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
        self.device = self.counts.device
        self.rows = 0

    def update(self, ids: Tensor) -> "TokenCounts":
        flat = ids.detach().reshape(-1).to(self.counts.device)
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).to(torch.float64)
        self.rows += flat.numel()
        return self

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.counts]

    def merge(self, other: "TokenCounts") -> "TokenCounts":
        self.counts += other.counts
        self.rows += other.rows
        return self

    def reset(self) -> None:
        self.counts.zero_()
        self.rows = 0

    def frobenius_sq(self) -> float:
        return float(self.rows)

    def operator_sq(self) -> float:
        return float(self.counts.max()) if self.rows else 0.0

    def stable_rank(self) -> float:
        op = self.operator_sq()
        return self.rows / op if op > 0 else 0.0


def make_accumulator(kind: str, dim: int, max_dim: int, device=None, seed: int = 0,
                     workspace: Optional[Workspace] = None, sketch_rows: int = 256):  # fmt: skip
    """The right streaming statistic for a block: exact Gram up to ``max_dim`` features,
    a sketch of ``sketch_rows`` rows (drawn from ``seed``) above it, token counts for
    embeddings."""
    if kind == "embedding":
        return TokenCounts(dim, device=device)
    if dim <= max_dim:
        return ActivationGram(dim, device=device, workspace=workspace)
    return SketchedActivation(dim, sketch_rows, device=device, generator=torch.Generator().manual_seed(seed))
