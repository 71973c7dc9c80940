"""Reading a result's series: ``{"<key>/seed<k>": {metric: [values]}}``.

Result files store NaN and Inf as ``null``, and the analysis reruns on those files when a run
resumes, so every helper here reads values as floats (``None`` -> NaN).

Example:
    >>> series = {"gd/seed0": {"step": [0, 1], "loss": [2.0, 1.0]},
    ...           "gd/seed1": {"step": [0, 1], "loss": [4.0, None]}}
    >>> [r["loss"][0] for r in seed_runs(series, "gd")]
    [2.0, 4.0]
    >>> finite_mean([1.0, None, float("nan"), 3.0]), geomean([1.0, 4.0, -1.0])
    (2.0, 2.0)
    >>> at(series["gd/seed0"], "loss", 5), first_reach([0, 10], [3.0, 1.0], 2.0)
    (1.0, 5.0)
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Optional

import numpy as np


def key_of(name: str) -> str:
    """``"<key>/seed<k>"`` -> ``"<key>"``."""
    return re.sub(r"/seed\d+$", "", name)


def seed_runs(series: dict, key: str) -> list[dict]:
    """Every seed of ``key``, in the order of their names."""
    return [v for k, v in sorted(series.items()) if key_of(k) == key]


def by_method(series: dict, metric: str, x: str = "step") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"<key>/seed<k>": {...}}`` -> ``{key: (x, values (seeds, len))}``, truncated to the
    shortest seed so that runs stopped early still stack."""
    groups = defaultdict(list)
    for name, metrics in series.items():
        if metric in metrics:
            groups[key_of(name)].append((np.asarray(metrics[x], dtype=float), np.asarray(metrics[metric], dtype=float)))
    out = {}
    for key, runs in groups.items():
        n = min(len(v) for _, v in runs)
        out[key] = (runs[0][0][:n], np.stack([v[:n] for _, v in runs]))
    return out


def curve(series: dict, key: str, metric: str, x: str = "step") -> Optional[tuple[np.ndarray, np.ndarray]]:
    """:func:`by_method` of the one ``key`` (``None`` if it has no such metric)."""
    return by_method({k: v for k, v in series.items() if key_of(k) == key}, metric, x).get(key)


def first_at_least(values, target: float) -> float:
    """First index with a finite ``values[i] >= target``; ``len(values)`` (censored) if none."""
    v = np.asarray(values, dtype=float)
    hit = np.flatnonzero(np.isfinite(v) & (v >= target))
    return float(hit[0]) if hit.size else float(v.size)


def finite_mean(values) -> float:
    """Mean of the finite values (NaN if none)."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def geomean(values) -> float:
    """Geometric mean of the finite positive values (NaN if none)."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.log(v).mean())) if v.size else math.nan


def finite_max(values) -> float:
    """Max of the finite values (NaN if none)."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else math.nan


def finite_or(value: Optional[float], default: float) -> float:
    """``value`` if it is a finite number, else ``default``."""
    return value if value is not None and math.isfinite(value) else default


def positive(x) -> float:
    """A loss or gap for ratios: ``None``/NaN/inf (a diverged run) -> 1e300, at least 1e-300."""
    x = math.nan if x is None else float(x)
    return min(max(x, 1e-300), 1e300) if math.isfinite(x) else 1e300


def rounded(values, digits: int = 8) -> list[float]:
    """Every value rounded to ``digits`` significant digits (keeps result files small)."""
    return [float(f"{float(x):.{digits}g}") for x in values]


def at(run: dict, metric: str, step: int) -> float:
    """``run[metric]`` at ``step`` (the last value if the run stopped before it; NaN if none)."""
    steps = run["step"]
    if not steps or step < steps[0]:
        return math.nan
    i = min(int(np.searchsorted(steps, step)), len(steps) - 1)
    v = run[metric][i]
    return math.nan if v is None else float(v)


def paired_ratios(num: list[dict], den: list[dict], metric: str, step: int) -> list[float]:
    """Per seed, ``metric`` of ``num`` over ``metric`` of ``den`` at ``step``, both through
    :func:`positive`."""
    return [positive(at(a, metric, step)) / positive(at(b, metric, step)) for a, b in zip(num, den)]


def first_reach(steps, values, target: float) -> float:
    """First ``steps[i]`` with ``values[i] <= target`` (linear interpolation between
    evaluations), or NaN if never reached."""
    for i, v in enumerate(values):
        if v <= target:
            if i == 0:
                return float(steps[0])
            v0, s0 = values[i - 1], steps[i - 1]
            return float(s0 + (steps[i] - s0) * (v0 - target) / (v0 - v))
    return math.nan


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN with fewer than two positive points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return math.nan
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])
