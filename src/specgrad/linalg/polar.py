"""Orthogonalization: the polar factor ``U V^T`` of ``G = U S V^T``, exactly or iteratively."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .checks import check_matrix, check_positive_int, working_dtype
from .coefficients import QuinticSchedule, ScheduleLike, as_schedule, polar_express_schedule
from .workspace import Workspace
from .workspace import buffer as _buffer

METHODS = ("svd", "newton_schulz", "polar_express")
DEFAULT_STEPS = 5


def orthogonalize(
    G: Tensor,
    method: str = "newton_schulz",
    steps: Optional[int] = None,
    *,
    coefficients: ScheduleLike = "jordan",
    lower: float = 1e-3,
    rtol: Optional[float] = None,
    dtype: Optional[torch.dtype] = None,
    norm: str = "frobenius",
    gram=False,
) -> Tensor:
    """Approximate the polar factor ``U V^T`` of ``G = U S V^T``.

    Args:
        G: ``(..., m, n)`` float16/bfloat16/float32/float64 tensor, on any device. Leading
            dims are a batch of independent matrices.
        method: ``"svd"`` (exact, from the thin SVD), ``"newton_schulz"`` (the quintic
            iteration with ``coefficients``) or ``"polar_express"`` (per-step minimax
            quintics for singular values in ``[lower, 1]`` after normalization).
        steps: iterations of the iterative methods (default 5); ignored by ``"svd"``.
        coefficients: for ``"newton_schulz"``: ``"jordan"`` (default, Keller Jordan's
            ``(3.4445, -4.7750, 2.0315)``), ``"newton_schulz"`` (``(15/8, -10/8, 3/8)``), one
            ``(a, b, c)`` triple, a list with one triple per step, or a
            :class:`~specgrad.linalg.QuinticSchedule`.
        lower: for ``"polar_express"``: assumed lower bound of ``sigma_min / ||G||_F``.
        rtol: for ``"svd"``: singular values ``<= rtol * sigma_max`` map to 0 (the
            truncated-SVD convention of SpecGD). Default ``max(m, n) * eps(dtype)``.
        dtype: precision the iteration runs in (e.g. ``torch.bfloat16`` on a GPU); default
            the input's. The result always has the input's dtype.
        norm, gram: for the iterative methods, the normalization (``"frobenius"`` or
            ``"schatten8"``) and whether rectangular matrices iterate on their Gram matrix
            (``False``, ``True``, ``"auto"``); see :func:`quintic_iteration`.

    Returns:
        Tensor of the shape and dtype of ``G``. A zero matrix maps to a zero matrix.

    Example:
        >>> G = torch.randn(64, 32, dtype=torch.float64)
        >>> O = orthogonalize(G, "svd")
        >>> torch.allclose(O.mT @ O, torch.eye(32, dtype=torch.float64))
        True
    """
    check_matrix(G, "G")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "svd":
        return polar_svd(G, rtol=rtol)
    steps = DEFAULT_STEPS if steps is None else check_positive_int(steps, "steps")
    if method == "polar_express":
        schedule = polar_express_schedule(steps, lower)
    else:
        schedule = as_schedule(coefficients)
    return quintic_iteration(G, schedule, steps, dtype=dtype, norm=norm, gram=gram)


def polar_svd(G: Tensor, rtol: Optional[float] = None) -> Tensor:
    """Exact polar factor ``U 1[S > rtol * s_max] V^T`` via the thin SVD; ``G`` is ``(..., m, n)``.

    Half precisions are computed in float32 and cast back.
    """
    if G.numel() == 0:
        return torch.zeros_like(G)
    work = G.to(working_dtype(G.dtype))
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    if rtol is None:
        rtol = max(G.shape[-2:]) * torch.finfo(work.dtype).eps
    keep = S > rtol * S[..., :1]
    return ((U * keep.unsqueeze(-2).to(U.dtype)) @ Vh).to(G.dtype)


# Float64 temporaries of at most this many elements (8 MiB): ``vector_norm(..., dtype=float64)``
# first casts its whole input to float64, and a cast copy above glibc's 32 MiB mmap threshold
# is page-faulted in afresh on every call (~15 ms for a 1024 x 4096 float32 matrix on a 2-core
# Zen4 VM, 2-3% of its whole 5-step iteration, against ~3 ms chunked); chunks stay in the heap.
_NORM_CHUNK = 1 << 20
# A float32-accumulated norm in this range has its sum of squares far inside float32's
# normal range: no overflow, and entries small enough to underflow cannot matter.
_FLOAT32_SAFE_NORMS = (1e-15, 1e15)


def _frobenius_norm64(G: Tensor) -> Tensor:
    """Frobenius norm of each matrix of ``(..., m, n)`` ``G`` in float64, shape ``(..., 1, 1)``."""
    if G.numel() <= _NORM_CHUNK or G.dtype == torch.float64:  # no cast copy to chunk
        return torch.linalg.vector_norm(G, dim=(-2, -1), keepdim=True, dtype=torch.float64)
    m, n = G.shape[-2:]
    X = G.reshape(-1, m, n)
    if m * n <= _NORM_CHUNK:  # whole matrices per chunk
        per_batch, rows = max(1, _NORM_CHUNK // (m * n)), m
    else:  # blocks of rows of one matrix per chunk
        per_batch, rows = 1, max(1, _NORM_CHUNK // n)
    sq = torch.zeros(X.shape[0], 1, 1, dtype=torch.float64, device=G.device)
    for i in range(0, X.shape[0], per_batch):
        for j in range(0, m, rows):
            part = X[i : i + per_batch, j : j + rows]
            sq[i : i + per_batch] += torch.linalg.vector_norm(
                part, dim=(-2, -1), keepdim=True, dtype=torch.float64
            ).square()
    return sq.sqrt().reshape(*G.shape[:-2], 1, 1)


def _frobenius_norms(mats, target: torch.dtype) -> Tensor:
    """Frobenius norms of a list (or a ``(B, m, n)`` batch) of matrices, ``(len,)`` float64,
    for scaling them into ``target``. Unless that is float64, float32 and lower inputs are
    summed in float32 by one fused ``_foreach_norm`` without temporaries (a float64 cast of
    every matrix is page-faulted in on every optimizer step on CPU), exact to float32
    rounding; norms outside ``_FLOAT32_SAFE_NORMS`` are redone in float64 (one host sync)."""
    if target == torch.float64 or mats[0].dtype == torch.float64:
        if isinstance(mats, Tensor):
            return _frobenius_norm64(mats).flatten()
        return torch.stack([_frobenius_norm64(x).reshape(()) for x in mats])
    norms = torch.stack(torch._foreach_norm(list(mats), 2, dtype=torch.float32)).double()
    lo, hi = _FLOAT32_SAFE_NORMS
    unsafe = ((norms < lo) | (norms > hi) | norms.isnan()).nonzero().flatten().tolist()
    for i in unsafe:
        norms[i] = _frobenius_norm64(mats[i]).reshape(())
    return norms


def normalize_spectrum(G: Tensor, safety: float = 1.0, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``G / (safety * ||G||_F)`` per matrix, so every singular value is at most ``1/safety``.

    The norm is accumulated in float64 (in float32 where that cannot overflow or underflow
    and ``dtype`` is not float64), so entries as large as 1e150 or as small as 1e-150
    neither overflow nor underflow; a zero matrix stays zero. Returns a new tensor in
    ``dtype`` (default ``G.dtype``).
    """
    dtype = G.dtype if dtype is None else dtype
    scale = _inverse_norm(G, safety, dtype)
    if G.dtype in (torch.float64, torch.float32):
        return (G * scale).to(dtype)
    return G.to(torch.float32).mul_(scale).to(dtype)


