"""Top eigenpairs and operator norms: one warm-started, batched Lanczos.

:func:`top_eigenpairs` finds ``(lambda_max, v)`` of symmetric positive semi-definite
operators, given as dense ``(d, d)`` matrices or as row matrices ``A`` standing for
``A^T A`` (:class:`GramOf`, never formed); :func:`operator_norm` is ``||A||_op`` of one
matrix with its top right singular vector. Small operators go to a dense ``eigh`` / SVD,
larger ones to Lanczos, which falls back to the dense factorization when the top is too
clustered to finish in ``MAX_STEPS`` steps: every result is within ``tol`` relative.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .checks import check_matrix, check_range
from .workspace import Workspace, buffer

# -- tuning ------------------------------------------------------------------------------
# Up to this dimension (of the operator; min(m, n) for operator_norm) the dense eigh / SVD
# is used: it is exact, and a few dozen Lanczos steps of a small operator cost as much.
DIRECT_BELOW = 256
# Lanczos steps before an operator falls back to the dense factorization. Activation
# Grams have a dominant top and finish in a few dozen steps (two or three from a warm
# start); one that has not finished by then has a clustered top.
MAX_STEPS = 64
# A GPU eigh of a small matrix costs launches and synchronizations whatever its size: up
# to this size it runs on the host instead.
HOST_EIGH_MAX = 256
# Lanczos steps between residual tests, per device type. A test moves the tridiagonal to
# the host (on a GPU: waits for the device) and runs a dozen small host ops, more than a
# step of a small operator costs; an operator may then run a few steps past the one that
# met the test.
CHECK_EVERY = {"cpu": 3, "cuda": 4}
# On CPU a step that reads more matrix entries than this outweighs a test: tested every step.
CPU_CHEAP_STEP = 2**20


class GramOf(NamedTuple):
    """The operator ``A^T A`` (``(d, d)``) of rows ``A`` ``(n, d)``, never formed: Lanczos
    multiplies by ``A`` and ``A^T`` in ``A``'s dtype, ``4 n d`` flops a step instead of the
    ``2 n d^2`` of forming the Gram.

    Example:
        >>> GramOf(torch.ones(5, 3)).dim
        3
    """

    rows: Tensor

    @property
    def dim(self) -> int:
        return self.rows.shape[-1]


Operator = Union[Tensor, GramOf]


def top_eigenvalues(ops: Sequence[Operator], *, max_steps: int = MAX_STEPS, tol: float = 1e-10,
                    direct_below: int = DIRECT_BELOW, workspace: Optional[Workspace] = None) -> list[float]:  # fmt: skip
    """``lambda_max`` of each symmetric positive semi-definite operator: a ``(d, d)`` matrix
    (float64 for full accuracy), or a :class:`GramOf` rows ``A`` for ``A^T A``.

    Operators with ``d <= direct_below`` go to ``eigvalsh``. Larger ones run Lanczos with
    full reorthogonalization, all those of one size and device in one Python loop, from a
    fixed random start (so results are reproducible); an operator is done when its top Ritz
    pair's residual ``||S y - theta y||`` is at most ``tol * theta``: an eigenvalue then lies
    within ``tol`` relative of ``theta`` (within ``tol^2 theta / gap`` when the top is
    separated by ``gap``, i.e. to rounding). One not done after ``max_steps`` steps (a
    clustered top) goes to ``eigvalsh``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> mats = [X.T @ X for X in torch.randn(3, 400, 300, dtype=torch.float64, generator=g) + 1]
        >>> exact = [float(torch.linalg.eigvalsh(S)[-1]) for S in mats]
        >>> max(abs(t / e - 1) for t, e in zip(top_eigenvalues(mats), exact)) < 1e-12
        True
    """
    return [value for value, _ in _top_pairs(ops, None, max_steps, tol, direct_below, workspace, vectors=False)]


def top_eigenpairs(ops: Sequence[Operator], starts: Optional[Sequence[Optional[Tensor]]] = None, *,
                   max_steps: int = MAX_STEPS, tol: float = 1e-10, direct_below: int = DIRECT_BELOW,
                   workspace: Optional[Workspace] = None) -> list[tuple[float, Tensor]]:  # fmt: skip
    """``(lambda_max, unit top eigenvector (d,))`` of each operator, as :func:`top_eigenvalues`.

    ``starts[i]`` (a ``(d,)`` vector or ``None``) starts operator ``i``'s Lanczos run instead
    of the fixed random vector: last step's top eigenvector of a slowly changing matrix (the
    activation Gram of a layer, one sampled step to the next) meets the residual test after
    two or three products instead of a few dozen. The accuracy guarantee is the same.
    With ``workspace`` (a :class:`~specgrad.linalg.Workspace`) the Lanczos buffers are
    reused from call to call.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(500, 300, dtype=torch.float64, generator=g) + 1
        >>> (value, vector), = top_eigenpairs([X.T @ X])
        >>> (again, _), = top_eigenpairs([GramOf(X)], [vector])  # X^T X, never formed
        >>> abs(again / value - 1) < 1e-12
        True
    """
    return _top_pairs(ops, starts, max_steps, tol, direct_below, workspace, vectors=True)  # type: ignore[return-value]


def operator_norm(A: Tensor, *, start: Optional[Tensor] = None, tol: float = 1e-10) -> tuple[float, Tensor]:
    """``(||A||_op, unit top right singular vector (n,))`` of one ``(m, n)`` matrix, in float64.

    ``min(m, n) <= DIRECT_BELOW``: the exact SVD. Above: Lanczos on ``A^T A`` (never
    formed; see :func:`top_eigenpairs`) from ``start`` (an ``(n,)`` vector, e.g. the vector
    this returned for the previous iterate of a slowly changing matrix) or a fixed random
    vector, so results are reproducible; ``||A||_op`` is then within ``tol / 2`` relative
    (to rounding when the top singular value is separated), and the exact SVD takes over
    when Lanczos does not finish.

    Example:
        >>> A = torch.diag(torch.tensor([3.0, 1.0, 0.5]))
        >>> norm, v = operator_norm(A)
        >>> norm, v.abs().tolist()
        (3.0, [1.0, 0.0, 0.0])
    """
    check_matrix(A, "A")
    if A.ndim != 2:
        raise ValueError(f"A must be a single (m, n) matrix, got shape {tuple(A.shape)}")
    check_range("tol", tol, 0.0, lo_open=True)
    A = A.detach().to(torch.float64)
    m, n = A.shape
    peak = float(A.abs().max()) if A.numel() else 0.0
    if peak == 0:  # every unit vector is a top right singular vector of a zero matrix
        return 0.0, torch.eye(1, n, dtype=torch.float64, device=A.device)[0]
    if min(m, n) > DIRECT_BELOW:
        # scaled by a power of two (exactly) to entries near 1, so that the squares in
        # A^T A and in the norms of its products neither underflow nor overflow
        exponent = math.frexp(peak)[1]
        (top,) = _lanczos_top([A * 2.0**-exponent], n, A.device, [start], MAX_STEPS, tol)
        if top is not None:
            return math.ldexp(math.sqrt(top[0]), exponent), top[1]
    _, s, Vh = torch.linalg.svd(A, full_matrices=False)
    return float(s[0]), Vh[0]


def _top_pairs(ops: Sequence[Operator], starts, max_steps: int, tol: float, direct_below: int,
               workspace: Optional[Workspace], vectors: bool) -> list[tuple[float, Optional[Tensor]]]:  # fmt: skip
    out: list[Optional[tuple[float, Optional[Tensor]]]] = [None] * len(ops)
    groups: dict[tuple, list[int]] = {}
    for i, S in enumerate(ops):
        if isinstance(S, GramOf):
            if S.rows.ndim != 2:
                raise ValueError(f"rows {i} must be a matrix (n, d), got shape {tuple(S.rows.shape)}")
            d, device = S.dim, S.rows.device
        elif S.ndim != 2 or S.shape[0] != S.shape[1]:
            raise ValueError(f"matrix {i} must be square (d, d), got shape {tuple(S.shape)}")
        else:
            d, device = S.shape[0], S.device
        if d <= direct_below:
            out[i] = _eigh_top(S, vectors)
        else:  # dense matrices (stacked, multiplied as one batch) and rows apart
            groups.setdefault((d, device, isinstance(S, Tensor)), []).append(i)
    for (d, device, dense), idx in groups.items():
        q0 = [None if starts is None else starts[i] for i in idx]
        group = [ops[i] for i in idx]
        if not dense:
            op: Union[Tensor, list[Tensor]] = [S.rows for S in group]  # type: ignore[union-attr]
        elif len(group) == 1:
            op = group[0].unsqueeze(0)  # type: ignore[union-attr]
        else:
            op = torch.stack(group, out=buffer(workspace, "lanczos_mats", (len(idx), d, d), group[0]))  # type: ignore[arg-type]
        for i, top in zip(idx, _lanczos_top(op, d, device, q0, max_steps, tol, workspace)):
            out[i] = _eigh_top(ops[i], vectors) if top is None else top
    return out  # type: ignore[return-value]


def _eigh_top(S: Operator, vectors: bool) -> tuple[float, Optional[Tensor]]:
    if isinstance(S, GramOf):
        A = S.rows.to(torch.float64)
        S = A.mT @ A
    device = S.device
    S = S.cpu() if S.shape[0] <= HOST_EIGH_MAX else S
    if not vectors:
        return float(torch.linalg.eigvalsh(S)[-1].clamp_min(0)), None
    values, basis = torch.linalg.eigh(S)
    return float(values[-1].clamp_min(0)), basis[:, -1].to(device)


def _lanczos_top(ops: Union[Tensor, list[Tensor]], d: int, device, starts: Sequence[Optional[Tensor]],
                 max_steps: int, tol: float, workspace: Optional[Workspace] = None,
                 ) -> list[Optional[tuple[float, Tensor]]]:  # fmt: skip
    """Top Ritz pair of each of ``B`` operators on ``R^d`` once its residual is below ``tol``
    relative, else ``None``. ``ops``: ``B`` symmetric float64 matrices ``(B, d, d)``, or a
    list of ``B`` row matrices ``A_i`` ``(n_i, d)`` standing for ``A_i^T A_i`` (multiplied in
    their dtype; stacked into one batch when they share a shape and dtype).

    An operator leaves the batch once done, so the tail of a batch with one slow operator
    (a flat top) costs the steps of that one alone. The tridiagonal ``T`` and its small
    ``eigh`` stay on the host whatever the operators' device; the residual is tested every
    ``CHECK_EVERY`` steps (every step on CPU above ``CPU_CHEAP_STEP``)."""
    B = len(ops)
    k = min(max_steps, d)
    grams = isinstance(ops, Tensor)
    if not grams and len({(A.shape, A.dtype) for A in ops}) == 1:  # one batch (B, n, d)
        ops = ops[0].unsqueeze(0) if B == 1 else \
            torch.stack(ops, out=buffer(workspace, "lanczos_rows", (B, *ops[0].shape), ops[0]))  # fmt: skip
    read = ops.numel() if isinstance(ops, Tensor) else sum(A.numel() for A in ops)
    kind = torch.device(device).type
    check_every = 1 if kind == "cpu" and read > CPU_CHEAP_STEP else CHECK_EVERY.get(kind, CHECK_EVERY["cuda"])
    f64 = dict(dtype=torch.float64, device=device)
    fixed = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    q = torch.stack([fixed if v is None or v.shape != (d,) else v.to(**f64) for v in starts])
    bad = ~torch.isfinite(q).all(-1) | (q.norm(dim=-1) == 0)
    q = torch.where(bad.unsqueeze(-1), fixed, q)
    q = q / q.norm(dim=-1, keepdim=True)
    Q = buffer(workspace, "lanczos_basis", (B, k + 1, d), q)  # row j is written before it is read
    Q[:, 0] = q
    coef = buffer(workspace, "lanczos_coefficients", (B, k, 2), q)  # (alpha_j, b_j) until the next test
    T = buffer(workspace, "lanczos_tridiagonal", (B, k, k), torch.empty(0, dtype=torch.float64))
    tiny = torch.finfo(torch.float64).tiny
    result: list[Optional[tuple[float, Tensor]]] = [None] * B
    live = list(range(B))  # the operators not done, in the order of the batch's rows
    filled = 0  # steps whose coefficients are in T
    for j in range(k):
        w = _apply(ops, Q[:, j : j + 1], grams)
        basis = Q[:, : j + 1]
        # full reorthogonalization by classical Gram-Schmidt, twice (enough), as row-vector
        # products: two launches a pass; the first projection on q_j is alpha_j
        h = torch.bmm(w, basis.mT)
        coef[:, j, 0] = h[:, 0, j]
        w.baddbmm_(h, basis, alpha=-1)
        w.baddbmm_(torch.bmm(w, basis.mT), basis, alpha=-1)
        w = w.squeeze(1)
        b = torch.linalg.vector_norm(w, dim=-1, out=coef[:, j, 1])
        # an exhausted Krylov space (b = 0, so w = 0) continues from q = 0, which adds nothing
        torch.div(w, b.clamp_min(tiny).unsqueeze(-1), out=Q[:, j + 1])
        if (j + 1) % check_every and j + 1 < k:
            continue
        # rows filled..j of T's lower half (what eigh reads): alpha on the diagonal, the
        # previous step's b left of it
        lo = max(filled - 1, 0)
        new = coef[:, lo : j + 1].cpu()
        T[:, filled : j + 1, : j + 1].zero_()
        T.diagonal(dim1=1, dim2=2)[:, filled : j + 1] = new[:, filled - lo :, 0]
        T.diagonal(-1, dim1=1, dim2=2)[:, lo:j] = new[:, : j - lo, 1]
        filled = j + 1
        theta, vecs = torch.linalg.eigh(T[:, : j + 1, : j + 1])
        top = theta[:, -1]
        done = ((top > 0) & (new[:, -1, 1] * vecs[:, -1, -1].abs() <= tol * top)).tolist()
        if any(done):
            rows = [r for r, x in enumerate(done) if x]
            # the Ritz vectors of the operators done, in one product
            Y = torch.bmm(vecs[rows, :, -1].unsqueeze(1).to(device), basis[rows]).squeeze(1)
            Y /= torch.linalg.vector_norm(Y, dim=-1, keepdim=True)
            for r, y in zip(rows, Y):
                result[live[r]] = (float(top[r]), y)
            keep = [r for r, x in enumerate(done) if not x]
            if not keep:
                break
            live = [live[r] for r in keep]
            ops = _front(ops, keep) if isinstance(ops, Tensor) else [ops[r] for r in keep]
            Q, T, coef = _front(Q, keep), _front(T, keep), _front(coef, keep)
    return result


def _apply(ops: Union[Tensor, list[Tensor]], x: Tensor, grams: bool) -> Tensor:
    """``x S_i`` for each operator: ``x`` ``(B, 1, d)`` float64 rows; ``ops`` symmetric
    ``(B, d, d)`` (``grams``: a row vector times the matrix, on CPU several times faster than
    the matrix times a column) or row matrices ``A_i``, stacked ``(B, n, d)`` or a list, for
    ``S_i = A_i^T A_i`` (multiplied in their dtype)."""
    if grams:
        return torch.bmm(x, ops)  # type: ignore[arg-type]
    if isinstance(ops, Tensor):
        return torch.bmm(torch.bmm(x.to(ops.dtype), ops.mT), ops).to(x.dtype)
    return torch.stack([(x_i.to(A.dtype) @ A.mT @ A).to(x.dtype) for A, x_i in zip(ops, x)])


def _front(x: Tensor, keep: list[int]) -> Tensor:
    """The rows ``keep`` (ascending) of ``x``, moved to its front in place: no new buffer."""
    for new, old in enumerate(keep):
        if new != old:
            x[new].copy_(x[old])
    return x[: len(keep)]
