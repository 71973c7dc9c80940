"""``char-lm``: a tiny GPT trained with AdamW, Muon, SpecGD and the Muon family (NorMuon,
AdaMuon, Muon with cautious weight decay) at tuned learning rates.

Claim (Muon's practice, e.g. Jordan 2024; Liu et al. 2025): Muon reaches AdamW's final
validation loss in fewer steps; the project's goal is at most 0.7x the steps. The summary
also gives every method's steps *and* training seconds to AdamW's final validation loss of
the same seed (mean, min and max over seeds): a spectral step costs more than an AdamW
step, and the user pays in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np

from ...data import CharCorpus
from ...models import GPT
from ..methods import LM_METHODS, lm_optimizer, lr_grid, lr_grid_field
from ..plots import band_plot, save
from ..registry import Claim, Experiment, register
from ..series import by_method, first_reach
from ..training import final_or_inf, load_corpus, seeded_gpt, sweep_lowest, train_lm


@dataclass
class CharLMConfig:
    corpus: Optional[str] = None  # a text file; None: the embedded standard-library corpus
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    context: int = 64
    batch_size: int = 12
    mlp: str = "gelu"
    iters: int = 2000
    warmup: int = 100
    eval_every: int = 50
    eval_batches: int = 20
    methods: tuple[str, ...] = LM_METHODS
    adamw_lrs: tuple[float, ...] = lr_grid_field("adamw", default=(1e-3, 3e-3))
    # one grid for the Muon family: NorMuon and AdaMuon rescale their update to the norm of
    # Muon's (and use its "original" shape scaling), so the same lrs apply
    muon_lrs: tuple[float, ...] = lr_grid_field("muon", "muon-*", "normuon", "adamuon", default=(0.02, 0.05))
    specgd_lrs: tuple[float, ...] = lr_grid_field("specgd", default=(0.02, 0.05))
    sweep_iters: int = 500  # each candidate lr trains this long (seed 0) in the tuning stage


def _model(cfg: CharLMConfig, corpus: CharCorpus, seed: int, device) -> GPT:
    return seeded_gpt(seed, device, vocab_size=corpus.vocab_size, context=cfg.context, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, n_embd=cfg.n_embd, mlp=cfg.mlp)  # fmt: skip


def _train(cfg, corpus, method, lr, adamw_lr, iters, seed, ctx):
    model = _model(cfg, corpus, seed, ctx.device)
    opt = lm_optimizer(method, model, lr, adamw_lr)
    return train_lm(model, corpus, opt, iters=iters, batch_size=cfg.batch_size, context=cfg.context,
                    warmup=min(cfg.warmup, iters // 10), eval_every=cfg.eval_every,
                    eval_batches=cfg.eval_batches, seed=seed, advance=ctx.advance)  # fmt: skip


def tune(cfg: CharLMConfig, ctx) -> dict:
    """Every candidate lr of every method for ``sweep_iters`` steps on seed 0; the best
    final validation loss wins. AdamW is tuned first: its best lr also drives the AdamW
    rule of the other methods (embeddings, head, norms)."""
    corpus = load_corpus(cfg.corpus)
    methods = ["adamw"] + [m for m in cfg.methods if m != "adamw"]
    ctx.steps(sum(len(lr_grid(cfg, m)) for m in methods) * cfg.sweep_iters, "lr sweep")

    def final(method, lr, best):
        out = _train(cfg, corpus, method, lr, best.get("adamw", lr), cfg.sweep_iters, 0, ctx)
        return final_or_inf(out["val_loss"])

    sweep, best = sweep_lowest({m: lr_grid(cfg, m) for m in methods}, final)
    return {"sweep_val_loss": sweep, "best_lr": best}


def run_seed(cfg: CharLMConfig, seed: int, ctx) -> dict:
    corpus = load_corpus(cfg.corpus)
    best = ctx.tuning["best_lr"]
    ctx.steps(len(cfg.methods) * cfg.iters, "training")
    return {m: _train(cfg, corpus, m, best[m], best["adamw"], cfg.iters, seed, ctx) for m in cfg.methods}


def to_target(xs, ys, secs, targets) -> tuple[np.ndarray, np.ndarray]:
    """Per seed (rows of ``ys``, ``secs``): the first step at which the validation loss
    reaches that seed's ``targets[k]`` (interpolated; NaN if never) and the training
    seconds at that step."""
    steps = np.array([first_reach(xs, y, t) for y, t in zip(ys, targets)])
    seconds = np.array([np.interp(k, xs, sec) if math.isfinite(k) else math.nan for k, sec in zip(steps, secs)])
    return steps, seconds


def _stats(prefix: str, values: np.ndarray) -> dict:
    """Mean, min and max over seeds; NaN (not reached) for all three if any seed missed."""
    if not np.isfinite(values).all():
        return {f"{prefix}_mean": math.nan, f"{prefix}_min": math.nan, f"{prefix}_max": math.nan}
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_min": float(values.min()),
            f"{prefix}_max": float(values.max())}  # fmt: skip


def analyze(cfg: CharLMConfig, series: dict) -> tuple[dict, list[Claim]]:
    vals = by_method(series, "val_loss")
    secs = by_method(series, "seconds")
    if "adamw" not in vals:
        return {}, []
    steps, adam = vals["adamw"]
    target = float(np.mean(adam[:, -1]))
    summary = {"adamw_final_val_loss": target}
    for m, (xs, ys) in vals.items():
        curve = ys.mean(0)
        summary[f"{m}_final_val_loss"] = float(curve[-1])
        summary[f"{m}_steps_to_adamw_final"] = first_reach(xs, curve, target)
        sec_curve = secs[m][1].mean(0)
        summary[f"{m}_seconds_to_adamw_final"] = float(np.interp(summary[f"{m}_steps_to_adamw_final"], xs, sec_curve)) if math.isfinite(summary[f"{m}_steps_to_adamw_final"]) else math.nan
        # paired by seed: each seed's run against AdamW's final loss on the same seed
        n = min(len(ys), len(adam))
        per_seed_steps, per_seed_seconds = to_target(xs, ys[:n], secs[m][1][:n], adam[:n, -1])
        summary.update(_stats(f"{m}_steps_to_target", per_seed_steps))
        summary.update(_stats(f"{m}_seconds_to_target", per_seed_seconds))
        summary[f"{m}_seconds_per_step"] = float(np.mean(secs[m][1][:, -1] / xs[-1])) if xs[-1] > 0 else math.nan
    claims = []
    if "muon" in vals:
        ratio = summary["muon_steps_to_adamw_final"] / summary["adamw_steps_to_adamw_final"]
        ratio = ratio if math.isfinite(ratio) else math.inf
        summary["muon_step_ratio"] = ratio
        claims += [
            Claim("muon-fewer-steps", "Muon reaches AdamW's final validation loss in fewer steps", ratio, 1.0, "max"),
            Claim("muon-0.7x-steps", "Muon needs at most 0.7x AdamW's steps (published speedups 1.35-1.4x)", ratio, 0.7, "max"),
        ]
    return summary, claims


def table(summary: dict, methods) -> str:
    """A Markdown table of steps and seconds to AdamW's final validation loss (mean over
    seeds, min-max in brackets) and the final loss of each method, from :func:`analyze`'s
    summary (or a result file's)."""

    def cell(prefix, fmt):
        mean, lo, hi = (summary.get(f"{prefix}_{k}") for k in ("mean", "min", "max"))
        if mean is None or not math.isfinite(mean):  # NaN is stored as null in result.json
            return "not reached by every seed"
        return f"{mean:{fmt}} [{lo:{fmt}}-{hi:{fmt}}]"

    rows = ["| method | final val loss | steps to AdamW's final | seconds to AdamW's final | s / step |",
            "|---|---|---|---|---|"]  # fmt: skip
    for m in methods:
        if f"{m}_final_val_loss" in summary:
            steps, seconds = cell(f"{m}_steps_to_target", ".0f"), cell(f"{m}_seconds_to_target", ".1f")
            loss, per_step = summary[f"{m}_final_val_loss"], summary[f"{m}_seconds_per_step"]
            rows.append(f"| {m} | {loss:.3f} | {steps} | {seconds} | {per_step:.3f} |")
    return "\n".join(rows)


def plot(cfg: CharLMConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    band_plot(axes[0], series, "val_loss")
    band_plot(axes[1], series, "val_loss", x="seconds")
    lo = min(np.nanmin(v[1]) for v in by_method(series, "val_loss").values())
    for ax in axes:
        if "adamw_final_val_loss" in summary:
            ax.axhline(summary["adamw_final_val_loss"], color="gray", ls=":", lw=1)
        ax.set_ylim(lo * 0.97, lo * 1.6)
    axes[0].set_title("validation loss (mean over seeds, min-max band)")
    axes[1].set_title("validation loss against training seconds")
    return [save(fig, folder, "val_loss.png")]


register(Experiment(
    name="char-lm",
    description="tiny GPT on characters: Muon, SpecGD, NorMuon, AdaMuon, cautious Muon vs AdamW at tuned lrs",
    config=CharLMConfig, run_seed=run_seed, analyze=analyze, plot=plot, tune=tune,
    presets={
        "smoke": dict(n_layer=1, n_head=2, n_embd=32, context=16, batch_size=8, iters=40, warmup=5,
                      eval_every=10, eval_batches=2, adamw_lrs=(3e-3,), muon_lrs=(0.05,),
                      specgd_lrs=(0.05,), sweep_iters=10),
        # the demo's lrs are the quick sweep's winners (AdamW 3e-3, Muon and SpecGD 0.02)
        "demo": dict(n_layer=2, n_embd=64, iters=500, warmup=50, eval_batches=10, adamw_lrs=(3e-3,),
                     muon_lrs=(0.02,), specgd_lrs=(0.02,), sweep_iters=10),
        "quick": dict(),
        "paper": dict(n_layer=6, n_head=6, n_embd=384, context=256, batch_size=64, iters=5000,
                      warmup=200, eval_every=250, eval_batches=50, adamw_lrs=(3e-4, 1e-3, 3e-3),
                      muon_lrs=(0.01, 0.02, 0.05), specgd_lrs=(0.01, 0.02, 0.05), sweep_iters=1000),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 3},
    size=lambda c: f"{c.n_layer}x{c.n_embd}, ctx {c.context}, {c.iters} it",
))
