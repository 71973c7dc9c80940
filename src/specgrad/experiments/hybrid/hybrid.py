"""``hybrid``: the condition-driven :class:`~specgrad.optim.Hybrid` against pure Euclidean
and pure spectral training, on four tasks at tuned learning rates.

* ``relu-features`` / ``swiglu-features``: least squares on fixed random features
  ``A = sigma(V X)`` (Davis & Drusvyatskiy's setting; ReLU features have low stable rank, so
  the spectral step should be chosen; SwiGLU features do not, so the Euclidean one). Methods
  are majorization steps of one linear block: ``euclidean`` (``G / L_F``), ``spectral``
  (``(||G||_* / L_op) polar(G)``) and ``hybrid`` (per step, the one with the larger
  guaranteed decrease), all through ``Hybrid(decision="decrease")``, the pure ones with
  ``force``, so the three share every line of arithmetic.
* ``sparse-regression``: the squared-ReLU MLP ``y = x1 x2 x3`` of the same study, with the
  same three methods per layer; ``spectral`` is the study's SpecGD (hidden matrices spectral,
  the first layer and the head Euclidean), ``hybrid`` decides for all four layers.
* ``char-lm``: a tiny GPT; ``euclidean`` is AdamW, ``spectral`` Muon on every hidden matrix,
  ``hybrid`` is ``Hybrid`` (``decision="ratio"``) whose spectral steps are Muon's (same
  shape scaling, momentum, lr grid) and whose Euclidean steps run at AdamW's tuned lr
  (``euclidean_scale = adamw_lr / lr``): each regime at its own tuned step size.

Each method's learning rate (a multiplier of the majorization step on the first three
tasks) is chosen on a separate tuning seed by the lowest final loss (validation loss on the
char-LM). The metric of a task is its final loss: the objective gap ``f - f*`` for random
features, the training loss for sparse regression, the validation loss for the char-LM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ...optim import Hybrid
from ...theory.random_features import random_feature_problem
from ...theory.sparse_regression import sparse_regression_problem
from ..methods import lm_adamw_rule, lm_optimizer, lr_grid, lr_grid_field, make
from ..plots import mean_band, save
from ..registry import Claim, Experiment, register
from ..series import by_method, seed_runs
from ..training import final_or_inf, load_corpus, seeded_gpt, sweep_lowest, train_lm

TASKS = ("relu-features", "swiglu-features", "sparse-regression", "char-lm")
METHODS = ("euclidean", "spectral", "hybrid")
COLORS = {"euclidean": "C0", "spectral": "C3", "hybrid": "C2"}
SR_BASE_SEED = 42  # sparse-regression's base_seed: seed k draws the data and init of that experiment's seed k


@dataclass
class HybridConfig:
    tasks: tuple[str, ...] = TASKS
    # random features (least squares, one dim x dim block)
    rf_dim: int = 100
    rf_feature_dim: int = 50
    rf_samples: int = 400
    rf_steps: int = 200
    # multipliers of the majorization step (< 2: descent)
    rf_lrs: tuple[float, ...] = lr_grid_field("relu-features/*", "swiglu-features/*", default=(1.0, 1.5, 1.9))
    # sparse regression (squared-ReLU MLP, 4 layers)
    sr_input_dim: int = 128
    sr_hidden: int = 128
    sr_samples: int = 512
    sr_steps: int = 200
    sr_lrs: tuple[float, ...] = lr_grid_field("sparse-regression/*", default=(0.05, 0.1, 0.2))
    # char-LM
    corpus: Optional[str] = None  # a text file; None: the embedded standard-library corpus
    lm_layers: int = 2
    lm_width: int = 64
    lm_heads: int = 4
    lm_context: int = 64
    lm_batch: int = 16
    lm_iters: int = 300
    lm_warmup: int = 30
    lm_eval_every: int = 50
    lm_eval_batches: int = 8
    lm_every: int = 10  # Hybrid's measurement interval on the char-LM
    lm_sweep_iters: int = 300
    adamw_lrs: tuple[float, ...] = lr_grid_field("char-lm/euclidean", default=(1e-3, 3e-3, 1e-2))
    muon_lrs: tuple[float, ...] = lr_grid_field("char-lm/spectral", default=(0.02, 0.05, 0.1))
    hybrid_lrs: tuple[float, ...] = lr_grid_field("char-lm/hybrid", default=(0.02, 0.05, 0.1))  # spectral steps: Muon's
    tune_seed: int = 1000  # the tuning runs use their own data and init
    tolerance: float = 0.02  # "within noise": hybrid / better pure <= 1 + tolerance (paired median)

    def steps(self, task: str) -> int:
        return {"char-lm": self.lm_iters, "sparse-regression": self.sr_steps}.get(task, self.rf_steps)


def _force(method: str, spectral: Optional[dict] = None):
    return {"euclidean": "euclidean", "spectral": spectral or "spectral", "hybrid": None}[method]


def _decisions(opt: Hybrid) -> dict[str, list]:
    """The hybrid's log as ``{"step", "<block>/ratio", "<block>/spectral"}`` lists."""
    log = opt.decisions()
    out = {"step": sorted(log["step"].unique().tolist())}
    for block, rows in log.groupby("block", sort=True):
        rows = rows.set_index("step").reindex(out["step"])
        out[f"{block}/ratio"] = [float(x) for x in rows["ratio"]]
        out[f"{block}/spectral"] = [float(c == "spectral") for c in rows["choice"]]
    return out


