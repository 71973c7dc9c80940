"""``long-tail-classification`` and ``long-tail-tokens``: spectral vs Euclidean optimizers on
long-tailed data.

Reproduces the practical part of Vasudeva, Deora, Zhao, Sharan and Thrampoulidis, "How
Muon's Spectral Design Benefits Generalization: A Study on Imbalanced Data" (arXiv
2510.22980): SpecGD learns every principal direction of the data at the same rate, so on
imbalanced data spectral methods should reach balanced and minority-class accuracy early,
where gradient descent first learns the majority classes.

1. ``long-tail-classification``: MLPs (depth 2 and 4, depth = number of linear layers) on
   scikit-learn's digits and MNIST-1D made long-tailed (:mod:`specgrad.data.longtail`;
   exponential profile with imbalance ratios 10 and 100, step profile 20:1), scored on a
   balanced test set. Optimizers: SGD with momentum 0.9, AdamW, Muon, Shampoo and SpecGD,
   each at the learning rate of a small grid with the best balanced validation accuracy
   averaged over the epochs (seed 0, balanced validation split). Claim: the spectral methods reach
   ``target_fraction`` of SGD's best balanced test accuracy in fewer epochs than SGD.
2. ``long-tail-tokens``: the tiny GPT on a Zipfian token stream
   (:func:`specgrad.data.zipf_corpus`); validation loss per token-frequency bucket over
   training for SGD, AdamW, Muon (hidden matrices) and Muon with the output head on the
   spectral rule too. Claim: early in training Muon's bucket losses are more even: a smaller
   spread over buckets of the loss above the Bayes loss of the chain (the raw bucket losses
   differ by the chain's own entropy per bucket, so their spread is reported but not tested).

Routing of the spectral methods (``routing="all"``, the default): every weight matrix of
the MLP, first layer and classifier head included, takes the spectral rule; biases take
AdamW at AdamW's tuned learning rate. ``split_params``' defaults (``routing="hidden"``)
would send the first layer and the head to AdamW, which leaves a depth-2 MLP with no
spectral matrix at all and keeps Euclidean the head, the layer whose gradient carries the
class imbalance in the study's linear model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.longtail import LongTailData, digits, make_long_tail, mnist1d
from ..data.text import _windows, _zipf_parts, token_frequency_buckets, zipf_corpus, zipf_entropy_rate
from ..models import GPT, GPTConfig
from ..optim import Muon, Shampoo, SpecGD, split_params
from .classification import group_means, per_class_accuracy, shot_groups
from .plots import mean_band, save
from .registry import Claim, Experiment, register
from .series import curve, finite_mean, first_at_least, geomean, seed_runs
from .training import final_or_inf, lm_optimizer, sweep_lowest, train_lm

CLS_METHODS = ("sgd", "adamw", "muon", "shampoo", "specgd")
SPECTRAL = ("muon", "shampoo", "specgd")
COLORS = {"sgd": "C0", "adamw": "C1", "muon": "C2", "shampoo": "C4", "specgd": "C3"}


# ----------------------------------------------------------------------------------------------
# 1. long-tail-classification
# ----------------------------------------------------------------------------------------------


@dataclass
class LongTailConfig:
    datasets: tuple[str, ...] = ("digits", "mnist1d")
    imbalances: tuple[str, ...] = ("exp10", "exp100", "step20")  # profile + ratio
    depths: tuple[int, ...] = (2, 4)  # number of linear layers
    width: int = 128
    methods: tuple[str, ...] = CLS_METHODS
    routing: str = "all"  # "all": every weight matrix spectral; "hidden": split_params' defaults
    epochs: int = 30
    batch_size: int = 64
    digits_n_max: int = 100  # head-class training count; digits has >= 174 samples per class
    digits_n_test: int = 50  # balanced test samples per class
    digits_n_val: int = 20  # balanced validation samples per class
    mnist1d_samples: int = 8000  # generated, num_samples // 10 per class
    mnist1d_n_max: int = 500
    mnist1d_n_test: int = 100
    mnist1d_n_val: int = 50
    data_seed: int = 0  # the splits and the long-tailed subsample (the same for every seed)
    sgd_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    adamw_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    muon_lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    shampoo_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
    specgd_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    weight_decay: float = 0.0  # every method
    target_fraction: float = 0.9  # target = this x SGD's best balanced test accuracy (seed mean)
    early_fraction: float = 0.2  # the "early" epoch is round(early_fraction * epochs)

    def lrs(self, method: str) -> tuple[float, ...]:
        return getattr(self, f"{method}_lrs")


@dataclass(frozen=True)
class Cell:
    """One data set, imbalance profile and depth; ``name`` like ``digits-exp100-d2``."""

    dataset: str
    profile: str
    ratio: float
    depth: int

    @property
    def imbalance(self) -> str:
        return f"{self.profile}{self.ratio:g}"

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.imbalance}-d{self.depth}"


def parse_imbalance(text: str) -> tuple[str, float]:
    """``"exp100"`` -> ``("exp", 100.0)``; ``"step20"`` -> ``("step", 20.0)``."""
    m = re.fullmatch(r"(exp|step)(\d+(?:\.\d+)?)", text)
    if not m:
        raise ValueError(f"imbalance must look like 'exp10' or 'step20', got {text!r}")
    return m.group(1), float(m.group(2))


def cells(cfg: LongTailConfig) -> list[Cell]:
    return [Cell(d, *parse_imbalance(i), depth) for d in cfg.datasets for i in cfg.imbalances for depth in cfg.depths]


def load_cell_data(cfg: LongTailConfig, dataset: str, profile: str, ratio: float) -> LongTailData:
    """The long-tailed split of ``dataset``; the test and validation splits depend only on
    the data set and ``data_seed``."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    if dataset == "digits":
        x, y = digits()
        sizes = dict(n_max=cfg.digits_n_max, n_test=cfg.digits_n_test, n_val=cfg.digits_n_val)
    elif dataset == "mnist1d":
        x, y = mnist1d(cfg.mnist1d_samples, seed=42 + cfg.data_seed)
        sizes = dict(n_max=cfg.mnist1d_n_max, n_test=cfg.mnist1d_n_test, n_val=cfg.mnist1d_n_val)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose 'digits' or 'mnist1d'")
    return make_long_tail(x, y, profile=profile, ratio=ratio, generator=g, name=dataset, **sizes)


