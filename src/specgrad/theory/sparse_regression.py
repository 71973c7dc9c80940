"""Sparse regression (Davis & Drusvyatskiy, arXiv 2512.04299): ``y = x1 x2 x3`` fit by a
4-layer network ``input_dim -> hidden -> hidden -> hidden -> 1`` without biases, with squared
ReLU or SwiGLU hidden layers (the authors' ``FourLayerNet``: a SwiGLU layer is one
``nn.Linear(in, 2 hidden)`` whose output halves are the gate and the up projection).

Example:
    >>> x, y, Ws = sparse_regression_problem(input_dim=6, hidden=10, samples=20, seed=0)
    >>> x.shape, y.shape, [tuple(W.shape) for W in Ws]
    (torch.Size([20, 6]), torch.Size([20, 1]), [(10, 6), (10, 10), (10, 10), (1, 10)])
    >>> squared_relu_net(x, Ws)[-1].shape
    torch.Size([20, 1])
    >>> x, y, Ws = sparse_regression_problem(6, 10, 20, seed=0, activation="swiglu")
    >>> [tuple(W.shape) for W in Ws], [tuple(a.shape) for a in sparse_net(x, Ws, "swiglu")]
    ([(20, 6), (20, 10), (20, 10), (1, 10)], [(20, 6), (20, 10), (20, 10), (20, 10), (20, 1)])
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


ACTIVATIONS = ("relu2", "swiglu")


def sparse_regression_problem(input_dim: int, hidden: int, samples: int, seed: int,
                              activation: str = "relu2") -> tuple[Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """``(x, y, Ws)`` in float64 from one generator seeded with ``seed``: inputs ``x``
    ``(samples, input_dim)`` standard Gaussian, targets ``y = x1 x2 x3`` ``(samples, 1)``, and
    the four initial weights ``(out, in)`` drawn as ``nn.Linear``'s default init
    (``kaiming_uniform(a=sqrt(5))``, i.e. ``U(-1/sqrt(in), 1/sqrt(in))``); a SwiGLU layer's
    weight is ``(2 hidden, in)`` (gate rows first, then up rows)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    x = torch.randn(samples, input_dim, generator=g, dtype=dt)
    y = (x[:, 0] * x[:, 1] * x[:, 2]).unsqueeze(1)
    return x, y, four_layer_weights(input_dim, hidden, activation, g)


def four_layer_weights(input_dim: int, hidden: int, activation: str, generator: torch.Generator) -> list[Tensor]:
    """The four float64 weights ``(out, in)`` of the net, ``nn.Linear``'s default init
    ``U(-1/sqrt(in), 1/sqrt(in))``, drawn in order from ``generator``; a SwiGLU layer has
    ``out = 2 hidden`` (gate rows, then up rows).

    Example:
        >>> [tuple(W.shape) for W in four_layer_weights(4, 6, "swiglu", torch.Generator().manual_seed(0))]
        [(12, 4), (12, 6), (12, 6), (1, 6)]
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    out = 2 * hidden if activation == "swiglu" else hidden
    shapes = [(out, input_dim), (out, hidden), (out, hidden), (1, hidden)]
    return [(torch.rand(o, i, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(i) for o, i in shapes]


def sparse_net(x: Tensor, Ws: Sequence[Tensor], activation: str = "relu2") -> list[Tensor]:
    """Every layer's input and the output: ``[x, A_1, ..., A_{L-1}, f(x)]`` with
    ``A_l = relu(A_{l-1} W_l^T)^2`` or, for ``"swiglu"``, ``silu(Z_gate) * Z_up`` where
    ``[Z_gate, Z_up] = A_{l-1} W_l^T`` split in halves (rows are samples); a linear last layer."""
    acts = [x]
    h = x
    for W in Ws[:-1]:
        z = h @ W.T
        if activation == "swiglu":
            gate, up = z.chunk(2, dim=1)
            h = F.silu(gate) * up
        else:
            h = F.relu(z).square()
        acts.append(h)
    acts.append(h @ Ws[-1].T)
    return acts


def squared_relu_net(x: Tensor, Ws: Sequence[Tensor]) -> list[Tensor]:
    """:func:`sparse_net` with squared ReLU layers."""
    return sparse_net(x, Ws, "relu2")
