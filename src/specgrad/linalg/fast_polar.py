"""Orthogonalization, the fast path: the iteration of :func:`specgrad.linalg.newton_schulz`
as the optimizers run it.

Same polynomials, same normalization (up to rounding), computed for speed:

* lists of matrices are batched by shape (tall ones transposed to batch with wide ones),
  read once into one normalized stack (:func:`stack_normalized`);
* products are fused multiply-adds into preallocated buffers, reused from call to call
  with a :class:`~specgrad.linalg.Workspace`;
* the loop may run in half precision (``dtype``), with norms summed where they cannot
  overflow;
* ``norm="schatten8"`` divides by ``(sum sigma^8)^(1/8)``, read off the first step's ``A^2``;
* ``gram=True`` iterates on the ``m x m`` Gram matrix (Gram Newton-Schulz).

``tests/test_linalg_fast_polar.py`` checks every entry point against the reference loop.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Optional, Sequence

import torch
from torch import Tensor

from .checks import FLOAT_DTYPES, check_floating, check_positive_int, working_dtype
from .coefficients import QuinticSchedule, ScheduleLike, schedule_for
from .polar import DEFAULT_STEPS, METHODS, check_gram, check_norm, polar_svd
from .workspace import Workspace, buffer

# ---------------------------------------------------------------------- tuning constants
#
# NORM_CHUNK: float64 temporaries of at most this many elements (8 MiB). A float64 norm of
# a float32 matrix (``vector_norm(..., dtype=float64)``) first casts the whole input; a
# cast copy above the allocator's mmap threshold (32 MiB in glibc) is page-faulted in
# afresh on every call on CPU, while chunks of this size are reused from the heap.
NORM_CHUNK = 1 << 20
# FLOAT32_SAFE_NORMS: a float32-accumulated norm in this range has its sum of squares far
# inside float32's normal range: no overflow, and entries small enough to underflow cannot
# matter. Norms outside it are redone in float64.
FLOAT32_SAFE_NORMS = (1e-15, 1e15)
# GRAM_RESTART: a Gram-form run (``_gram_loop``) is rebuilt from the matrix after every
# second step: half-precision rounding of ``R = X X^T`` is amplified by the steep
# polynomials, and left alone for longer it grows spurious eigenvalues of ``R`` that diverge.
GRAM_RESTART = 2
# GRAM_AUTO_ASPECT: aspect ratio ``r = n / m`` from which ``gram="auto"`` iterates on the
# Gram matrix. 5 steps cost ``(10 r + 5) m^3`` multiply-adds in the matrix form and
# ``(6 r + 11) m^3`` in the Gram form with its restarts, equal at ``r = 1.5``; from 2 on the
# saving (over 10%) is clear of the extra kernel launches.
GRAM_AUTO_ASPECT = 2.0


def orthogonalize_many(mats: Sequence[Tensor], method: str = "newton_schulz", steps: int = DEFAULT_STEPS, *,
                       coefficients: ScheduleLike = "jordan", lower: float = 1e-3,
                       dtype: Optional[torch.dtype] = None, norm: str = "frobenius", gram=False,
                       workspace: Optional[Workspace] = None) -> list[Tensor]:  # fmt: skip
    """:func:`~specgrad.linalg.orthogonalize` of each 2-D matrix of ``mats``, batching equal
    shapes (a tall matrix is transposed so it batches with the wide ones of its transpose's
    shape). Arguments as for :func:`~specgrad.linalg.orthogonalize`; ``"svd"`` ignores all
    but ``method``. With a ``workspace`` the results are views of its buffers, valid until
    its next use with the same shapes.

    Example:
        >>> mats = [torch.randn(4, 6), torch.randn(6, 4), torch.randn(3, 3)]
        >>> [tuple(O.shape) for O in orthogonalize_many(mats, "polar_express", 5)]
        [(4, 6), (6, 4), (3, 3)]
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if dtype is not None:
        check_floating(dtype, "dtype")
    for i, x in enumerate(mats):
        if x.dtype not in FLOAT_DTYPES:
            check_floating(x.dtype, f"mats[{i}]", what="a floating tensor, got dtype")
    if method != "svd":
        schedule = schedule_for(method, steps, coefficients=coefficients, lower=lower)
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, x in enumerate(mats):
        m, n = x.shape
        by_shape[(min(m, n), max(m, n), x.dtype, x.device)].append(i)
    out: list[Tensor] = [None] * len(mats)  # type: ignore[list-item]
    for idx in by_shape.values():
        tall = [mats[i].shape[0] > mats[i].shape[1] for i in idx]
        wide = [mats[i].mT if t else mats[i] for i, t in zip(idx, tall)]
        if method == "svd":
            O = polar_svd(wide[0].unsqueeze(0) if len(wide) == 1 else torch.stack(wide))
        else:
            O = quintic_iteration_many(wide, schedule, steps, dtype=dtype, norm=norm, gram=gram, workspace=workspace)
        for k, (i, t) in enumerate(zip(idx, tall)):
            out[i] = O[k].mT if t else O[k]
    return out


