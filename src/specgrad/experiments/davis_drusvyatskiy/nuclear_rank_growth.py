"""``nuclear-rank-growth``: the nuclear rank of the random-feature gradient at the zero init and
along GD (closed form, :func:`~specgrad.theory.random_features.rotated_gd_gradients`) against
the feature dimension ``k``: about constant at init, about linear in ``k`` after one step. Two
models, as in the authors' ``rf_nuclear_rank_plots.py``: "Model 1", realizable
(``Y = W# sigma(V X)``, series ``k<k>``), and "Model 2", teacher-student
(``Y = W_t sigma(V_t X)`` with an independent teacher, series ``teacher-student/k<k>``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from ...linalg import nuclear_rank
from ...theory.random_features import (post_activation, rotated_gd_gradients, rotated_gd_gradients_for_targets,
                                       teacher_student_features)  # fmt: skip
from ..devices import cpu_only
from ..plots import mean_band, save
from ..registry import Claim, Experiment, register, setting
from ..series import curve, finite_or, loglog_slope, rounded, seed_runs
from .stable_ranks import fast_stable_rank


MODELS = ("realizable", "teacher-student")
PREFIX = {"realizable": "", "teacher-student": "teacher-student/"}  # series key prefix of each model
MIN_DIM_INIT_CLAIM = 64  # the smallest k of the authors' sweep; below it nr(G_0) has not settled


@dataclass
class NuclearRankGrowthConfig:
    dims: tuple[int, ...] = (64, 128, 256, 512)  # feature dimension k (W is k x k)
    input_ratio: float = 0.5  # d = input_ratio * k
    sample_ratio: float = 2.0  # n = sample_ratio * k
    activation: str = "relu"
    steps: int = setting(1024, ge=1)
    record_points: int = 64  # nr recorded at steps 0..8 and this many log-spaced steps up to `steps`
    models: tuple[str, ...] = setting(MODELS, choices=MODELS, nonempty=True)


def _record_steps(cfg: NuclearRankGrowthConfig) -> list[int]:
    grid = set(range(min(9, cfg.steps + 1)))
    if cfg.steps > 0:
        grid |= {int(round(s)) for s in np.geomspace(1, cfg.steps, max(2, cfg.record_points))}
    return sorted(grid)



def run_seed(cfg: NuclearRankGrowthConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "nuclear-rank-growth", "float64 closed forms")
    steps = _record_steps(cfg)
    out = {}
    ctx.steps(len(cfg.dims) * len(cfg.models), "feature dimensions")
    for model in cfg.models:
        for k in cfg.dims:
            d, n = max(1, round(cfg.input_ratio * k)), max(1, round(cfg.sample_ratio * k))
            if model == "realizable":
                g = torch.Generator().manual_seed(seed * 100003 + k)
                X = torch.randn(d, n, generator=g, dtype=torch.float64)
                V = torch.randn(k, d, generator=g, dtype=torch.float64) / math.sqrt(d)
                A = post_activation(cfg.activation, V @ X)
                W_sharp = torch.randn(k, k, generator=g, dtype=torch.float64) / math.sqrt(k)
                grads = rotated_gd_gradients(A, W_sharp, steps)
            else:
                g = torch.Generator().manual_seed(seed * 100003 + k + 50000)
                A, Y = teacher_student_features(k, d, n, cfg.activation, g)
                grads = rotated_gd_gradients_for_targets(A, Y, steps)
            out[f"{PREFIX[model]}k{k}"] = {"step": steps, "nuclear_rank": rounded(float(nuclear_rank(G)) for G in grads),
                                           "k": [k], "stable_rank_A": [fast_stable_rank(A)]}  # fmt: skip
            ctx.advance()
    return out


def _model_summary(cfg: NuclearRankGrowthConfig, series: dict, prefix: str) -> dict[str, float]:
    """Per-k means and the log-log slopes of one model; keys start with ``prefix``."""
    summary: dict[str, float] = {}
    ks, nr0, nr1, seed_slopes = [], [], [], {}
    for k in cfg.dims:
        runs = seed_runs(series, f"{prefix}k{k}")
        if not runs:
            continue
        for j, r in enumerate(runs):
            ks.append(k)
            nr0.append(r["nuclear_rank"][0])
            nr1.append(r["nuclear_rank"][1] if len(r["nuclear_rank"]) > 1 else math.nan)
            seed_slopes.setdefault(j, []).append((k, nr0[-1], nr1[-1]))
        summary[f"{prefix}k{k}/nr_init"] = float(np.mean([r["nuclear_rank"][0] for r in runs]))
        summary[f"{prefix}k{k}/nr_one_step"] = float(np.mean([r["nuclear_rank"][min(1, len(r["nuclear_rank"]) - 1)] for r in runs]))
        summary[f"{prefix}k{k}/nr_max"] = float(np.mean([max(r["nuclear_rank"]) for r in runs]))
        summary[f"{prefix}k{k}/nr_final"] = float(np.mean([r["nuclear_rank"][-1] for r in runs]))
        summary[f"{prefix}k{k}/stable_rank_A"] = float(np.mean([r["stable_rank_A"][0] for r in runs]))
    if len(set(ks)) < 2:
        return summary
    summary[f"{prefix}loglog_slope_nr_init"] = finite_or(loglog_slope(ks, nr0), math.inf)
    summary[f"{prefix}loglog_slope_nr_one_step"] = finite_or(loglog_slope(ks, nr1), 0.0)
    present = [k for k in cfg.dims if f"{prefix}k{k}/nr_max" in summary]
    maxes = [summary[f"{prefix}k{k}/nr_max"] for k in present]
    summary[f"{prefix}loglog_slope_nr_max"] = finite_or(loglog_slope(present, maxes), 0.0)
    x, y = np.asarray(ks, dtype=float), np.asarray(nr1, dtype=float)
    ok = np.isfinite(y)
    summary[f"{prefix}linear_slope_nr_one_step"] = float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 else math.nan
    # the spread over seeds: each seed's own slopes (the claims use the pooled fit)
    for what, col in (("init", 1), ("one_step", 2)):
        per_seed = [loglog_slope([p[0] for p in pts], [p[col] for p in pts]) for pts in seed_slopes.values() if len(pts) >= 2]
        per_seed = [v for v in per_seed if math.isfinite(v)]
        if per_seed:
            summary[f"{prefix}loglog_slope_nr_{what}_seed_min"] = float(min(per_seed))
            summary[f"{prefix}loglog_slope_nr_{what}_seed_max"] = float(max(per_seed))
    return summary


def analyze(cfg: NuclearRankGrowthConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    claims: list[Claim] = []
    for model in cfg.models:
        prefix = PREFIX[model]
        summary.update(_model_summary(cfg, series, prefix))
        if f"{prefix}loglog_slope_nr_init" not in summary:
            continue
        tag, name = ("", "") if model == "realizable" else ("ts-", " (teacher-student Model 2)")
        init = (f"{tag}nr-init-about-constant",
                f"at the zero init the gradient's nuclear rank is about constant in k{name}: |log-log slope of "
                "nr(G_0) against k| <= 0.25")  # fmt: skip
        if min(cfg.dims) < MIN_DIM_INIT_CLAIM:
            claims.append(Claim.not_assessed(*init, f"needs every k >= {MIN_DIM_INIT_CLAIM} (the authors' sizes): at "
                                             "smaller k nr(G_0) is still rising towards its large-k value",
                                             threshold=0.25, direction="max"))  # fmt: skip
        else:
            claims.append(Claim(*init, abs(summary[f"{prefix}loglog_slope_nr_init"]), 0.25, "max"))
        claims += [
            Claim(f"{tag}nr-one-step-linear",
                  f"after one GD step the nuclear rank grows about linearly in k{name}: log-log slope of nr(G_1) "
                  "against k >= 0.7", summary[f"{prefix}loglog_slope_nr_one_step"], 0.7),
        ]  # fmt: skip
    return summary, claims


def plot(cfg: NuclearRankGrowthConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(len(cfg.models), 2, figsize=(11.5, 4.2 * len(cfg.models)), squeeze=False)
    for row, model in zip(axes, cfg.models):
        prefix = PREFIX[model]
        for j, k in enumerate(cfg.dims):
            cur = curve(series, f"{prefix}k{k}", "nuclear_rank")
            if cur is None:
                continue
            mean_band(row[0], cur[0] + 1, cur[1], f"C{j}", f"k = {k}")
        row[0].set_xscale("log")
        row[0].set_xlabel("GD step + 1")
        row[0].set_ylabel("nr(grad)")
        row[0].set_title(f"nuclear rank of the GD gradient ({cfg.activation} random features, {model})", fontsize=10)
        row[0].legend(fontsize=8)
        ks = [k for k in cfg.dims if f"{prefix}k{k}/nr_init" in summary]
        for key, marker, label in (("nr_init", "o", "initialization"), ("nr_one_step", "s", "after one step"),
                                   ("nr_max", "^", "max along GD")):  # fmt: skip
            vals = [summary[f"{prefix}k{k}/{key}"] for k in ks]
            slope = summary.get(f"{prefix}loglog_slope_{key}", math.nan)
            row[1].plot(ks, vals, marker + "-", label=f"{label} (log-log slope {slope:.2f})")
        row[1].plot(ks, [summary[f"{prefix}k{k}/stable_rank_A"] for k in ks], "k--", label="st(A)")
        row[1].set_xscale("log", base=2)
        row[1].set_yscale("log")
        row[1].set_xlabel(f"feature dimension k (d = {cfg.input_ratio:g}k, n = {cfg.sample_ratio:g}k)")
        row[1].set_ylabel("nr(grad)")
        row[1].set_title(model, fontsize=10)
        row[1].legend(fontsize=8)
    return [save(fig, folder, "nuclear_rank_growth.png")]


register(Experiment(
    name="nuclear-rank-growth",
    description="Davis-Drusvyatskiy: nuclear rank of the random-feature gradient at init and after one GD step vs k "
                "(realizable and teacher-student models)",
    config=NuclearRankGrowthConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={"smoke": dict(dims=(16, 32, 64), steps=16, record_points=8), "quick": dict(), "paper": dict()},
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 3},
    size=lambda c: f"k in {c.dims}, {c.steps} steps",
))
