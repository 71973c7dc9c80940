"""``sparse-regression-swiglu``: the four-layer net of ``sparse-regression`` with SwiGLU layers
(``silu(gate) * up``, no spike at init: the study's exception), GD vs SpecGD on layers 2-3 at
the authors' two batch sizes with their learning rates (``run_weighted_spectral_vs_gd.sh``:
batch 512 with GD 0.01 / SpecGD 0.025, batch 8196 with GD 0.0035 / SpecGD 0.0015).

The layerwise rule predicts the winner from ``nr(G_l) / st(A_{l-1})`` on the spectral layers:
the claims check that the hidden stable ranks are no longer small, that they grow with the
batch, that GD ends ahead at the large batch, and whether SpecGD's lead (or lack of it) at each
batch size agrees with the rule at initialization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt

from ..devices import cpu_only
from ..plots import save
from ..registry import Claim, Experiment, register, setting
from ..series import seed_runs
from .sparse_training import SparseRegressionConfig, plot_pair, problem, summarize, train


@dataclass
class SwiGLUSparseRegressionConfig:
    input_dim: int = setting(128, ge=3)
    hidden: int = setting(512, ge=1)  # gate and up projections are hidden wide each
    batch_sizes: tuple[int, ...] = setting((512, 8196), ge=1, nonempty=True)
    gd_lr_per_batch: tuple[float, ...] = setting((0.01, 0.0035), gt=0)  # one per batch size
    specgd_lr_per_batch: tuple[float, ...] = setting((0.025, 0.0015), gt=0)
    steps: int = setting(400, ge=1)
    spectral_layers: tuple[int, ...] = (2, 3)
    loss: str = setting("half_mse", choices=("half_mse", "mse"))
    record_every: int = setting(5, ge=1)
    early_step: int = setting(100, ge=0)
    base_seed: int = 42

    def validate(self):
        if not len(self.batch_sizes) == len(self.gd_lr_per_batch) == len(self.specgd_lr_per_batch):
            raise ValueError("batch_sizes, gd_lr_per_batch and specgd_lr_per_batch need one value each per batch "
                             f"size, got {len(self.batch_sizes)}, {len(self.gd_lr_per_batch)}, "
                             f"{len(self.specgd_lr_per_batch)}")  # fmt: skip

    def variant(self, i: int) -> SparseRegressionConfig:
        """The ``sparse-regression`` config of batch size number ``i``."""
        return SparseRegressionConfig(
            input_dim=self.input_dim, hidden=self.hidden, samples=self.batch_sizes[i], steps=self.steps,
            gd_lr=self.gd_lr_per_batch[i], specgd_lr=self.specgd_lr_per_batch[i], spectral_layers=self.spectral_layers,
            loss=self.loss, record_every=self.record_every, early_step=self.early_step, base_seed=self.base_seed,
            activation="swiglu")  # fmt: skip


def run_seed(cfg: SwiGLUSparseRegressionConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "sparse-regression-swiglu", "float64, full batch")
    ctx.steps(2 * cfg.steps * len(cfg.batch_sizes), "GD and SpecGD per batch size")
    out = {}
    for i, b in enumerate(cfg.batch_sizes):
        sub = cfg.variant(i)
        x, y, W0 = problem(sub, seed)
        for m in ("gd", "specgd"):
            out[f"b{b}/{m}"] = train(sub, m, x, y, W0, ctx.advance)
    return out


def analyze(cfg: SwiGLUSparseRegressionConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    done = []
    for i, b in enumerate(cfg.batch_sizes):
        gd, spec = seed_runs(series, f"b{b}/gd"), seed_runs(series, f"b{b}/specgd")
        if gd and spec:
            summary.update(summarize(cfg.variant(i), gd, spec, f"b{b}/"))
            init_st = [max(r[f"st_A{l}"][0] for l in (1, 2, 3)) for r in gd]
            summary[f"b{b}/max_hidden_st_init"] = max(init_st)
            done.append(b)
    claims: list[Claim] = []
    if not done:
        return summary, claims
    early = min(cfg.early_step, cfg.steps)
    big = max(done)
    claims.append(Claim(
        "swiglu-hidden-st-exceeds-relu2-bound",
        f"SwiGLU hidden post-activations are not low-rank like ReLU^2's: at batch {big} the largest hidden st along "
        "training exceeds 6 (the ReLU^2 spike bound; max over layers, steps, methods, seeds)",
        summary[f"b{big}/max_hidden_st"], 6.0))  # fmt: skip
    if len(done) >= 2:
        small = min(done)
        summary["init_st_growth_large_over_small_batch"] = summary[f"b{big}/max_hidden_st_init"] / summary[f"b{small}/max_hidden_st_init"]
        claims.append(Claim(
            "swiglu-st-grows-with-batch",
            f"the largest hidden st at initialization grows with the batch: batch {big} over batch {small} > 1",
            summary["init_st_growth_large_over_small_batch"], 1.0))  # fmt: skip
    claims.append(Claim(
        "swiglu-large-batch-gd-ahead-at-end",
        f"SwiGLU is the exception: at batch {big} GD ends below SpecGD after {cfg.steps} steps: high end of the 95% "
        "t-interval over seeds of loss_GD / loss_SpecGD (one seed: the ratio) < 1",
        summary[f"b{big}/final_loss_ratio_ci95_high"], 1.0, "max"))  # fmt: skip
    # the layerwise rule at init: SpecGD should lead at the early step exactly where nr(G_l) >= st(A_{l-1})
    agree = 0
    for b in done:
        predicted = summary.get(f"b{b}/gd/min_nr_over_st_init", math.nan) >= 1.0
        ahead = summary[f"b{b}/early_loss_ratio_gd_over_specgd"] > 1.0
        summary[f"b{b}/rule_predicts_specgd"] = float(predicted)
        summary[f"b{b}/specgd_ahead_early"] = float(ahead)
        agree += predicted == ahead
    summary["rule_agreement"] = agree / len(done)
    claims.append(Claim(
        "layerwise-rule-predicts-early-winner",
        f"at every batch size SpecGD leads at step {early} (loss_GD / loss_SpecGD > 1, geometric mean over seeds) "
        "exactly when min over layers 2-3 of nr(G_l)/st(A_{l-1}) at init is >= 1: fraction of batch sizes that agree",
        summary["rule_agreement"], 1.0))  # fmt: skip
    return summary, claims


def plot(cfg: SwiGLUSparseRegressionConfig, series: dict, summary: dict, folder) -> list[str]:
    rows = [i for i, b in enumerate(cfg.batch_sizes) if seed_runs(series, f"b{b}/gd")]
    fig, axes = plt.subplots(len(rows), 3, figsize=(14, 4 * len(rows)), squeeze=False)
    for row, i in zip(axes, rows):
        plot_pair(cfg.variant(i), series, row, f"b{cfg.batch_sizes[i]}/")
    fig.suptitle(f"y = x1 x2 x3, x in R^{cfg.input_dim}, {cfg.input_dim}-{cfg.hidden}-{cfg.hidden}-{cfg.hidden}-1 "
                 "SwiGLU net, rows: batch sizes (mean over seeds)", fontsize=11)  # fmt: skip
    fig.tight_layout()
    return [save(fig, folder, "sparse_regression_swiglu.png")]


register(Experiment(
    name="sparse-regression-swiglu",
    description="Davis-Drusvyatskiy: 4-layer SwiGLU net on y = x1 x2 x3 at two batch sizes, GD vs SpecGD",
    config=SwiGLUSparseRegressionConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(input_dim=16, hidden=32, batch_sizes=(64, 256), steps=30, record_every=5, early_step=15),
        "quick": dict(input_dim=32, hidden=128, batch_sizes=(128, 2048), steps=200, record_every=10, early_step=50),
        "paper": dict(),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 3},
    size=lambda c: f"{c.input_dim}-{c.hidden}x3-1 SwiGLU, batches {c.batch_sizes}, {c.steps} steps",
))
