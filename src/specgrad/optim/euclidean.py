"""Euclidean baselines of the studies: normalized gradient descent and sign descent."""

from __future__ import annotations

from typing import Optional

from .chain import ChainOptimizer
from .transforms import ApplyLR, DecoupledWeightDecay, FrobeniusNormalize, Momentum, Sign


class _ElementwiseRule(ChainOptimizer):
    matrix_only = False

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                 adamw: Optional[dict] = None, nonfinite: str = "raise"):  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults, adamw=adamw, nonfinite=nonfinite)


class NormalizedGD(_ElementwiseRule):
    """``W <- W - lr * M / ||M||_F`` per parameter, ``M`` the (EMA momentum) gradient.

    The Euclidean counterpart of SpecGD: both take unit steps, in the Frobenius and the
    spectral norm respectively.

    Example:
        >>> W = torch.nn.Parameter(torch.zeros(2, 2))
        >>> opt = NormalizedGD([W], lr=1.0)
        >>> W.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
        >>> opt.step()
        >>> W.diagonal().tolist()
        [-0.6000000238418579, -0.800000011920929]
    """

    rule = "ngd"

    def chain(self):
        return [Momentum(), FrobeniusNormalize(), DecoupledWeightDecay(), ApplyLR()]


class SignDescent(_ElementwiseRule):
    """``W <- W - lr * sign(M)``, ``M`` the (EMA momentum) gradient: signSGD, or Signum
    with momentum; steepest descent under the max-norm.

    Example:
        >>> W = torch.nn.Parameter(torch.zeros(3))
        >>> opt = SignDescent([W], lr=0.5)
        >>> W.grad = torch.tensor([2.0, -1e-3, 0.0])
        >>> opt.step()
        >>> W.tolist()
        [-0.5, 0.5, 0.0]
    """

    rule = "sign"

    def chain(self):
        return [Momentum(), Sign(), DecoupledWeightDecay(), ApplyLR()]
