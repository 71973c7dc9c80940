"""What an experiment is: a config dataclass, presets, and three functions."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

PRESETS = ("smoke", "demo", "quick", "paper")


class UsageError(ValueError):
    """Bad input from the command line: reported as one line, exit code 2."""


@dataclass(frozen=True)
class Claim:
    """A checked statement of a study: ``passed`` is ``value >= threshold`` (``"min"``) or
    ``value <= threshold`` (``"max"``), computed from the series, never typed in."""

    id: str
    statement: str
    value: float
    threshold: float
    direction: str = "min"

    def __post_init__(self):
        if self.direction not in ("min", "max"):
            raise ValueError(f"direction must be 'min' or 'max', got {self.direction!r}")

    @property
    def passed(self) -> bool:
        v = float(self.value)
        return v >= self.threshold if self.direction == "min" else v <= self.threshold

    def to_dict(self) -> dict:
        return {"id": self.id, "statement": self.statement, "passed": self.passed,
                "value": float(self.value), "threshold": float(self.threshold), "direction": self.direction}  # fmt: skip


Series = dict[str, dict[str, list]]  # method -> metric -> per-step values


@dataclass
class Experiment:
    """A registered experiment.

    * ``run_seed(config, seed, ctx) -> Series``: one seed of every method; keys of the
      returned dict are method names, values dicts of per-step lists.
    * ``analyze(config, series) -> (summary, claims)``: ``series`` maps
      ``"<method>/seed<k>"`` to metrics; the summary is a flat dict of numbers.
    * ``plot(config, series, summary, outdir) -> [file names]`` (optional).
    * ``tune(config, ctx) -> dict`` (optional): runs once before the seeds (a learning-rate
      sweep, say); its result is saved, recorded in the result file under ``"tuning"``, and
      given to every ``run_seed`` as ``ctx.tuning``.
    * ``presets``: overrides of the config's defaults per preset; ``seeds``: default seed
      count per preset; ``size(config)``: a short description of the run's size. Presets:
      ``smoke`` runs in seconds (tests), ``demo`` is what ``make demo`` runs (every
      experiment together in about ten minutes on two cores; ``quick``'s settings and seeds
      unless given), ``quick`` takes minutes per experiment (the documentation's figures),
      ``paper`` the study's scale.
    """

    name: str
    description: str
    config: type
    run_seed: Callable[[Any, int, Any], Series]
    analyze: Callable[[Any, dict], tuple[dict, list[Claim]]]
    plot: Optional[Callable[[Any, dict, dict, Any], list[str]]] = None
    tune: Optional[Callable[[Any, Any], dict]] = None
    presets: dict[str, dict] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=lambda: {"smoke": 1, "quick": 3, "paper": 5})
    size: Callable[[Any], str] = lambda cfg: ""

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"config of {self.name!r} must be a dataclass")
        self.presets.setdefault("demo", self.presets.get("quick", {}))
        self.seeds.setdefault("demo", self.seeds.get("quick", 1))
        unknown = set(self.presets) - set(PRESETS)
        if unknown:
            raise ValueError(f"unknown presets {sorted(unknown)} for {self.name!r}; allowed {PRESETS}")
        names = {f.name for f in dataclasses.fields(self.config)}
        for preset, values in self.presets.items():
            bad = set(values) - names
            if bad:
                raise ValueError(f"preset {preset!r} of {self.name!r} sets unknown fields {sorted(bad)}")

    def make_config(self, preset: str, overrides: Optional[dict[str, str]] = None):
        """The config of ``preset`` with ``--set`` style string overrides applied."""
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values = dict(self.presets.get(preset, {}))
        hints = typing.get_type_hints(self.config)
        allowed = [f.name for f in dataclasses.fields(self.config)]
        for key, raw in (overrides or {}).items():
            if key not in allowed:
                raise UsageError(f"{self.name} has no setting {key!r}; settings: {', '.join(allowed)}")
            values[key] = parse_value(raw, hints[key], key)
        return self.config(**values)


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment to the registry (names are unique)."""
    if experiment.name in EXPERIMENTS and EXPERIMENTS[experiment.name] is not experiment:
        raise ValueError(f"an experiment named {experiment.name!r} is already registered")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; available: {', '.join(sorted(EXPERIMENTS)) or 'none'}")
    return EXPERIMENTS[name]


def parse_value(raw: str, typ, key: str):
    """Parse a ``--set`` string into ``typ`` (int, float, bool, str, Optional[...], tuple or
    list of those); raise :class:`UsageError` naming the key and the expected type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union and type(None) in args:
        if raw.lower() in ("none", "null", ""):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return parse_value(raw, inner, key)
    if origin in (tuple, list):
        inner = args[0] if args else str
        items = [parse_value(x.strip(), inner, key) for x in raw.split(",") if x.strip()]
        return tuple(items) if origin is tuple else items
    try:
        if typ is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ in (int, float, str):
            return typ(raw)
    except ValueError:
        pass
    else:
        raise UsageError(f"setting {key!r} has unsupported type {typ}")
    raise UsageError(f"setting {key!r} expects {getattr(typ, '__name__', typ)}, got {raw!r}")