def quintic_iteration(G: Tensor, schedule: QuinticSchedule, steps: int, *, dtype: Optional[torch.dtype] = None,
                      norm: str = "frobenius", gram=False) -> Tensor:  # fmt: skip
    """:func:`~specgrad.linalg.newton_schulz` of ``(..., m, n)`` ``G``, with the options of
    the fast path.

    The iteration runs on the wide orientation (``m <= n``) with fused multiply-adds
    (``addmm``/``baddbmm``) into preallocated buffers.

    ``norm`` picks the upper bound of ``sigma_max`` that ``G`` is divided by:
    ``"frobenius"`` (``||G||_F``, as ``torch.optim.Muon``) or ``"schatten8"``
    (``(sum sigma^8)^(1/8) = ||(G G^T)^2||_F^(1/4)``, read off the ``A^2`` the first step
    computes anyway, so free). The Schatten-8 norm sits much closer to ``sigma_max``
    (within ``r^(1/8)`` for rank ``r``, against ``r^(1/2)``), so small singular values start
    larger and fewer steps reach the same accuracy.

    ``gram``: iterate on the ``m x m`` Gram matrix ``R = X X^T`` and apply the accumulated
    ``m x m`` polynomial to ``X`` only at restarts and at the end (Gram Newton-Schulz;
    Amsel, Chen & Dao, 2026), restarting from the matrix every ``GRAM_RESTART`` steps for
    stability in half precision. It saves ~20% of the flops on a 4:1 matrix and none on a
    square one. ``"auto"`` uses it when ``n >= GRAM_AUTO_ASPECT * m``, ``True`` always,
    ``False`` (default) never. In half precision it amplifies rounding more than the
    matrix form; keep it to schedules with a margin (Jordan's, or Polar Express with
    ``safety >= 1.03``).

    A tall ``G`` is normalized in its own layout and then copied once into a contiguous wide
    buffer, so its result is exactly the transpose of the wide computation.

    Example:
        >>> from specgrad.linalg import newton_schulz, polar_express_schedule
        >>> G, sched = torch.randn(2, 16, 40, dtype=torch.float64), polar_express_schedule(5)
        >>> fast = quintic_iteration(G, sched, 5, gram=True)
        >>> torch.allclose(fast, newton_schulz(G, sched, 5), rtol=0, atol=1e-10)
        True
    """
    check_positive_int(steps, "steps")
    check_norm(norm)
    check_floating(G.dtype, "G", what="a floating tensor, got dtype")
    if dtype is not None:
        check_floating(dtype, "dtype")
    if G.numel() == 0:
        return torch.zeros_like(G)
    out_dtype = G.dtype
    tall = G.shape[-2] > G.shape[-1]
    X = G.mT if tall else G
    batch_shape = X.shape[:-2]
    X = normalize_spectrum(X.reshape(-1, *X.shape[-2:]), schedule.normalization_safety, dtype)
    X = _iterate(X.contiguous(), schedule, steps, norm, gram, None)
    X = X.reshape(*batch_shape, *X.shape[-2:])
    return (X.mT if tall else X).to(out_dtype)


