"""Scoring the layerwise test against the measured one-step probe: a table of probed blocks
(one row per block, model, optimizer and moment) in, confusion matrix, accuracy with a
bootstrap interval, the majority-class baseline, margins, rank correlation and failures out.

A row carries ``predicted_gain = nr(G) / st(A)`` (the ratio of the guaranteed decreases,
spectral over Euclidean), ``loss_base`` and the losses after each step; the measured gain is
the ratio of the actual decreases ``(base - loss_spectral) / (base - loss_euclidean)``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

MARGINS = (0.5, 1.0, 2.0, 4.0)
CLASSES = ("spectral", "euclidean")


def scored(rows: pd.DataFrame) -> pd.DataFrame:
    """The probed rows (a measured winner) with ``predicted``, ``correct``, the decreases
    ``dec_e``, ``dec_s`` and ``measured_gain`` added.

    Example:
        >>> t = pd.DataFrame(dict(predicted_gain=[3.0, 0.5], measured=["spectral", "spectral"], loss_base=[1.0, 1.0],
        ...                       loss_euclidean=[0.9, 0.8], loss_spectral=[0.7, 0.7]))
        >>> scored(t)[["predicted", "correct", "measured_gain"]].round(6).values.tolist()
        [['spectral', True, 3.0], ['euclidean', False, 1.5]]
    """
    t = rows[rows["measured"].isin(CLASSES)].copy()
    t["predicted"] = np.where(t["predicted_gain"] >= 1.0, "spectral", "euclidean")
    t["correct"] = t["predicted"] == t["measured"]
    t["dec_e"] = t["loss_base"] - t["loss_euclidean"]
    t["dec_s"] = t["loss_base"] - t["loss_spectral"]
    with np.errstate(divide="ignore", invalid="ignore"):
        t["measured_gain"] = np.where(t["dec_e"] > 0, t["dec_s"] / t["dec_e"], np.nan)
    return t


def confusion(t: pd.DataFrame) -> dict[str, int]:
    """Counts ``"<predicted>-><measured>"`` over the four pairs."""
    return {f"{p}->{m}": int(((t["predicted"] == p) & (t["measured"] == m)).sum()) for p in CLASSES for m in CLASSES}


def majority(t: pd.DataFrame) -> float:
    """Accuracy of always naming the most frequent measured winner."""
    return float(t["measured"].value_counts(normalize=True).max()) if len(t) else math.nan


def bootstrap(t: pd.DataFrame, stat, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat(resampled rows)`` over ``n`` resamples of the rows."""
    if len(t) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = [stat(t.iloc[rng.integers(0, len(t), len(t))]) for _ in range(n)]
    values = np.asarray([v for v in values if np.isfinite(v)])
    if not len(values):
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def accuracy(t: pd.DataFrame) -> float:
    return float(t["correct"].mean()) if len(t) else math.nan


def rank_correlation(t: pd.DataFrame) -> float:
    """Spearman's rho between predicted and measured gain over rows where the Euclidean step
    lowered the loss (the measured gain is defined)."""
    ok = t[np.isfinite(t["measured_gain"])]
    if len(ok) < 3 or ok["predicted_gain"].nunique() < 2 or ok["measured_gain"].nunique() < 2:
        return math.nan
    return float(spearmanr(ok["predicted_gain"], ok["measured_gain"]).statistic)


def margins(t: pd.DataFrame, cs=MARGINS) -> list[dict]:
    """Per margin ``c``: the rule "spectral iff nr >= c st" (its accuracy), and the decisive
    rows ``gain >= max(c, 1/c)`` or ``gain <= min(c, 1/c)`` (their share and accuracy)."""
    out = []
    for c in cs:
        rule = np.where(t["predicted_gain"] >= c, "spectral", "euclidean")
        hi, lo = max(c, 1 / c), min(c, 1 / c)
        decisive = t[(t["predicted_gain"] >= hi) | (t["predicted_gain"] <= lo)]
        out.append(dict(c=c, rule_accuracy=float(np.mean(rule == t["measured"])) if len(t) else math.nan,
                        decisive_share=len(decisive) / len(t) if len(t) else math.nan,
                        decisive_accuracy=accuracy(decisive), decisive_rows=len(decisive)))  # fmt: skip
    return out


def why(row) -> str:
    """The likeliest reason the test named the wrong winner on ``row`` (a scored, wrong row)."""
    if row["dec_e"] <= 0 or row["dec_s"] <= 0:
        step = "Euclidean" if row["dec_e"] <= 0 else "spectral"
        return f"{step} step raised the loss: curvature underestimated (non-quadratic loss)"
    if max(row["predicted_gain"], 1 / row["predicted_gain"]) < 2:
        return "within the factor 2 the bound leaves open (near tie)"
    return "decisive prediction overturned: the block's loss is not the one-step least-squares model (coupled blocks)"


def by_group(t: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per value of ``column``: rows, accuracy (with bootstrap interval), majority baseline,
    Spearman's rho and the share measured spectral."""
    out = []
    for key, g in t.groupby(column, sort=True):
        lo, hi = bootstrap(g, accuracy, n=300)
        out.append(dict(group=key, rows=len(g), accuracy=accuracy(g), ci_low=lo, ci_high=hi, majority=majority(g),
                        spearman=rank_correlation(g), spectral_share=float((g["measured"] == "spectral").mean())))  # fmt: skip
    return pd.DataFrame(out)