def _full_batch(opt: Hybrid, loss_fn, steps: int, advance, f_star: float = 0.0) -> tuple[dict, dict]:
    """``steps`` full-batch steps on ``loss_fn()``; the loss minus ``f_star`` (floored at 0)
    before each step and after the last, stopping at a non-finite loss; and the decisions."""
    out = {"step": [], "loss": []}
    for t in range(steps + 1):
        loss = loss_fn()
        value = loss.item()
        out["step"].append(t)
        out["loss"].append(max(value - f_star, 0.0) if math.isfinite(value) else value)
        if t == steps or not math.isfinite(value):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        advance(1)
    opt.close()
    return out, _decisions(opt)


def _least_squares(cfg: HybridConfig, task: str, method: str, lr: float, seed: int, advance,
                   device="cpu") -> tuple[dict, dict]:  # fmt: skip
    act = task.split("-")[0]
    prob = random_feature_problem(cfg.rf_dim, cfg.rf_feature_dim, cfg.rf_samples, act, seed)
    A, Y = prob.A.to(device), prob.Y.to(device)
    net = nn.Sequential(nn.Identity(), nn.Linear(cfg.rf_dim, cfg.rf_dim, bias=False)).double().to(device)
    nn.init.zeros_(net[1].weight)
    opt = make("hybrid", net, lr, every=1, decision="decrease", force=_force(method), momentum=0.0,
               orthogonalizer="svd", overrides={"1.weight": "spectral"})  # fmt: skip
    return _full_batch(opt, lambda: 0.5 * (net(A.T) - Y.T).square().sum(1).mean(), cfg.rf_steps, advance,
                       prob.f_star)  # fmt: skip


class _SquaredReLU(nn.Module):
    def forward(self, x):
        return torch.relu(x).square()


def _sparse(cfg: HybridConfig, method: str, lr: float, seed: int, advance, device="cpu") -> tuple[dict, dict]:
    x, y, Ws = sparse_regression_problem(cfg.sr_input_dim, cfg.sr_hidden, cfg.sr_samples, SR_BASE_SEED + seed)
    x, y = x.to(device), y.to(device)
    layers = []
    for k, W in enumerate(Ws):
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False).double()
        lin.weight.data.copy_(W)
        layers += [lin] + ([_SquaredReLU()] if k < len(Ws) - 1 else [])
    net = nn.Sequential(*layers).to(device)
    ends = {"0.weight": "euclidean", "6.weight": "euclidean"}
    opt = make("hybrid", net, lr, every=1, decision="decrease", momentum=0.0, orthogonalizer="svd",
               force=_force(method, {"*": "spectral", **ends}),
               overrides={"0.weight": "spectral", "6.weight": "spectral"})  # fmt: skip
    return _full_batch(opt, lambda: 0.5 * (net(x) - y).square().mean(), cfg.sr_steps, advance)