def quintic_iteration_many(mats: Sequence[Tensor], schedule: QuinticSchedule, steps: int, *,
                           dtype: Optional[torch.dtype] = None, norm: str = "frobenius", gram=False,
                           workspace: Optional[Workspace] = None) -> Tensor:  # fmt: skip
    """:func:`quintic_iteration` of equal-shape wide matrices (``m <= n``; views welcome, or
    one ``(B, m, n)`` tensor), returned stacked ``(len(mats), m, n)`` in their dtype; the
    batch is built normalized by :func:`stack_normalized`, so the inputs are read once.
    With a ``workspace`` every buffer, the result included, is reused from (and left in) it.
    """
    check_positive_int(steps, "steps")
    check_norm(norm)
    if mats[0].dtype not in FLOAT_DTYPES:
        check_floating(mats[0].dtype, "mats[0]", what="a floating tensor, got dtype")
    m, n = mats[0].shape
    if m > n:
        raise ValueError(f"matrices must be wide (m <= n), got {m} x {n}; pass their transposes")
    like = mats[0]
    work = like.dtype if dtype is None else dtype
    X = stack_normalized(mats, schedule.normalization_safety, dtype,
                         out=buffer(workspace, "X", (len(mats), m, n), like, work))  # fmt: skip
    X = _iterate(X, schedule, steps, norm, gram, workspace)
    return X if X.dtype == like.dtype else buffer(workspace, "out", X.shape, like).copy_(X)


def use_gram(gram, m: int, n: int) -> bool:
    """Whether ``gram`` (``True``, ``False`` or ``"auto"``) iterates an ``m x n`` matrix
    (``m <= n``) in Gram form."""
    check_gram(gram)
    return n >= GRAM_AUTO_ASPECT * m if gram == "auto" else gram


# ----------------------------------------------------------------------- normalization


