"""``--device``: every experiment either runs on ``ctx.device`` or refuses another device here.

Example:
    >>> class Ctx:
    ...     device = torch.device("cuda")
    >>> cpu_only(Ctx(), "random-features", "float64 least squares")
    Traceback (most recent call last):
    ...
    specgrad.experiments.registry.UsageError: random-features runs on the CPU only (float64 least squares); got --device cuda
"""

from __future__ import annotations

import torch

from .registry import UsageError


def cpu_only(ctx, experiment: str, why: str) -> None:
    """Raise :class:`~specgrad.experiments.UsageError` naming ``experiment`` (and ``why``) unless
    ``ctx.device`` is the CPU. Called first by ``run_seed`` and ``tune`` of an experiment that
    does not use the device."""
    device = torch.device(ctx.device)
    if device.type != "cpu":
        raise UsageError(f"{experiment} runs on the CPU only ({why}); got --device {device}")
