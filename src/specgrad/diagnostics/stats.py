"""Streaming statistics of incoming activations, one accumulator per monitored block."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..linalg import GramAccumulator


def top_eigenvalues(mats: Sequence[Tensor], *, max_steps: int = 64, tol: float = 1e-10,
                    direct_below: int = 256) -> list[float]:  # fmt: skip
    """``lambda_max`` of each symmetric positive semi-definite ``(d, d)`` float64 matrix.

    Matrices with ``d <= direct_below`` go to ``eigvalsh``. Larger ones run Lanczos with full
    reorthogonalization, batched over the matrices of one size and device (one Python loop
    for all of them), from a fixed random start (so results are reproducible); a matrix is
    done when its top Ritz pair's residual ``||S y - theta y||`` is at most ``tol * theta``:
    an eigenvalue then lies within ``tol`` relative of ``theta`` (within
    ``tol^2 theta / gap`` when the top is separated by ``gap``, i.e. to rounding).
    Activation Grams have a dominant top eigenvalue, so this takes a few dozen
    matrix-vector products instead of a full ``O(d^3)`` eigendecomposition each; a matrix
    not done after ``max_steps`` steps (a clustered top) goes to ``eigvalsh``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> mats = [X.T @ X for X in torch.randn(3, 400, 300, dtype=torch.float64, generator=g) + 1]
        >>> exact = [float(torch.linalg.eigvalsh(S)[-1]) for S in mats]
        >>> max(abs(t / e - 1) for t, e in zip(top_eigenvalues(mats), exact)) < 1e-12
        True
    """
    return [value for value, _ in _top_pairs(mats, None, max_steps, tol, direct_below, vectors=False)]


def top_eigenpairs(mats: Sequence[Tensor], starts: Optional[Sequence[Optional[Tensor]]] = None, *,
                   max_steps: int = 64, tol: float = 1e-10,
                   direct_below: int = 256) -> list[tuple[float, Tensor]]:  # fmt: skip
    """``(lambda_max, unit top eigenvector)`` of each matrix, as :func:`top_eigenvalues`.

    ``starts[i]`` (a ``(d,)`` vector or ``None``) starts matrix ``i``'s Lanczos run instead of
    the fixed random vector: last step's top eigenvector of a slowly changing matrix (the
    activation Gram of a layer, one sampled step to the next) meets the residual test after
    two or three products instead of a few dozen. The accuracy guarantee is the same.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(500, 300, dtype=torch.float64, generator=g) + 1
        >>> (value, vector), = top_eigenpairs([X.T @ X])
        >>> (again, _), = top_eigenpairs([X.T @ X], [vector])
        >>> abs(again / value - 1) < 1e-12
        True
    """
    return _top_pairs(mats, starts, max_steps, tol, direct_below, vectors=True)


def _top_pairs(mats, starts, max_steps, tol, direct_below, vectors: bool) -> list[tuple[float, Optional[Tensor]]]:
    out: list[Optional[tuple[float, Optional[Tensor]]]] = [None] * len(mats)
    groups: dict[tuple, list[int]] = {}
    for i, S in enumerate(mats):
        if S.ndim != 2 or S.shape[0] != S.shape[1]:
            raise ValueError(f"matrix {i} must be square (d, d), got shape {tuple(S.shape)}")
        if S.shape[0] <= direct_below:
            out[i] = _eigh_top(S, vectors)
        else:
            groups.setdefault((S.shape[0], S.device, S.dtype), []).append(i)
    for (d, _, _), idx in groups.items():
        per_batch = max(1, _BATCH_BYTES // (8 * d * d))  # the stacked copy stays below 64 MiB
        for start in range(0, len(idx), per_batch):
            part = idx[start : start + per_batch]
            batch = mats[part[0]].unsqueeze(0) if len(part) == 1 else torch.stack([mats[i] for i in part])
            q0 = [None if starts is None else starts[i] for i in part]
            for i, top in zip(part, _lanczos_top(batch, q0, max_steps, tol)):
                out[i] = _eigh_top(mats[i], vectors) if top is None else top
    return out  # type: ignore[return-value]


_BATCH_BYTES = 64 * 2**20


def _eigh_top(S: Tensor, vectors: bool) -> tuple[float, Optional[Tensor]]:
    if not vectors:
        return float(torch.linalg.eigvalsh(S)[-1].clamp_min(0)), None
    values, basis = torch.linalg.eigh(S)
    return float(values[-1].clamp_min(0)), basis[:, -1]


def _lanczos_top(S: Tensor, starts: list[Optional[Tensor]], max_steps: int,
                 tol: float) -> list[Optional[tuple[float, Tensor]]]:  # fmt: skip
    """Top Ritz pair of each of the ``B`` matrices of ``S`` ``(B, d, d)`` once its residual
    is below ``tol`` relative, else ``None``."""
    B, d, _ = S.shape
    k = min(max_steps, d)
    fixed = torch.randn(d, dtype=S.dtype, generator=torch.Generator().manual_seed(0)).to(S.device)
    q = torch.stack([fixed if v is None or v.shape != (d,) else v.to(S) for v in starts])
    bad = ~torch.isfinite(q).all(-1) | (q.norm(dim=-1) == 0)
    q = torch.where(bad.unsqueeze(-1), fixed, q)
    q = q / q.norm(dim=-1, keepdim=True)
    Q = S.new_zeros(B, k, d)
    alpha, beta = S.new_zeros(B, k), S.new_zeros(B, k)
    result: list[Optional[tuple[float, Tensor]]] = [None] * B
    for j in range(k):
        Q[:, j] = q
        w = torch.bmm(S, q.unsqueeze(-1)).squeeze(-1)
        alpha[:, j] = (q * w).sum(-1)
        basis = Q[:, : j + 1]
        for _ in range(2):  # full reorthogonalization, twice is enough
            w = w - torch.bmm(basis.mT, torch.bmm(basis, w.unsqueeze(-1))).squeeze(-1)
        b = w.norm(dim=-1)
        if j % 2 == 1 or j == k - 1 or bool((b == 0).any()):
            T = torch.diag_embed(alpha[:, : j + 1])
            T += torch.diag_embed(beta[:, :j], 1) + torch.diag_embed(beta[:, :j], -1)
            theta, vecs = torch.linalg.eigh(T)
            top, residual = theta[:, -1], b * vecs[:, -1, -1].abs()
            ok = ((top > 0) & (residual <= tol * top)).tolist()
            for i, (done, value) in enumerate(zip(ok, top.tolist())):
                if done and result[i] is None:
                    y = vecs[i, :, -1] @ basis[i]
                    result[i] = (value, y / y.norm())
            if all(r is not None for r in result):
                break
        beta[:, j] = b
        # an exhausted Krylov space (b = 0) continues from q = 0, which adds nothing
        q = w / torch.where(b > 0, b, torch.ones_like(b)).unsqueeze(-1)
    return result


class ActivationGram(GramAccumulator):
    """The monitor's exact activation statistic: :class:`~specgrad.linalg.GramAccumulator`
    with ``||A||_op^2`` from :func:`top_eigenvalues` (the monitor batches the blocks of one
    step into one call)."""

    def operator_sq(self) -> float:
        return top_eigenvalues([self.gram])[0]


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

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.sketch, self._fro_sq]

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

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.counts]

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
        return ActivationGram(dim, device=device)
    return SketchedActivation(dim, device=device, generator=torch.Generator().manual_seed(seed))
