"""Argument checks shared by every package of specgrad: each raises ``ValueError`` naming
the argument and the offending value."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class NonFiniteStatisticError(FloatingPointError):
    """A statistic (an activation Gram, a gradient's norms) came out NaN or Inf; the message
    names the block or accumulator it belongs to. :class:`~specgrad.diagnostics.SpectralMonitor`,
    :func:`~specgrad.diagnostics.diagnose` and :class:`GramAccumulator` raise it instead of
    letting an eigensolver fail on the NaN."""


def check_floating(dtype, name: str = "dtype", *, what: str = "a floating dtype, got") -> torch.dtype:
    """``dtype`` if it is one of :data:`FLOAT_DTYPES`, else ``ValueError`` naming ``name``;
    complex dtypes are told so: the spectral routines work on real matrices only.

    Example:
        >>> check_floating(torch.int32, "ns_dtype")
        Traceback (most recent call last):
        ...
        ValueError: ns_dtype must be a floating dtype, got torch.int32 (float16, bfloat16, float32 or float64)
    """
    if dtype in FLOAT_DTYPES:
        return dtype
    if isinstance(dtype, torch.dtype) and dtype.is_complex:
        raise ValueError(f"{name} must be {what} {dtype}: complex matrices are not supported "
                         "(the polar factor and spectral maps here are of real matrices)")  # fmt: skip
    raise ValueError(f"{name} must be {what} {dtype} (float16, bfloat16, float32 or float64)")


def check_matrix(x: Tensor, name: str = "input", *, finite: bool = True) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating tensor of shape ``(..., m, n)``.

    With ``finite=True`` it also counts NaN and Inf entries and reports how many.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dims (..., m, n), got shape {tuple(x.shape)}"
        )
    check_floating(x.dtype, name, what="a floating tensor, got dtype")
    if finite:
        # One reduction first: any NaN/Inf entry makes the sum non-finite; only then count
        # (a sum that overflows from large finite entries just falls through to the count).
        total = x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        if bool(torch.isfinite(total)):
            return
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            n_nan = int(torch.isnan(x).sum())
            raise ValueError(
                f"{name} has {bad} non-finite entries ({n_nan} NaN, {bad - n_nan} Inf) "
                f"out of {x.numel()}"
            )


def check_positive_int(value, name: str) -> int:
    """``value`` if it is an int (not a bool) above 0, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_nonnegative_int(value, name: str) -> int:
    """``value`` if it is an int (not a bool) of at least 0, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype exact factorizations run in: half precisions are upcast to float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_range(name: str, value, lo: float, hi: Optional[float] = None, *, lo_open: bool = False,
                hi_open: bool = True) -> float:  # fmt: skip
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a real number in the interval
    from ``lo`` to ``hi`` (closed at ``lo`` and open at ``hi`` by default; ``hi=None`` is
    unbounded). NaN is never in range.

    Example:
        >>> check_range("momentum", 0.9, 0.0, 1.0)
        0.9
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        bounds = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}")
    return value
