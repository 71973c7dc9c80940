"""``nuclear-rank-growth``: the nuclear rank of the random-feature gradient at the zero init and
along GD (closed form, :func:`~specgrad.theory.random_features.rotated_gd_gradients`) against
the feature dimension ``k``: about constant at init, about linear in ``k`` after one step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from ...linalg import nuclear_rank
from ...theory.random_features import post_activation, rotated_gd_gradients
from ..devices import cpu_only
from ..plots import mean_band, save
from ..registry import Claim, Experiment, register, setting
from ..series import curve, finite_or, loglog_slope, rounded, seed_runs
from .stable_ranks import fast_stable_rank


@dataclass
class NuclearRankGrowthConfig:
    dims: tuple[int, ...] = (64, 128, 256, 512)  # feature dimension k (W is k x k)
    input_ratio: float = 0.5  # d = input_ratio * k
    sample_ratio: float = 2.0  # n = sample_ratio * k
    activation: str = "relu"
    steps: int = setting(1024, ge=1)
    record_points: int = 64  # nr recorded at steps 0..8 and this many log-spaced steps up to `steps`


def _record_steps(cfg: NuclearRankGrowthConfig) -> list[int]:
    grid = set(range(min(9, cfg.steps + 1)))
    if cfg.steps > 0:
        grid |= {int(round(s)) for s in np.geomspace(1, cfg.steps, max(2, cfg.record_points))}
    return sorted(grid)



def run_seed(cfg: NuclearRankGrowthConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "nuclear-rank-growth", "float64 closed forms")
    steps = _record_steps(cfg)
    out = {}
    ctx.steps(len(cfg.dims), "feature dimensions")
    for k in cfg.dims:
        d, n = max(1, round(cfg.input_ratio * k)), max(1, round(cfg.sample_ratio * k))
        g = torch.Generator().manual_seed(seed * 100003 + k)
        X = torch.randn(d, n, generator=g, dtype=torch.float64)
        V = torch.randn(k, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        A = post_activation(cfg.activation, V @ X)
        W_sharp = torch.randn(k, k, generator=g, dtype=torch.float64) / math.sqrt(k)
        grads = rotated_gd_gradients(A, W_sharp, steps)
        out[f"k{k}"] = {"step": steps, "nuclear_rank": rounded(float(nuclear_rank(G)) for G in grads),
                        "k": [k], "stable_rank_A": [fast_stable_rank(A)]}  # fmt: skip
        ctx.advance()
    return out


def analyze(cfg: NuclearRankGrowthConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    ks, nr0, nr1 = [], [], []
    for k in cfg.dims:
        runs = seed_runs(series, f"k{k}")
        if not runs:
            continue
        for r in runs:
            ks.append(k)
            nr0.append(r["nuclear_rank"][0])
            nr1.append(r["nuclear_rank"][1] if len(r["nuclear_rank"]) > 1 else math.nan)
        summary[f"k{k}/nr_init"] = float(np.mean([r["nuclear_rank"][0] for r in runs]))
        summary[f"k{k}/nr_one_step"] = float(np.mean([r["nuclear_rank"][min(1, len(r["nuclear_rank"]) - 1)] for r in runs]))
        summary[f"k{k}/nr_max"] = float(np.mean([max(r["nuclear_rank"]) for r in runs]))
        summary[f"k{k}/nr_final"] = float(np.mean([r["nuclear_rank"][-1] for r in runs]))
        summary[f"k{k}/stable_rank_A"] = float(np.mean([r["stable_rank_A"][0] for r in runs]))
    claims = []
    if len(set(ks)) >= 2:
        s0, s1 = loglog_slope(ks, nr0), loglog_slope(ks, nr1)
        summary["loglog_slope_nr_init"] = finite_or(s0, math.inf)
        summary["loglog_slope_nr_one_step"] = finite_or(s1, 0.0)
        maxes = [summary[f"k{k}/nr_max"] for k in cfg.dims if f"k{k}/nr_max" in summary]
        summary["loglog_slope_nr_max"] = finite_or(loglog_slope([k for k in cfg.dims if f"k{k}/nr_max" in summary], maxes), 0.0)
        x, y = np.asarray(ks, dtype=float), np.asarray(nr1, dtype=float)
        ok = np.isfinite(y)
        summary["linear_slope_nr_one_step"] = float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 else math.nan
        claims = [
            Claim("nr-init-about-constant",
                  "at the zero init the gradient's nuclear rank is about constant in k: |log-log slope of nr(G_0) "
                  "against k| <= 0.25", abs(summary["loglog_slope_nr_init"]), 0.25, "max"),
            Claim("nr-one-step-linear",
                  "after one GD step the nuclear rank grows about linearly in k: log-log slope of nr(G_1) against "
                  "k >= 0.7", summary["loglog_slope_nr_one_step"], 0.7),
        ]  # fmt: skip
    return summary, claims


def plot(cfg: NuclearRankGrowthConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    for j, k in enumerate(cfg.dims):
        cur = curve(series, f"k{k}", "nuclear_rank")
        if cur is None:
            continue
        mean_band(axes[0], cur[0] + 1, cur[1], f"C{j}", f"k = {k}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("GD step + 1")
    axes[0].set_ylabel("nr(grad)")
    axes[0].set_title("nuclear rank of the GD gradient (ReLU random features)", fontsize=10)
    axes[0].legend(fontsize=8)
    ks = [k for k in cfg.dims if f"k{k}/nr_init" in summary]
    for key, marker, label in (("nr_init", "o", "initialization"), ("nr_one_step", "s", "after one step"),
                               ("nr_max", "^", "max along GD")):  # fmt: skip
        vals = [summary[f"k{k}/{key}"] for k in ks]
        slope = summary.get(f"loglog_slope_{key}", math.nan)
        axes[1].plot(ks, vals, marker + "-", label=f"{label} (log-log slope {slope:.2f})")
    axes[1].plot(ks, [summary[f"k{k}/stable_rank_A"] for k in ks], "k--", label="st(A)")
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("feature dimension k (d = k/2, n = 2k)")
    axes[1].set_ylabel("nr(grad)")
    axes[1].legend(fontsize=8)
    return [save(fig, folder, "nuclear_rank_growth.png")]


register(Experiment(
    name="nuclear-rank-growth",
    description="Davis-Drusvyatskiy: nuclear rank of the random-feature gradient at init and after one GD step vs k",
    config=NuclearRankGrowthConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={"smoke": dict(dims=(16, 32, 64), steps=16, record_points=8), "quick": dict(), "paper": dict()},
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 3},
    size=lambda c: f"k in {c.dims}, {c.steps} steps",
))