def normalize_spectrum(G: Tensor, safety: float = 1.0, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``G / (safety * ||G||_F)`` per matrix, so every singular value is at most ``1/safety``.

    The norm is accumulated in float64 (in float32 where that cannot overflow or underflow
    and ``dtype`` is not float64), so entries as large as 1e150 or as small as 1e-150
    neither overflow nor underflow; a zero matrix stays zero. Returns a new tensor in
    ``dtype`` (default ``G.dtype``).

    Example:
        >>> X = normalize_spectrum(torch.full((2, 3), 1e30), dtype=torch.bfloat16)
        >>> X.dtype, round(float(torch.linalg.matrix_norm(X.double())), 2)
        (torch.bfloat16, 1.0)
    """
    dtype = G.dtype if dtype is None else dtype
    scale = inverse_norms(G.reshape(-1, *G.shape[-2:]), safety, dtype).reshape(*G.shape[:-2], 1, 1)
    if G.dtype in (torch.float64, torch.float32):
        return (G * scale).to(dtype)
    return G.to(torch.float32).mul_(scale).to(dtype)


def stack_normalized(mats: Sequence[Tensor], safety: float = 1.0, dtype: Optional[torch.dtype] = None, *,
                     out: Optional[Tensor] = None) -> Tensor:  # fmt: skip
    """``torch.stack([normalize_spectrum(x, safety, dtype) for x in mats])``, written in one
    pass per matrix straight into the stacked buffer ``out`` (allocated when None; views
    such as transposes are fine; a ``(B, m, n)`` batch is scaled in one pass), instead of a
    stacked copy in the input dtype, a scaled copy and a cast: two fewer passes over the
    memory of every matrix. Equal up to the summation order of float32 norms.

    Example:
        >>> mats = [torch.randn(3, 5), torch.randn(5, 3).mT]
        >>> torch.allclose(stack_normalized(mats, 1.01), normalize_spectrum(torch.stack(mats), 1.01))
        True
    """
    first = mats[0]
    if out is None:
        out = torch.empty(len(mats), *first.shape, dtype=first.dtype if dtype is None else dtype, device=first.device)
    scales = inverse_norms(mats, safety, out.dtype)
    if isinstance(mats, Tensor) and mats.dtype in (torch.float64, torch.float32):  # a batch: one launch
        return torch.mul(mats, scales.view(-1, 1, 1), out=out)
    if first.device.type != "cpu" and all(x.dtype in (torch.float64, torch.float32) for x in mats):
        # two launches instead of one per matrix; the scaled copies cost nothing to allocate
        # on a GPU (they would fault their pages in on every call on CPU)
        return torch.stack(torch._foreach_mul(list(mats), list(scales.unbind())), out=out)
    for k, x in enumerate(mats):
        scale = scales[k]
        if x.dtype in (torch.float64, torch.float32):
            torch.mul(x, scale, out=out[k])
        else:
            out[k].copy_(x.to(torch.float32).mul_(scale))
    return out


def inverse_norms(mats, safety: float, target: torch.dtype) -> Tensor:
    """``1 / (safety ||G||_F)`` of each matrix of a list or ``(B, m, n)`` batch, ``(B,)``, in
    the dtype the matrices are scaled in on their way to ``target``.

    Float64 for float64 input, else float32 (its range holds any 1/||G||_F of a
    float32/float16/bfloat16 matrix with a normal entry); the product is rounded once to
    ``target``. The clamp keeps the scale finite: a zero matrix (1/0 = inf, and 0 * inf is
    NaN) gets the largest finite scale and stays zero; a matrix of float32 subnormals is
    scaled up as far as float32 allows (finite, norm short of 1) instead of to inf.
    """
    norm = frobenius_norms(mats, target)
    if safety != 1.0:
        norm = norm * safety
    scale_dtype = torch.float64 if mats[0].dtype == torch.float64 else torch.float32
    return norm.reciprocal().clamp_max(torch.finfo(scale_dtype).max).to(scale_dtype)


def frobenius_norms(mats, target: torch.dtype) -> Tensor:
    """Frobenius norms of a list (or a ``(B, m, n)`` batch) of matrices, ``(B,)`` float64,
    for scaling them into ``target``. Unless that is float64, float32 and lower inputs are
    summed in float32 by one fused ``_foreach_norm`` without temporaries (a float64 cast of
    every matrix would be page-faulted in on every optimizer step on CPU), exact to float32
    rounding; norms outside ``FLOAT32_SAFE_NORMS`` are redone in float64 (one host sync)."""
    if target == torch.float64 or mats[0].dtype == torch.float64:
        if isinstance(mats, Tensor):
            return frobenius_norm64(mats).flatten()
        return torch.stack([frobenius_norm64(x).reshape(()) for x in mats])
    norms = torch.stack(torch._foreach_norm(list(mats), 2, dtype=torch.float32)).double()
    lo, hi = FLOAT32_SAFE_NORMS
    unsafe = ((norms < lo) | (norms > hi) | norms.isnan()).nonzero().flatten().tolist()
    for i in unsafe:
        norms[i] = frobenius_norm64(mats[i]).reshape(())
    return norms


def frobenius_norm64(G: Tensor) -> Tensor:
    """Frobenius norm of each matrix of ``(..., m, n)`` ``G`` in float64, shape ``(..., 1, 1)``,
    cast to float64 in chunks of ``NORM_CHUNK`` elements."""
    if G.numel() <= NORM_CHUNK or G.dtype == torch.float64:  # no cast copy to chunk
        return torch.linalg.vector_norm(G, dim=(-2, -1), keepdim=True, dtype=torch.float64)
    m, n = G.shape[-2:]
    X = G.reshape(-1, m, n)
    if m * n <= NORM_CHUNK:  # whole matrices per chunk
        per_batch, rows = max(1, NORM_CHUNK // (m * n)), m
    else:  # blocks of rows of one matrix per chunk
        per_batch, rows = 1, max(1, NORM_CHUNK // n)
    sq = torch.zeros(X.shape[0], 1, 1, dtype=torch.float64, device=G.device)
    for i in range(0, X.shape[0], per_batch):
        for j in range(0, m, rows):
            part = X[i : i + per_batch, j : j + rows]
            sq[i : i + per_batch] += torch.linalg.vector_norm(
                part, dim=(-2, -1), keepdim=True, dtype=torch.float64
            ).square()
    return sq.sqrt().reshape(*G.shape[:-2], 1, 1)


# --------------------------------------------------------------------------- the loops


def _iterate(X: Tensor, schedule: QuinticSchedule, steps: int, norm: str, gram, ws: Optional[Workspace]) -> Tensor:
    """Quintic steps on a normalized contiguous ``(B, m, n)`` batch with ``m <= n``; the
    result may be ``X`` itself or a workspace buffer. ``B == 1`` uses the 2-D kernels
    (``mm``/``addmm``), which skip the batched dispatch."""
    B, m, n = X.shape
    loop = _gram_loop if use_gram(gram, m, n) else _matrix_loop
    safety = schedule.normalization_safety if norm == "schatten8" else None
    return loop(X[0] if B == 1 else X, schedule.steps(steps), safety, ws).reshape(B, m, n)


def _kernels(X: Tensor):
    """``(mm, accumulate_)`` for 2-D or batched 3-D operands."""
    if X.ndim == 2:
        return torch.mm, Tensor.addmm_
    return torch.bmm, Tensor.baddbmm_


def _rescale_schatten8(X: Tensor, A: Tensor, A2: Tensor, safety: float) -> None:
    """Scale ``X`` in place by ``s = 1 / (safety ||A^2||_F^(1/4))`` and ``A = X X^T``,
    ``A2 = A^2`` to match: then ``sigma_max(X) <= 1 / safety``, as after ``G / ||G||_F``."""
    # ||A^2||_F^(1/4) = (sum sigma^8)^(1/8) lies in [sigma_max, ||X||_F] and ||X||_F <= 1, so
    # s >= 1; the upper clamp (1/sigma_max <= sqrt(m) for a Frobenius-normalized X) keeps a
    # zero matrix finite.
    norm = torch.linalg.vector_norm(A2, dim=(-2, -1), keepdim=True, dtype=working_dtype(A2.dtype))
    s = (norm.pow(0.25) * safety).reciprocal().clamp(1.0, math.sqrt(A.shape[-1]) * safety)
    X.mul_(s.to(X.dtype))
    A.mul_(s.square().to(A.dtype))
    A2.mul_(s.pow(4).to(A2.dtype))


def _matrix_loop(X: Tensor, triples, safety: Optional[float], ws: Optional[Workspace]) -> Tensor:
    """Matrix form: per step ``4 m^2 n + 2 m^3`` flops, no allocations beyond ``ws``."""
    mm, accumulate_ = _kernels(X)
    gram_shape = (*X.shape[:-1], X.shape[-2])
    A, P = buffer(ws, "A", gram_shape, X), buffer(ws, "P", gram_shape, X)
    Y = buffer(ws, "Y", X.shape, X)
    for k, (a, b, c) in enumerate(triples):
        mm(X, X.mT, out=A)
        if k == 0 and safety is not None:
            _rescale_schatten8(X, A, mm(A, A, out=P), safety)
            P.mul_(c).add_(A, alpha=b)
        else:
            # copy, then accumulate in place: baddbmm(..., out=) computes into a fresh tensor
            accumulate_(P.copy_(A), A, A, beta=b, alpha=c)
        # a X stays outside P: a half-precision diagonal a + P_ii would scale each row of X
        # by its own rounding error, a coherent error ~sqrt(m) times larger than rounding Y
        accumulate_(Y.copy_(X), P, X, beta=a)
        X, Y = Y, X
    return X


def _gram_loop(X: Tensor, triples, safety: Optional[float], ws: Optional[Workspace]) -> Tensor:
    """Gram form: with ``R = X X^T`` each step is ``P = a I + N``, ``N = b R + c R^2``,
    ``Q <- P Q``, ``R <- P R P`` (``m x m`` products only), and ``X <- Q X`` at each
    restart and at the end. ``Q = alpha I + Qt`` keeps its identity part as a scalar, for
    the same reason as ``a X`` in :func:`_matrix_loop`. ``X`` is overwritten."""
    mm, accumulate_ = _kernels(X)
    gram_shape = (*X.shape[:-1], X.shape[-2])
    R, N, T = (buffer(ws, name, gram_shape, X) for name in ("A", "P", "T"))
    Qs = [buffer(ws, "Q", gram_shape, X), buffer(ws, "Q2", gram_shape, X)]
    Y = buffer(ws, "Y", X.shape, X)

    def times_q(X, Y, alpha, Qt):  # Y <- (alpha I + Qt) X
        accumulate_(Y.copy_(X), Qt, X, beta=alpha)
        return Y, X

    mm(X, X.mT, out=R)
    alpha, Qt = 1.0, None
    for k, (a, b, c) in enumerate(triples):
        mm(R, R, out=N)
        if k == 0 and safety is not None:
            _rescale_schatten8(X, R, N, safety)
        N.mul_(c).add_(R, alpha=b)
        # (a I + N)(alpha I + Qt) = a alpha I + (a Qt + alpha N + N Qt)
        if Qt is None:
            Qt = torch.mul(N, alpha, out=Qs[0])
        else:
            nxt = Qs[1] if Qt is Qs[0] else Qs[0]
            Qt = accumulate_(torch.mul(N, alpha, out=nxt).add_(Qt, alpha=a), N, Qt)
        alpha *= a
        if k == len(triples) - 1:
            break
        if (k + 1) % GRAM_RESTART == 0:
            X, Y = times_q(X, Y, alpha, Qt)
            mm(X, X.mT, out=R)
            alpha, Qt = 1.0, None
        else:
            N.diagonal(dim1=-2, dim2=-1).add_(a)  # N is P now
            mm(mm(N, R, out=T), N, out=R)
    return times_q(X, Y, alpha, Qt)[0]
