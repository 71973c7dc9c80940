"""``long-tail-tokens``: the tiny GPT on a Zipfian token stream (:func:`specgrad.data.zipf_corpus`);
validation loss per token-frequency bucket over training for SGD, AdamW, Muon (hidden
matrices) and Muon with the output head on the spectral rule too (the practical part of
arXiv 2510.22980).

Claim: early in training Muon's bucket losses are more even: a smaller spread over buckets of
the loss above the Bayes loss of the chain (the raw bucket losses differ by the chain's own
entropy per bucket, so their spread is reported but not tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import TokenStream, token_frequency_buckets, zipf_conditional_nll, zipf_corpus, zipf_entropy_rate
from ..methods import LM_SETTINGS, lm_adamw_rule, lr_grid, lr_grid_field, make
from ..plots import mean_band, panel_grid, save
from ..registry import Claim, Experiment, register
from .verdicts import resolved, standard_error
from ..series import curve, seed_runs
from ..training import final_or_inf, seeded_gpt, sweep_lowest, train_lm

TOKEN_METHODS = ("sgd", "adamw", "muon", "muon-head")
TOKEN_COLORS = {"sgd": "C0", "adamw": "C1", "muon": "C2", "muon-head": "C3"}
# method -> (entry of the methods table, its settings): ``adamw`` and ``muon`` are the char-LM
# recipe's, ``muon-head`` is Muon with the (untied) output head on the spectral rule too,
# ``sgd`` is SGD with momentum 0.9 on every parameter (the Euclidean reference)
SETTINGS = {
    "sgd": ("sgd", dict(momentum=0.9)),
    "adamw": ("adamw", LM_SETTINGS["adamw"]),
    "muon": ("muon", LM_SETTINGS["muon"]),
    "muon-head": ("muon", dict(LM_SETTINGS["muon"], overrides={"lm_head.weight": "spectral"})),
}


@dataclass
class LongTailTokensConfig:
    vocab_size: int = 1024
    exponent: float = 1.1  # token frequencies p_k ~ k^-exponent
    n_clusters: int = 8
    coherence: float = 0.9
    train_tokens: int = 200_000
    val_tokens: int = 20_000
    corpus_seed: int = 0
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    context: int = 32
    tied: bool = False  # an untied head, so that "muon-head" can route it alone
    batch_size: int = 16
    iters: int = 300
    warmup: int = 30
    eval_every: int = 15
    eval_batches: int = 8
    n_buckets: int = 8
    bucket_by: str = "mass"  # each bucket ~1/n_buckets of the training tokens (Kunstner et al. 2024)
    methods: tuple[str, ...] = TOKEN_METHODS
    sgd_lrs: tuple[float, ...] = lr_grid_field("sgd", default=(0.03, 0.1, 0.3, 1.0))
    adamw_lrs: tuple[float, ...] = lr_grid_field("adamw", default=(1e-3, 3e-3, 1e-2))
    muon_lrs: tuple[float, ...] = lr_grid_field("muon", "muon-head", default=(0.01, 0.03, 0.1))
    sweep_iters: int = 150  # each candidate lr trains this long (seed 0) in the tuning stage
    early_fraction: float = 0.1  # the early checkpoint: first evaluation at >= this x iters



def zipf_stream(cfg: LongTailTokensConfig) -> TokenStream:
    """Train and validation streams drawn independently from the same chain."""
    g = torch.Generator().manual_seed(cfg.corpus_seed)
    kw = dict(exponent=cfg.exponent, n_clusters=cfg.n_clusters, coherence=cfg.coherence, generator=g)
    train = zipf_corpus(cfg.vocab_size, cfg.train_tokens, **kw)
    val = zipf_corpus(cfg.vocab_size, cfg.val_tokens, **kw)
    return TokenStream(train, val, cfg.vocab_size)


@torch.no_grad()
def bucket_losses(model: nn.Module, stream: TokenStream, buckets: Tensor, n_buckets: int, cfg) -> dict[str, Tensor]:
    """Mean validation cross-entropy per frequency bucket of the *target* token, ``(n_buckets,)``
    float64 (``nan`` for a bucket with no target), over ``cfg.eval_batches`` fixed batches; also
    the excess over the Bayes loss (:func:`zipf_conditional_nll`) per bucket."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(1234)
    device = next(model.parameters()).device
    total = torch.zeros(n_buckets, dtype=torch.float64)
    excess = torch.zeros(n_buckets, dtype=torch.float64)
    count = torch.zeros(n_buckets, dtype=torch.float64)
    for _ in range(cfg.eval_batches):
        x, y = stream.get_batch("val", cfg.batch_size, cfg.context, g)
        logits, _ = model(x.to(device))
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double().cpu(), y.reshape(-1), reduction="none")
        bayes = zipf_conditional_nll(x.reshape(-1), y.reshape(-1), cfg.vocab_size, cfg.exponent,
                                     n_clusters=cfg.n_clusters, coherence=cfg.coherence)  # fmt: skip
        b = buckets[y.reshape(-1)]
        total.index_add_(0, b, ce)
        excess.index_add_(0, b, ce - bayes)
        count.index_add_(0, b, torch.ones_like(ce))
    model.train(was)
    nan = torch.full_like(count, math.nan)
    return {"loss": torch.where(count > 0, total / count.clamp_min(1), nan),
            "excess": torch.where(count > 0, excess / count.clamp_min(1), nan)}  # fmt: skip


