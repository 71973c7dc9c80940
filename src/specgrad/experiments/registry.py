"""What an experiment is: a config dataclass, presets, and three functions.

Settings are checked in one place, :meth:`Experiment.make_config`, before anything is
written or run. Three layers of checks, each a :class:`UsageError` naming the setting, the
value and what is allowed:

1. the type: ``--set steps=2.5`` on an ``int`` field (:func:`parse_value`);
2. rules that hold for every field: a float (or every float of a tuple) is finite, unless
   the field allows otherwise with ``setting(..., finite=False)``;
3. what the config declares: bounds on a field, through :func:`setting` (or
   ``dataclasses.field(metadata=bounds(...))``), and a ``validate(self)`` method for rules
   that tie several fields together; it raises ``ValueError`` with a message.

Bounds apply to the value, or to every item of a tuple or list::

    @dataclass
    class Config:
        steps: int = setting(100, ge=1)              # an integer >= 1
        lr: float = setting(0.1, gt=0)               # > 0 (and finite, as every float)
        keep: float = setting(0.5, ge=0, le=1)       # in [0, 1]
        widths: tuple[int, ...] = setting((8, 16), ge=1, nonempty=True)
        mlp: str = setting("gelu", choices=("gelu", "relu"))

        def validate(self):
            if self.keep * self.steps < 1:
                raise ValueError("keep * steps must be at least 1")

Example:
    >>> @dataclass
    ... class Config:
    ...     steps: int = setting(10, ge=1)
    ...     scale: float = 1.0
    >>> exp = Experiment("bounds-example", "", Config, run_seed=None, analyze=None)
    >>> exp.make_config("smoke", {"steps": "4"})
    Config(steps=4, scale=1.0)
    >>> exp.make_config("smoke", {"steps": "0"})
    Traceback (most recent call last):
    ...
    specgrad.experiments.registry.UsageError: setting 'steps' must be >= 1, got 0
    >>> exp.make_config("smoke", {"scale": "nan"})
    Traceback (most recent call last):
    ...
    specgrad.experiments.registry.UsageError: setting 'scale' must be finite, got nan
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

PRESETS = ("smoke", "demo", "quick", "paper")


class UsageError(ValueError):
    """Bad input from the command line: reported as one line, exit code 2."""


@dataclass(frozen=True)
class Bounds:
    """The allowed values of one config field (of every item, for a tuple or list).

    ``ge``/``gt``/``le``/``lt``: inclusive and strict lower and upper bounds; ``choices``:
    the allowed values; ``finite``: whether floats must be finite (the default rule of
    every field); ``nonempty``: a tuple or list needs at least one item.
    """

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: Optional[tuple] = None
    finite: bool = True
    nonempty: bool = False

    def describe(self) -> str:
        """What is allowed, in words: ``">= 1"``, ``"in (0, 1]"``, ``"one of 'a', 'b'"``."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return "finite" if self.finite else "any value"

    def allows(self, value) -> bool:
        """Whether one value (not a sequence) is allowed."""
        if self.choices is not None and value not in self.choices:
            return False
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # bounds speak of numbers; strings and flags only of choices
        if math.isnan(value):
            return not self.finite
        if self.finite and math.isinf(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))  # fmt: skip


def bounds(**limits) -> dict:
    """``dataclasses.field`` metadata declaring :class:`Bounds`:
    ``field(default=1, metadata=bounds(ge=1))``."""
    return {"bounds": Bounds(**limits)}


def setting(default, **limits) -> Any:
    """A config field with a default and :class:`Bounds`: ``steps: int = setting(100, ge=1)``."""
    return field(default=default, metadata=bounds(**limits))


