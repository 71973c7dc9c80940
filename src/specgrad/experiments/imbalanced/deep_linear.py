"""Deep linear models of any shape on the imbalanced mixture: a trainer for GD, SpecGD and any
optimizer of the methods table, and a random (non-aligned) initialization.

The aligned model of :mod:`specgrad.theory.imbalanced` keeps every layer diagonal, so each
class evolves alone; here the layers are ``W_1`` ``(h, d)``, ``W_l`` ``(h, h)`` and ``W_L``
``(k, h)`` of any width ``h >= k``, from any init, on the exact population gradient
(:func:`specgrad.theory.imbalanced.deep_gradients`). A class is saturated once the
product's ``W_eff[c, c]`` reaches ``saturation * w*_c``; off the diagonal the optimum is 0.

Example:
    >>> mix = th.mixture([0.5, 0.3, 0.2], mu=2.0, sigma=1.0)
    >>> layers = random_init(mix, depth=2, width=8, scale=1e-2, generator=torch.Generator().manual_seed(0))
    >>> [tuple(W.shape) for W in layers]
    [(8, 3), (3, 8)]
    >>> out = train_layers(mix, layers, "specgd", lr=0.01, max_steps=2000)
    >>> all(t > 0 for t in out["t_sat"])
    True
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ...linalg import polar_svd
from ...theory import imbalanced as th
from ..methods import make

DTYPE = torch.float64
COLORS = {"gd": "C0", "specgd": "C3", "shampoo": "C5"}


def step_size(mix: th.Mixture, depth: int, method: str, *, saturation: float, specgd_steps: int,
              gd_fraction: float) -> float:  # fmt: skip
    """The step-size rules of the depth experiments: GD ``gd_fraction`` times its stability
    limit at the aligned solution; SpecGD and Shampoo ``(saturation w*_min)^(1/L)`` over
    ``specgd_steps + sqrt(2) - 1``, so that SpecGD's rarest class needs about
    ``specgd_steps`` steps (with Adam grafting Shampoo moves each entry by about its step,
    as SpecGD does). The irrational offset keeps every class's threshold off the grid of
    steps (targets in a rational ratio would otherwise land exactly on a step, where float
    rounding decides)."""
    if method in ("specgd", "shampoo"):
        return (saturation * float(mix.target.min())) ** (1.0 / depth) / (specgd_steps + math.sqrt(2) - 1)
    return gd_fraction * th.gd_stability_lr(mix, depth)


def relative_gap(t_sat) -> float:
    """``max_c t_c / min_c t_c - 1`` (``nan`` if a class never saturated).

    Example:
        >>> relative_gap([10, 15, 20])
        1.0
    """
    t = np.asarray(t_sat, dtype=float)
    return float(t.max() / t.min() - 1) if np.isfinite(t).all() and t.min() > 0 else math.nan


def random_init(mix: th.Mixture, depth: int, width: int, scale: float,
                generator: Optional[torch.Generator] = None) -> list[Tensor]:  # fmt: skip
    """Gaussian layers ``W_1`` ``(width, d)``, ``W_l`` ``(width, width)``, ``W_L`` ``(k, width)``
    (``depth = 1``: one ``(k, d)`` layer), entries ``N(0, a^2 / fan_in)`` with ``a = scale^(1/L)``,
    so that the product has size about ``scale``; no alignment with the classes."""
    if depth < 1 or width < mix.k:
        raise ValueError(f"need depth >= 1 and width >= k={mix.k}, got depth={depth}, width={width}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    dims = [mix.d] + [width] * (depth - 1) + [mix.k]
    a = scale ** (1.0 / depth)
    return [a * torch.randn(dims[i + 1], dims[i], dtype=DTYPE, generator=generator) / math.sqrt(dims[i])
            for i in range(depth)]  # fmt: skip


def train_layers(mix: th.Mixture, layers: Sequence[Tensor], method: str, lr: float, max_steps: int, *,
                 saturation: float = 0.9, keep_points: int = 400,
                 callback: Optional[Callable[[int], None]] = None) -> dict[str, list]:  # fmt: skip
    """Train ``W_L ... W_1`` (``layers = [W_1, ..., W_L]``, copied) on the population loss until
    every class is saturated or ``max_steps``: ``"gd"`` (``W - lr G``), ``"specgd"``
    (``W - lr polar(G)``, exact truncated SVD per layer), or any other method of
    :data:`~specgrad.experiments.methods.METHODS` with its defaults (``"shampoo"``, say).

    Returns ``t_sat`` (first step with ``W_eff[c, c] >= saturation w*_c``, ``nan`` if never),
    ``off_at_sat`` (``||W_eff - diag||_F`` at the last saturation), ``lr``, and a trajectory
    thinned to about ``keep_points`` points: ``step``, ``w<c>``, ``off``.
    """
    params = [W.detach().clone().to(DTYPE) for W in layers]
    opt = None
    if method not in ("gd", "specgd"):
        params = [torch.nn.Parameter(W) for W in params]
        opt = make(method, params, lr)
    target = mix.target
    k = mix.k
    t_sat = np.full(k, math.nan)
    rows = []
    for t in range(max_steps + 1):
        with torch.no_grad():
            P = th.product([W.detach() for W in params])
            diag = P[:, :k].diagonal().clone()
            off = (P.square().sum() - diag.square().sum()).clamp_min(0).sqrt()
        rows.append(torch.cat([diag, off[None]]).tolist())
        hit = (diag >= saturation * target).numpy() & np.isnan(t_sat)
        t_sat[hit] = t
        if np.isfinite(t_sat).all() or t == max_steps:
            break
        _, grads = th.deep_gradients([W.detach() for W in params], mix)
        if opt is None:
            step = grads if method == "gd" else [polar_svd(G) for G in grads]
            params = [W - lr * S for W, S in zip(params, step)]
        else:
            for W, G in zip(params, grads):
                W.grad = G
            opt.step()
        if callback is not None:
            callback(t)
    R = np.asarray(rows)
    keep = np.unique(np.linspace(0, len(R) - 1, min(len(R), keep_points)).round().astype(int))
    out: dict[str, list] = {"step": keep.tolist()}
    for c in range(k):
        out[f"w{c}"] = [float(f"{v:.8g}") for v in R[keep, c]]
    out["off"] = [float(f"{v:.6g}") for v in R[keep, -1]]
    out["t_sat"] = t_sat.tolist()
    out["off_at_sat"] = [float(R[-1, -1])]
    out["lr"] = [lr]
    return out