def _inverse_norm(G: Tensor, safety: float, target: torch.dtype) -> Tensor:
    """``1 / (safety ||G||_F)`` per matrix, ``(..., 1, 1)``, in the dtype ``G`` is scaled in.

    Float64 for float64 input, else float32 (its range holds any 1/||G||_F of a
    float32/float16/bfloat16 matrix with a normal entry); the product is rounded once to
    the target dtype. The clamp keeps the scale finite: a zero matrix (1/0 = inf, and
    0 * inf is NaN) gets the largest finite scale and stays zero; a matrix of float32
    subnormals is scaled up as far as float32 allows (finite, norm short of 1) instead of
    to inf. Few small ops on purpose: each costs ~5-10 us, ~0.3% of 5 steps on 256 x 256.
    """
    return _inverse_norms(G.reshape(-1, *G.shape[-2:]), safety, target).reshape(*G.shape[:-2], 1, 1)


def _inverse_norms(mats, safety: float, target: torch.dtype) -> Tensor:
    """:func:`_inverse_norm` of each matrix of a list or batch, ``(len,)``."""
    norm = _frobenius_norms(mats, target)
    if safety != 1.0:
        norm = norm * safety
    scale_dtype = torch.float64 if mats[0].dtype == torch.float64 else torch.float32
    return norm.reciprocal().clamp_max(torch.finfo(scale_dtype).max).to(scale_dtype)


