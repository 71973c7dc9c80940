"""``long-tail-classification``: MLPs on long-tailed digits and MNIST-1D, spectral vs Euclidean
optimizers (the practical part of arXiv 2510.22980); CIFAR-10/100 made long-tailed, with a
small conv net (:func:`convnet`), when a local copy is given (``datasets=cifar10`` and
``cifar_path=<folder>``; nothing is downloaded).

MLPs (depth 2 and 4, depth = number of linear layers) on scikit-learn's digits and MNIST-1D
made long-tailed (:mod:`specgrad.data.longtail`; exponential profile with imbalance ratios 10
and 100, step profile 20:1), scored on a balanced test set. Optimizers: SGD with momentum
0.9, AdamW, Muon, Shampoo and SpecGD, each at the learning rate of a small grid with the best
balanced validation accuracy averaged over the epochs (seed 0, balanced validation split).
Claim: the spectral methods reach ``target_fraction`` of SGD's best balanced test accuracy in
fewer epochs than SGD.

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

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.longtail import LongTailData, cifar, digits, long_tail_from_splits, make_long_tail, mnist1d
from ..classification import group_means, per_class_accuracy, shot_groups
from ..methods import lr_grid, lr_grid_field, make
from ..plots import mean_band, panel_grid, save
from ..registry import Claim, Experiment, register, setting
from ..series import curve, finite_mean, first_at_least, geomean, seed_runs
from .verdicts import resolved, standard_error

CLS_METHODS = ("sgd", "adamw", "muon", "shampoo", "specgd")
SPECTRAL = ("muon", "shampoo", "specgd")
COLORS = {"sgd": "C0", "adamw": "C1", "muon": "C2", "shampoo": "C4", "specgd": "C3"}
# each method's settings beyond the methods table's defaults: sgd with momentum 0.9; muon with
# Nesterov 0.95, 5-step Newton-Schulz, "original" shape scaling; shampoo with specgrad's
# defaults; specgd with the exact SVD polar factor, no momentum, a fixed step
SETTINGS = {"sgd": dict(momentum=0.9), "adamw": {}, "muon": dict(momentum=0.95, nesterov=True), "shampoo": {},
            "specgd": dict(orthogonalizer="svd", momentum=0.0)}  # fmt: skip
ROUTING = {"all": {"*.weight": "spectral"}, "hidden": None}  # the overrides of split_params
DATASETS = ("digits", "mnist1d", "cifar10", "cifar100")


@dataclass
class LongTailConfig:
    datasets: tuple[str, ...] = ("digits", "mnist1d")
    imbalances: tuple[str, ...] = ("exp10", "exp100", "step20")  # profile + ratio
    depths: tuple[int, ...] = (2, 4)  # number of linear layers
    width: int = 128
    methods: tuple[str, ...] = CLS_METHODS
    routing: str = setting("all", choices=("all", "hidden"))  # "all": every weight matrix spectral; "hidden": split_params' defaults
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
    # CIFAR-10/100 ("cifar10", "cifar100" in datasets): read from cifar_path, never downloaded
    cifar_path: str = ""  # a folder in the python-pickle layout (data_batch_1..5/test_batch, or train/test)
    cifar_n_max: int = setting(0, ge=0)  # head-class training count (0: every training image of a class)
    cifar_n_val: int = setting(0, ge=0)  # balanced validation images per class, from the test files (0: a fifth)
    conv_width: int = setting(32, ge=1)  # channels of the conv net's convolutions
    sgd_lrs: tuple[float, ...] = lr_grid_field("sgd", default=(0.01, 0.03, 0.1, 0.3))
    adamw_lrs: tuple[float, ...] = lr_grid_field("adamw", default=(1e-3, 3e-3, 1e-2, 3e-2))
    muon_lrs: tuple[float, ...] = lr_grid_field("muon", default=(0.003, 0.01, 0.03, 0.1))
    shampoo_lrs: tuple[float, ...] = lr_grid_field("shampoo", default=(3e-4, 1e-3, 3e-3, 1e-2))
    specgd_lrs: tuple[float, ...] = lr_grid_field("specgd", default=(0.01, 0.03, 0.1, 0.3))
    weight_decay: float = 0.0  # every method
    target_fraction: float = 0.9  # target = this x SGD's best balanced test accuracy (seed mean)
    early_fraction: float = 0.2  # the "early" epoch is round(early_fraction * epochs)

    def validate(self):
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown datasets {unknown}; choose from {', '.join(DATASETS)}")
        if any(d.startswith("cifar") for d in self.datasets) and not self.cifar_path:
            raise ValueError("the cifar10/cifar100 datasets are read from a local copy: give cifar_path=<folder "
                             "of the python version> (nothing is downloaded)")  # fmt: skip


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
    elif dataset in ("cifar10", "cifar100"):
        variant, x_tr, y_tr, x_te, y_te = cifar(cfg.cifar_path)
        if variant != dataset:
            raise ValueError(f"dataset {dataset!r} asked for, but {cfg.cifar_path} holds {variant}")
        return long_tail_from_splits(x_tr, y_tr, x_te, y_te, profile=profile, ratio=ratio, n_max=cfg.cifar_n_max,
                                     n_val=cfg.cifar_n_val, generator=g, name=dataset)  # fmt: skip
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
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


def convnet(in_channels: int, width: int, depth: int, n_classes: int) -> nn.Sequential:
    """A small conv net with ``depth`` weight layers: ``depth - 1`` blocks of 3x3 convolution
    (``width`` channels, padding 1) and ReLU, each followed by 2x2 max-pooling for the first
    three blocks, then global average pooling and a linear head; PyTorch's default init."""
    if depth < 2:
        raise ValueError(f"a conv net needs depth >= 2 (a conv block and the head), got {depth}")
    layers: list[nn.Module] = []
    channels = in_channels
    for i in range(depth - 1):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        if i < 3:
            layers.append(nn.MaxPool2d(2))
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_classes))


