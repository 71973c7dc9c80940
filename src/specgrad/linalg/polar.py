"""Orthogonalization, the reference: the polar factor ``U V^T`` of ``G = U S V^T``.

This page is what Muon computes, written the way the papers write it:

* :func:`polar_svd`: exactly, from the thin SVD.
* :func:`newton_schulz`: iteratively. Divide ``G`` by its Frobenius norm, so every singular
  value lies in ``(0, 1]``, then apply odd quintics ``X <- a X + (b A + c A^2) X`` with
  ``A = X X^T``. A step maps every singular value ``s`` to ``p(s) = a s + b s^3 + c s^5``
  and keeps the singular vectors, so ``steps`` steps push the spectrum towards 1 along the
  scalar map of :func:`scalar_map`, and :func:`predicted_band` says where it lands before
  any matrix is touched. The triples ``(a, b, c)`` come from a
  :class:`~specgrad.linalg.QuinticSchedule`: Keller Jordan's ``(3.4445, -4.7750, 2.0315)``
  for every step (Muon, 2024), the classical ``(15/8, -10/8, 3/8)``, or one minimax-optimal
  triple per step (Polar Express: Amsel, Persson, Musco & Gower, 2025);
  :mod:`specgrad.linalg.coefficients` says where each number comes from.

The optimizers run the fast path of the same iteration (lists of matrices batched by shape,
fused products into reused buffers, half precision, the Gram form, Schatten-8
normalization): :mod:`specgrad.linalg.fast_polar`, whose tests compare it with this page.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .checks import check_floating, check_matrix, check_positive_int, working_dtype
from .coefficients import QuinticSchedule, ScheduleLike, schedule_for

METHODS = ("svd", "newton_schulz", "polar_express")
DEFAULT_STEPS = 5
# Upper bounds of sigma_max that an iteration may divide by: ||G||_F, or the Schatten-8
# norm (sum sigma^8)^(1/8), which only the fast path implements.
NORMS = ("frobenius", "schatten8")


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
            dims are a batch of independent matrices. Complex matrices raise ``ValueError``.
        method: ``"svd"`` (exact, :func:`polar_svd`), ``"newton_schulz"`` (the quintic
            iteration with ``coefficients``) or ``"polar_express"`` (per-step minimax
            quintics for singular values in ``[lower, 1]`` after normalization).
        steps: iterations of the iterative methods (default 5); ignored by ``"svd"``.
        coefficients: for ``"newton_schulz"``: ``"jordan"`` (default), ``"newton_schulz"``,
            one ``(a, b, c)`` triple, a list with one triple per step, or a
            :class:`~specgrad.linalg.QuinticSchedule`.
        lower: for ``"polar_express"``: assumed lower bound of ``sigma_min / ||G||_F``.
        rtol: for ``"svd"``: singular values ``<= rtol * sigma_max`` map to 0 (the
            truncated-SVD convention of SpecGD). Default ``max(m, n) * eps(dtype)``.
        dtype, norm, gram: options of the fast path: the precision the iteration runs in
            (e.g. ``torch.bfloat16`` on a GPU; the result keeps the input's dtype), the
            normalization (``"frobenius"`` or ``"schatten8"``) and whether rectangular
            matrices iterate on their Gram matrix (``False``, ``True``, ``"auto"``). With any
            of them set the iteration is
            :func:`specgrad.linalg.fast_polar.quintic_iteration`; with the defaults,
            :func:`newton_schulz`.

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
    if dtype is not None:
        check_floating(dtype, "dtype")
    if method == "svd":
        return polar_svd(G, rtol=rtol)
    steps = DEFAULT_STEPS if steps is None else check_positive_int(steps, "steps")
    check_norm(norm)
    check_gram(gram)
    schedule = schedule_for(method, steps, coefficients=coefficients, lower=lower)
    if dtype is None and norm == "frobenius" and gram is False:
        return newton_schulz(G, schedule, steps)
    from .fast_polar import quintic_iteration  # imported on use: the fast module builds on this one

    return quintic_iteration(G, schedule, steps, dtype=dtype, norm=norm, gram=gram)


def polar_svd(G: Tensor, rtol: Optional[float] = None) -> Tensor:
    """Exact polar factor ``U 1[S > rtol * s_max] V^T`` via the thin SVD; ``G`` is ``(..., m, n)``.

    Half precisions are computed in float32 and cast back.

    Example:
        >>> polar_svd(torch.tensor([[3.0, 0.0], [0.0, -0.5]]))
        tensor([[ 1.,  0.],
                [ 0., -1.]])
    """
    check_floating(G.dtype, "G", what="a floating tensor, got dtype")
    if G.numel() == 0:
        return torch.zeros_like(G)
    work = G.to(working_dtype(G.dtype))
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    if rtol is None:
        rtol = max(G.shape[-2:]) * torch.finfo(work.dtype).eps
    keep = S > rtol * S[..., :1]
    return ((U * keep.unsqueeze(-2).to(U.dtype)) @ Vh).to(G.dtype)


def newton_schulz(G: Tensor, schedule: QuinticSchedule, steps: int = DEFAULT_STEPS) -> Tensor:
    """``steps`` quintic steps ``X <- a X + (b A + c A^2) X``, ``A = X X^T``, on ``G / ||G||_F``.

    ``G`` is ``(..., m, n)``; step ``k`` uses ``schedule.steps(steps)[k]``. The input is
    divided by ``schedule.normalization_safety * ||G||_F`` (a norm taken in float64, so no
    float32 entry overflows or underflows it; a zero matrix stays zero), and a tall matrix
    iterates as its transpose, so ``A`` is the smaller Gram matrix. Half precisions are
    computed in float32 and cast back, as in :func:`polar_svd`.

    Example:
        >>> from specgrad.linalg import JORDAN, QuinticSchedule
        >>> G = torch.randn(8, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> s = torch.linalg.svdvals(newton_schulz(G, QuinticSchedule((JORDAN,)), 5))
        >>> bool(((s > 0.6) & (s < 1.25)).all())
        True
    """
    check_positive_int(steps, "steps")
    check_floating(G.dtype, "G", what="a floating tensor, got dtype")
    tall = G.shape[-2] > G.shape[-1]
    X = G.mT.contiguous() if tall else G  # contiguous: the exact transpose of the wide result
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True, dtype=torch.float64)
    norm = (schedule.normalization_safety * norm).clamp_min(torch.finfo(torch.float64).tiny)
    X = (X / norm).to(working_dtype(G.dtype))
    for a, b, c in schedule.steps(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return (X.mT if tall else X).to(G.dtype)


def scalar_map(method: str, s, steps: int = DEFAULT_STEPS, *, coefficients: ScheduleLike = "jordan",
               lower: float = 1e-3) -> np.ndarray:  # fmt: skip
    """An iterative method's composed polynomial applied to normalized singular values ``s``
    (``sigma / (safety ||G||_F)``): the singular values :func:`orthogonalize` returns.

    Example:
        >>> [round(float(v), 3) for v in scalar_map("newton_schulz", [0.01, 0.5, 1.0], 5)]
        [0.699, 0.765, 0.696]
    """
    return schedule_for(method, steps, coefficients=coefficients, lower=lower).scalar(s, steps)


def predicted_band(method: str, steps: int = DEFAULT_STEPS, spectrum_lower: float = 1e-3, *,
                   coefficients: ScheduleLike = "jordan", lower: float = 1e-3) -> tuple[float, float]:  # fmt: skip
    """Where an iterative method sends the singular values of inputs whose normalized
    spectrum satisfies ``sigma_min / ||G||_F >= spectrum_lower``, from its scalar map.
    ``coefficients`` and ``lower`` are the arguments :func:`orthogonalize` was given.

    Example:
        >>> lo, hi = predicted_band("newton_schulz", steps=5)
        >>> round(lo, 2), round(hi, 2)
        (0.47, 1.2)
    """
    return schedule_for(method, steps, coefficients=coefficients, lower=lower).band(spectrum_lower, steps)


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


def check_norm(norm, name: str = "norm") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"{name} must be one of {NORMS}, got {norm!r}")


def check_gram(gram, name: str = "gram") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``gram`` is ``True``, ``False`` or ``"auto"``."""
    if not (isinstance(gram, bool) or gram == "auto"):
        raise ValueError(f"{name} must be True, False or 'auto', got {gram!r}")