def stack_normalized(mats: Sequence[Tensor], safety: float = 1.0, dtype: Optional[torch.dtype] = None, *,
                     out: Optional[Tensor] = None) -> Tensor:  # fmt: skip
    """``torch.stack([normalize_spectrum(x, safety, dtype) for x in mats])``, written in one
    pass per matrix straight into the stacked buffer ``out`` (allocated when None; views
    such as transposes are fine; a ``(B, m, n)`` batch is scaled in one pass), instead of a
    stacked copy in the input dtype, a scaled copy and a cast: for an optimizer step on
    many matrices those copies cost as much as two Newton-Schulz matmuls. Equal up to the
    summation order of float32 norms.

    Example:
        >>> mats = [torch.randn(3, 5), torch.randn(5, 3).mT]
        >>> torch.allclose(stack_normalized(mats, 1.01), normalize_spectrum(torch.stack(mats), 1.01))
        True
    """
    first = mats[0]
    if out is None:
        out = torch.empty(len(mats), *first.shape, dtype=first.dtype if dtype is None else dtype, device=first.device)
    scales = _inverse_norms(mats, safety, out.dtype)
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


NORMS = ("frobenius", "schatten8")

# A Gram-space run (see ``_gram_loop``) is rebuilt from the matrix after every second step:
# half-precision rounding of ``R = X X^T`` is amplified by the steep polynomials, and left
# alone for longer it grows spurious eigenvalues of ``R`` that diverge.
GRAM_RESTART = 2
# Aspect ratio ``n / m`` from which ``gram="auto"`` iterates on the Gram matrix: 5 steps
# cost ``(10 r + 5) m^3`` multiply-adds in the matrix and ``(6 r + 11) m^3`` in the Gram
# form with its restarts, equal at ``r = 1.5``; from 2 on the saving is clear of kernel
# overheads.
GRAM_AUTO_ASPECT = 2.0


def quintic_iteration(
    G: Tensor,
    schedule: QuinticSchedule,
    steps: int,
    *,
    dtype: Optional[torch.dtype] = None,
    norm: str = "frobenius",
    gram=False,
) -> Tensor:
    """Run ``X <- a X + (b A + c A^2) X``, ``A = X X^T`` for ``steps`` steps on normalized ``G``.

    ``G`` is ``(..., m, n)``; the iteration runs on the wide orientation (``m <= n``) so
    the Gram matrix is the smaller one, with fused multiply-adds (``addmm``/``baddbmm``)
    and preallocated buffers.

    ``norm`` picks the upper bound of ``sigma_max`` that ``G`` is divided by:
    ``"frobenius"`` (``||G||_F``, as ``torch.optim.Muon``) or ``"schatten8"``
    (``(sum sigma^8)^(1/8) = ||(G G^T)^2||_F^(1/4)``, read off the ``A^2`` the first step
    computes anyway, so free). The Schatten-8 norm sits much closer to ``sigma_max``
    (within ``r^(1/8)`` for rank ``r``, against ``r^(1/2)``), so small singular values start
    larger and fewer steps reach the same accuracy.

    ``gram``: iterate on the ``m x m`` Gram matrix ``R = X X^T`` and apply the accumulated
    ``m x m`` polynomial to ``X`` only at restarts and at the end (Gram Newton-Schulz;
    Amsel, Chen & Dao, 2026), restarting from the matrix every second step for stability
    in half precision. It saves ~20-30% of the flops on a 4:1 matrix and none on a square
    one. ``"auto"`` uses it when ``n >= 2 m``, ``True`` always, ``False`` (default) never.
    In half precision it amplifies rounding more than the matrix form; keep it to
    schedules with a margin (Jordan's, or Polar Express with ``safety >= 1.03``).

    A tall ``G`` is normalized in its own layout and then copied once into a contiguous wide
    buffer, so its result is exactly the transpose of the wide computation.
    """
    check_positive_int(steps, "steps")
    check_norm(norm)
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
    """:func:`quintic_iteration` of equal-shape wide matrices (``m <= n``; views welcome),
    returned stacked ``(len(mats), m, n)`` in their dtype; the batch is built normalized
    by :func:`stack_normalized`, so the inputs are read once. With a ``workspace`` every
    buffer, the result included, is reused from (and left in) it."""
    check_positive_int(steps, "steps")
    check_norm(norm)
    m, n = mats[0].shape
    if m > n:
        raise ValueError(f"matrices must be wide (m <= n), got {m} x {n}; pass their transposes")
    like = mats[0]
    work = like.dtype if dtype is None else dtype
    X = stack_normalized(mats, schedule.normalization_safety, dtype,
                         out=_buffer(workspace, "X", (len(mats), m, n), like, work))  # fmt: skip
    X = _iterate(X, schedule, steps, norm, gram, workspace)
    return X if X.dtype == like.dtype else _buffer(workspace, "out", X.shape, like).copy_(X)


