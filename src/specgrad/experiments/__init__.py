"""Experiments: a package per study, one module per experiment (a config dataclass, its
functions and one ``register(Experiment(...))``), found by :func:`.catalog.load_all` and run by
:func:`run_experiment` (``specgrad run NAME``).

Shared pieces, named for what they do: :mod:`.methods` (method name -> optimizer, learning-rate
grids), :mod:`.training` (the language-model loop), :mod:`.series` and :mod:`.plots` (reading
and drawing results), :mod:`.classification` (per-class metrics), :mod:`.devices` (``--device``).
Experiments import none of each other; shared problems live in :mod:`specgrad.theory`,
:mod:`specgrad.data` and :mod:`specgrad.models`.
"""

from .registry import EXPERIMENTS, PRESETS, Claim, Experiment, UsageError, get, register
from .runner import run_experiment, write_json

__all__ = ["EXPERIMENTS", "PRESETS", "Claim", "Experiment", "UsageError", "get", "register",
           "run_experiment", "write_json"]  # fmt: skip
