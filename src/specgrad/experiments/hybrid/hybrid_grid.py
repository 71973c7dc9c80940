"""``hybrid-grid``: does acting on the layerwise test pay? :class:`~specgrad.optim.Hybrid`
against AdamW and Muon on the models of ``criterion-accuracy``
(:mod:`specgrad.experiments.criterion_accuracy.models`), with the rules it chose.

Each model trains from one init with ``adamw`` (at ``adamw_lr``), ``muon`` (hidden matrices
at ``muon_lr``, the AdamW rule elsewhere) and ``hybrid`` (``Hybrid(decision="ratio")``: Muon's
spectral step at ``muon_lr``, AdamW's step at ``adamw_lr`` via ``euclidean_scale``, so each
regime runs at the step size of its pure method). The metric is the loss on the model's
fixed probe batch (held-out text for the language models), every ``steps // 10`` steps.
Hybrid's decision log gives, per block type, the share of decisions that chose the spectral
step. The learning rates are those of ``criterion-accuracy``, not tuned per method: the grid
asks whether the test's decisions help at the settings the test was scored at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..criterion_accuracy.models import TASKS, block_type, build
from ..devices import cpu_only
from ..methods import lm_adamw_rule, make
from ..plots import save
from ..registry import Claim, Experiment, register
from ..series import seed_runs
from ..training import load_corpus

METHODS = ("adamw", "muon", "hybrid")
COLORS = {"adamw": "C0", "muon": "C3", "hybrid": "C2"}


@dataclass
class HybridGridConfig:
    models: tuple[str, ...] = TASKS
    steps: int = 150
    adamw_lr: float = 3e-3
    muon_lr: float = 0.02
    every: int = 10  # Hybrid's measurement interval
    corpus: str = ""  # a text file for the language models; "": the embedded standard-library corpus
    samples: int = 1024
    input_dim: int = 16
    width: int = 64
    channels: int = 8
    n_layer: int = 2
    n_embd: int = 64
    context: int = 32
    batch_size: int = 16
    probe_rows: int = 256
    probe_seqs: int = 4

    def validate(self):
        bad = [m for m in self.models if m not in TASKS]
        if bad or not self.models:
            raise ValueError(f"models must be names of {TASKS}, got {self.models!r}")
        if self.steps < 10:
            raise ValueError(f"steps must be at least 10, got {self.steps}")


def _optimizer(cfg: HybridGridConfig, task, method: str):
    if method == "adamw":
        return make("adamw", task.model, cfg.adamw_lr)
    if method == "muon":
        target = task.model if task.spectral is None else task.spectral
        return make("muon", target, cfg.muon_lr, adamw=lm_adamw_rule(cfg.adamw_lr))
    names = {id(p): n for n, p in task.model.named_parameters()}
    overrides = None if task.spectral is None else {names[id(p)]: "spectral" for p in task.spectral}
    return make("hybrid", task.model, cfg.muon_lr, every=cfg.every, shape_scaling="original",
                euclidean_scale=cfg.adamw_lr / cfg.muon_lr, betas=(0.9, 0.99), adamw=lm_adamw_rule(cfg.adamw_lr),
                overrides=overrides)  # fmt: skip


def run_seed(cfg: HybridGridConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "hybrid-grid", "the small models of criterion-accuracy")
    corpus = load_corpus(cfg.corpus or None) if any(m.startswith(("gpt-", "hf-")) for m in cfg.models) else None
    ctx.steps(len(cfg.models) * len(METHODS) * cfg.steps, "training")
    every = max(1, cfg.steps // 10)
    out = {}
    for name in cfg.models:
        for method in METHODS:
            task = build(name, cfg, seed, corpus)
            opt = _optimizer(cfg, task, method)
            run = {"step": [], "loss": []}
            for step in range(cfg.steps + 1):
                if step % every == 0 or step == cfg.steps:
                    with torch.no_grad():
                        run["step"].append(step)
                        run["loss"].append(float(task.loss(task.model, task.probe)))
                if step == cfg.steps or not math.isfinite(run["loss"][-1]):
                    break
                opt.zero_grad(set_to_none=True)
                loss = task.loss(task.model, task.batches(step))
                if not math.isfinite(loss.item()):
                    run["step"].append(step)
                    run["loss"].append(math.nan)
                    break
                loss.backward()
                opt.step()
                ctx.advance(1)
            out[f"{name}/{method}"] = run
            if method == "hybrid":
                opt.close()
                log = opt.decisions()
                out[f"{name}/hybrid-decisions"] = {
                    "step": [int(s) for s in log["step"]], "block": [str(b) for b in log["block"]],
                    "type": [block_type(name, str(b).removesuffix(".weight")) for b in log["block"]],
                    "ratio": [float(r) for r in log["ratio"]], "spectral": [float(c == "spectral") for c in log["choice"]]}  # fmt: skip
    return out


def _final(run: dict) -> float:
    last = run["loss"][-1] if run["loss"] else None
    return float(last) if last is not None and math.isfinite(last) else math.inf


def analyze(cfg: HybridGridConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    ratios, noise, wins = [], [], []
    for name in cfg.models:
        finals = {m: np.array([_final(r) for r in seed_runs(series, f"{name}/{m}")]) for m in METHODS}
        if any(not len(v) for v in finals.values()):
            continue
        for m, v in finals.items():
            summary[f"{name}/{m}_final"] = float(np.median(v))
            if len(v) > 1 and np.all(np.isfinite(v)):
                noise.append(float(np.std(v) / np.mean(v)))
        better = min(finals["adamw"], finals["muon"], key=np.median)
        best_pure = "adamw" if better is finals["adamw"] else "muon"
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = float(np.median(finals["hybrid"] / better))
        summary[f"{name}/better_pure"] = best_pure
        summary[f"{name}/hybrid_over_better"] = ratio
        ratios.append(ratio)
        wins.append(float(np.median(finals["hybrid"]) <= min(np.median(finals["adamw"]), np.median(finals["muon"]))))
        logs = seed_runs(series, f"{name}/hybrid-decisions")
        votes = [s for r in logs for s in r["spectral"]]
        if votes:
            summary[f"{name}/hybrid_spectral_share"] = float(np.mean(votes))
    types: dict[str, list] = {}
    for key, log in series.items():
        if "/hybrid-decisions/" in key:
            for kind, s in zip(log["type"], log["spectral"]):
                types.setdefault(kind, []).append(s)
    for kind, votes in sorted(types.items()):
        summary[f"type/{kind}/hybrid_spectral_share"] = float(np.mean(votes))
    claims = []
    if ratios:
        summary["median_hybrid_over_better"] = float(np.median(ratios))
        summary["share_hybrid_best"] = float(np.mean(wins))
        statement = ("Hybrid matches the better pure method: median over models of final loss / better of AdamW and "
                     "Muon's <= 1 + the seed-to-seed spread (median coefficient of variation of the finals)")
        if noise:
            summary["seed_spread"] = float(np.median(noise))
            claims.append(Claim("hybrid-matches-better-pure", statement, summary["median_hybrid_over_better"],
                                1 + summary["seed_spread"], "max"))  # fmt: skip
        else:
            claims.append(Claim.not_assessed("hybrid-matches-better-pure", statement,
                                             "one seed: no seed-to-seed spread to compare against", direction="max"))  # fmt: skip
    return summary, claims


def plot(cfg: HybridGridConfig, series: dict, summary: dict, folder) -> list[str]:
    names = [n for n in cfg.models if seed_runs(series, f"{n}/hybrid")]
    cols = min(5, len(names)) or 1
    rows = math.ceil(len(names) / cols) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes[:-1].flat, names):
        for m in METHODS:
            runs = seed_runs(series, f"{name}/{m}")
            n = min(len(r["loss"]) for r in runs)
            ys = np.array([[np.nan if v is None else v for v in r["loss"][:n]] for r in runs], dtype=float)
            ax.plot(runs[0]["step"][:n], np.nanmean(ys, 0), color=COLORS[m], label=m, lw=1.2)
        ax.set_yscale("log")
        share = summary.get(f"{name}/hybrid_spectral_share", math.nan)
        ax.set_title(f"{name} (hybrid spectral {share:.0%})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[:-1].flat[len(names):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    ax = axes[-1, 0]
    kinds = sorted(k.split("/")[1] for k in summary if k.startswith("type/"))
    ax.bar(range(len(kinds)), [summary[f"type/{k}/hybrid_spectral_share"] for k in kinds], color="C2")
    ax.set_xticks(range(len(kinds)), kinds, rotation=45, fontsize=7)
    ax.set(ylim=(0, 1), ylabel="share spectral", title="Hybrid's decisions by block type")
    for a in axes[-1, 1:]:
        a.axis("off")
    fig.suptitle("Hybrid vs AdamW and Muon on the criterion-accuracy models (loss on the probe batch)", fontsize=11)
    fig.tight_layout()
    return [save(fig, folder, "hybrid_grid.png")]


register(Experiment(
    name="hybrid-grid",
    description="Hybrid vs AdamW and Muon on the criterion-accuracy models, with Hybrid's decisions by block type",
    config=HybridGridConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(models=("rf-relu", "sr-relu2", "gpt-relu2"), steps=10, every=2, samples=128, width=16,
                      n_layer=1, n_embd=16, context=8, batch_size=8, probe_rows=32, probe_seqs=2),
        "quick": dict(models=tuple(m for m in TASKS if m != "hf-llama")),
        "paper": dict(steps=1000, samples=4096, width=128, n_layer=4, n_embd=128, context=64, probe_rows=1024,
                      probe_seqs=16),
    },  # fmt: skip
    seeds={"smoke": 1, "quick": 2, "paper": 3},
    size=lambda c: f"{len(c.models)} models x 3 methods, {c.steps} steps",
    minutes={"smoke": 0.5, "quick": 10},
))
