"""Orthogonalization: the polar factor ``U V^T`` of ``G = U S V^T``, exactly or iteratively."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ._checks import check_matrix, check_positive_int, working_dtype
from .coefficients import QuinticSchedule, ScheduleLike, as_schedule, polar_express_schedule

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
    return quintic_iteration(G, schedule, steps, dtype=dtype)


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


def _frobenius_norm64(G: Tensor) -> Tensor:
    """Frobenius norm of each matrix of ``(..., m, n)`` ``G`` in float64, shape ``(..., 1, 1)``."""
    if G.numel() <= _NORM_CHUNK:
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


def normalize_spectrum(G: Tensor, safety: float = 1.0, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``G / (safety * ||G||_F)`` per matrix, so every singular value is at most ``1/safety``.

    The norm is accumulated in float64, so entries as large as 1e150 or as small as 1e-150
    neither overflow nor underflow; a zero matrix stays zero. Returns a new tensor in
    ``dtype`` (default ``G.dtype``).
    """
    dtype = G.dtype if dtype is None else dtype
    scale = _inverse_norm(G, safety)
    if G.dtype in (torch.float64, torch.float32):
        return (G * scale).to(dtype)
    return G.to(torch.float32).mul_(scale).to(dtype)


def _inverse_norm(G: Tensor, safety: float) -> Tensor:
    """``1 / (safety ||G||_F)`` per matrix, ``(..., 1, 1)``, in the dtype ``G`` is scaled in.

    Float64 for float64 input, else float32 (its range holds any 1/||G||_F of a
    float32/float16/bfloat16 matrix with a normal entry); the product is rounded once to
    the target dtype. The clamp keeps the scale finite: a zero matrix (1/0 = inf, and
    0 * inf is NaN) gets the largest finite scale and stays zero; a matrix of float32
    subnormals is scaled up as far as float32 allows (finite, norm short of 1) instead of
    to inf. Few small ops on purpose: each costs ~5-10 us, ~0.3% of 5 steps on 256 x 256.
    """
    norm = _frobenius_norm64(G)
    if safety != 1.0:
        norm = norm * safety
    scale_dtype = torch.float64 if G.dtype == torch.float64 else torch.float32
    return norm.reciprocal().clamp_max(torch.finfo(scale_dtype).max).to(scale_dtype)


def stack_normalized(mats: Sequence[Tensor], safety: float = 1.0, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``torch.stack([normalize_spectrum(x, safety, dtype) for x in mats])``, written in one
    pass per matrix straight into the stacked buffer (the same values; views such as
    transposes are fine), instead of a stacked copy in the input dtype, a scaled copy and a
    cast: for an optimizer step on many matrices those copies cost as much as two
    Newton-Schulz matmuls.

    Example:
        >>> mats = [torch.randn(3, 5), torch.randn(5, 3).mT]
        >>> torch.equal(stack_normalized(mats, 1.01), normalize_spectrum(torch.stack(mats), 1.01))
        True
    """
    first = mats[0]
    out = torch.empty(len(mats), *first.shape, dtype=first.dtype if dtype is None else dtype, device=first.device)
    for k, x in enumerate(mats):
        scale = _inverse_norm(x, safety)[0]
        if x.dtype in (torch.float64, torch.float32):
            torch.mul(x, scale, out=out[k])
        else:
            out[k].copy_(x.to(torch.float32).mul_(scale))
    return out


def quintic_iteration(
    G: Tensor,
    schedule: QuinticSchedule,
    steps: int,
    *,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Run ``X <- a X + (b A + c A^2) X``, ``A = X X^T`` for ``steps`` steps on normalized ``G``.

    ``G`` is ``(..., m, n)``; the iteration runs on the wide orientation (``m <= n``) so
    the Gram matrix is the smaller one, with two fused multiply-adds per step
    (``addmm``/``baddbmm``) and preallocated ping-pong buffers: per step
    ``4 m^2 n + 2 m^3`` flops and no temporary allocations.

    A tall ``G`` is normalized in its own layout and then copied once into a contiguous wide
    buffer, so its result is exactly the transpose of the wide computation. Iterating on the
    tall layout directly (``A = X^T X``, ``X <- a X + X P``) saves that copy (a few percent
    on a 3072 x 768 matrix) but moves the result by rounding (1e-6 in float32 on 24 x 10
    with Polar Express) between the two orientations of one matrix.
    """
    check_positive_int(steps, "steps")
    if G.numel() == 0:
        return torch.zeros_like(G)
    out_dtype = G.dtype
    tall = G.shape[-2] > G.shape[-1]
    X = G.mT if tall else G
    batch_shape = X.shape[:-2]
    X = normalize_spectrum(X.reshape(-1, *X.shape[-2:]), schedule.normalization_safety, dtype)
    X = _quintic_loop(X, schedule.steps(steps))
    X = X.reshape(*batch_shape, *X.shape[-2:])
    return (X.mT if tall else X).to(out_dtype)


def quintic_iteration_many(mats: Sequence[Tensor], schedule: QuinticSchedule, steps: int, *,
                           dtype: Optional[torch.dtype] = None) -> Tensor:  # fmt: skip
    """:func:`quintic_iteration` of equal-shape wide matrices (``m <= n``; views welcome),
    returned stacked ``(len(mats), m, n)`` in their dtype; the batch is built normalized
    by :func:`stack_normalized`, so the inputs are read once."""
    check_positive_int(steps, "steps")
    m, n = mats[0].shape
    if m > n:
        raise ValueError(f"matrices must be wide (m <= n), got {m} x {n}; pass their transposes")
    X = stack_normalized(mats, schedule.normalization_safety, dtype)
    return _quintic_loop(X, schedule.steps(steps)).to(mats[0].dtype)


def _quintic_loop(X: Tensor, triples) -> Tensor:
    """In-place-buffered quintic steps on a ``(B, m, n)`` batch with ``m <= n``.

    ``B == 1`` uses the 2-D kernels (``mm``/``addmm``), which skip the batched dispatch;
    a batch uses ``bmm``/``baddbmm`` (on CPU as fast as a loop of ``mm`` per matrix).
    """
    B, m, n = X.shape
    if B == 1:
        X = X[0]
        mm, addmm = torch.mm, torch.addmm
        A = X.new_empty(m, m)
    else:
        mm, addmm = torch.bmm, torch.baddbmm
        A = X.new_empty(B, m, m)
    X = X.contiguous()  # a copy only for a tall input, which arrives transposed
    P = torch.empty_like(A)
    Y = torch.empty_like(X)
    for a, b, c in triples:
        mm(X, X.mT, out=A)
        addmm(A, A, A, beta=b, alpha=c, out=P)
        addmm(X, P, X, beta=a, out=Y)
        X, Y = Y, X
    return X.reshape(B, m, n)


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
