"""Sparse regression (Davis & Drusvyatskiy, arXiv 2512.04299): ``y = x1 x2 x3`` fit by a
4-layer squared-ReLU network ``input_dim -> hidden -> hidden -> hidden -> 1`` without biases.

Example:
    >>> x, y, Ws = sparse_regression_problem(input_dim=6, hidden=10, samples=20, seed=0)
    >>> x.shape, y.shape, [tuple(W.shape) for W in Ws]
    (torch.Size([20, 6]), torch.Size([20, 1]), [(10, 6), (10, 10), (10, 10), (1, 10)])
    >>> squared_relu_net(x, Ws)[-1].shape
    torch.Size([20, 1])
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def sparse_regression_problem(input_dim: int, hidden: int, samples: int, seed: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(x, y, Ws)`` in float64 from one generator seeded with ``seed``: inputs ``x``
    ``(samples, input_dim)`` standard Gaussian, targets ``y = x1 x2 x3`` ``(samples, 1)``, and
    the four initial weights ``(out, in)`` drawn as ``nn.Linear``'s default init
    (``kaiming_uniform(a=sqrt(5))``, i.e. ``U(-1/sqrt(in), 1/sqrt(in))``)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    x = torch.randn(samples, input_dim, generator=g, dtype=dt)
    y = (x[:, 0] * x[:, 1] * x[:, 2]).unsqueeze(1)
    shapes = [(hidden, input_dim), (hidden, hidden), (hidden, hidden), (1, hidden)]
    Ws = [(torch.rand(o, i, generator=g, dtype=dt) * 2 - 1) / math.sqrt(i) for o, i in shapes]
    return x, y, Ws


def squared_relu_net(x: Tensor, Ws: Sequence[Tensor]) -> list[Tensor]:
    """Every layer's input and the output: ``[x, A_1, ..., A_{L-1}, f(x)]`` with
    ``A_l = relu(A_{l-1} W_l^T)^2`` (rows are samples) and a linear last layer."""
    acts = [x]
    h = x
    for W in Ws[:-1]:
        h = F.relu(h @ W.T).square()
        acts.append(h)
    acts.append(h @ Ws[-1].T)
    return acts
