"""Routing from measurement: which parameters the measured ``nr(G) / st(A)`` sends to the
spectral rule, as :func:`~specgrad.optim.split_params` overrides."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

RULES = ("spectral", "adamw")
# Routing reasons that no measurement overrides: a lookup table (its rows are tokens or
# positions, and a tied output head shares them) or expert scores; Muon's own recipe keeps
# them on AdamW, and the one-step bound speaks of one multiplication, not of a lookup.
FIXED = ("embedding", "router")
COLUMNS = ["parameter", "blocks", "gain", "margin", "probe", "default", "rule", "reason"]


@dataclass
class Recommendation:
    """What :func:`recommend_routing` concludes.

    ``table``: one row per parameter: ``parameter``, ``blocks`` (how many were measured),
    ``gain`` (the geometric mean of ``nr(G) / st(A)`` over its blocks and steps),
    ``margin`` (how far past the decision line, as a factor: ``gain / threshold`` for
    spectral, ``threshold / gain`` for AdamW; NaN when no rule is recommended), ``probe``
    (what the measured probe preferred, ``""`` without one), ``default`` (the rule the
    routing it was given uses), ``rule`` (``"spectral"``, ``"adamw"`` or ``"keep"``) and
    ``reason``. ``overrides``: ``split_params`` overrides for every rule that differs from
    the default (every recommended rule without a routing), with ``fnmatch`` patterns
    (``h.*.mlp.c_fc.weight``) where a pattern covers only parameters that agree.
    """

    table: pd.DataFrame
    overrides: dict[str, str]

    def code(self) -> str:
        """The overrides as Python, ready to paste.

        Example:
            >>> print(Recommendation(pd.DataFrame(), {"h.*.attn.weight": "adamw"}).code())
            split_params(model, overrides={
                "h.*.attn.weight": "adamw",
            })
        """
        if not self.overrides:
            return "split_params(model)  # the measurement agrees with the default routing"
        lines = [f"    {k!r}: {v!r},".replace("'", '"') for k, v in self.overrides.items()]
        return "\n".join(["split_params(model, overrides={", *lines, "})"])


def recommend_routing(report: Any, *, routing: Any = None, parameters: Optional[Mapping[str, str]] = None,
                      threshold: float = 1.0, band: float = 1.25) -> Recommendation:  # fmt: skip
    """Turn a diagnosis into :func:`~specgrad.optim.split_params` overrides.

    ``report``: a :func:`~specgrad.diagnostics.diagnose` frame, a monitor history
    (:meth:`SpectralMonitor.frame`, every step), or an open :class:`SpectralMonitor` (its
    history, and its blocks' parameter names). A parameter's ``gain`` is the geometric mean
    of ``nr(G) / st(A)`` over its blocks (a fused q/k/v has three, an expert stack one per
    expert) and sampled steps: ``gain >= threshold * band`` recommends the spectral rule,
    ``gain <= threshold / band`` AdamW, anything between (or a parameter never measured)
    keeps its default. One step's theory puts the line at ``threshold = 1``; ``band``
    leaves alone the parameters a noisy estimate could put on either side. Where the report
    has a probe (``diagnose(probe=True)``) and most probed blocks of a parameter measured
    the other step lower, the parameter keeps its default too.

    ``routing``: a :class:`~specgrad.optim.ParamRouting` (``split_params(model)``) or a
    dict ``name -> rule``: the defaults; overrides are given only where the recommendation
    differs. A ``ParamRouting`` also keeps embeddings (and heads tied to them) and
    mixture-of-experts routers where it puts them, whatever their gain (:data:`FIXED`). ``parameters``: block -> parameter name, for a history without a ``parameter``
    column (the monitor's records); without it, a block ``fc`` is taken to be ``fc.weight``.

    Example:
        >>> report = pd.DataFrame({"block": ["h.0.fc", "h.1.fc", "head"],
        ...                        "parameter": ["h.0.fc.weight", "h.1.fc.weight", "head.weight"],
        ...                        "predicted_gain": [4.0, 3.0, 0.2]})
        >>> rec = recommend_routing(report, routing={"h.0.fc.weight": "adamw", "h.1.fc.weight": "adamw",
        ...                                          "head.weight": "adamw"})
        >>> rec.overrides
        {'h.*.fc.weight': 'spectral'}
        >>> rec.table[["parameter", "rule", "margin"]].values.tolist()[2]
        ['head.weight', 'adamw', 5.0]
    """
    if not (threshold > 0 and band >= 1):
        raise ValueError(f"threshold must be positive and band at least 1, got threshold={threshold}, band={band}")
    frame, parameters = _frame(report, parameters)
    defaults, fixed = _defaults(routing)
    gains = frame["predicted_gain"] if "predicted_gain" in frame else frame.get("ratio")
    if "predicted_gain" in frame and "ratio" in frame:  # a diagnosis and a history together
        gains = gains.fillna(frame["ratio"])
    if gains is None or "block" not in frame:
        raise ValueError(f"the report needs columns block and predicted_gain (or ratio), got {list(frame.columns)}")
    frame = frame.assign(_gain=pd.to_numeric(gains, errors="coerce"))
    if "parameter" not in frame or frame["parameter"].isna().all() or (frame["parameter"] == "").all():
        frame["parameter"] = [parameters.get(b) or _guess(b, defaults) for b in frame["block"]]
    rows = []
    for name, part in frame.groupby("parameter", sort=False):
        row = _decide(name, part, defaults.get(name, ""), threshold, band)
        if name in fixed and row["rule"] in RULES and row["rule"] != row["default"]:
            row.update(rule="keep", margin=math.nan, reason=f"{row['reason']}; kept on {row['default']}: {fixed[name]}")
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    final = {**defaults, **{r["parameter"]: r["rule"] for r in rows if r["rule"] in RULES}}
    changed = {r["parameter"]: r["rule"] for r in rows if r["rule"] in RULES and r["rule"] != r["default"]}
    return Recommendation(table, _compress(changed, final))


def _frame(report: Any, parameters: Optional[Mapping[str, str]]) -> tuple[pd.DataFrame, dict]:
    parameters = dict(parameters or {})
    if isinstance(report, pd.DataFrame):
        return report, parameters
    if hasattr(report, "frame") and hasattr(report, "blocks"):  # a SpectralMonitor
        for b in report.blocks:
            parameters.setdefault(b, report.block(b).parameter)
        return report.frame(), parameters
    raise ValueError(f"report must be a DataFrame (diagnose, SpectralMonitor.frame) or a SpectralMonitor, "
                     f"got {type(report).__name__}")  # fmt: skip


def _defaults(routing: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The default rule of every parameter, and the routing's reason for those it fixes."""
    if routing is None:
        return {}, {}
    if hasattr(routing, "routes"):
        fixed = {r.name: r.reason for r in routing.routes if any(w in r.reason for w in FIXED)}
        return {r.name: r.rule for r in routing.routes}, fixed
    if isinstance(routing, Mapping):
        return dict(routing), {}
    raise ValueError(f"routing must be a ParamRouting or a dict name -> rule, got {type(routing).__name__}")


def _guess(block: str, defaults: Mapping[str, str]) -> str:
    """The parameter of a monitor block: ``fc`` -> ``fc.weight``; ``attn.c_attn.q`` (a part)
    or ``experts.down_proj.3`` (an expert) -> the first existing name up the path."""
    parts = block.split(".")
    for k in range(len(parts), 0, -1):
        base = ".".join(parts[:k])
        for candidate in (f"{base}.weight", base):
            if candidate in defaults:
                return candidate
    return f"{block}.weight"


def _decide(name: str, part: pd.DataFrame, default: str, threshold: float, band: float) -> dict:
    g = part["_gain"]
    g = g[(g > 0) & g.map(math.isfinite)]
    row = dict(parameter=name, blocks=int(part["block"].nunique()), gain=math.nan, margin=math.nan, probe="",
               default=default, rule="keep")  # fmt: skip
    if g.empty:
        verdicts = sorted(set(part["verdict"])) if "verdict" in part else []
        return dict(row, reason=f"not measured ({', '.join(verdicts) or 'no gain'})")
    gain = math.exp(float(g.map(math.log).mean()))
    row["gain"] = gain
    probed = part["measured"][part["measured"].isin(["spectral", "euclidean"])] if "measured" in part else part["block"][:0]
    if len(probed):
        spectral = int((probed == "spectral").sum())
        row["probe"] = f"spectral on {spectral}/{len(probed)}"
    if gain >= threshold * band:
        rule, margin = "spectral", gain / threshold
        reason = f"nr/st = {gain:.3g}: the spectral step's guaranteed decrease is {margin:.3g}x the Euclidean one's"
    elif gain <= threshold / band:
        rule, margin = "adamw", threshold / gain
        reason = f"nr/st = {gain:.3g}: the Euclidean step's guaranteed decrease is {margin:.3g}x the spectral one's"
    else:
        return dict(row, reason=f"nr/st = {gain:.3g}, within {band:g}x of {threshold:g}: too close to call")
    if len(probed):
        agree = int((probed == ("spectral" if rule == "spectral" else "euclidean")).sum())
        if 2 * agree < len(probed):
            return dict(row, reason=f"{reason}, but the probe measured the other step lower on "
                                    f"{len(probed) - agree}/{len(probed)} blocks")  # fmt: skip
    return dict(row, rule=rule, margin=margin, reason=reason)


def _compress(changed: dict[str, str], final: dict[str, str]) -> dict[str, str]:
    """``changed`` with layer indices turned into ``*`` where every name the pattern matches
    (among ``final``, the routing after the change) gets the same rule."""
    out: dict[str, str] = {}
    done = set()
    for name, rule in changed.items():
        if name in done:
            continue
        pattern = re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", name)
        pattern = re.sub(r"([\[\]?])", r"[\1]", pattern) if pattern != name else pattern
        matched = [n for n in {**final, **changed} if fnmatch.fnmatchcase(n, pattern)]
        if pattern != name and len(matched) > 1 and all(final.get(n, changed.get(n)) == rule for n in matched):
            out[pattern] = rule
            done.update(matched)
        else:
            out[_escape(name)] = rule
            done.add(name)
    return out


def _escape(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)
