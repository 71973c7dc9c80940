"""Experiments: one module per family, each a config dataclass plus functions, run by
:func:`run_experiment` (``specgrad run NAME``)."""

from .registry import EXPERIMENTS, PRESETS, Claim, Experiment, UsageError, get, register
from .runner import run_experiment, write_json

__all__ = ["EXPERIMENTS", "PRESETS", "Claim", "Experiment", "UsageError", "get", "register",
           "run_experiment", "write_json"]  # fmt: skip
