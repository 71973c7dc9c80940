"""SpecGD and general spectral descent ``W <- W - lr * U f(S) V^T``."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .chain import ChainOptimizer
from .transforms import (
    ApplyLR,
    AsMatrix,
    DecoupledWeightDecay,
    Momentum,
    NuclearStep,
    Orthogonalize,
    ShapeScale,
    SpectralFunction,
)


class SpecGD(ChainOptimizer):
    """Spectral gradient descent, the exact step of the studies:
    ``W <- W - lr * step(G) * polar(G)``.

    ``step_size="fixed"`` uses ``lr``; ``"nuclear"`` uses ``lr * ||G||_*``, the steepest
    descent step under the spectral norm (for an ``L``-smooth loss in that norm,
    ``lr = 1/L`` guarantees a decrease of ``||G||_*^2 / (2L)``). The polar factor is exact
    (``orthogonalizer="svd"``: singular values below ``max(m,n) eps sigma_max`` map to 0,
    the truncated-SVD convention) unless another orthogonalizer is chosen. With
    ``momentum > 0`` it is Muon with an exact polar factor.

    Example:
        >>> W = torch.nn.Parameter(torch.zeros(3, 3))
        >>> opt = SpecGD([W], lr=0.1)
        >>> W.grad = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> opt.step()
        >>> W.diagonal().tolist()
        [-0.10000000149011612, -0.10000000149011612, -0.10000000149011612]
    """

    rule = "specgd"

    def __init__(
        self,
        params,
        lr: float = 0.01,
        step_size: str = "fixed",
        momentum: float = 0.0,
        nesterov: bool = False,
        orthogonalizer: str = "svd",
        ns_steps: int = 5,
        ns_coefficients="jordan",
        ns_dtype: Optional[torch.dtype] = None,
        weight_decay: float = 0.0,
        shape_scaling: str = "none",
        adamw: Optional[dict] = None,
        nonfinite: str = "raise",
        distribute: bool = False,
    ):
        defaults = dict(
            lr=lr, step_size=step_size, momentum=momentum, nesterov=nesterov,
            orthogonalizer=orthogonalizer, ns_steps=ns_steps, ns_coefficients=ns_coefficients,
            ns_dtype=ns_dtype, weight_decay=weight_decay, shape_scaling=shape_scaling,
        )  # fmt: skip
        super().__init__(params, defaults, adamw=adamw, nonfinite=nonfinite, distribute=distribute)

    def chain(self):
        return [Momentum(), AsMatrix(), Orthogonalize(), NuclearStep(), ShapeScale(),
                DecoupledWeightDecay(), ApplyLR()]  # fmt: skip


class SpectralDescent(ChainOptimizer):
    """Any spectral map as the update: ``W <- W - lr * U f(S) V^T`` for ``M = U S V^T``
    the (momentum) gradient, ``f`` acting on the descending singular values ``(k,)``.

    ``f = torch.ones_like`` is SpecGD; ``f = lambda s: s`` is gradient descent; the isotropic
    curvature model's optimal map plugs in here. Computed exactly by an SVD per matrix.

    Example:
        >>> W = torch.nn.Parameter(torch.zeros(2, 2))
        >>> opt = SpectralDescent([W], f=lambda s: s.sqrt(), lr=1.0)
        >>> W.grad = torch.diag(torch.tensor([4.0, 1.0]))
        >>> opt.step()
        >>> W.diagonal().tolist()
        [-2.0, -1.0]
    """

    rule = "spectral"

    def __init__(
        self,
        params,
        f: Callable[[Tensor], Tensor],
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        shape_scaling: str = "none",
        adamw: Optional[dict] = None,
        nonfinite: str = "raise",
        distribute: bool = False,
    ):
        if not callable(f):
            raise ValueError(f"f must be callable, got {type(f).__name__}")
        self.f = f
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        shape_scaling=shape_scaling)  # fmt: skip
        super().__init__(params, defaults, adamw=adamw, nonfinite=nonfinite, distribute=distribute)

    def chain(self):
        return [Momentum(), AsMatrix(), SpectralFunction(lambda: self.f), ShapeScale(),
                DecoupledWeightDecay(), ApplyLR()]  # fmt: skip
