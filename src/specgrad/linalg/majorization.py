"""Majorization steps: one block's step that minimizes a quadratic upper model of the loss.

For a block ``W`` fed by activations ``A`` (``n`` rows) with gradient ``G``, a loss that is
``L``-smooth in a norm satisfies ``f(W - D) <= f(W) - <G, D> + (L/2) ||D||^2``. Minimizing the
right side gives the step of that norm and its guaranteed decrease (Davis & Drusvyatskiy):

* Frobenius norm: ``D = G / L_F``, decrease ``||G||_F^2 / (2 L_F)``;
* spectral norm: ``D = (||G||_* / L_op) polar(G)``, decrease ``||G||_*^2 / (2 L_op)``.

For least squares ``(c / 2n) ||W A^T - Y||^2`` the constants are ``L_F = c ||A||_op^2 / n`` and
``L_op = c ||A||_F^2 / n`` (:func:`least_squares_smoothness`), so the ratio of the two
decreases is ``nr(G) / st(A)``: the layerwise test.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .checks import check_matrix, check_range
from .polar import polar_svd

STEP_NORMS = ("frobenius", "spectral")


def majorization_step(G: Tensor, L: float, norm: str, *, polar: Optional[Tensor] = None,
                      nuclear: Optional[float] = None) -> Tensor:  # fmt: skip
    """The step ``D`` (to subtract: ``W <- W - D``) that minimizes ``-<G, D> + (L/2) ||D||^2``.

    Args:
        G: ``(m, n)`` gradient (or a batch ``(..., m, n)`` for ``"frobenius"``), floating.
        L: smoothness constant of the loss in ``norm``, positive.
        norm: ``"frobenius"`` (``D = G / L``) or ``"spectral"``
            (``D = (||G||_* / L) polar(G)``).
        polar: for ``"spectral"``, ``polar(G)`` if already computed (default: the exact
            :func:`~specgrad.linalg.polar_svd`).
        nuclear: for ``"spectral"``, ``||G||_*`` if already known (default
            ``<G, polar(G)>``, exact for the exact polar factor).

    Returns:
        ``D`` with ``G``'s shape and dtype.

    Example:
        >>> G = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
        >>> majorization_step(G, 2.0, "spectral").diagonal().tolist()  # ||G||_* = 4
        [2.0, 2.0]
        >>> majorization_step(G, 2.0, "frobenius").diagonal().tolist()
        [1.5, 0.5]
    """
    check_matrix(G, "G")
    check_range("L", L, 0.0, lo_open=True)
    if norm == "frobenius":
        return G / L
    if norm != "spectral":
        raise ValueError(f"norm must be one of {STEP_NORMS}, got {norm!r}")
    O = polar_svd(G) if polar is None else polar
    if nuclear is None:
        nuclear = float((G * O).sum())
    return O * (nuclear / L)


def least_squares_smoothness(act_fro_sq: float, act_op_sq: float, rows: int,
                             curvature: float = 1.0) -> tuple[float, float]:  # fmt: skip
    """``(L_F, L_op) = (c ||A||_op^2 / n, c ||A||_F^2 / n)``: the smoothness constants, in the
    Frobenius and the spectral norm, of ``(c / 2n) ||W A^T - Y||^2`` in ``W`` for activations
    ``A`` with ``n`` rows (``c`` the output-space curvature).

    Example:
        >>> least_squares_smoothness(act_fro_sq=12.0, act_op_sq=4.0, rows=4)
        (1.0, 3.0)
    """
    check_range("curvature", curvature, 0.0, lo_open=True)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    return curvature * act_op_sq / rows, curvature * act_fro_sq / rows