def shot_group_thresholds(counts, ratio: float) -> tuple[float, float]:
    """``(many, few)`` for :func:`shot_groups`: many-shot classes have more than
    ``n_max r^-0.3`` samples, few-shot fewer than ``n_max r^-0.7`` (the top and bottom 30% of
    the profile in log count; under the step profile the head half is many-shot, the tail
    half few-shot, and medium is empty)."""
    n_max = max(counts)
    return n_max * ratio**-0.3, n_max * ratio**-0.7


def mlp(d_in: int, width: int, depth: int, n_classes: int) -> nn.Sequential:
    """``depth`` linear layers with ReLU between them (``depth=2``: one hidden layer);
    PyTorch's default initialization."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    dims = [d_in] + [width] * (depth - 1) + [n_classes]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_optimizer(method: str, model: nn.Module, lr: float, adamw_lr: float, routing: str = "all",
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:  # fmt: skip
    """``sgd`` (momentum 0.9), ``adamw``, or a spectral method: ``muon`` (Nesterov 0.95,
    5-step Newton-Schulz, ``"original"`` shape scaling), ``shampoo`` (specgrad's Shampoo:
    momentum 0.9, summed statistics, Adam grafting, roots every 10 steps) or ``specgd``
    (exact SVD polar factor, no momentum, fixed step), with the parameters the routing
    leaves out on AdamW at ``adamw_lr``."""
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    if method == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if routing == "all":
        route = split_params(model, {"*.weight": "spectral"})
    elif routing == "hidden":
        route = split_params(model)
    else:
        raise ValueError(f"routing must be 'all' or 'hidden', got {routing!r}")
    adamw = {"lr": adamw_lr, "betas": (0.9, 0.999), "weight_decay": weight_decay}
    groups = route.param_groups(spectral={"lr": lr, "weight_decay": weight_decay}, adamw=adamw)
    if method == "muon":
        return Muon(groups, momentum=0.95, nesterov=True, adamw=adamw)
    if method == "shampoo":
        return Shampoo(groups, adamw=adamw)
    if method == "specgd":
        return SpecGD(groups, orthogonalizer="svd", momentum=0.0, adamw=adamw)
    raise ValueError(f"unknown method {method!r}; choose one of {CLS_METHODS}")


@torch.no_grad()
def _scores(model: nn.Module, x: Tensor, y: Tensor, groups, n_classes: int) -> dict[str, float]:
    logits = model(x)
    acc = per_class_accuracy(logits, y, n_classes)
    many, medium, few = group_means(acc, groups)
    return {"bal_acc": float(acc.nanmean()), "worst_acc": float(acc.min()),
            "many_acc": many, "medium_acc": medium, "few_acc": few,
            "loss": float(F.cross_entropy(logits, y)), "class_acc": acc.tolist()}  # fmt: skip


def train_classifier(cfg: LongTailConfig, data: LongTailData, depth: int, method: str, lr: float,
                     adamw_lr: float, seed: int, advance=lambda n: None) -> dict[str, list]:  # fmt: skip
    """Train one MLP for ``cfg.epochs`` epochs of shuffled mini-batches (seeded: init and
    batch order from ``seed``); evaluate before training and after every epoch.

    Returns per-evaluation lists: ``epoch``, ``train_loss``, ``val_bal_acc``, ``test_bal_acc``,
    ``test_worst_acc``, ``test_{many,medium,few}_acc``, ``test_loss``, ``test_acc_c<k>`` for
    every class, and ``lr``. A run whose loss turns non-finite keeps ``nan`` from then on.
    """
    torch.manual_seed(seed)
    model = mlp(data.x_train.shape[1], cfg.width, depth, data.n_classes)
    opt = make_optimizer(method, model, lr, adamw_lr, cfg.routing, cfg.weight_decay)
    many, few = shot_group_thresholds(data.counts, float(max(data.counts)) / min(data.counts))
    groups = shot_groups(data.counts, many=many, few=few)
    g = torch.Generator().manual_seed(10_000 + seed)
    n = len(data.y_train)
    out: dict[str, list] = {"epoch": [], "train_loss": [], "val_bal_acc": [], "test_bal_acc": [],
                            "test_worst_acc": [], "test_many_acc": [], "test_medium_acc": [],
                            "test_few_acc": [], "test_loss": []}  # fmt: skip
    out.update({f"test_acc_c{c}": [] for c in range(data.n_classes)})
    diverged, window = False, []
    for epoch in range(cfg.epochs + 1):
        if epoch > 0 and not diverged:
            window = []
            for idx in torch.randperm(n, generator=g).split(cfg.batch_size):
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                if not torch.isfinite(loss):
                    diverged = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                window.append(loss.item())
        advance(1)
        out["epoch"].append(epoch)
        if diverged:
            for k in out:
                if k != "epoch":
                    out[k].append(math.nan)
            continue
        val = _scores(model, data.x_val, data.y_val, groups, data.n_classes)
        test = _scores(model, data.x_test, data.y_test, groups, data.n_classes)
        out["train_loss"].append(float(np.mean(window)) if window else math.nan)
        out["val_bal_acc"].append(val["bal_acc"])
        for key in ("bal_acc", "worst_acc", "many_acc", "medium_acc", "few_acc", "loss"):
            out[f"test_{key}"].append(test[key])
        for c, a in enumerate(test["class_acc"]):
            out[f"test_acc_c{c}"].append(a)
    out["lr"] = [lr]
    out["adamw_lr"] = [adamw_lr]
    return out


def _tune_score(run: dict) -> tuple[float, float]:
    """Balanced validation accuracy averaged over the epochs (the area under its curve: good
    early and good late), ties broken by its last value; a diverged run scores -inf."""
    v = np.asarray(run["val_bal_acc"], dtype=float)[1:]
    if not np.isfinite(v).all():
        return (-math.inf, -math.inf)
    return (float(v.mean()), float(v[-1]))


def tune(cfg: LongTailConfig, ctx) -> dict:
    """Every learning rate of every method's grid on every cell, seed 0; the highest balanced
    validation accuracy averaged over epochs 1..E wins (ties: the higher last value). AdamW is
    tuned first: its best rate also drives the AdamW rule (biases) of the spectral methods."""
    methods = ["adamw"] + [m for m in cfg.methods if m != "adamw"]
    ctx.steps(len(cells(cfg)) * sum(len(cfg.lrs(m)) for m in methods) * (cfg.epochs + 1), "lr sweep")
    sweep, best = {}, {}
    for cell in cells(cfg):
        data = load_cell_data(cfg, cell.dataset, cell.profile, cell.ratio)
        for method in methods:
            key = f"{method}/{cell.name}"
            scores = {}
            for lr in cfg.lrs(method):
                adamw_lr = best.get(f"adamw/{cell.name}", lr)
                run = train_classifier(cfg, data, cell.depth, method, lr, adamw_lr, 0, ctx.advance)
                scores[lr] = _tune_score(run)
            sweep[key] = {f"{lr:g}": s[0] for lr, s in scores.items()}
            best[key] = max(scores, key=lambda lr: scores[lr])
    return {"rule": "highest balanced validation accuracy averaged over epochs 1..E on seed 0 "
                    "(ties: higher last value)",
            "val_bal_acc": sweep, "best_lr": best}  # fmt: skip


def run_seed(cfg: LongTailConfig, seed: int, ctx) -> dict:
    best = ctx.tuning["best_lr"]
    ctx.steps(len(cells(cfg)) * len(cfg.methods) * (cfg.epochs + 1), "training")
    out = {}
    for cell in cells(cfg):
        data = load_cell_data(cfg, cell.dataset, cell.profile, cell.ratio)
        adamw_lr = float(best[f"adamw/{cell.name}"])
        for method in cfg.methods:
            lr = float(best[f"{method}/{cell.name}"])
            run = train_classifier(cfg, data, cell.depth, method, lr, adamw_lr, seed, ctx.advance)
            out[f"{method}/{cell.name}"] = {k: [float(f"{v:.6g}") if math.isfinite(v) else math.nan for v in vals]
                                            for k, vals in run.items()}  # fmt: skip
    return out


epochs_to_target = first_at_least  # first epoch with accuracy >= target (len(curve) if never)


def analyze(cfg: LongTailConfig, series: dict) -> tuple[dict, list[Claim]]:
    """Per cell: the target (``target_fraction`` x the best epoch of SGD's seed-mean balanced
    test accuracy), each method's median epochs to it over seeds, its accuracies (balanced,
    worst-class, many/medium/few-shot) at the early epoch and at the end; then the
    speedups over SGD across cells."""
    summary: dict[str, float] = {"epochs_censored_at": float(cfg.epochs + 1)}
    early = max(1, round(cfg.early_fraction * cfg.epochs))
    summary["early_epoch"] = float(early)
    speedups: dict[str, list[float]] = {m: [] for m in cfg.methods}
    wins: dict[str, list[float]] = {m: [] for m in cfg.methods}
    few_gain: dict[str, list[float]] = {m: [] for m in cfg.methods}
    bal_gain: dict[str, list[float]] = {m: [] for m in cfg.methods}
    for cell in cells(cfg):
        sgd_runs = seed_runs(series, f"sgd/{cell.name}")
        if not sgd_runs:
            continue
        sgd_curve = np.nanmean([np.asarray(r["test_bal_acc"], dtype=float) for r in sgd_runs], 0)
        target = cfg.target_fraction * float(np.nanmax(sgd_curve))
        summary[f"{cell.name}/target"] = target
        for method in cfg.methods:
            runs = seed_runs(series, f"{method}/{cell.name}")
            if not runs:
                continue
            key = f"{method}/{cell.name}"
            summary[f"{key}/lr"] = float(runs[0]["lr"][0])
            grid = cfg.lrs(method)
            summary[f"{key}/lr_at_grid_edge"] = float(len(grid) > 1 and summary[f"{key}/lr"] in (min(grid), max(grid)))
            hits = [epochs_to_target(r["test_bal_acc"], target) for r in runs]
            summary[f"{key}/epochs_to_target"] = float(np.median(hits))
            for metric in ("bal_acc", "worst_acc", "many_acc", "medium_acc", "few_acc"):
                vals = [np.asarray(r[f"test_{metric}"], dtype=float) for r in runs]
                summary[f"{key}/early_{metric}"] = finite_mean([v[early] for v in vals])
                summary[f"{key}/final_{metric}"] = finite_mean([v[-1] for v in vals])
                summary[f"{key}/best_{metric}"] = finite_mean([np.nanmax(v) if np.isfinite(v).any() else math.nan
                                                             for v in vals])  # fmt: skip
        sgd_e = summary[f"sgd/{cell.name}/epochs_to_target"]
        for method in cfg.methods:
            key = f"{method}/{cell.name}"
            if f"{key}/epochs_to_target" not in summary:
                continue
            e = summary[f"{key}/epochs_to_target"]
            summary[f"{key}/speedup_vs_sgd"] = sgd_e / max(e, 1.0)
            speedups[method].append(sgd_e / max(e, 1.0))
            wins[method].append(float(e < sgd_e))
            few_gain[method].append(summary[f"{key}/early_few_acc"] - summary[f"sgd/{cell.name}/early_few_acc"])
            bal_gain[method].append(summary[f"{key}/early_bal_acc"] - summary[f"sgd/{cell.name}/early_bal_acc"])
    for method in cfg.methods:
        if speedups[method]:
            summary[f"{method}/geomean_speedup_vs_sgd"] = geomean(speedups[method])
            summary[f"{method}/fraction_cells_earlier_than_sgd"] = float(np.mean(wins[method]))
            summary[f"{method}/early_few_acc_gain_vs_sgd"] = finite_mean(few_gain[method])
            summary[f"{method}/early_bal_acc_gain_vs_sgd"] = finite_mean(bal_gain[method])
        for depth in cfg.depths:
            vals = [summary.get(f"{method}/{c.name}/speedup_vs_sgd") for c in cells(cfg) if c.depth == depth]
            vals = [v for v in vals if v is not None]
            if vals:
                summary[f"{method}/depth{depth}/geomean_speedup_vs_sgd"] = geomean(vals)

    claims: list[Claim] = []
    if "sgd" not in cfg.methods:
        return summary, claims
    pct = f"{100 * cfg.target_fraction:g}%"
    for method in [m for m in SPECTRAL if m in cfg.methods]:
        if f"{method}/geomean_speedup_vs_sgd" not in summary:
            continue
        claims += [
            Claim(f"{method}-earlier-than-sgd",
                  f"{method} reaches {pct} of SGD's best balanced test accuracy in fewer epochs than SGD: the "
                  "geometric mean over cells (data set x imbalance x depth) of SGD's epochs / "
                  f"{method}'s epochs (medians over seeds) is at least 1.2",
                  summary[f"{method}/geomean_speedup_vs_sgd"], 1.2, "min"),
            Claim(f"{method}-minority-early",
                  f"at the early epoch ({early} of {cfg.epochs}) {method}'s few-shot (minority) class accuracy "
                  "exceeds SGD's by at least 2 points, averaged over cells and seeds",
                  summary[f"{method}/early_few_acc_gain_vs_sgd"], 0.02, "min"),
        ]  # fmt: skip
    return summary, claims


def _grid(n: int, cols: int = 4, size: tuple[float, float] = (3.4, 2.8), sharex: bool = True):
    """A figure of ``n`` panels, at most ``cols`` to a row, each ``size`` inches; its axes."""
    cols = min(n, cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), sharex=sharex, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def _metric_grid(cfg, series, summary, metric: str, ylabel: str, folder, name: str, target: bool = False) -> str:
    cs = cells(cfg)
    fig, axes = _grid(len(cs))
    for ax, cell in zip(axes, cs):
        for method in cfg.methods:
            cur = curve(series, f"{method}/{cell.name}", metric, x="epoch")
            if cur is None:
                continue
            mean_band(ax, *cur, COLORS.get(method), method, alpha=0.15, lw=1.3)
        if target and f"{cell.name}/target" in summary:
            ax.axhline(summary[f"{cell.name}/target"], color="gray", ls=":", lw=1)
        ax.set_title(cell.name, fontsize=9)
        ax.set_ylim(-0.02, 1.0)
        ax.tick_params(labelsize=8)
    for ax in axes[: len(cs)]:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
    axes[0].legend(fontsize=7)
    return save(fig, folder, name)


def plot(cfg: LongTailConfig, series: dict, summary: dict, folder) -> list[str]:
    files = [
        _metric_grid(cfg, series, summary, "test_bal_acc", "balanced test accuracy", folder,
                     "balanced_accuracy.png", target=True),
        _metric_grid(cfg, series, summary, "test_few_acc", "few-shot class accuracy", folder, "few_shot.png"),
        _metric_grid(cfg, series, summary, "test_worst_acc", "worst-class accuracy", folder, "worst_class.png"),
    ]  # fmt: skip
    # Epochs to target per cell and method, and shot-group accuracies at the early epoch.
    cs = [c for c in cells(cfg) if f"{c.name}/target" in summary]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / len(cfg.methods)
    for j, method in enumerate(cfg.methods):
        vals = [summary.get(f"{method}/{c.name}/epochs_to_target", math.nan) for c in cs]
        axes[0].bar(np.arange(len(cs)) + j * width, vals, width, color=COLORS.get(method), label=method)
    axes[0].axhline(cfg.epochs + 1, color="gray", ls=":", lw=1)
    axes[0].set_xticks(np.arange(len(cs)) + 0.4 - width / 2, [c.name for c in cs], rotation=45, ha="right", fontsize=7)
    axes[0].set_ylabel(f"epochs to {100 * cfg.target_fraction:g}% of SGD's best\n(median over seeds)", fontsize=8)
    axes[0].legend(fontsize=7)
    groups = ("many_acc", "medium_acc", "few_acc")
    for j, method in enumerate(cfg.methods):
        vals = [finite_mean([summary.get(f"{method}/{c.name}/early_{g}") for c in cs]) for g in groups]
        finals = [finite_mean([summary.get(f"{method}/{c.name}/final_{g}") for c in cs]) for g in groups]
        axes[1].bar(np.arange(3) + j * width, vals, width, color=COLORS.get(method), label=method)
        axes[1].scatter(np.arange(3) + j * width, finals, color="k", marker="_", s=60, zorder=3)
    axes[1].set_xticks(np.arange(3) + 0.4 - width / 2, ["many-shot", "medium", "few-shot"])
    axes[1].set_ylabel(f"test accuracy at epoch {int(summary.get('early_epoch', 0))}\n(bars; ticks: final), "
                       "mean over cells", fontsize=8)  # fmt: skip
    files.append(save(fig, folder, "epochs_and_groups.png"))
    return files


register(Experiment(
    name="long-tail-classification",
    description="MLPs on long-tailed digits and MNIST-1D: balanced, worst-class and minority accuracy of "
                "SGD, AdamW, Muon, Shampoo, SpecGD",
    config=LongTailConfig, run_seed=run_seed, analyze=analyze, plot=plot, tune=tune,
    presets={
        "smoke": dict(datasets=("digits",), imbalances=("exp10",), depths=(2,), width=32, epochs=4,
                      methods=("sgd", "muon"), sgd_lrs=(0.1,), adamw_lrs=(3e-3,), muon_lrs=(0.03,)),
        "demo": dict(datasets=("digits",), imbalances=("exp100", "step20"), epochs=20),
        "quick": dict(imbalances=("exp100", "step20"), mnist1d_samples=6000, mnist1d_n_max=400),
        "paper": dict(width=256, epochs=60, mnist1d_samples=12000, mnist1d_n_max=800, mnist1d_n_test=200,
                      sgd_lrs=(0.003, 0.01, 0.03, 0.1, 0.3), adamw_lrs=(3e-4, 1e-3, 3e-3, 1e-2),
                      muon_lrs=(0.003, 0.01, 0.03, 0.1, 0.3), shampoo_lrs=(3e-4, 1e-3, 3e-3, 1e-2),
                      specgd_lrs=(0.001, 0.003, 0.01, 0.03, 0.1)),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 2, "quick": 3, "paper": 5},
    size=lambda c: f"{len(cells(c))} cells x {len(c.methods)} methods, width {c.width}, {c.epochs} epochs",
))


# ----------------------------------------------------------------------------------------------
# 2. long-tail-tokens
# ----------------------------------------------------------------------------------------------

TOKEN_METHODS = ("sgd", "adamw", "muon", "muon-head")
TOKEN_COLORS = {"sgd": "C0", "adamw": "C1", "muon": "C2", "muon-head": "C3"}


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
    sgd_lrs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    adamw_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    muon_lrs: tuple[float, ...] = (0.01, 0.03, 0.1)
    sweep_iters: int = 150  # each candidate lr trains this long (seed 0) in the tuning stage
    early_fraction: float = 0.1  # the early checkpoint: first evaluation at >= this x iters

    def lrs(self, method: str) -> tuple[float, ...]:
        return {"sgd": self.sgd_lrs, "adamw": self.adamw_lrs}.get(method, self.muon_lrs)


class TokenStream:
    """A token stream split into ``train`` and ``val`` (1-D int64) with ``CharCorpus``'s
    ``get_batch``, so that :func:`train_lm` and :func:`evaluate` accept it."""

    def __init__(self, train: Tensor, val: Tensor, vocab_size: int):
        self.train, self.val, self.vocab_size = train, val, vocab_size

    def get_batch(self, split: str, batch_size: int, context: int,
                  generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        return _windows(self.train if split == "train" else self.val, batch_size, context, generator)


def zipf_stream(cfg: LongTailTokensConfig) -> TokenStream:
    """Train and validation streams drawn independently from the same chain."""
    g = torch.Generator().manual_seed(cfg.corpus_seed)
    kw = dict(exponent=cfg.exponent, n_clusters=cfg.n_clusters, coherence=cfg.coherence, generator=g)
    train = zipf_corpus(cfg.vocab_size, cfg.train_tokens, **kw)
    val = zipf_corpus(cfg.vocab_size, cfg.val_tokens, **kw)
    return TokenStream(train, val, cfg.vocab_size)


def zipf_conditional_nll(prev: Tensor, nxt: Tensor, vocab_size: int, exponent: float = 1.1, *,
                         n_clusters: int = 8, coherence: float = 0.9) -> Tensor:  # fmt: skip
    """``-log P(nxt | prev)`` under the chain of :func:`specgrad.data.zipf_corpus`, float64 of
    the shape of ``prev`` (same shape as ``nxt``): the loss of the Bayes predictor, whose mean
    over a long stream is :func:`specgrad.data.zipf_entropy_rate`.

    Example:
        >>> nll = zipf_conditional_nll(torch.tensor([0, 0]), torch.tensor([0, 1]), 16)
        >>> bool(nll[0] < nll[1])  # 0 and 1 sit in different clusters
        True
    """
    p, cluster, p_cluster = _zipf_parts(vocab_size, exponent, n_clusters, coherence)
    same = (cluster[prev] == cluster[nxt]).double()
    q = (1 - coherence) * p[nxt] + coherence * same * p[nxt] / p_cluster[cluster[prev]]
    return -q.log()


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


def _token_optimizer(method: str, model: nn.Module, lr: float, adamw_lr: float):
    """``adamw`` and ``muon`` are :func:`lm_optimizer`'s; ``muon-head`` is Muon with the
    (untied) output head on the spectral rule too; ``sgd`` is SGD with momentum 0.9 on every
    parameter (the Euclidean reference)."""
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if method != "muon-head":
        return lm_optimizer(method, model, lr, adamw_lr)
    if model.lm_head.weight is model.transformer.wte.weight:
        raise ValueError("muon-head needs an untied head (tied=False)")
    adamw = {"lr": adamw_lr, "betas": (0.9, 0.99), "weight_decay": 0.0}
    groups = split_params(model, {"lm_head.weight": "spectral"}).param_groups(spectral={"lr": lr}, adamw=adamw)
    return Muon(groups, momentum=0.95, nesterov=True, adamw=adamw)


def train_tokens(cfg: LongTailTokensConfig, stream: TokenStream, buckets: Tensor, method: str, lr: float,
                 adamw_lr: float, iters: int, seed: int, advance=lambda n: None,
                 per_bucket: bool = True) -> dict[str, list]:  # fmt: skip
    """One run of :func:`train_lm`; with ``per_bucket`` the bucket losses are evaluated at
    every evaluation step (through ``on_step``, before that step's update) and at the end."""
    torch.manual_seed(seed)
    conf = GPTConfig(vocab_size=cfg.vocab_size, context=cfg.context, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, tied=cfg.tied)  # fmt: skip
    model = GPT(conf)
    opt = _token_optimizer(method, model, lr, adamw_lr)
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


def token_tune(cfg: LongTailTokensConfig, ctx) -> dict:
    """Every candidate lr of every method for ``sweep_iters`` steps on seed 0; the lowest final
    validation loss wins. AdamW first: its best lr also drives the AdamW rule of the Muon runs."""
    stream, buckets = _token_setup(cfg)
    methods = ["adamw"] + [m for m in cfg.methods if m != "adamw"]
    ctx.steps(sum(len(cfg.lrs(m)) for m in methods) * cfg.sweep_iters, "lr sweep")

    def final(method, lr, best):
        out = train_tokens(cfg, stream, buckets, method, lr, best.get("adamw", lr), cfg.sweep_iters, 0,
                           ctx.advance, per_bucket=False)  # fmt: skip
        return final_or_inf(out["val_loss"])

    sweep, best = sweep_lowest({m: cfg.lrs(m) for m in methods}, final, label=lambda lr: f"{lr:g}")
    return {"rule": "lowest validation loss after sweep_iters steps on seed 0", "val_loss": sweep, "best_lr": best}


def token_run_seed(cfg: LongTailTokensConfig, seed: int, ctx) -> dict:
    stream, buckets = _token_setup(cfg)
    best = ctx.tuning["best_lr"]
    ctx.steps(len(cfg.methods) * cfg.iters, "training")
    out = {}
    for m in cfg.methods:
        run = train_tokens(cfg, stream, buckets, m, best[m], best["adamw"], cfg.iters, seed, ctx.advance)
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


def token_analyze(cfg: LongTailTokensConfig, series: dict) -> tuple[dict, list[Claim]]:
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
    for m, (xs, ys) in curves.items():
        runs = seed_runs(series, m)
        summary[f"{m}/lr"] = float(runs[0]["lr"][0])
        summary[f"{m}/early_val_loss"] = float(np.nanmean(ys[:, early]))
        summary[f"{m}/final_val_loss"] = float(np.nanmean(ys[:, -1]))
        mean_curve = np.nanmean(ys, 0)
        hit = np.flatnonzero(mean_curve <= matched + 1e-12)
        at = int(hit[0]) if hit.size else len(mean_curve) - 1
        summary[f"{m}/matched_step"] = float(xs[at])
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
    for m in [m for m in ("muon", "muon-head") if m in curves]:
        for when in ("early", "matched"):
            summary[f"{m}/{when}_excess_spread_over_adamw"] = (summary[f"{m}/{when}_excess_spread"]
                                                               / summary[f"adamw/{when}_excess_spread"])  # fmt: skip
            summary[f"{m}/{when}_rel_spread_over_adamw"] = (summary[f"{m}/{when}_loss_rel_spread"]
                                                            / summary[f"adamw/{when}_loss_rel_spread"])  # fmt: skip
        claims += [
            Claim(f"{m}-evener-early",
                  f"at the early checkpoint (step {int(summary['early_step'])}) {m} has learned the frequency "
                  "buckets more evenly than AdamW: the spread (max - min over buckets, nats) of the validation "
                  f"loss above the Bayes loss, {m} / AdamW, is below 1", summary[f"{m}/early_excess_spread_over_adamw"],
                  1.0, "max"),
            Claim(f"{m}-evener-at-matched-loss",
                  f"at matched progress (the first evaluation with mean validation loss <= "
                  f"{summary['matched_val_loss']:.3f}, the higher early loss) the spread of the excess bucket "
                  f"losses, {m} / AdamW, is below 1", summary[f"{m}/matched_excess_spread_over_adamw"], 1.0, "max"),
        ]  # fmt: skip
        if "sgd" in curves:
            for when in ("early", "matched"):
                summary[f"{m}/{when}_excess_spread_over_sgd"] = (summary[f"{m}/{when}_excess_spread"]
                                                                 / summary[f"sgd/{when}_excess_spread"])  # fmt: skip
            claims.append(Claim(f"{m}-evener-than-sgd-early",
                                f"at the early checkpoint the spread of the excess bucket losses, {m} / SGD "
                                "(momentum 0.9), is below 1",
                                summary[f"{m}/early_excess_spread_over_sgd"], 1.0, "max"))  # fmt: skip
    return summary, claims


def token_plot(cfg: LongTailTokensConfig, series: dict, summary: dict, folder) -> list[str]:
    methods = [m for m in cfg.methods if any(k.startswith(f"{m}/seed") for k in series)]
    fig, axes = _grid(len(methods) + 2, cols=3, size=(4.2, 3.4), sharex=False)
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
    config=LongTailTokensConfig, run_seed=token_run_seed, analyze=token_analyze, plot=token_plot, tune=token_tune,
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