def _char_lm(cfg: HybridConfig, method: str, lr: float, adamw_lr: float, iters: int, seed: int,
             ctx) -> tuple[dict, dict]:  # fmt: skip
    corpus = load_corpus(cfg.corpus)
    model = seeded_gpt(seed, ctx.device, vocab_size=corpus.vocab_size, context=cfg.lm_context, n_layer=cfg.lm_layers,
                       n_head=cfg.lm_heads, n_embd=cfg.lm_width)  # fmt: skip
    if method == "hybrid":  # Muon's settings when spectral, AdamW's lr when Euclidean
        opt = make("hybrid", model, lr, every=cfg.lm_every, shape_scaling="original", euclidean_scale=adamw_lr / lr,
                   betas=(0.9, 0.99), adamw=lm_adamw_rule(adamw_lr))  # fmt: skip
    else:
        opt = lm_optimizer("adamw" if method == "euclidean" else "muon", model, lr, adamw_lr)
    out = train_lm(model, corpus, opt, iters=iters, batch_size=cfg.lm_batch, context=cfg.lm_context,
                   warmup=min(cfg.lm_warmup, iters // 10), eval_every=cfg.lm_eval_every,
                   eval_batches=cfg.lm_eval_batches, seed=seed, advance=ctx.advance)  # fmt: skip
    out = {"step": out["step"], "loss": out["val_loss"], "seconds": out["seconds"]}
    if method == "hybrid":
        opt.close()
        return out, _decisions(opt)
    return out, {}


def _run(cfg: HybridConfig, task: str, method: str, lr: float, seed: int, ctx, adamw_lr: float = 0.0,
         iters: Optional[int] = None) -> tuple[dict, dict]:  # fmt: skip
    if task == "char-lm":
        return _char_lm(cfg, method, lr, adamw_lr, iters or cfg.lm_iters, seed, ctx)
    if task == "sparse-regression":
        return _sparse(cfg, method, lr, seed, ctx.advance, ctx.device)
    if task in ("relu-features", "swiglu-features"):
        return _least_squares(cfg, task, method, lr, seed, ctx.advance, ctx.device)
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def tune(cfg: HybridConfig, ctx) -> dict:
    """Every lr of every (task, method) on ``tune_seed``; the lowest final loss wins (a
    diverged run counts as infinite). On the char-LM AdamW goes first: its lr also drives
    the AdamW rule (embeddings, head, norms) of Muon and Hybrid."""
    def cost(task):
        return cfg.lm_sweep_iters if task == "char-lm" else cfg.steps(task)

    ctx.steps(sum(len(lr_grid(cfg, f"{t}/{m}")) * cost(t) for t in cfg.tasks for m in METHODS), "lr sweep")

    def final(key, lr, best):
        task, method = key.rsplit("/", 1)
        adamw_lr = best.get(f"{task}/euclidean", lr)
        run, _ = _run(cfg, task, method, lr, cfg.tune_seed, ctx, adamw_lr, cfg.lm_sweep_iters)
        return final_or_inf(run["loss"])

    sweep, best = sweep_lowest({f"{t}/{m}": lr_grid(cfg, f"{t}/{m}") for t in cfg.tasks for m in METHODS}, final)
    return {"sweep_final_loss": sweep, "best_lr": best}


def run_seed(cfg: HybridConfig, seed: int, ctx) -> dict:
    best = ctx.tuning["best_lr"]
    ctx.steps(sum(len(METHODS) * cfg.steps(t) for t in cfg.tasks), "training")
    out = {}
    for task in cfg.tasks:
        for method in METHODS:
            run, log = _run(cfg, task, method, best[f"{task}/{method}"], seed, ctx, best.get(f"{task}/euclidean", 0.0))
            out[f"{task}/{method}"] = run
            if log:
                out[f"{task}/{method}-decisions"] = log
    return out


def _finals(series: dict, task: str) -> dict[str, np.ndarray]:
    """Final loss per seed of each method, ``inf`` if diverged (paired by seed: same data and
    init)."""
    out = {}
    for method in METHODS:
        runs = seed_runs(series, f"{task}/{method}")
        if runs:
            out[method] = np.array([final_or_inf(r["loss"]) for r in runs])
    return out


def _spectral_fraction(series: dict, task: str) -> float:
    """Share of the hybrid's (block, step) decisions that chose the spectral step."""
    votes = [x for k, v in series.items() if k.startswith(f"{task}/hybrid-decisions/")
             for name, xs in v.items() if name.endswith("/spectral") for x in xs if x is not None and not math.isnan(x)]  # fmt: skip
    return float(np.mean(votes)) if votes else math.nan


def analyze(cfg: HybridConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary, claims, beats = {}, [], {}
    for task in cfg.tasks:
        finals = _finals(series, task)
        if set(finals) != set(METHODS):
            continue
        for m, v in finals.items():
            summary[f"{task}/{m}_final"] = float(np.median(v))
        summary[f"{task}/hybrid_spectral_fraction"] = _spectral_fraction(series, task)
        better = min(("euclidean", "spectral"), key=lambda m: np.median(finals[m]))
        ref = finals[better]
        with np.errstate(invalid="ignore"):
            paired = finals["hybrid"] / ref
        summary[f"{task}/better_pure"] = better
        summary[f"{task}/hybrid_over_better"] = float(np.median(paired))
        claims.append(Claim(
            f"within-noise-{task}",
            f"{task}: Hybrid's final loss is within {cfg.tolerance:.0%} of the better pure method ({better}) "
            f"(median over seeds of the paired ratio)",
            float(np.median(paired)), 1 + cfg.tolerance, "max"))  # fmt: skip
        with np.errstate(invalid="ignore"):
            beats[task] = float(np.max(finals["hybrid"] / np.minimum(finals["euclidean"], finals["spectral"])))
        summary[f"{task}/hybrid_over_both_worst_seed"] = beats[task]
    if "relu-features" in cfg.tasks and "relu-features/hybrid_spectral_fraction" in summary:
        claims.append(Claim("relu-picks-spectral", "ReLU random features: the hybrid chooses the spectral step "
                            "in most decisions", summary["relu-features/hybrid_spectral_fraction"], 0.5, "min"))  # fmt: skip
    if "swiglu-features" in cfg.tasks and "swiglu-features/hybrid_spectral_fraction" in summary:
        claims.append(Claim("swiglu-picks-euclidean", "SwiGLU random features: the hybrid chooses the Euclidean "
                            "step in most decisions", summary["swiglu-features/hybrid_spectral_fraction"], 0.5, "max"))  # fmt: skip
    if beats:
        task = min(beats, key=beats.get)
        summary["best_task_for_hybrid"] = task
        claims.append(Claim(
            "strictly-better-somewhere",
            f"On at least one task Hybrid beats both pure methods on every seed by 1% or more "
            f"(worst-seed ratio to the better of the two; best task: {task})",
            beats[task], 0.99, "max"))  # fmt: skip
    return summary, claims


def plot(cfg: HybridConfig, series: dict, summary: dict, folder) -> list[str]:
    tasks = [t for t in cfg.tasks if any(k.startswith(f"{t}/") for k in series)]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 7), squeeze=False)
    for j, task in enumerate(tasks):
        ax = axes[0, j]
        curves = by_method({k: v for k, v in series.items() if k.startswith(f"{task}/") and "decisions" not in k}, "loss")
        for name, (xs, ys) in sorted(curves.items()):
            method = name.split("/", 1)[1]
            mean_band(ax, xs, ys, COLORS[method], method)
        if task != "char-lm":
            ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel({"char-lm": "validation loss", "sparse-regression": "training loss"}.get(task, "f - f*"))
        ax.legend(fontsize=8)
        ax = axes[1, j]
        log = next((v for k, v in sorted(series.items()) if k.startswith(f"{task}/hybrid-decisions/")), None)
        if log:
            for k, name in enumerate(n[: -len("/ratio")] for n in log if n.endswith("/ratio")):
                ratio = np.asarray(log[f"{name}/ratio"], dtype=float)
                ax.plot(log["step"], ratio, color=f"C{k % 10}", lw=1, label=name)
                chosen = np.asarray(log[f"{name}/spectral"], dtype=float) > 0.5
                ax.scatter(np.asarray(log["step"])[chosen], ratio[chosen], color=f"C{k % 10}", s=6)
            ax.axhline(1.0, color="gray", ls=":", lw=1)
            ax.set_yscale("log")
            ax.legend(fontsize=6, ncol=2)
        ax.set_xlabel("step")
        ax.set_ylabel("nr(M) / st(A) (dots: spectral chosen)")
        ax.set_title(f"{task}: hybrid decisions (seed 0)", fontsize=9)
    return [save(fig, folder, "hybrid.png")]


