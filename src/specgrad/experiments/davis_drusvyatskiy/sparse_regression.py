"""``sparse-regression``: a 4-layer squared-ReLU net on ``y = x1 x2 x3``
(:mod:`specgrad.theory.sparse_regression`), full batch: GD on every layer vs SpecGD on layers
2-3, each layer stepping by its majorization step with ``L = ||A_{l-1}||^2 / n`` (the loop is
:mod:`.sparse_training`)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..devices import cpu_only
from ..plots import save
from ..registry import Claim, Experiment, register
from ..series import seed_runs
from .sparse_training import SparseRegressionConfig, plot_pair, problem, summarize, train

__all__ = ["SparseRegressionConfig", "analyze", "plot", "problem", "run_seed", "train"]


def run_seed(cfg: SparseRegressionConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "sparse-regression", "float64, full batch")
    x, y, W0 = problem(cfg, seed)
    ctx.steps(2 * cfg.steps, "GD and SpecGD")
    return {m: train(cfg, m, x, y, W0, ctx.advance) for m in ("gd", "specgd")}


def _ahead_value(summary: dict, prefix: str, when: str) -> float:
    """The claims' measure of "SpecGD is ahead": the low end of the 95% interval of loss_GD /
    loss_SpecGD over seeds (one seed: its ratio)."""
    return summary[f"{prefix}{when}_loss_ratio_ci95_low"]


def analyze(cfg: SparseRegressionConfig, series: dict) -> tuple[dict, list[Claim]]:
    gd, spec = seed_runs(series, "gd"), seed_runs(series, "specgd")
    if not (gd and spec):
        return {}, []
    summary = summarize(cfg, gd, spec)
    early = min(cfg.early_step, cfg.steps)
    seeds = len(gd)
    claims = [
        Claim("specgd-ahead-early",
              f"SpecGD (layers {','.join(map(str, cfg.spectral_layers))} spectral) is ahead of GD early: loss_GD / "
              f"loss_SpecGD at step {early}, low end of the 95% t-interval of its geometric mean over {seeds} seeds "
              "(one seed: the ratio) > 1", _ahead_value(summary, "", "early"), 1.0),
        Claim("hidden-stable-rank-small",
              "post-activation stable ranks of the three hidden layers stay at most about 6 (<= 6.6) along both "
              "trainings (max over layers, recorded steps, methods and seeds)", summary["max_hidden_st"], 6.6, "max"),
    ]  # fmt: skip
    if "gd/min_nr_over_st_init" in summary:
        claims.append(Claim(
            "nr-exceeds-st-at-init",
            "at initialization the spectral layers satisfy nr(G_l) >= st(A_{l-1}) (min ratio over those layers and "
            "seeds)", summary["gd/min_nr_over_st_init"], 1.0))  # fmt: skip
    return summary, claims


def plot(cfg: SparseRegressionConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    plot_pair(cfg, series, axes)
    net = "ReLU^2" if cfg.activation == "relu2" else "SwiGLU"
    fig.suptitle(f"y = x1 x2 x3, x in R^{cfg.input_dim}, n = {cfg.samples}, {cfg.input_dim}-{cfg.hidden}-{cfg.hidden}-"
                 f"{cfg.hidden}-1 {net} net (mean over seeds)", fontsize=11)  # fmt: skip
    return [save(fig, folder, "sparse_regression.png")]


register(Experiment(
    name="sparse-regression",
    description="Davis-Drusvyatskiy: 4-layer ReLU^2 net on y = x1 x2 x3, GD vs SpecGD on the hidden layers",
    config=SparseRegressionConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(input_dim=32, hidden=64, samples=128, steps=40, record_every=4, early_step=20),
        "demo": dict(hidden=256, steps=300, record_every=10),
        "quick": dict(),
        "paper": dict(steps=2000),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 3},
    size=lambda c: f"{c.input_dim}-{c.hidden}x3-1, n {c.samples}, {c.steps} steps",
))