def check_setting(key: str, value, limits: Optional[Bounds] = None) -> None:
    """Raise :class:`UsageError` naming ``key``, ``value`` and what is allowed unless
    ``value`` (every item, for a tuple or list) satisfies ``limits`` (default: finite)."""
    limits = limits or Bounds()
    items = value if isinstance(value, (tuple, list)) else (value,)
    if isinstance(value, (tuple, list)) and limits.nonempty and not value:
        raise UsageError(f"setting {key!r} needs at least one value, got none")
    for item in items:
        if item is None or limits.allows(item):
            continue
        if item is value:
            raise UsageError(f"setting {key!r} must be {limits.describe()}, got {_show(value)}")
        raise UsageError(f"every value of setting {key!r} must be {limits.describe()}, "
                         f"got {_show(item)} in {_show(value)}")  # fmt: skip


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value)
    return repr(value) if isinstance(value, str) else f"{value}"


CLAIM_KINDS = ("study", "self-consistency", "sanity")


@dataclass(frozen=True)
class Claim:
    """A checked statement: ``passed`` is ``value >= threshold`` (``"min"``) or
    ``value <= threshold`` (``"max"``), computed from the series, never typed in.

    ``kind`` says what the check stands for: ``"study"`` tests a statement of a study,
    ``"self-consistency"`` a closed form against its own simulation, ``"sanity"`` something
    any correct code satisfies (the report counts them apart). A claim that needs a larger
    run than the preset's is built with :meth:`not_assessed`: ``passed`` is ``None`` and
    ``reason`` says what size it needs.

    Example:
        >>> Claim("gap", "SpecGD leads early", value=0.3, threshold=0.0).passed
        True
        >>> c = Claim.not_assessed("gap-grows", "the gap grows", "needs k >= 10 classes")
        >>> c.passed is None, c.to_dict()["reason"]
        (True, 'needs k >= 10 classes')
    """

    id: str
    statement: str
    value: Optional[float]
    threshold: float
    direction: str = "min"
    kind: str = "study"
    reason: str = ""

    def __post_init__(self):
        if self.direction not in ("min", "max"):
            raise ValueError(f"direction must be 'min' or 'max', got {self.direction!r}")
        if self.kind not in CLAIM_KINDS:
            raise ValueError(f"kind must be one of {CLAIM_KINDS}, got {self.kind!r}")
        if self.value is None and not self.reason:
            raise ValueError(f"claim {self.id!r} is not assessed: give the reason")

    @classmethod
    def not_assessed(cls, id: str, statement: str, reason: str, *, threshold: float = float("nan"),
                     direction: str = "min", kind: str = "study") -> "Claim":  # fmt: skip
        """A claim this run cannot decide (too small a preset, say), with the reason."""
        return cls(id, statement, None, threshold, direction, kind, reason)

    @property
    def passed(self) -> Optional[bool]:
        if self.value is None:
            return None
        v = float(self.value)
        return v >= self.threshold if self.direction == "min" else v <= self.threshold

    def to_dict(self) -> dict:
        value = None if self.value is None else float(self.value)
        out = {"id": self.id, "statement": self.statement, "passed": self.passed, "value": value,
               "threshold": float(self.threshold), "direction": self.direction, "kind": self.kind}  # fmt: skip
        if self.reason:
            out["reason"] = self.reason
        return out


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
    * ``minutes``: a rough wall time per preset on two idle CPU cores (optional);
      ``reproduce`` runs the quickest experiments first, so the first result comes early.
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
    minutes: dict[str, float] = field(default_factory=dict)

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
            self.check_config(values)

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
        return self.check_config(values)

    def check_config(self, values: dict):
        """The config built from ``values`` once every field satisfies its :class:`Bounds`
        (finite floats where none are declared) and the config's ``validate()`` passes;
        :class:`UsageError` otherwise."""
        try:
            cfg = self.config(**values)
        except (TypeError, ValueError) as e:  # a __post_init__ that checks its fields
            raise UsageError(f"{self.name}: {e}") from None
        for f in dataclasses.fields(cfg):
            check_setting(f.name, getattr(cfg, f.name), f.metadata.get("bounds"))
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            try:
                validate()
            except ValueError as e:
                raise UsageError(f"{self.name}: {e}") from None
        return cfg


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
