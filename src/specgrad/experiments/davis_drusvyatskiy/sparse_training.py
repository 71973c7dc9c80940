"""The training loop and summaries shared by ``sparse-regression`` and
``sparse-regression-swiglu``: the four-layer net of :mod:`specgrad.theory.sparse_regression`
trained full batch, GD on every layer vs SpecGD on the spectral layers, each layer stepping by
its majorization step with ``L = ||A_{l-1}||^2 / n``; intervals over seeds; one figure row.

Example:
    >>> cfg = SparseRegressionConfig(input_dim=6, hidden=8, samples=16, steps=2, record_every=1)
    >>> x, y, W0 = problem(cfg, 0)
    >>> out = train(cfg, "specgd", x, y, W0)
    >>> out["step"], len(out["nr_G2"])
    ([0, 1, 2], 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

from ...linalg import majorization_step, nuclear_rank, operator_norm
from ...theory.sparse_regression import ACTIVATIONS, sparse_net, sparse_regression_problem
from ..registry import setting
from ..series import at, curve, finite_max, geomean, paired_ratios, positive, rounded

LOSSES = ("half_mse", "mse")


@dataclass
class SparseRegressionConfig:
    input_dim: int = 128
    hidden: int = 512
    samples: int = setting(512, ge=1)
    steps: int = setting(400, ge=1)
    gd_lr: float = 0.081
    specgd_lr: float = 0.1
    spectral_layers: tuple[int, ...] = (2, 3)  # 1-based; the others take the Euclidean step
    loss: str = "half_mse"  # "half_mse": (1/2n) sum (f(x_i) - y_i)^2 (the paper); "mse": (1/n) sum (authors' script)
    record_every: int = 5  # stable and nuclear ranks every this many steps (the loss every step)
    early_step: int = 100  # step of the "SpecGD is ahead early" claim
    base_seed: int = 42  # data and init of seed k come from base_seed + k
    activation: str = setting("relu2", choices=ACTIVATIONS)


def problem(cfg: SparseRegressionConfig, seed: int):
    """``(x, y, Ws)`` of seed ``seed`` (drawn from ``base_seed + seed``)."""
    return sparse_regression_problem(cfg.input_dim, cfg.hidden, cfg.samples, cfg.base_seed + seed, cfg.activation)


def train(cfg: SparseRegressionConfig, method: str, x, y, W0, advance=lambda n: None) -> dict:
    """Full-batch training; layer ``l`` takes the majorization step of its norm with
    ``L = ||A_{l-1}||^2 / n`` (the Frobenius norm of ``A_{l-1}`` for spectral layers, the
    operator norm otherwise; ``A_0 = X``), times the method's lr."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    spectral = set(cfg.spectral_layers) if method == "specgd" else set()
    lr = cfg.specgd_lr if method == "specgd" else cfg.gd_lr
    n = x.shape[0]
    Ws = [w.clone().requires_grad_(True) for w in W0]
    starts: list = [None] * len(Ws)  # top right singular vector of each A_j at its last norm
    rec: dict[str, list] = {"step": [], "loss": [], "diag_step": []}
    for l in (1, 2, 3):
        rec[f"st_A{l}"] = []
        rec[f"nr_G{l}"] = []
    for t in range(cfg.steps + 1):
        *acts, out = sparse_net(x, Ws, cfg.activation)
        loss = (out - y).square().mean() * (0.5 if cfg.loss == "half_mse" else 1.0)
        rec["step"].append(t)
        rec["loss"].append(float(loss.detach()))
        if t == cfg.steps or not math.isfinite(rec["loss"][-1]):
            break
        grads = torch.autograd.grad(loss, Ws)
        diag = t % cfg.record_every == 0
        ops: dict[int, float] = {}

        def op(j: int) -> float:  # ||A_j||_op, computed at most once per step, warm-started
            if j not in ops:
                ops[j], starts[j] = operator_norm(acts[j], start=starts[j])
            return ops[j]

        with torch.no_grad():
            if diag:
                rec["diag_step"].append(t)
                for l in (1, 2, 3):
                    rec[f"st_A{l}"].append(float(acts[l].square().sum()) / op(l) ** 2)
            for l, (W, G) in enumerate(zip(Ws, grads), start=1):
                A = acts[l - 1]
                if l in spectral:
                    D = majorization_step(G, float(A.square().sum()) / n, "spectral")
                else:
                    D = majorization_step(G, op(l - 1) ** 2 / n, "frobenius")
                if diag and l <= 3:
                    rec[f"nr_G{l}"].append(float(nuclear_rank(G)))
                W.copy_(W - lr * D)
        advance(1)
    return {k: rounded(v) if k not in ("step", "diag_step") else v for k, v in rec.items()}


