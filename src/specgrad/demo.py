"""A short demonstration of the linear-algebra core: orthogonalizers side by side."""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from .linalg import orthogonalize, predicted_band, singular_value_range


def linalg_table(size: int = 512, seed: int = 0) -> Table:
    """Orthogonalize a ``size x size`` gradient-like matrix (decaying spectrum) with each
    method and tabulate time, output singular-value range and the predicted band."""
    if size < 2:
        raise ValueError(f"size must be at least 2, got {size}")
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -2, size, dtype=torch.float64)
    G = ((U * s) @ V.T).float()
    lower = float(s[-1] / s.norm())

    table = Table(title=f"orthogonalize({size}x{size}), singular values spread over 1e-2..1")
    for col in ("method", "steps", "ms", "sigma min", "sigma max", "predicted band"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for method, steps in (("svd", None), ("newton_schulz", 5), ("polar_express", 5), ("polar_express", 8)):
        start = time.perf_counter()
        O = orthogonalize(G, method, steps)
        ms = 1e3 * (time.perf_counter() - start)
        lo, hi = singular_value_range(O)
        band = "exact" if steps is None else "[{:.3f}, {:.3f}]".format(*predicted_band(method, steps, lower))
        table.add_row(method, str(steps or "-"), f"{ms:.1f}", f"{lo:.4f}", f"{hi:.4f}", band)
    return table


def print_linalg_table(size: int = 512, seed: int = 0) -> None:
    Console().print(linalg_table(size, seed))