def check_norm(norm, name: str = "norm") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"{name} must be one of {NORMS}, got {norm!r}")


def check_gram(gram, name: str = "gram") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``gram`` is ``True``, ``False`` or ``"auto"``."""
    if not (isinstance(gram, bool) or gram == "auto"):
        raise ValueError(f"{name} must be True, False or 'auto', got {gram!r}")


def use_gram(gram, m: int, n: int) -> bool:
    """Whether ``gram`` (``True``, ``False`` or ``"auto"``) iterates an ``m x n`` matrix
    (``m <= n``) in Gram form."""
    check_gram(gram)
    return n >= GRAM_AUTO_ASPECT * m if gram == "auto" else gram


def _iterate(X: Tensor, schedule: QuinticSchedule, steps: int, norm: str, gram, ws: Optional[Workspace]) -> Tensor:
    """Quintic steps on a normalized contiguous ``(B, m, n)`` batch with ``m <= n``; the
    result may be ``X`` itself or a workspace buffer.

    ``B == 1`` uses the 2-D kernels (``mm``/``addmm``), which skip the batched dispatch;
    a batch uses ``bmm``/``baddbmm`` (on CPU as fast as a loop of ``mm`` per matrix).
    """
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
    A, P = _buffer(ws, "A", gram_shape, X), _buffer(ws, "P", gram_shape, X)
    Y = _buffer(ws, "Y", X.shape, X)
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
    R, N, T = (_buffer(ws, name, gram_shape, X) for name in ("A", "P", "T"))
    Qs = [_buffer(ws, "Q", gram_shape, X), _buffer(ws, "Q2", gram_shape, X)]
    Y = _buffer(ws, "Y", X.shape, X)

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


def singular_value_range(X: Tensor) -> tuple[float, float]:
    """``(min, max)`` singular value over all matrices of ``X`` (``(..., m, n)``), in float64.

    Use it to see what accuracy an iterative orthogonalizer bought:

    Example:
        >>> G = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
        >>> lo, hi = singular_value_range(orthogonalize(G, "polar_express", steps=8))
        >>> abs(lo - 1) < 0.05 and abs(hi - 1) < 0.05
        True
    """
    check_matrix(X, "X")
    s = torch.linalg.svdvals(X.to(torch.float64))
    return float(s.min()), float(s.max())


def orthogonality_error(X: Tensor) -> float:
    """``max_i |sigma_i(X) - 1|`` over all singular values of all matrices of ``X``.

    Zero exactly when every matrix of ``X`` has orthonormal rows or columns.
    """
    lo, hi = singular_value_range(X)
    return max(abs(lo - 1.0), abs(hi - 1.0))


def predicted_band(
    method: str,
    steps: int = DEFAULT_STEPS,
    spectrum_lower: float = 1e-3,
    *,
    coefficients: ScheduleLike = "jordan",
    lower: float = 1e-3,
) -> tuple[float, float]:
    """Where an iterative method sends the singular values of inputs whose normalized
    spectrum satisfies ``sigma_min / ||G||_F >= spectrum_lower``, computed from its scalar
    polynomial map before touching a matrix. ``coefficients`` (Newton-Schulz) and ``lower``
    (Polar Express) are the arguments :func:`orthogonalize` was given.

    Example:
        >>> lo, hi = predicted_band("newton_schulz", steps=5)
        >>> round(lo, 2), round(hi, 2)
        (0.47, 1.2)
    """
    if method == "polar_express":
        schedule = polar_express_schedule(steps, lower)
    elif method == "newton_schulz":
        schedule = as_schedule(coefficients)
    else:
        raise ValueError(f"predicted_band needs an iterative method, got {method!r}")
    return schedule.band(spectrum_lower, steps)


def scalar_map(method: str, s, steps: int = DEFAULT_STEPS, **kwargs) -> np.ndarray:
    """Apply an iterative method's composed polynomial to normalized singular values ``s``."""
    if method == "polar_express":
        schedule = polar_express_schedule(steps, kwargs.get("lower", 1e-3))
    elif method == "newton_schulz":
        schedule = as_schedule(kwargs.get("coefficients", "jordan"))
    else:
        raise ValueError(f"scalar_map needs an iterative method, got {method!r}")
    return schedule.scalar(s, steps)
