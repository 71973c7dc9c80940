"""General spectral maps ``U f(S) V^T`` and the matrix view of weight tensors."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .checks import check_matrix, working_dtype


def spectral_map(G: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
    """``U f(S) V^T`` for ``G = U S V^T`` (thin SVD), batched over leading dims.

    Args:
        G: ``(..., m, n)`` floating tensor; half precisions are computed in float32.
        f: maps the singular values ``(..., k)``, ``k = min(m, n)``, sorted descending, to a
            tensor of the same shape (it may mix values across one matrix's spectrum, as the
            isotropic-curvature map does).

    Returns:
        ``(..., m, n)`` tensor in ``G``'s dtype.

    Example:
        >>> G = torch.randn(5, 3, dtype=torch.float64)
        >>> torch.allclose(spectral_map(G, lambda s: s), G)
        True
    """
    check_matrix(G, "G")
    if not callable(f):
        raise ValueError(f"f must be callable, got {type(f).__name__}")
    U, S, Vh = torch.linalg.svd(G.to(working_dtype(G.dtype)), full_matrices=False)
    fS = f(S)
    if not isinstance(fS, Tensor) or fS.shape != S.shape:
        got = tuple(fS.shape) if isinstance(fS, Tensor) else type(fS).__name__
        raise ValueError(f"f must return a tensor of shape {tuple(S.shape)}, got {got}")
    return ((U * fS.to(U.dtype).unsqueeze(-2)) @ Vh).to(G.dtype)


def matrix_view(W: Tensor) -> Tensor:
    """View a weight as a matrix: ``(out, in)`` stays, ``(out, in, kh, kw)`` becomes
    ``(out, in*kh*kw)`` (any trailing dims are flattened into the second).

    Example:
        >>> matrix_view(torch.zeros(8, 3, 5, 5)).shape
        torch.Size([8, 75])
    """
    if W.ndim < 2:
        raise ValueError(f"a matrix view needs at least 2 dims, got shape {tuple(W.shape)}")
    return W if W.ndim == 2 else W.reshape(W.shape[0], -1)