def finite_min(values) -> float:
    """The smallest finite value (nan if none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    return min(vals) if vals else math.nan


def ratio_interval(ratios, level: float = 0.95) -> tuple[float, float, float]:
    """``(geometric mean, low, high)`` of positive ratios over seeds, the interval a Student-t
    interval of the mean log ratio (``low = high = mean`` for one seed: no spread to measure).

    Example:
        >>> [round(v, 3) for v in ratio_interval([2.0, 4.0, 8.0])]
        [4.0, 0.715, 22.38]
    """
    logs = np.log(np.asarray([max(float(r), 1e-300) for r in ratios if r is not None and math.isfinite(r)]))
    if logs.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(logs.mean())
    if logs.size == 1:
        return math.exp(mean), math.exp(mean), math.exp(mean)
    half = float(scipy.stats.t.ppf(0.5 + level / 2, logs.size - 1)) * float(logs.std(ddof=1)) / math.sqrt(logs.size)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def summarize(cfg: SparseRegressionConfig, gd: list[dict], spec: list[dict], prefix: str = "") -> dict[str, float]:
    """The summary of one GD/SpecGD pair of runs over seeds; keys start with ``prefix``."""
    summary: dict[str, float] = {}
    early = min(cfg.early_step, cfg.steps)
    for name, runs in (("gd", gd), ("specgd", spec)):
        summary[f"{prefix}{name}/final_loss"] = geomean([positive(at(r, "loss", cfg.steps)) for r in runs])
        summary[f"{prefix}{name}/loss_at_early_step"] = geomean([positive(at(r, "loss", early)) for r in runs])
        summary[f"{prefix}{name}/diverged_runs"] = float(sum(not math.isfinite(at(r, "loss", cfg.steps)) for r in runs))
        for l in (1, 2, 3):
            summary[f"{prefix}{name}/max_st_A{l}"] = finite_max(v for r in runs for v in r[f"st_A{l}"])
        summary[f"{prefix}{name}/max_hidden_st"] = finite_max(summary[f"{prefix}{name}/max_st_A{l}"] for l in (1, 2, 3))
    for when, step in (("early", early), ("final", cfg.steps)):
        ratios = paired_ratios(gd, spec, "loss", step)
        mean, low, high = ratio_interval(ratios)
        summary[f"{prefix}{when}_loss_ratio_gd_over_specgd"] = geomean(ratios)
        summary[f"{prefix}{when}_loss_ratio_ci95_low"] = low
        summary[f"{prefix}{when}_loss_ratio_ci95_high"] = high
        summary[f"{prefix}{when}_loss_ratio_seed_min"] = finite_min(ratios)
        summary[f"{prefix}{when}_loss_ratio_seed_max"] = finite_max(ratios)
    summary[f"{prefix}seeds"] = float(len(gd))
    # the layerwise condition nr(G_l) >= st(A_{l-1}) for the spectral layers, along GD
    init_ratios = []
    for l in cfg.spectral_layers:
        if 2 <= l <= 3:
            for r in gd:  # the per-layer entries keep the last seed's
                nr, st = np.asarray(r[f"nr_G{l}"], dtype=float), np.asarray(r[f"st_A{l - 1}"], dtype=float)
                init_ratios.append(float(nr[0] / st[0]))
                summary[f"{prefix}gd/nr_G{l}_over_st_A{l - 1}_init"] = init_ratios[-1]
                summary[f"{prefix}gd/frac_steps_nr_G{l}_above_st_A{l - 1}"] = float(np.mean(nr >= st))
    summary[f"{prefix}max_hidden_st"] = finite_max([summary[f"{prefix}gd/max_hidden_st"], summary[f"{prefix}specgd/max_hidden_st"]])
    if init_ratios:
        summary[f"{prefix}gd/min_nr_over_st_init"] = min(init_ratios)
    return summary


def plot_pair(cfg: SparseRegressionConfig, series: dict, axes, prefix: str = "") -> None:
    """Loss, stable ranks and nuclear ranks of the GD/SpecGD pair under ``prefix`` on three axes."""
    colors = {"gd": "C0", "specgd": "C3"}
    for m in ("gd", "specgd"):
        cur = curve(series, f"{prefix}{m}", "loss")
        if cur is None:
            continue
        xs, ys = cur
        axes[0].plot(xs, np.exp(np.nanmean(np.log(np.maximum(ys, 1e-300)), 0)), color=colors[m],
                     label=f"{m} (lr {cfg.specgd_lr if m == 'specgd' else cfg.gd_lr:g})")  # fmt: skip
        for l, ls in ((1, "-"), (2, "--"), (3, ":")):
            st = curve(series, f"{prefix}{m}", f"st_A{l}", x="diag_step")
            nr = curve(series, f"{prefix}{m}", f"nr_G{l}", x="diag_step")
            axes[1].plot(st[0], np.nanmean(st[1], 0), color=colors[m], ls=ls, label=f"{m}: A{l}")
            axes[2].plot(nr[0], np.nanmean(nr[1], 0), color=colors[m], ls=ls, label=f"{m}: W{l}")
    axes[0].axvline(min(cfg.early_step, cfg.steps), color="gray", ls=":", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_title(f"{prefix}training loss ({'(1/2n)' if cfg.loss == 'half_mse' else '(1/n)'} sum (f - y)^2)",
                      fontsize=10)  # fmt: skip
    axes[1].set_title(f"{prefix}post-activation stable rank st(A_l)", fontsize=10)
    axes[2].set_title(f"{prefix}gradient nuclear rank nr(G_l)", fontsize=10)
    if cfg.activation == "swiglu":
        axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7, ncol=2)
