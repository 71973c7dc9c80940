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