def spread(values) -> tuple[float, float]:
    """``(max - min, (max - min) / mean)`` over the finite entries."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    s = float(v.max() - v.min())
    return s, s / float(v.mean()) if v.mean() != 0 else math.nan


def token_optimizer(method: str, model: nn.Module, lr: float, adamw_lr: float) -> torch.optim.Optimizer:
    """``method``'s optimizer (:data:`SETTINGS`), the AdamW rule at ``adamw_lr`` for what a
    spectral method leaves out."""
    if method not in SETTINGS:
        raise ValueError(f"unknown method {method!r}; choose one of {TOKEN_METHODS}")
    if method == "muon-head" and model.lm_head.weight is model.transformer.wte.weight:
        raise ValueError("muon-head needs an untied head (tied=False)")
    entry, settings = SETTINGS[method]
    return make(entry, model, lr, adamw=lm_adamw_rule(adamw_lr), **settings)


def train_tokens(cfg: LongTailTokensConfig, stream: TokenStream, buckets: Tensor, method: str, lr: float,
                 adamw_lr: float, iters: int, seed: int, advance=lambda n: None,
                 per_bucket: bool = True, device="cpu") -> dict[str, list]:  # fmt: skip
    """One run of :func:`train_lm`; with ``per_bucket`` the bucket losses are evaluated at
    every evaluation step (through ``on_step``, before that step's update) and at the end."""
    model = seeded_gpt(seed, device, vocab_size=cfg.vocab_size, context=cfg.context, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_embd=cfg.n_embd, tied=cfg.tied)  # fmt: skip
    opt = token_optimizer(method, model, lr, adamw_lr)
    rows: list[dict[str, Tensor]] = []

    def on_step(step: int) -> None:
        if per_bucket and step % cfg.eval_every == 0:
            rows.append(bucket_losses(model, stream, buckets, cfg.n_buckets, cfg))

    out = train_lm(model, stream, opt, iters=iters, batch_size=cfg.batch_size, context=cfg.context,
                   warmup=min(cfg.warmup, iters // 10), eval_every=cfg.eval_every, eval_batches=cfg.eval_batches,
                   seed=seed, advance=advance, on_step=on_step)  # fmt: skip
    if per_bucket:
        rows.append(bucket_losses(model, stream, buckets, cfg.n_buckets, cfg))
        rows = rows[: len(out["step"])]
        for b in range(cfg.n_buckets):
            out[f"bucket{b}_loss"] = [float(r["loss"][b]) for r in rows]
            out[f"bucket{b}_excess"] = [float(r["excess"][b]) for r in rows]
        for part in ("loss", "excess"):
            spreads = [spread(r[part]) for r in rows]
            out[f"{part}_spread"] = [s for s, _ in spreads]
            out[f"{part}_rel_spread"] = [rel for _, rel in spreads]
        out["excess_max"] = [float(np.nanmax(r["excess"].numpy())) for r in rows]
    out["lr"] = [lr]
    return out


def _token_setup(cfg: LongTailTokensConfig) -> tuple[TokenStream, Tensor]:
    stream = zipf_stream(cfg)
    return stream, token_frequency_buckets(stream.train, cfg.vocab_size, cfg.n_buckets, by=cfg.bucket_by)


def tune(cfg: LongTailTokensConfig, ctx) -> dict:
    """Every candidate lr of every method for ``sweep_iters`` steps on seed 0; the lowest final
    validation loss wins. AdamW first: its best lr also drives the AdamW rule of the Muon runs."""
    stream, buckets = _token_setup(cfg)
    methods = ["adamw"] + [m for m in cfg.methods if m != "adamw"]
    ctx.steps(sum(len(lr_grid(cfg, m)) for m in methods) * cfg.sweep_iters, "lr sweep")

    def final(method, lr, best):
        out = train_tokens(cfg, stream, buckets, method, lr, best.get("adamw", lr), cfg.sweep_iters, 0,
                           ctx.advance, per_bucket=False, device=ctx.device)  # fmt: skip
        return final_or_inf(out["val_loss"])

    sweep, best = sweep_lowest({m: lr_grid(cfg, m) for m in methods}, final, label=lambda lr: f"{lr:g}")
    return {"rule": "lowest validation loss after sweep_iters steps on seed 0", "val_loss": sweep, "best_lr": best}


def run_seed(cfg: LongTailTokensConfig, seed: int, ctx) -> dict:
    stream, buckets = _token_setup(cfg)
    best = ctx.tuning["best_lr"]
    ctx.steps(len(cfg.methods) * cfg.iters, "training")
    out = {}
    for m in cfg.methods:
        run = train_tokens(cfg, stream, buckets, m, best[m], best["adamw"], cfg.iters, seed, ctx.advance,
                           device=ctx.device)  # fmt: skip
        out[m] = {k: [float(f"{v:.6g}") if math.isfinite(v) else math.nan for v in vals] for k, vals in run.items()}
    return out


def _early_index(steps, cfg: LongTailTokensConfig) -> int:
    steps = np.asarray(steps, dtype=float)
    hit = np.flatnonzero(steps >= cfg.early_fraction * cfg.iters)
    return int(hit[0]) if hit.size else len(steps) - 1


def _stack(runs: list[dict], metric: str, n: int) -> np.ndarray:
    """``(seeds, n)`` floats of ``metric``, cut to the ``n`` evaluations every seed has (a
    diverged run stops early), as :func:`~specgrad.experiments.series.by_method` does."""
    return np.asarray([r[metric][:n] for r in runs], dtype=float)


def analyze(cfg: LongTailTokensConfig, series: dict) -> tuple[dict, list[Claim]]:
    """Spreads of the bucket losses (mean over seeds) at the early checkpoint and at the end,
    and at matched progress: the first evaluation at which each method's validation loss is
    at most the highest of the methods' early validation losses."""
    rate = zipf_entropy_rate(cfg.vocab_size, cfg.exponent, n_clusters=cfg.n_clusters, coherence=cfg.coherence)
    summary: dict[str, float] = {"entropy_rate": rate}
    curves = {m: curve(series, m, "val_loss") for m in cfg.methods}
    curves = {m: c for m, c in curves.items() if c is not None}
    if not curves:
        return summary, []
    steps = next(iter(curves.values()))[0]
    early = _early_index(steps, cfg)
    summary["early_step"] = float(steps[early])
    matched = max(float(np.nanmean(c[1][:, early])) for c in curves.values())
    summary["matched_val_loss"] = matched
    matched_at: dict[str, int] = {}
    for m, (xs, ys) in curves.items():
        runs = seed_runs(series, m)
        summary[f"{m}/lr"] = float(runs[0]["lr"][0])
        summary[f"{m}/early_val_loss"] = float(np.nanmean(ys[:, early]))
        summary[f"{m}/final_val_loss"] = float(np.nanmean(ys[:, -1]))
        mean_curve = np.nanmean(ys, 0)
        hit = np.flatnonzero(mean_curve <= matched + 1e-12)
        at = int(hit[0]) if hit.size else len(mean_curve) - 1
        summary[f"{m}/matched_step"] = float(xs[at])
        matched_at[m] = at
        for metric in ("loss_spread", "loss_rel_spread", "excess_spread", "excess_rel_spread", "excess_max"):
            vals = _stack(runs, metric, ys.shape[1])
            summary[f"{m}/early_{metric}"] = float(np.nanmean(vals[:, early]))
            summary[f"{m}/final_{metric}"] = float(np.nanmean(vals[:, -1]))
            summary[f"{m}/matched_{metric}"] = float(np.nanmean(vals[:, at]))
        for b in range(cfg.n_buckets):
            vals = _stack(runs, f"bucket{b}_loss", ys.shape[1])
            if np.isfinite(vals).any():
                summary[f"{m}/early_bucket{b}_loss"] = float(np.nanmean(vals[:, early]))
                summary[f"{m}/final_bucket{b}_loss"] = float(np.nanmean(vals[:, -1]))
    claims: list[Claim] = []
    if "adamw" not in curves:
        return summary, claims
    n = min(c[1].shape[1] for c in curves.values())

    def ratio_claim(id, statement, m, ref, when):
        """``value``: the ratio of seed means (as in the summary); noise: two standard errors of
        the per-seed ratios; decided around 1 (not assessed with one seed)."""
        value = summary[f"{m}/{when}_excess_spread"] / summary[f"{ref}/{when}_excess_spread"]
        at = {x: early if when == "early" else matched_at[x] for x in (m, ref)}
        mine, theirs = (_stack(seed_runs(series, x), "excess_spread", n)[:, min(at[x], n - 1)] for x in (m, ref))
        per_seed = (mine / theirs).tolist() if len(mine) == len(theirs) else []
        if len(per_seed) < 2:
            return Claim.not_assessed(id, f"{statement} (measured {value:.3g})", "needs at least two seeds to "
                                      "measure the spread over seeds", direction="max")  # fmt: skip
        return resolved(id, statement, value, 2 * standard_error(per_seed), center=1.0, direction="max",
                        size=f"{len(per_seed)} seeds")

    for m in [m for m in ("muon", "muon-head") if m in curves]:
        for when in ("early", "matched"):
            summary[f"{m}/{when}_excess_spread_over_adamw"] = (summary[f"{m}/{when}_excess_spread"]
                                                               / summary[f"adamw/{when}_excess_spread"])  # fmt: skip
            summary[f"{m}/{when}_rel_spread_over_adamw"] = (summary[f"{m}/{when}_loss_rel_spread"]
                                                            / summary[f"adamw/{when}_loss_rel_spread"])  # fmt: skip
        claims += [
            ratio_claim(f"{m}-evener-early",
                        f"at the early checkpoint (step {int(summary['early_step'])}) {m} has learned the frequency "
                        "buckets more evenly than AdamW: the spread (max - min over buckets, nats) of the validation "
                        f"loss above the Bayes loss, {m} / AdamW, is below 1", m, "adamw", "early"),
            ratio_claim(f"{m}-evener-at-matched-loss",
                        f"at matched progress (the first evaluation with mean validation loss <= "
                        f"{summary['matched_val_loss']:.3f}, the higher early loss) the spread of the excess bucket "
                        f"losses, {m} / AdamW, is below 1", m, "adamw", "matched"),
        ]  # fmt: skip
        if "sgd" in curves:
            for when in ("early", "matched"):
                summary[f"{m}/{when}_excess_spread_over_sgd"] = (summary[f"{m}/{when}_excess_spread"]
                                                                 / summary[f"sgd/{when}_excess_spread"])  # fmt: skip
            claims.append(ratio_claim(f"{m}-evener-than-sgd-early",
                                      f"at the early checkpoint the spread of the excess bucket losses, {m} / SGD "
                                      "(momentum 0.9), is below 1", m, "sgd", "early"))  # fmt: skip
    return summary, claims


def plot(cfg: LongTailTokensConfig, series: dict, summary: dict, folder) -> list[str]:
    methods = [m for m in cfg.methods if any(k.startswith(f"{m}/seed") for k in series)]
    fig, axes = panel_grid(len(methods) + 2, cols=3, size=(4.2, 3.4), sharex=False)
    cmap = plt.get_cmap("viridis")
    top = 0.0
    for ax, m in zip(axes, methods):
        for b in range(cfg.n_buckets):
            cur = curve(series, m, f"bucket{b}_loss")
            if cur is None or not np.isfinite(cur[1]).any():
                continue
            with np.errstate(all="ignore"):
                ys = np.nanmean(cur[1], 0)
            ax.plot(cur[0], ys, color=cmap(b / max(1, cfg.n_buckets - 1)), label=f"bucket {b}", lw=1.2)
            top = max(top, float(np.nanmax(ys)))
        ax.axvline(summary.get("early_step", 0), color="gray", ls=":", lw=1)
        ax.set_title(f"{m} (lr {summary.get(f'{m}/lr', math.nan):g})", fontsize=9)
        ax.set_xlabel("step")
    for ax in axes[: len(methods)]:
        ax.set_ylim(0, top * 1.05)
    axes[0].set_ylabel("validation loss per frequency bucket\n(0: most frequent; mean over seeds)", fontsize=8)
    axes[0].legend(fontsize=6, ncol=2)
    for ax, metric, label in ((axes[-2], "excess_spread", "spread of bucket losses above Bayes\n(max - min, nats)"),
                              (axes[-1], "loss_rel_spread", "(max - min) / mean of bucket losses")):
        for m in methods:
            cur = curve(series, m, metric)
            if cur is not None:
                mean_band(ax, *cur, TOKEN_COLORS.get(m), m)
        ax.axvline(summary.get("early_step", 0), color="gray", ls=":", lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=8)
    axes[-2].set_yscale("log")
    return [save(fig, folder, "token_buckets.png")]


register(Experiment(
    name="long-tail-tokens",
    description="tiny GPT on a Zipfian token stream: validation loss per token-frequency bucket, Muon vs AdamW",
    config=LongTailTokensConfig, run_seed=run_seed, analyze=analyze, plot=plot, tune=tune,
    presets={
        "smoke": dict(vocab_size=64, train_tokens=5000, val_tokens=1000, n_layer=1, n_embd=32, context=16,
                      batch_size=8, iters=40, warmup=4, eval_every=10, eval_batches=2, n_buckets=4,
                      sgd_lrs=(0.3,), adamw_lrs=(3e-3,), muon_lrs=(0.03,), sweep_iters=10),
        "quick": dict(),
        "paper": dict(vocab_size=2048, train_tokens=2_000_000, val_tokens=100_000, n_layer=4, n_head=4, n_embd=128,
                      context=64, batch_size=32, iters=3000, warmup=100, eval_every=100, eval_batches=32,
                      n_buckets=10, sgd_lrs=(0.03, 0.1, 0.3, 1.0, 3.0), adamw_lrs=(3e-4, 1e-3, 3e-3, 1e-2),
                      muon_lrs=(0.01, 0.02, 0.05, 0.1),
                      sweep_iters=1000),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 3},
    size=lambda c: f"vocab {c.vocab_size}, {c.n_layer}x{c.n_embd}, {c.iters} it, {len(c.methods)} methods",
))