def make_model(cfg: LongTailConfig, data: LongTailData, depth: int) -> nn.Sequential:
    """:func:`convnet` (``conv_width`` channels) for images ``(N, C, H, W)``, :func:`mlp`
    (``width``) for vectors ``(N, d)``."""
    if data.x_train.ndim == 4:
        return convnet(data.x_train.shape[1], cfg.conv_width, depth, data.n_classes)
    return mlp(data.x_train.shape[1], cfg.width, depth, data.n_classes)


def make_optimizer(method: str, model: nn.Module, lr: float, adamw_lr: float, routing: str = "all",
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:  # fmt: skip
    """``method`` with its :data:`SETTINGS` and ``weight_decay``; a spectral method routes the
    model by ``routing`` (:data:`ROUTING`) and trains what it leaves out with AdamW at
    ``adamw_lr``."""
    if method not in SETTINGS:
        raise ValueError(f"unknown method {method!r}; choose one of {CLS_METHODS}")
    if routing not in ROUTING:
        raise ValueError(f"routing must be 'all' or 'hidden', got {routing!r}")
    adamw = {"lr": adamw_lr, "betas": (0.9, 0.999), "weight_decay": weight_decay}
    return make(method, model, lr, weight_decay=weight_decay, overrides=ROUTING[routing], adamw=adamw,
                **SETTINGS[method])  # fmt: skip


@torch.no_grad()
def _scores(model: nn.Module, x: Tensor, y: Tensor, groups, n_classes: int) -> dict[str, float]:
    logits = model(x)
    acc = per_class_accuracy(logits, y, n_classes)
    many, medium, few = group_means(acc, groups)
    return {"bal_acc": float(acc.nanmean()), "worst_acc": float(acc.min()),
            "many_acc": many, "medium_acc": medium, "few_acc": few,
            "loss": float(F.cross_entropy(logits, y)), "class_acc": acc.tolist()}  # fmt: skip


def train_classifier(cfg: LongTailConfig, data: LongTailData, depth: int, method: str, lr: float,
                     adamw_lr: float, seed: int, advance=lambda n: None, device="cpu") -> dict[str, list]:  # fmt: skip
    """Train one MLP for ``cfg.epochs`` epochs of shuffled mini-batches (seeded: init and
    batch order from ``seed``); evaluate before training and after every epoch.

    Returns per-evaluation lists: ``epoch``, ``train_loss``, ``val_bal_acc``, ``test_bal_acc``,
    ``test_worst_acc``, ``test_{many,medium,few}_acc``, ``test_loss``, ``test_acc_c<k>`` for
    every class, and ``lr``. A run whose loss turns non-finite keeps ``nan`` from then on.
    The model and the data sit on ``device``.
    """
    torch.manual_seed(seed)
    model = make_model(cfg, data, depth).to(device)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    val_set = data.x_val.to(device), data.y_val.to(device)
    test_set = data.x_test.to(device), data.y_test.to(device)
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
                idx = idx.to(device)
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
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
        val = _scores(model, *val_set, groups, data.n_classes)
        test = _scores(model, *test_set, groups, data.n_classes)
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
    ctx.steps(len(cells(cfg)) * sum(len(lr_grid(cfg, m)) for m in methods) * (cfg.epochs + 1), "lr sweep")
    sweep, best = {}, {}
    for cell in cells(cfg):
        data = load_cell_data(cfg, cell.dataset, cell.profile, cell.ratio)
        for method in methods:
            key = f"{method}/{cell.name}"
            scores = {}
            for lr in lr_grid(cfg, method):
                adamw_lr = best.get(f"adamw/{cell.name}", lr)
                run = train_classifier(cfg, data, cell.depth, method, lr, adamw_lr, 0, ctx.advance, ctx.device)
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
            run = train_classifier(cfg, data, cell.depth, method, lr, adamw_lr, seed, ctx.advance, ctx.device)
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
            grid = lr_grid(cfg, method)
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
        speed, gain = _per_seed(cfg, series, method, early, summary, "sgd")
        for key, v in (("speedup", speed), ("few_gain", gain)):
            summary[f"{method}/{key}_seed_se"] = standard_error(v)
        statements = (
            (f"{method}-earlier-than-sgd", f"{method} reaches {pct} of SGD's best balanced test accuracy in fewer "
             "epochs than SGD: the geometric mean over cells (data set x imbalance x depth) of SGD's epochs / "
             f"{method}'s epochs (medians over seeds) is above 1", summary[f"{method}/geomean_speedup_vs_sgd"],
             speed, 1.0),
            (f"{method}-minority-early", f"at the early epoch ({early} of {cfg.epochs}) {method}'s few-shot "
             "(minority) class accuracy exceeds SGD's, averaged over cells and seeds",
             summary[f"{method}/early_few_acc_gain_vs_sgd"], gain, 0.0),
        )  # fmt: skip
        if "adamw" in cfg.methods and method != "adamw":
            a_speed, a_gain = _per_seed(cfg, series, method, early, summary, "adamw")
            summary[f"{method}/geomean_speedup_vs_adamw"] = geomean(
                [summary[f"adamw/{c.name}/epochs_to_target"] / max(summary[f"{method}/{c.name}/epochs_to_target"], 1.0)
                 for c in cells(cfg) if f"{method}/{c.name}/epochs_to_target" in summary])  # fmt: skip
            summary[f"{method}/early_few_acc_gain_vs_adamw"] = (
                summary[f"{method}/early_few_acc_gain_vs_sgd"] - summary["adamw/early_few_acc_gain_vs_sgd"])
            statements += (
                (f"{method}-earlier-than-adamw", f"{method} reaches the same target in fewer epochs than AdamW "
                 "(geometric mean over cells of AdamW's epochs / its epochs, above 1)",
                 summary[f"{method}/geomean_speedup_vs_adamw"], a_speed, 1.0),
                (f"{method}-minority-early-vs-adamw", f"at the early epoch {method}'s few-shot accuracy exceeds "
                 "AdamW's, averaged over cells and seeds", summary[f"{method}/early_few_acc_gain_vs_adamw"], a_gain,
                 0.0),
            )  # fmt: skip
        for id, statement, value, per_seed, center in statements:
            if len(per_seed) < 2:
                claims.append(Claim.not_assessed(id, f"{statement} (measured {value:.3g})",
                                                 "needs at least two seeds to measure the spread over seeds"))
            else:
                claims.append(resolved(id, statement, value, 2 * standard_error(per_seed), center=center,
                                       size=f"{len(per_seed)} seeds"))  # fmt: skip
    return summary, claims


def _per_seed(cfg: LongTailConfig, series: dict, method: str, early: int, summary: dict,
              ref: str) -> tuple[list, list]:  # fmt: skip
    """Per seed: the geometric-mean speedup over ``ref`` across cells, and the few-shot
    accuracy gain over ``ref`` at the early epoch averaged over cells (the noise of the two
    claims)."""
    speed, gain = [], []
    names = [c.name for c in cells(cfg) if f"{c.name}/target" in summary]
    runs = {(m, n): seed_runs(series, f"{m}/{n}") for m in (ref, method) for n in names}
    n_seeds = min((len(r) for r in runs.values()), default=0)
    for s in range(n_seeds):
        ratios, gains = [], []
        for name in names:
            mine, sgd = runs[(method, name)][s], runs[(ref, name)][s]
            target = summary[f"{name}/target"]
            e_sgd = epochs_to_target(sgd["test_bal_acc"], target)
            ratios.append(e_sgd / max(epochs_to_target(mine["test_bal_acc"], target), 1.0))
            gains.append(float(mine["test_few_acc"][early]) - float(sgd["test_few_acc"][early]))
        speed.append(geomean(ratios))
        gain.append(finite_mean(gains))
    return speed, gain


def _metric_grid(cfg, series, summary, metric: str, ylabel: str, folder, name: str, target: bool = False) -> str:
    cs = cells(cfg)
    fig, axes = panel_grid(len(cs))
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
