"""``diagnose``: one forward/backward, a row per block, and optionally a measured probe."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Union

import pandas as pd
import torch
from torch import Tensor, nn

from ..linalg import least_squares_smoothness, majorization_step, matrix_view, polar_svd
from .monitor import SpectralMonitor


def _loss(model: nn.Module, batch, loss_fn: Callable) -> Tensor:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        return loss_fn(model(inputs), targets)
    return loss_fn(model(batch))


def diagnose(
    model: nn.Module,
    batch,
    loss_fn: Callable,
    *,
    probe: bool = False,
    curvature: Union[str, float] = "estimate",
    layers: Optional[Iterable[str]] = None,
    max_dim: int = 4096,
) -> pd.DataFrame:
    """Which blocks of ``model`` would a spectral step help, on this batch?

    Runs one forward/backward (``batch = (inputs, targets)`` gives
    ``loss_fn(model(inputs), targets)``; anything else gives ``loss_fn(model(batch))``) and
    returns a row per block: ``block, shape, st_A, nr_G, ratio, verdict, predicted_gain``,
    where ``predicted_gain = nr(G) / st(A)`` is the ratio of the guaranteed one-step
    decreases, spectral over Euclidean; ``nr >= st`` favours the spectral step and
    ``nr >= 2 st`` guarantees it lands lower for least squares.

    With ``probe=True`` it also measures: for each block alone it takes the Euclidean step
    ``W - G / L_F`` and the spectral step ``W - (||G||_* / L_op) polar(G)``, with
    ``L_F = c ||A||_op^2 / n`` and ``L_op = c ||A||_F^2 / n`` (``n`` activation rows),
    evaluates the loss, restores the weights, and adds ``loss_euclidean``,
    ``loss_spectral``, ``measured`` (the winner) and ``agrees``. The output-space curvature
    ``c`` is given (``curvature=1.0`` for ``(1/2n) sum ||W a - y||^2``) or estimated per block
    (``"estimate"``) from the loss's second difference along ``G``:
    ``c = <G, H G> / (||G A^T||_F^2 / n)``, exact for least squares.

    The model's weights and gradients are left as they were found (gradients are those of
    this batch afterwards).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
        >>> x, y = torch.randn(256, 10), torch.randn(256, 3)
        >>> report = diagnose(net, (x, y), torch.nn.functional.mse_loss, probe=True)
        >>> list(report.columns)[:7]
        ['block', 'shape', 'st_A', 'nr_G', 'ratio', 'verdict', 'predicted_gain']
    """
    if not (curvature == "estimate" or (isinstance(curvature, (int, float)) and curvature > 0)):
        raise ValueError(f"curvature must be 'estimate' or a positive number, got {curvature!r}")
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    with SpectralMonitor(model, every=1, layers=layers, max_dim=max_dim) as mon:
        loss = _loss(model, batch, loss_fn)
        loss.backward()
        blocks = {name: mon.block(name) for name in mon.blocks}
        # copies: the monitor reuses its buffers after step()
        grams = {name: None if (gram := b.gram()) is None else gram.clone() for name, b in blocks.items()}
        mon.step()
        frame = mon.frame()
    frame = frame.drop(columns=["step"])
    frame["predicted_gain"] = frame["ratio"]
    cols = ["block", "shape", "st_A", "nr_G", "ratio", "verdict", "predicted_gain",
            "grad_fro", "grad_nuc", "act_fro", "act_op", "rows", "kind"]  # fmt: skip
    frame = frame[cols]
    if probe:
        with torch.no_grad():
            base = float(loss)
            results = [_probe(model, batch, loss_fn, blocks[r.block], grams[r.block], r, base, curvature)
                       for r in frame.itertuples()]  # fmt: skip
        frame = pd.concat([frame, pd.DataFrame(results, index=frame.index)], axis=1)
    model.train(was_training)
    return frame


def _probe(model, batch, loss_fn, block, gram, row, base: float, curvature) -> dict:
    W = block.param()
    G = block.grad().detach().clone()
    if block.kind == "embedding":
        return dict(curvature=math.nan, loss_euclidean=math.nan, loss_spectral=math.nan, measured="n/a", agrees=None)
    view = matrix_view(W.data)
    target = view if block.rows is None else view[block.rows]
    saved = target.clone()
    # the matrix view of a non-contiguous weight (a channels_last conv) is a copy: write back
    writes_through = view.untyped_storage().data_ptr() == W.data.untyped_storage().data_ptr()

    def put(value: Tensor) -> None:
        target.copy_(value)
        if not writes_through:
            W.data.copy_(view.reshape(W.shape))

    def loss_at(delta: Tensor) -> float:
        put(saved - delta)
        try:
            return float(_loss(model, batch, loss_fn))
        finally:
            put(saved)

    n = row.rows
    if curvature == "estimate":
        if gram is None:
            raise ValueError(f"block {row.block}: curvature estimate needs an exact Gram; pass curvature=")
        GA_sq = float(torch.einsum("ij,jk,ik->", G.double(), gram, G.double()))  # ||G A^T||_F^2
        t = 1e-3 / max(row.grad_fro, 1e-30) * max(float(saved.norm()), 1.0)
        second = (loss_at(t * G) - 2 * base + loss_at(-t * G)) / t**2
        c = second / (GA_sq / n) if GA_sq > 0 else math.nan
    else:
        c = float(curvature)
    L_F, L_op = least_squares_smoothness(row.act_fro**2, row.act_op**2, int(n), c) if c > 0 else (math.nan, math.nan)
    if not (L_F > 0 and L_op > 0):
        return dict(curvature=c, loss_euclidean=math.nan, loss_spectral=math.nan, measured="n/a", agrees=None)
    loss_e = loss_at(majorization_step(G, L_F, "frobenius"))
    loss_s = loss_at(majorization_step(G, L_op, "spectral", polar=polar_svd(G.double()).to(G.dtype),
                                       nuclear=row.grad_nuc))  # fmt: skip
    measured = "spectral" if loss_s < loss_e else "euclidean"
    return dict(curvature=c, loss_euclidean=loss_e, loss_spectral=loss_s, measured=measured,
                agrees=measured == row.verdict)  # fmt: skip
