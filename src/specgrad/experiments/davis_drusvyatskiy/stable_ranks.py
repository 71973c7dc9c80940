"""The stable rank of activation matrices too large for a full SVD (this study's widths reach
4096 x 16384): ``||A||_F^2 / ||A||_op^2`` with :func:`specgrad.linalg.operator_norm`.

Example:
    >>> fast_stable_rank(torch.eye(3))
    3.0
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...linalg import operator_norm


def fast_stable_rank(A: Tensor) -> float:
    """``||A||_F^2 / ||A||_op^2`` of one ``(m, n)`` matrix in float64 (0 for a zero matrix): the
    exact SVD up to ``min(m, n) = 256``, Lanczos above (:func:`~specgrad.linalg.operator_norm`)."""
    top, _ = operator_norm(A)
    return float(A.detach().to(torch.float64).square().sum()) / top**2 if top > 0 else 0.0