register(Experiment(
    name="hybrid",
    description="condition-driven Hybrid vs pure Euclidean and pure spectral on four tasks, tuned lrs",
    config=HybridConfig, run_seed=run_seed, analyze=analyze, plot=plot, tune=tune,
    presets={
        "smoke": dict(rf_dim=20, rf_feature_dim=10, rf_samples=60, rf_steps=15, rf_lrs=(1.0,),
                      sr_input_dim=8, sr_hidden=16, sr_samples=32, sr_steps=10, sr_lrs=(0.1,),
                      lm_layers=1, lm_width=16, lm_heads=2, lm_context=16, lm_batch=4, lm_iters=12,
                      lm_warmup=2, lm_eval_every=6, lm_eval_batches=1, lm_every=2, lm_sweep_iters=6,
                      adamw_lrs=(3e-3,), muon_lrs=(0.02,), hybrid_lrs=(0.02,)),
        "quick": dict(),
        "demo": dict(rf_steps=100, sr_hidden=64, sr_steps=150, lm_iters=200, lm_sweep_iters=200),
        "paper": dict(rf_steps=1000, sr_hidden=512, sr_steps=400, lm_layers=4, lm_width=128, lm_iters=2000,
                      lm_warmup=100, lm_eval_batches=20, lm_sweep_iters=500),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 5},
    size=lambda c: f"{len(c.tasks)} tasks, rf {c.rf_dim}x{c.rf_dim}, mlp {c.sr_hidden}, lm {c.lm_layers}x{c.lm_width}",
))
