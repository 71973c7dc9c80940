"""``stable-ranks``: two sweeps of the authors' code.

* the spike sweep (``gif_random_feature_lambda_sweep.py``): GD vs SpecGD on
  ``min_W (1/2n) ||W A - W# A||_F^2`` with ``A = I + lam 1 1^T`` (``d x d``, ``n = d``), whose
  stable rank ``((1 + lam d)^2 + d - 1) / (1 + lam d)^2`` falls from ``d`` at ``lam = 0`` towards 1:
  SpecGD's advantage should track it, GD winning at ``A = I`` and SpecGD once the spike dominates;
* the batch sweep (``swiglu_stable_rank_sweep.py``): post-activation stable ranks of the
  four-layer SwiGLU net of ``sparse-regression`` at initialization against the batch size,
  with the ReLU^2 net as the bounded control (``st <= 6``).

Example:
    >>> round(spike_stable_rank(40, 0.12), 4)
    2.1593
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import scipy.stats
import torch
from torch import Tensor

from ...linalg import nuclear_rank
from ...theory.random_features import least_squares_problem
from ...theory.sparse_regression import four_layer_weights, sparse_net
from ..devices import cpu_only
from ..plots import mean_band, save
from ..registry import Claim, Experiment, register, setting
from ..series import at, curve, geomean, loglog_slope, rounded, seed_runs
from .stable_ranks import fast_stable_rank


GAP_FLOOR = 1e-30  # float64 resolves f - f* only down to about eps^2 f(0): smaller gaps count as this


def _gap_ratio(num: list[dict], den: list[dict], step: int) -> float:
    """Geometric mean over seeds of ``gap_num / gap_den`` at ``step``, gaps floored at :data:`GAP_FLOOR`."""
    return geomean([max(at(a, "objective_gap", step), GAP_FLOOR) / max(at(b, "objective_gap", step), GAP_FLOOR)
                    for a, b in zip(num, den)])  # fmt: skip


def spike_stable_rank(dim: int, lam: float) -> float:
    """``st(I + lam 1 1^T)`` for a ``dim x dim`` matrix, ``lam >= 0``: eigenvalues ``1 + lam dim``
    (once) and 1 (``dim - 1`` times)."""
    top = 1 + lam * dim
    return (top * top + dim - 1) / (top * top)


def spearman_critical(points: int, alpha: float = 0.05) -> float:
    """The two-sided ``alpha`` critical value of Spearman's rho for ``points`` pairs (the
    t approximation ``t / sqrt(points - 2 + t^2)``): a larger ``|rho|`` is unlikely by chance."""
    t = float(scipy.stats.t.ppf(1 - alpha / 2, points - 2))
    return t / math.sqrt(points - 2 + t * t)


@dataclass
class StableRanksConfig:
    dim: int = setting(40, ge=2)  # A = I + lam 11^T is dim x dim, n = dim samples (the authors' default)
    lambdas: tuple[float, ...] = setting(tuple(round(0.12 * i / 7, 6) for i in range(8)), ge=0, nonempty=True)
    steps: int = setting(400, ge=1)
    early_step: int = setting(10, ge=1)  # the "early" comparison (the final one is at steps - 1)
    net_input_dim: int = setting(128, ge=3)  # the four-layer net of sparse-regression: input_dim -> 4 input_dim ...
    batch_sizes: tuple[int, ...] = setting((128, 256, 512, 1024), ge=1, nonempty=True)
    net_activations: tuple[str, ...] = setting(("swiglu", "relu2"), choices=("swiglu", "relu2"))
    base_seed: int = 42  # seed k of the batch sweep draws from base_seed + k (the authors' seed 42)


def _descent(prob, W: Tensor, steps: int, norm: str) -> dict:
    rec = {"step": [], "objective_gap": [], "nuclear_rank": []}
    for t in range(steps):
        loss, G = prob.loss_and_gradient(W)
        rec["step"].append(t)
        rec["objective_gap"].append(loss - prob.f_star)
        rec["nuclear_rank"].append(float(nuclear_rank(G)))
        W = prob.step(W, G, norm)
    return {k: (v if k == "step" else rounded(v)) for k, v in rec.items()}


def run_seed(cfg: StableRanksConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "stable-ranks", "float64")
    out: dict[str, dict] = {}
    ctx.steps(len(cfg.lambdas) + len(cfg.net_activations), "spike sweep, batch sweep")
    g = torch.Generator().manual_seed(seed)
    d = cfg.dim
    for i, lam in enumerate(cfg.lambdas):
        A = torch.eye(d, dtype=torch.float64) + lam * torch.ones(d, d, dtype=torch.float64)
        W_sharp = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        prob = least_squares_problem(A, W_sharp @ A)
        zero = torch.zeros(d, d, dtype=torch.float64)
        out[f"lam{i}/gd"] = _descent(prob, zero, cfg.steps, "frobenius")
        out[f"lam{i}/specgd"] = _descent(prob, zero, cfg.steps, "spectral")
        out[f"lam{i}/data"] = {"lambda": [lam], "stable_rank_A": [prob.stable_rank],
                               "stable_rank_closed_form": [spike_stable_rank(d, lam)]}  # fmt: skip
        ctx.advance()
    for act in cfg.net_activations:
        gw = torch.Generator().manual_seed(cfg.base_seed + seed)
        Ws = four_layer_weights(cfg.net_input_dim, 4 * cfg.net_input_dim, act, gw)
        rec = {"batch": list(cfg.batch_sizes), **{f"st_A{l}": [] for l in (1, 2, 3)}}
        for b in cfg.batch_sizes:
            x = torch.randn(b, cfg.net_input_dim, generator=gw, dtype=torch.float64)
            with torch.no_grad():
                acts = sparse_net(x, Ws, act)
            for l in (1, 2, 3):
                rec[f"st_A{l}"].append(fast_stable_rank(acts[l]))
        out[f"batch/{act}"] = rec
        ctx.advance()
    return out


def _batch_slopes(runs: list[dict]) -> list[float]:
    """Every seed's and layer's log-log slope of st against the batch size."""
    return [loglog_slope(r["batch"], r[f"st_A{l}"]) for r in runs for l in (1, 2, 3)]


def analyze(cfg: StableRanksConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    claims: list[Claim] = []
    last, early = cfg.steps - 1, min(cfg.early_step, cfg.steps - 1)
    st, log_early, log_final, closed_err, agree = [], [], [], [], []
    for i, lam in enumerate(cfg.lambdas):
        gd, spec, data = (seed_runs(series, f"lam{i}/{m}") for m in ("gd", "specgd", "data"))
        if not (gd and spec and data):
            continue
        s = float(np.mean([r["stable_rank_A"][0] for r in data]))
        closed_err += [abs(r["stable_rank_A"][0] / r["stable_rank_closed_form"][0] - 1) for r in data]
        summary[f"lam{i}/lambda"] = lam
        summary[f"lam{i}/stable_rank_A"] = s
        for when, step in (("first", min(1, last)), ("early", early), ("final", last)):
            summary[f"lam{i}/gd_over_specgd_{when}"] = _gap_ratio(gd, spec, step)
        summary[f"lam{i}/gd_final_gap"] = geomean([max(at(r, "objective_gap", last), GAP_FLOOR) for r in gd])
        summary[f"lam{i}/specgd_final_gap"] = geomean([max(at(r, "objective_gap", last), GAP_FLOOR) for r in spec])
        summary[f"lam{i}/gd_nr_init"] = float(np.mean([r["nuclear_rank"][0] for r in gd]))
        # the one-step rule from the common start W = 0: the spectral step wins iff nr(G_0) > st(A)
        agree += [(r["nuclear_rank"][0] > s) == (at(r, "objective_gap", 1) > at(q, "objective_gap", 1))
                  for r, q in zip(gd, spec)] if cfg.steps > 1 else []  # fmt: skip
        st.append(s)
        log_early.append(math.log(summary[f"lam{i}/gd_over_specgd_early"]))
        log_final.append(math.log(summary[f"lam{i}/gd_over_specgd_final"]))
    if st:
        summary["max_rel_err_st_closed_form"] = float(max(closed_err))
        claims.append(Claim(
            "spike-st-closed-form",
            "st(I + lam 11^T) equals ((1 + lam d)^2 + d - 1)/(1 + lam d)^2 (max relative error over lam and seeds)",
            summary["max_rel_err_st_closed_form"], 1e-10, "max", kind="sanity"))  # fmt: skip
        if agree:
            summary["one_step_rule_agreement"] = float(np.mean(agree))
            claims.append(Claim(
                "one-step-rule-predicts-first-step",
                "from W = 0 the first SpecGD step beats the first GD step exactly when nr(G_0) > st(A): fraction of "
                "(lam, seed) pairs that agree", summary["one_step_rule_agreement"], 1.0))  # fmt: skip
        first, end = summary["lam0/gd_over_specgd_final"], summary[f"lam{len(st) - 1}/gd_over_specgd_final"]
        if cfg.lambdas[0] == 0:
            claims.append(Claim(
                "gd-wins-at-identity",
                f"A = I (st = d = {cfg.dim}): GD ends below SpecGD (gap_SpecGD / gap_GD after {cfg.steps} steps)",
                1 / first if first > 0 else math.inf, 1.0))  # fmt: skip
        claims.append(Claim(
            "specgd-wins-at-low-st",
            f"largest lam = {cfg.lambdas[-1]:g} (st(A) = {st[-1]:.2f}): SpecGD ends below GD (gap_GD / gap_SpecGD "
            f"after {cfg.steps} steps, geometric mean over seeds)", end, 1.0))  # fmt: skip
    for when, logs, step in (("early", log_early, early), ("final", log_final, last)):
        cid = "advantage-tracks-st" + ("" if when == "early" else "-final")
        statement = f"SpecGD's advantage log(gap_GD / gap_SpecGD) at step {step} rises as st(A) falls"
        if len(st) >= 4:
            rho, crit = float(scipy.stats.spearmanr(st, logs).statistic), spearman_critical(len(st))
            summary[f"spearman_st_vs_log_advantage_{when}"] = rho
            summary["spearman_critical_5pct"] = crit
            claims.append(Claim(cid, f"{statement}: Spearman rho over the lam sweep at most -{crit:.3f} (the 5% "
                                f"two-sided critical value for {len(st)} points)", rho, -crit, "max"))  # fmt: skip
        elif st:
            claims.append(Claim.not_assessed(cid, statement, "needs at least 4 values of lam for a rank correlation",
                                             direction="max"))  # fmt: skip
    swiglu, relu2 = seed_runs(series, "batch/swiglu"), seed_runs(series, "batch/relu2")
    for act, runs in (("swiglu", swiglu), ("relu2", relu2)):
        if runs:
            for l in (1, 2, 3):
                summary[f"batch/{act}/st_A{l}_at_min"] = float(np.mean([r[f"st_A{l}"][0] for r in runs]))
                summary[f"batch/{act}/st_A{l}_at_max"] = float(np.mean([r[f"st_A{l}"][-1] for r in runs]))
            summary[f"batch/{act}/max_st"] = float(max(max(r[f"st_A{l}"]) for r in runs for l in (1, 2, 3)))
            if len(cfg.batch_sizes) >= 2:
                slopes = _batch_slopes(runs)
                summary[f"batch/{act}/min_slope"] = float(min(slopes))
                summary[f"batch/{act}/max_abs_slope"] = float(max(abs(v) for v in slopes))
    if relu2:
        claims.append(Claim(
            "relu2-net-st-bounded-in-batch",
            "ReLU^2 four-layer net at init: every hidden post-activation st <= 6 (the ReLU^2 spike bound, +2%) at every "
            "batch size (max st / 6)", summary["batch/relu2/max_st"] / 6.0, 1.02, "max"))  # fmt: skip
    if swiglu and relu2 and len(cfg.batch_sizes) >= 2:
        claims.append(Claim(
            "swiglu-net-st-grows-with-batch",
            "SwiGLU four-layer net at init: the hidden post-activation st grows with the batch size faster than the "
            "bounded ReLU^2 control: min over layers and seeds of the SwiGLU log-log slope of st against batch size, "
            "against the largest |slope| of the ReLU^2 net", summary["batch/swiglu/min_slope"],
            summary["batch/relu2/max_abs_slope"]))  # fmt: skip
    return summary, claims


def plot(cfg: StableRanksConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    cmap = plt.get_cmap("viridis")
    n = len(cfg.lambdas)
    for i, lam in enumerate(cfg.lambdas):
        color = cmap(i / max(1, n - 1))
        for m, ls in (("gd", "-"), ("specgd", "--")):
            cur = curve(series, f"lam{i}/{m}", "objective_gap")
            if cur is not None:
                axes[0].plot(cur[0], np.exp(np.log(np.maximum(cur[1], GAP_FLOOR)).mean(0)), ls, color=color, lw=1,
                             label=f"lam {lam:.3g} (st {summary.get(f'lam{i}/stable_rank_A', math.nan):.1f})"
                             if m == "gd" else None)  # fmt: skip
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(f"objective gap (solid GD, dashed SpecGD; floor {GAP_FLOOR:g})")
    axes[0].set_title(f"A = I + lam 11^T, d = n = {cfg.dim}", fontsize=10)
    axes[0].legend(fontsize=6)
    lams = [i for i in range(n) if f"lam{i}/stable_rank_A" in summary]
    for when, step, color in (("first", 1, "C1"), ("early", cfg.early_step, "C2"), ("final", cfg.steps - 1, "C3")):
        axes[1].plot([summary[f"lam{i}/stable_rank_A"] for i in lams],
                     [summary[f"lam{i}/gd_over_specgd_{when}"] for i in lams], "o-", color=color,
                     label=f"gap_GD / gap_SpecGD at step {step}")  # fmt: skip
    axes[1].axhline(1.0, color="k", lw=0.8, ls=":")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("st(A)")
    axes[1].set_title("SpecGD's advantage against st(A) (above the dotted line: SpecGD ahead)", fontsize=10)
    axes[1].legend(fontsize=8)
    for j, act in enumerate(cfg.net_activations):
        for l, marker in ((1, "o"), (2, "s"), (3, "^")):
            cur = curve(series, f"batch/{act}", f"st_A{l}", x="batch")
            if cur is not None:
                mean_band(axes[2], *cur, f"C{j}", f"{act}: layer {l}", marker=marker, ms=3)
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("batch size")
    axes[2].set_ylabel("post-activation stable rank")
    axes[2].set_title(f"four-layer net at init, input dim {cfg.net_input_dim}, hidden {4 * cfg.net_input_dim}",
                      fontsize=10)  # fmt: skip
    axes[2].legend(fontsize=7)
    return [save(fig, folder, "stable_ranks.png")]


register(Experiment(
    name="stable-ranks",
    description="Davis-Drusvyatskiy: GD vs SpecGD across st(I + lam 11^T), and SwiGLU stable ranks against batch size",
    config=StableRanksConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(dim=12, lambdas=(0.0, 0.1, 0.3, 1.0), steps=40, net_input_dim=16, batch_sizes=(16, 64)),
        "quick": dict(),
        "paper": dict(dim=200, batch_sizes=(128, 256, 512, 1024, 2048, 4096, 8192)),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 3, "quick": 3, "paper": 5},
    size=lambda c: f"d {c.dim}, {len(c.lambdas)} lambdas, {c.steps} steps; batches {c.batch_sizes[0]}..{c.batch_sizes[-1]}",
))
