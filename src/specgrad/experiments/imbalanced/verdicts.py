"""Claims decided against a run's own noise, and the shape of a gap over time.

A measured difference ``value`` (positive: the statement holds) is decided only where it is
larger than its ``noise`` (two standard errors, from the test set's binomial or per-sample
spread, or from the seeds): it passes at ``value >= center + noise``, fails at
``value <= center - noise``, and in between the run is too small to decide, so the claim is
not assessed and says so with the interval.

Example:
    >>> resolved("gap", "SpecGD leads", 0.08, 0.013).passed
    True
    >>> c = resolved("gap", "SpecGD leads", -0.02, 0.09, size="6 classes x 40 test points")
    >>> c.passed is None, c.reason
    (True, 'not resolved at this size: -0.02 lies within +-0.09 (two standard errors; 6 classes x 40 test points)')
    >>> profile = gap_profile([0.0, 0.1, 0.2, 0.3, 0.2, 0.05], window=3)
    >>> round(profile["growth"], 3), profile["peak_step"], profile["shrink_step"]
    (0.2, 3, 5.0)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..registry import Claim


def resolved(id: str, statement: str, value: float, noise: float, *, center: float = 0.0, direction: str = "min",
             kind: str = "study", size: str = "") -> Claim:  # fmt: skip
    """``Claim(value, center +- noise)`` where ``|value - center| > noise``, not assessed
    (with the interval and ``size`` in the reason) where it is within the noise.
    ``direction="min"``: the statement says ``value > center``; ``"max"``: ``value < center``."""
    if not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if value is None or not math.isfinite(value):
        return Claim.not_assessed(id, statement, f"no finite value ({value!r}): a method diverged or a curve is "
                                  "missing", kind=kind, direction=direction)  # fmt: skip
    sign = 1.0 if direction == "min" else -1.0
    threshold = center + sign * noise
    if abs(value - center) <= noise and noise > 0:
        note = f"; {size}" if size else ""
        around = f"{center:g} +-{noise:.2g}" if center else f"+-{noise:.2g}"
        reason = f"not resolved at this size: {value:.3g} lies within {around} (two standard errors{note})"
        return Claim.not_assessed(id, statement, reason, threshold=threshold, direction=direction, kind=kind)
    return Claim(id, statement, float(value), float(threshold), direction, kind)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of ``values`` (``nan`` for fewer than two)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) >= 2 else math.nan


def gap_profile(gap: Sequence[float], window: int) -> dict[str, float]:
    """How a gap curve ``gap[t]`` (step 0 = init) behaves: ``growth``, the least-squares
    slope over steps ``1..window`` times ``window - 1`` (the change the fit implies across
    the early window; step 0 is left out, where every method sits at the same init);
    ``early_mean``, its mean over the window; ``peak_step`` and ``peak`` (largest value over
    all steps); ``shrink_step``, the first step after the peak where it falls below half the
    peak (``nan`` if it never does).
    """
    g = np.asarray(gap, dtype=float)
    window = int(min(window, len(g) - 1))
    if window < 2:
        raise ValueError(f"the early window needs at least 2 steps after the init, got {window}")
    t = np.arange(1, window + 1)
    slope = np.polyfit(t, g[1 : window + 1], 1)[0] if np.isfinite(g[1 : window + 1]).all() else math.nan
    peak_step = int(np.nanargmax(g))
    peak = float(g[peak_step])
    after = np.flatnonzero(g[peak_step:] < peak / 2) if peak > 0 else np.array([], dtype=int)
    return {"growth": float(slope * (window - 1)), "early_mean": float(np.nanmean(g[1 : window + 1])),
            "peak_step": peak_step, "peak": peak,
            "shrink_step": float(peak_step + after[0]) if after.size else math.nan}  # fmt: skip
