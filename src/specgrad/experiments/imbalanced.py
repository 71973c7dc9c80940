"""``imbalanced-gmm`` and ``imbalanced-depth``: spectral vs Euclidean steps on imbalanced mixtures.

Reproduces the Gaussian-mixture part of Vasudeva, Deora, Zhao, Sharan and Thrampoulidis,
"How Muon's Spectral Design Benefits Generalization: A Study on Imbalanced Data"
(arXiv 2510.22980). The exact model (moments, closed forms, deep linear recursion) lives in
:mod:`specgrad.theory.imbalanced`.

``imbalanced-gmm``

(a) Linear model, squared loss, zero init, exact population gradient, ``d = k = 3``,
    ``p = (0.5, 0.3, 0.2)``: the diagonal ``W[c, c]`` over time under GD, normalized GD and
    SpecGD against the closed forms, and the population balanced accuracy of each
    trajectory (exact quadrature). The same three methods also run on a large seeded
    sample (empirical gradient) to show the population picture carries over.
(b) Linear model ``W`` ``(k, d)`` (bias-free, zero init), cross-entropy, ``d = 200``,
    ``k = 20``, ``p_c ~ 1/c``, full-batch steps on a seeded training sample; balanced
    validation and test sets. Methods: GD, normalized GD, sign descent, SpecGD (exact SVD),
    Muon (momentum 0.9, Nesterov, 5 Newton-Schulz steps) and Adam, all from
    :mod:`specgrad.optim` / ``torch.optim``; SpecGD and Muon use ``shape_scaling="none"``
    (for a ``20 x 200`` matrix Muon's default ``sqrt(max(1, out/in))`` is 1 anyway).
    Step sizes: the ``tune`` stage trains every method at every step size of its grid on
    seed 0 and keeps the one with the highest *validation* balanced accuracy at any step.
    Each seed then trains every method at its tuned step size on fresh data; a method's
    *early-stopped* test balanced accuracy is the one at the step of its best validation
    balanced accuracy, its *best stopping point* the maximum test balanced accuracy over
    steps (an oracle). The claim compares SpecGD early-stopped (validation) with the
    non-spectral methods at their oracle stopping points.

``imbalanced-depth``

Deep linear models ``W_L ... W_1`` (``L = 1..4``; ``L = 2`` is the bilinear model) on the
mixture of (a), from the aligned balanced init (``L = 1``: zero; ``L >= 2``: every layer
``a_0 I`` with ``a_0^L = init_product``), population gradient, GD and SpecGD. A class is
*saturated* at the first step where the product's ``W[c, c]`` reaches ``saturation`` (90%)
of its population optimum ``w*_c``; the *relative gap* is ``max_c t_c / min_c t_c - 1``.
The study's formula ``((SNR + 1/p_min)/(SNR + 1/p_max))^{1/L} - 1`` is SpecGD's gap in the
limit of small init and step; GD's gap is compared with its own gradient-flow prediction.
Step sizes: SpecGD ``(saturation w*_min)^{1/L} / specgd_steps`` (the rarest class needs
about ``specgd_steps`` steps), GD ``gd_fraction`` times its stability limit at the solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..optim import Muon, NormalizedGD, SignDescent, SpecGD
from ..theory import imbalanced as th
from .classification import per_class_accuracy, per_class_loss
from .plots import mean_band, save
from .registry import Claim, Experiment, register
from .series import finite_mean, seed_runs

LINEAR_METHODS = ("gd", "ngd", "specgd")
CE_METHODS = ("gd", "ngd", "sign", "specgd", "muon", "adam")
EUCLIDEAN = ("gd", "ngd", "sign")
SPECTRAL = ("specgd", "muon")
COLORS = {"gd": "C0", "ngd": "C9", "sign": "C1", "specgd": "C3", "muon": "C2", "adam": "C4"}


# --- imbalanced-gmm --------------------------------------------------------------------


@dataclass
class GMMConfig:
    # (a) squared loss, population gradient
    lin_priors: tuple[float, ...] = (0.5, 0.3, 0.2)
    lin_mu: float = 2.0
    lin_sigma: float = 1.0
    lin_steps: int = 150
    lin_gd_lr: float = 0.02
    lin_specgd_lr: float = 0.005
    lin_ngd_lr: float = 0.0087  # ~ lin_specgd_lr * sqrt(3): the same Frobenius step length
    lin_sample_n: int = 20000  # a seeded sample of this size for the empirical-gradient runs (0: skip)
    # (b) cross-entropy
    k: int = 20
    d: int = 200
    mu: float = 3.0
    sigma: float = 1.0
    n_train: int = 3000
    val_per_class: int = 50
    test_per_class: int = 200
    steps: int = 200
    methods: tuple[str, ...] = CE_METHODS
    muon_momentum: float = 0.9
    gd_lrs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0)
    ngd_lrs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    sign_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
    specgd_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    muon_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    adam_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)

    def lr_grid(self, method: str) -> tuple[float, ...]:
        return tuple(getattr(self, f"{method}_lrs"))


def lin_mixture(cfg: GMMConfig) -> th.Mixture:
    return th.mixture(cfg.lin_priors, cfg.lin_mu, cfg.lin_sigma)


def ce_mixture(cfg: GMMConfig) -> th.Mixture:
    return th.mixture(th.harmonic_priors(cfg.k), cfg.mu, cfg.sigma, cfg.d)


def lin_lr(cfg: GMMConfig, method: str) -> float:
    return {"gd": cfg.lin_gd_lr, "ngd": cfg.lin_ngd_lr, "specgd": cfg.lin_specgd_lr}[method]


def linear_run(cfg: GMMConfig, method: str, data=None) -> dict[str, list]:
    """One (a) trajectory with the population balanced accuracy of every step (quadrature;
    defined for the diagonal model, so only for population runs)."""
    mix = lin_mixture(cfg)
    X, y = data if data is not None else (None, None)
    out = th.train_linear(mix, method, lin_lr(cfg, method), cfg.lin_steps, X=X, y=y)
    if data is None:
        W = np.stack([out[f"w{c}"] for c in range(mix.k)], 1)
        accs = torch.stack([th.population_class_accuracy(torch.as_tensor(w), mix) for w in W])
        out["bal_acc"] = accs.mean(1).tolist()
        out["worst_acc"] = accs.min(1).values.tolist()
    return out


def _make_optimizer(method: str, params, lr: float, momentum: float):
    if method == "gd":
        return torch.optim.SGD(params, lr=lr)
    if method == "ngd":
        return NormalizedGD(params, lr=lr)
    if method == "sign":
        return SignDescent(params, lr=lr)
    if method == "specgd":
        return SpecGD(params, lr=lr, orthogonalizer="svd", shape_scaling="none")
    if method == "muon":
        return Muon(params, lr=lr, momentum=momentum, nesterov=True, shape_scaling="none")
    if method == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"method must be one of {CE_METHODS}, got {method!r}")


def ce_data(cfg: GMMConfig, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded training sample (priors ``p_c ~ 1/c``), balanced validation and test sets."""
    mix = ce_mixture(cfg)
    gen = torch.Generator().manual_seed(10_007 * (seed + 1))
    train = th.sample(mix, cfg.n_train, gen)
    val = th.sample_balanced(mix, cfg.val_per_class, gen)
    test = th.sample_balanced(mix, cfg.test_per_class, gen)
    return {"train": train, "val": val, "test": test}


def ce_run(cfg: GMMConfig, method: str, lr: float, data: dict, advance=None, on_step=None) -> dict[str, list]:
    """Full-batch cross-entropy training of a bias-free ``W`` ``(k, d)`` from zero (float32);
    ``on_step(t, W)`` (optional) sees the weights that step ``t``'s metrics are computed on.

    Per-step lists (step 0 = init): ``train_loss``, ``val_bal_acc``, test ``bal_acc``,
    ``worst_acc``, ``minority_acc`` and ``minority_loss`` (the rarest class), and
    ``minority_quarter_acc`` (mean recall of the rarest quarter of the classes).
    """
    X, y = (t.float() if t.is_floating_point() else t for t in data["train"])
    Xv, yv = data["val"][0].float(), data["val"][1]
    Xt, yt = data["test"][0].float(), data["test"][1]
    k = cfg.k
    rare = list(range(k - max(1, k // 4), k))
    W = torch.nn.Parameter(torch.zeros(k, cfg.d))
    opt = _make_optimizer(method, [W], lr, cfg.muon_momentum)
    keys = ("train_loss", "val_bal_acc", "bal_acc", "worst_acc", "minority_acc", "minority_loss",
            "minority_quarter_acc")  # fmt: skip
    rows = np.full((cfg.steps + 1, len(keys)), np.nan)
    for t in range(cfg.steps + 1):
        if on_step is not None:
            on_step(t, W.detach().clone())
        with torch.no_grad():
            acc_v = per_class_accuracy(Xv @ W.T, yv, k)
            logits_t = Xt @ W.T
            acc_t = per_class_accuracy(logits_t, yt, k)
            loss_t = per_class_loss(logits_t, yt)
        loss = F.cross_entropy(X @ W.T, y)
        rows[t] = [float(loss.detach()), float(acc_v.mean()), float(acc_t.mean()), float(acc_t.min()), float(acc_t[-1]),
                   float(loss_t[-1]), float(acc_t[rare].mean())]  # fmt: skip
        if t == cfg.steps or not math.isfinite(rows[t, 0]):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if advance is not None:
            advance()
    out: dict[str, list] = {"step": list(range(cfg.steps + 1))}
    for i, key in enumerate(keys):
        out[key] = [float(f"{v:.6g}") if math.isfinite(v) else math.nan for v in rows[:, i]]
    out["lr"] = [lr]
    return out


def gmm_tune(cfg: GMMConfig, ctx) -> dict:
    """Every step size of every method's grid on seed 0's data; the highest validation
    balanced accuracy at any step wins (ties: the one that gets there in fewer steps)."""
    data = ce_data(cfg, 0)
    ctx.steps(sum(len(cfg.lr_grid(m)) for m in cfg.methods) * cfg.steps, "step-size sweep")
    sweep, best = {}, {}
    for method in cfg.methods:
        scores = {}
        for lr in cfg.lr_grid(method):
            out = ce_run(cfg, method, lr, data, ctx.advance)
            val = np.asarray(out["val_bal_acc"], dtype=float)
            scores[lr] = (float(np.nanmax(val)), -int(np.nanargmax(val))) if np.isfinite(val).any() else (-1.0, 0)
        sweep[method] = {f"{lr:g}": s[0] for lr, s in scores.items()}
        best[method] = max(sorted(scores), key=lambda lr: scores[lr])
    return {"rule": "highest validation balanced accuracy at any step on seed 0 (ties: fewer steps to it)",
            "val_bal_acc": sweep, "best_lr": best}  # fmt: skip


def gmm_run_seed(cfg: GMMConfig, seed: int, ctx) -> dict:
    best = ctx.tuning["best_lr"]
    ctx.steps(len(cfg.methods) * cfg.steps, "cross-entropy runs")
    out = {}
    for method in LINEAR_METHODS:
        out[f"linear/{method}"] = linear_run(cfg, method)
    if cfg.lin_sample_n:
        data = th.sample(lin_mixture(cfg), cfg.lin_sample_n, torch.Generator().manual_seed(20_011 * (seed + 1)))
        for method in LINEAR_METHODS:
            out[f"linear-sample/{method}"] = linear_run(cfg, method, data)
    data = ce_data(cfg, seed)
    for method in cfg.methods:
        out[f"ce/{method}"] = ce_run(cfg, method, float(best[method]), data, ctx.advance)
    # reference: argmax_c x_c, the Bayes rule of the mixture under equal priors (equal-norm
    # orthogonal means, isotropic noise), i.e. the best balanced classifier
    Xt, yt = data["test"]
    acc = per_class_accuracy(Xt[:, : cfg.k].argmax(1), yt, cfg.k)
    out["ce-reference/balanced-bayes"] = {"bal_acc": [float(acc.mean())], "worst_acc": [float(acc.min())]}
    return out



def _diag(run: dict, k: int) -> np.ndarray:
    return np.stack([np.asarray(run[f"w{c}"], dtype=float) for c in range(k)], 1)


def early_stopped(run: dict) -> tuple[float, float]:
    """``(step, test balanced accuracy)`` at the first step of the best validation balanced
    accuracy."""
    val = np.asarray(run["val_bal_acc"], dtype=float)
    t = int(np.nanargmax(val))
    return float(t), float(_values(run, "bal_acc")[t])


def _values(run: dict, metric: str) -> np.ndarray:
    """``run[metric]`` as floats (a diverged step is NaN in memory and ``null`` once saved)."""
    return np.asarray(run[metric], dtype=float)


def gmm_analyze(cfg: GMMConfig, series: dict) -> tuple[dict, list[Claim]]:
    mix = lin_mixture(cfg)
    k = mix.k
    steps = np.arange(cfg.lin_steps + 1)
    summary: dict[str, float] = {"snr": mix.snr}
    claims: list[Claim] = []
    # (a) closed forms against the simulated population trajectories
    errs = {"gd": [], "gd_flow": [], "specgd": [], "specgd_ramp_spread": []}
    ramp = int(np.floor(float(mix.target.min()) / cfg.lin_specgd_lr))  # every class still below target
    for run in seed_runs(series, "linear/gd"):
        W = _diag(run, k)
        errs["gd"].append(float(np.abs(W - th.gd_diagonal(mix, cfg.lin_gd_lr, steps)).max()))
        gap = np.abs(W - th.gd_diagonal(mix, cfg.lin_gd_lr, steps, discrete=False))
        errs["gd_flow"].append(float((gap / th.gd_flow_gap_bound(mix, cfg.lin_gd_lr)).max()))
    for run in seed_runs(series, "linear/specgd"):
        W = _diag(run, k)
        errs["specgd"].append(float(np.abs(W - th.specgd_diagonal(mix, cfg.lin_specgd_lr, steps)).max()))
        errs["specgd_ramp_spread"].append(float(np.ptp(W[: ramp + 1], axis=1).max()))
    summary["lin/gd_closed_form_max_error"] = max(errs["gd"])
    summary["lin/gd_flow_gap_over_bound"] = max(errs["gd_flow"])
    summary["lin/specgd_closed_form_max_error"] = max(errs["specgd"])
    summary["lin/specgd_ramp_max_spread"] = max(errs["specgd_ramp_spread"])
    for c in range(k):
        summary[f"lin/target_w{c}"] = float(mix.target[c])
    pop = {m: seed_runs(series, f"linear/{m}")[0] for m in LINEAR_METHODS}
    bal = {m: np.asarray(r["bal_acc"], dtype=float) for m, r in pop.items()}
    summary["lin/optimum_bal_acc"] = float(th.population_class_accuracy(mix.target, mix).mean())
    for m in LINEAR_METHODS:
        summary[f"lin/{m}/max_bal_acc"] = float(bal[m].max())
        summary[f"lin/{m}/final_bal_acc"] = float(bal[m][-1])
        W = _diag(pop[m], k)
        summary[f"lin/{m}/early_ratio_major_minor"] = float(W[1, 0] / W[1, -1])  # after one step
    early = slice(1, ramp + 1)
    summary["lin/specgd_minus_gd_bal_acc_min_during_ramp"] = float((bal["specgd"][early] - bal["gd"][early]).min())
    summary["lin/specgd_minus_ngd_bal_acc_min_during_ramp"] = float((bal["specgd"][early] - bal["ngd"][early]).min())
    for m in LINEAR_METHODS:
        runs = seed_runs(series, f"linear-sample/{m}")
        if runs:
            Wp = _diag(pop[m], k)
            summary[f"lin-sample/{m}/max_abs_diag_diff_vs_population"] = float(
                max(np.abs(_diag(r, k) - Wp).max() for r in runs))  # fmt: skip
            summary[f"lin-sample/{m}/max_offdiag"] = float(max(max(r["off"]) for r in runs))
    claims += [
        Claim("gd-closed-form", "GD's simulated diagonal W[c,c] equals the discrete closed form "
              "(s_yx/s_xx)(1 - (1 - eta s_xx)^t) (max abs error over classes and steps, float64)",
              summary["lin/gd_closed_form_max_error"], 1e-10, "max"),
        Claim("gd-flow-within-bound", "GD's simulated diagonal stays within the proven bound "
              "w* a/(2e(1-a)), a = eta s_xx, of the continuous closed form (1 - exp(-eta s_xx t)) "
              "(max ratio deviation/bound)", summary["lin/gd_flow_gap_over_bound"], 1.0, "max"),
        Claim("specgd-closed-form", "SpecGD's simulated diagonal equals the closed form: slope eta for every "
              "class until it passes s_yx/s_xx, then a 2-cycle within eta of it (max abs error)",
              summary["lin/specgd_closed_form_max_error"], 1e-10, "max"),
        Claim("specgd-equal-rates", "before any class saturates, SpecGD's diagonal entries are equal for "
              "all classes (max spread)", summary["lin/specgd_ramp_max_spread"], 1e-12, "max"),
        Claim("specgd-balanced-accuracy-early", "population balanced accuracy: SpecGD >= GD at every step of "
              "SpecGD's ramp (min difference)", summary["lin/specgd_minus_gd_bal_acc_min_during_ramp"], 0.0, "min"),
    ]  # fmt: skip

    # (b) cross-entropy
    for m in cfg.methods:
        runs = seed_runs(series, f"ce/{m}")
        if not runs:
            continue
        es = [early_stopped(r) for r in runs]
        summary[f"ce/{m}/lr"] = float(runs[0]["lr"][0])
        grid = cfg.lr_grid(m)
        summary[f"ce/{m}/lr_at_grid_edge"] = float(runs[0]["lr"][0] in (min(grid), max(grid)))
        summary[f"ce/{m}/early_stopped_bal_acc"] = finite_mean([b for _, b in es])
        summary[f"ce/{m}/early_stop_step"] = finite_mean([s for s, _ in es])
        summary[f"ce/{m}/oracle_bal_acc"] = finite_mean([float(np.nanmax(_values(r, "bal_acc"))) for r in runs])
        summary[f"ce/{m}/oracle_worst_acc"] = finite_mean([float(np.nanmax(_values(r, "worst_acc"))) for r in runs])
        summary[f"ce/{m}/final_bal_acc"] = finite_mean([_values(r, "bal_acc")[-1] for r in runs])
        summary[f"ce/{m}/final_worst_acc"] = finite_mean([_values(r, "worst_acc")[-1] for r in runs])
        summary[f"ce/{m}/final_minority_loss"] = finite_mean([_values(r, "minority_loss")[-1] for r in runs])
        summary[f"ce/{m}/min_minority_loss"] = finite_mean([float(np.nanmin(_values(r, "minority_loss"))) for r in runs])
        summary[f"ce/{m}/early_stopped_minority_acc"] = finite_mean(
            [_values(r, "minority_acc")[int(s)] for r, (s, _) in zip(runs, es)])  # fmt: skip
        summary[f"ce/{m}/early_stopped_worst_acc"] = finite_mean(
            [_values(r, "worst_acc")[int(s)] for r, (s, _) in zip(runs, es)])  # fmt: skip
    ref = seed_runs(series, "ce-reference/balanced-bayes")
    if ref:
        summary["ce/balanced_bayes_bal_acc"] = finite_mean([r["bal_acc"][0] for r in ref])
        summary["ce/balanced_bayes_worst_acc"] = finite_mean([r["worst_acc"][0] for r in ref])
    summary["ce/lrs_at_grid_edge"] = sum(v for k_, v in summary.items() if k_.endswith("/lr_at_grid_edge"))
    eu = [m for m in EUCLIDEAN if f"ce/{m}/oracle_bal_acc" in summary]
    if "specgd" in cfg.methods and eu:
        best_eu = max(summary[f"ce/{m}/oracle_bal_acc"] for m in eu)
        summary["ce/best_euclidean_oracle_bal_acc"] = best_eu
        summary["ce/specgd_early_minus_euclidean_oracle"] = summary["ce/specgd/early_stopped_bal_acc"] - best_eu
        claims.append(Claim(
            "specgd-early-stopped-beats-euclidean",
            f"SpecGD early-stopped on validation balanced accuracy beats the best stopping point (oracle, on "
            f"test) of every non-spectral method ({', '.join(eu)}) in test balanced accuracy (difference of "
            "means over seeds)", summary["ce/specgd_early_minus_euclidean_oracle"], 0.0, "min"))  # fmt: skip
        if "muon" in cfg.methods:
            summary["ce/muon_early_minus_euclidean_oracle"] = summary["ce/muon/early_stopped_bal_acc"] - best_eu
            claims.append(Claim(
                "muon-early-stopped-beats-euclidean",
                "the same for Muon (momentum 0.9, Newton-Schulz)", summary["ce/muon_early_minus_euclidean_oracle"],
                0.0, "min"))  # fmt: skip
        worst_eu = max(summary[f"ce/{m}/oracle_worst_acc"] for m in eu)
        summary["ce/specgd_early_worst_minus_euclidean_oracle_worst"] = (
            summary["ce/specgd/early_stopped_worst_acc"] - worst_eu)  # fmt: skip
    return summary, claims


def gmm_plot(cfg: GMMConfig, series: dict, summary: dict, folder) -> list[str]:
    files = []
    mix = lin_mixture(cfg)
    k = mix.k
    steps = np.arange(cfg.lin_steps + 1)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    closed = {"gd": th.gd_diagonal(mix, cfg.lin_gd_lr, steps, discrete=False),
              "specgd": th.specgd_diagonal(mix, cfg.lin_specgd_lr, steps, discrete=False)}  # fmt: skip
    for ax, m in zip(axes[:3], LINEAR_METHODS):
        run = seed_runs(series, f"linear/{m}")[0]
        W = _diag(run, k)
        for c in range(k):
            ax.plot(steps, W[:, c], color=f"C{c}", label=f"class {c} (p={float(mix.priors[c]):.2g})")
            if m in closed:
                ax.plot(steps, closed[m][:, c], color="k", ls=":", lw=1)
            sample = seed_runs(series, f"linear-sample/{m}")
            if sample:
                ax.plot(steps, _diag(sample[0], k)[:, c], color=f"C{c}", ls="--", lw=0.8, alpha=0.7)
            ax.axhline(float(mix.target[c]), color=f"C{c}", ls="-", lw=0.5, alpha=0.4)
        ax.set_title(f"{m}, lr={lin_lr(cfg, m):g}" + (" (dotted: closed form)" if m in closed else ""), fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("W[c, c]  (dashed: sample gradient)")
    for m in LINEAR_METHODS:
        run = seed_runs(series, f"linear/{m}")[0]
        axes[3].plot(steps, run["bal_acc"], color=COLORS[m], label=m)
    axes[3].axhline(summary["lin/optimum_bal_acc"], color="gray", ls=":", lw=1, label="population optimum")
    low = min(min(seed_runs(series, f"linear/{m}")[0]["bal_acc"][1:]) for m in LINEAR_METHODS)
    axes[3].set_ylim(low - 0.01, summary["lin/specgd/max_bal_acc"] + 0.01)  # step 0 (W = 0) is chance, 1/k
    axes[3].set_xlabel("step")
    axes[3].set_ylabel("population balanced accuracy")
    axes[3].legend(fontsize=8)
    files.append(save(fig, folder, "linear_dynamics.png"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, metric, label in zip(axes, ("bal_acc", "worst_acc", "minority_loss"),
                                 ("test balanced accuracy", "test worst-class accuracy",
                                  "test loss of the rarest class")):  # fmt: skip
        for m in cfg.methods:
            runs = seed_runs(series, f"ce/{m}")
            if not runs:
                continue
            ys = np.stack([np.asarray(r[metric], dtype=float) for r in runs])
            mean_band(ax, np.arange(ys.shape[1]), ys, COLORS[m], f"{m} (lr={runs[0]['lr'][0]:g})", alpha=0.15)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if metric == "minority_loss":
            ax.set_yscale("log")
    if "ce/balanced_bayes_bal_acc" in summary:
        axes[0].axhline(summary["ce/balanced_bayes_bal_acc"], color="gray", ls=":", lw=1,
                        label="argmax_c x_c (balanced Bayes)")  # fmt: skip
    axes[0].legend(fontsize=7)
    fig.suptitle(f"cross-entropy, k={cfg.k}, d={cfg.d}, p_c ~ 1/c, n={cfg.n_train}, mu={cfg.mu:g}", fontsize=9)
    files.append(save(fig, folder, "cross_entropy.png"))
    return files


register(Experiment(
    name="imbalanced-gmm",
    description="imbalanced Gaussian mixture: SpecGD learns every class at the same rate; early-stopped "
                "balanced accuracy of spectral vs Euclidean steps",
    config=GMMConfig, run_seed=gmm_run_seed, analyze=gmm_analyze, plot=gmm_plot, tune=gmm_tune,
    presets={
        "smoke": dict(lin_steps=80, lin_sample_n=2000, k=6, d=30, n_train=400, val_per_class=20,
                      test_per_class=40, steps=30, methods=("ngd", "sign", "specgd", "muon"),
                      ngd_lrs=(0.3, 1.0), sign_lrs=(0.01, 0.03), specgd_lrs=(0.1, 0.3), muon_lrs=(0.1, 0.3)),
        "quick": dict(),
        "paper": dict(n_train=10000, steps=500, test_per_class=500, val_per_class=200),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 5},
    size=lambda c: f"(a) k=3, {c.lin_steps} steps; (b) k={c.k}, d={c.d}, n={c.n_train}, {c.steps} steps",
))


# --- imbalanced-depth ------------------------------------------------------------------


@dataclass
class DepthConfig:
    priors: tuple[float, ...] = (0.5, 0.3, 0.2)
    mu: float = 2.0  # the mixture of imbalanced-gmm (a): SNR = mu^2 / sigma^2 = 4
    sigma: float = 1.0
    low_snr_mu: float = 1.0  # a second mixture at SNR = low_snr_mu^2 / sigma^2 (0: skip)
    depths: tuple[int, ...] = (1, 2, 3, 4)
    saturation: float = 0.9  # saturated: W[c, c] >= saturation * w*_c
    init_product: float = 1e-6  # L >= 2: every layer a_0 I with a_0^L = init_product (L = 1: zero init)
    specgd_steps: int = 1000  # SpecGD lr = (saturation w*_min)^(1/L) / specgd_steps
    gd_fraction: float = 0.05  # GD lr = gd_fraction * (2 / lambda_max at the solution)
    max_steps: int = 100_000
    keep_points: int = 400  # trajectory points stored per run (the saturation steps use every step)


def depth_mixtures(cfg: DepthConfig) -> dict[str, th.Mixture]:
    out = {}
    for mu in (cfg.mu, cfg.low_snr_mu):
        if mu:
            mix = th.mixture(cfg.priors, mu, cfg.sigma)
            out[f"snr{mix.snr:g}"] = mix
    return out


def depth_init(cfg: DepthConfig, depth: int) -> float:
    return 0.0 if depth == 1 else cfg.init_product ** (1.0 / depth)


def depth_lr(cfg: DepthConfig, mix: th.Mixture, depth: int, method: str) -> float:
    if method == "specgd":
        # an irrational offset keeps every class's threshold off the grid of steps (targets in a
        # rational ratio would otherwise land exactly on a step, where float rounding decides)
        return (cfg.saturation * float(mix.target.min())) ** (1.0 / depth) / (cfg.specgd_steps + math.sqrt(2) - 1)
    return cfg.gd_fraction * th.gd_stability_lr(mix, depth)


def depth_run(cfg: DepthConfig, mix: th.Mixture, depth: int, method: str, advance=None) -> dict[str, list]:
    """One deep-linear run until every class is saturated: its saturation steps ``t_sat``
    (per class, from every step) and a thinned trajectory of the product's diagonal."""
    lr = depth_lr(cfg, mix, depth, method)
    out = th.train_deep(mix, depth, method, lr, cfg.max_steps, init_scale=depth_init(cfg, depth),
                        stop_fraction=cfg.saturation, callback=advance)  # fmt: skip
    t_sat = [th.saturation_steps(out[f"w{c}"], float(mix.target[c]), cfg.saturation) for c in range(mix.k)]
    n = len(out["step"])
    keep = np.unique(np.linspace(0, n - 1, min(n, cfg.keep_points)).round().astype(int))
    thin = {key: [float(f"{out[key][i]:.8g}") for i in keep] for key in out if key != "step"}
    return {"step": keep.tolist(), **thin, "t_sat": t_sat, "lr": [lr], "init_scale": [depth_init(cfg, depth)]}


def depth_run_seed(cfg: DepthConfig, seed: int, ctx) -> dict:
    """Deterministic (aligned init, population gradient): every seed is the same run."""
    mixes = depth_mixtures(cfg)
    ctx.steps(len(mixes) * len(cfg.depths) * 2, "depth sweep")
    out = {}
    for name, mix in mixes.items():
        for depth in cfg.depths:
            for method in th.DEEP_METHODS:
                out[f"{method}/{name}/L{depth}"] = depth_run(cfg, mix, depth, method)
                ctx.advance()
    return out


def relative_gap(t_sat) -> float:
    """``max_c t_c / min_c t_c - 1`` (``nan`` if a class never saturated)."""
    t = np.asarray(t_sat, dtype=float)
    return float(t.max() / t.min() - 1) if np.isfinite(t).all() and t.min() > 0 else math.nan


def depth_analyze(cfg: DepthConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    claims: list[Claim] = []
    mixes = depth_mixtures(cfg)
    exact_err, flow_err = 0.0, 0.0
    for name, mix in mixes.items():
        summary[f"{name}/gd_ratio_over_sqrt_prior_ratio_L1"] = (
            float(mix.s_xx.max() / mix.s_xx.min()) / math.sqrt(float(mix.priors.max() / mix.priors.min())))
        for L in cfg.depths:
            runs = {m: seed_runs(series, f"{m}/{name}/L{L}") for m in th.DEEP_METHODS}
            if not all(runs.values()):
                continue
            spec, gd = runs["specgd"][0], runs["gd"][0]
            a0 = depth_init(cfg, L)
            pred_spec = th.specgd_saturation_steps(mix, L, spec["lr"][0], a0, cfg.saturation)
            pred_gd = th.gd_flow_saturation_steps(mix, L, gd["lr"][0], a0, cfg.saturation)
            t_spec, t_gd = np.asarray(spec["t_sat"], float), np.asarray(gd["t_sat"], float)
            # np.max keeps a NaN (a class that never saturated), where max() would drop it
            exact_err = float(np.max([exact_err, np.abs(t_spec - pred_spec).max()]))
            flow_err = float(np.max([flow_err, (np.abs(t_gd - pred_gd) / pred_gd).max()]))
            key = f"{name}/L{L}"
            for c in range(mix.k):
                summary[f"{key}/specgd_t{c}"] = float(t_spec[c])
                summary[f"{key}/gd_t{c}"] = float(t_gd[c])
                summary[f"{key}/gd_flow_t{c}"] = float(pred_gd[c])
            summary[f"{key}/specgd_gap"] = relative_gap(t_spec)
            summary[f"{key}/specgd_gap_exact_prediction"] = relative_gap(pred_spec)
            summary[f"{key}/study_gap"] = th.study_gap(mix, L)
            summary[f"{key}/specgd_gap_rel_error_vs_study"] = summary[f"{key}/specgd_gap"] / th.study_gap(mix, L) - 1
            summary[f"{key}/gd_gap"] = relative_gap(t_gd)
            summary[f"{key}/gd_gap_flow_prediction"] = relative_gap(pred_gd)
            summary[f"{key}/gd_gap_over_study_gap"] = summary[f"{key}/gd_gap"] / th.study_gap(mix, L)
            summary[f"{key}/gd_over_specgd_gap"] = summary[f"{key}/gd_gap"] / summary[f"{key}/specgd_gap"]
            # which class saturates last: +1 the rarest (GD), -1 the most frequent (SpecGD)
            rare, freq = int(mix.priors.argmin()), int(mix.priors.argmax())
            summary[f"{key}/specgd_rare_minus_frequent"] = float(t_spec[rare] - t_spec[freq])
            summary[f"{key}/gd_rare_minus_frequent"] = float(t_gd[rare] - t_gd[freq])
    summary["specgd_steps_vs_exact_max_abs_diff"] = exact_err
    summary["gd_steps_vs_flow_max_rel_diff"] = flow_err
    claims += [
        Claim("specgd-saturation-exact", "SpecGD's measured saturation steps equal the exact discrete prediction "
              "ceil(((0.9 w*)^(1/L) - a0)/eta) for every class, depth and SNR (max abs difference in steps)",
              exact_err, 0.0, "max"),
        Claim("gd-saturation-matches-flow", "GD's measured saturation steps are within 10% of the gradient-flow "
              "integral for every class, depth and SNR (step size 5% of the stability limit)", flow_err, 0.1, "max"),
    ]  # fmt: skip
    names = list(mixes)
    main = names[0]
    rel = [abs(summary[f"{main}/L{L}/specgd_gap_rel_error_vs_study"]) for L in cfg.depths]
    summary["specgd_gap_max_rel_error_vs_study"] = max(rel)
    claims.append(Claim(
        "specgd-gap-matches-study-formula",
        f"SpecGD's relative gap max_c t_c / min_c t_c - 1 follows ((SNR + 1/p_min)/(SNR + 1/p_max))^(1/L) - 1 "
        f"within 10% (relative) at every depth ({main}; finite init a0^L = {cfg.init_product:g} and step "
        "account for the rest)", max(rel), 0.1, "max"))  # fmt: skip
    spec_gaps = [summary[f"{main}/L{L}/specgd_gap"] for L in cfg.depths]
    if len(spec_gaps) > 1:
        claims.append(Claim("specgd-gap-shrinks-with-depth", "SpecGD's gap decreases with every added layer "
                            "(largest increase from L to L+1)", max(np.diff(spec_gaps)), 0.0, "max"))  # fmt: skip
    for i, name in enumerate(names):
        ratios = [summary[f"{name}/L{L}/gd_over_specgd_gap"] for L in cfg.depths]
        summary[f"{name}/min_gd_over_specgd_gap"] = min(ratios)
        suffix = "" if i == 0 else "-low-snr"
        claims.append(Claim(
            f"specgd-gap-below-gd{suffix}",
            f"SpecGD's gap is smaller than GD's at every depth ({name}; min over depths of GD gap / SpecGD gap)",
            min(ratios), 1.0, "min"))  # fmt: skip
        if i == 0 and len(ratios) > 1:
            claims.append(Claim(
                "depth-widens-gd-over-specgd", f"depth amplifies the difference: GD gap / SpecGD gap grows with every "
                f"added layer ({name}; smallest ratio between consecutive depths)",
                min(b / a for a, b in zip(ratios, ratios[1:])), 1.0, "min"))  # fmt: skip
    return summary, claims


def depth_plot(cfg: DepthConfig, series: dict, summary: dict, folder) -> list[str]:
    files = []
    mixes = depth_mixtures(cfg)
    main, mix = next(iter(mixes.items()))
    fig, axes = plt.subplots(2, len(cfg.depths), figsize=(3.6 * len(cfg.depths), 6.4), squeeze=False)
    for j, L in enumerate(cfg.depths):
        for i, m in enumerate(th.DEEP_METHODS):
            ax = axes[i, j]
            runs = seed_runs(series, f"{m}/{main}/L{L}")
            if not runs:
                continue
            run = runs[0]
            for c in range(mix.k):
                w = np.asarray(run[f"w{c}"], float) / float(mix.target[c])
                ax.plot(run["step"], w, color=f"C{c}", label=f"p={float(mix.priors[c]):.2g}")
                ax.axvline(run["t_sat"][c], color=f"C{c}", ls=":", lw=1)
            ax.axhline(cfg.saturation, color="gray", ls=":", lw=1)
            ax.set_title(f"{m}, L={L}, gap={summary.get(f'{main}/L{L}/{m}_gap', math.nan):.3f}", fontsize=9)
            ax.set_xlabel("step")
            if j == 0:
                ax.set_ylabel("W_eff[c, c] / w*_c")
                ax.legend(fontsize=7)
    files.append(save(fig, folder, "depth_trajectories.png"))

    fig, axes = plt.subplots(1, len(mixes), figsize=(5 * len(mixes), 3.8), squeeze=False)
    for ax, (name, mix) in zip(axes[0], mixes.items()):
        Ls = [L for L in cfg.depths if f"{name}/L{L}/gd_gap" in summary]
        fine = np.linspace(min(Ls), max(Ls), 100)
        ratio = (mix.snr + 1 / float(mix.priors.min())) / (mix.snr + 1 / float(mix.priors.max()))
        ax.plot(fine, ratio ** (1 / fine) - 1, color="k", ls=":",
                label="study: ((SNR+1/p_min)/(SNR+1/p_max))^(1/L) - 1")  # fmt: skip
        ax.plot(Ls, [summary[f"{name}/L{L}/specgd_gap"] for L in Ls], "o-", color=COLORS["specgd"], label="SpecGD")
        ax.plot(Ls, [summary[f"{name}/L{L}/gd_gap"] for L in Ls], "s-", color=COLORS["gd"], label="GD")
        ax.plot(Ls, [summary[f"{name}/L{L}/gd_gap_flow_prediction"] for L in Ls], "x", color="k", ms=8,
                label="GD, gradient-flow integral")  # fmt: skip
        ax.set_xticks(Ls)
        ax.set_xlabel("depth L")
        ax.set_ylabel("relative gap max_c t_c / min_c t_c - 1")
        priors = tuple(round(float(x), 2) for x in mix.priors)
        ax.set_title(f"{name.replace('snr', 'SNR = ')}, p = {priors}", fontsize=9)
        ax.legend(fontsize=7)
    files.append(save(fig, folder, "depth_gaps.png"))
    return files


register(Experiment(
    name="imbalanced-depth",
    description="deep linear models on an imbalanced mixture: per-class saturation times of GD and SpecGD "
                "and their spread as depth grows",
    config=DepthConfig, run_seed=depth_run_seed, analyze=depth_analyze, plot=depth_plot,
    presets={
        "smoke": dict(depths=(1, 2), specgd_steps=200, low_snr_mu=0.0),
        "quick": dict(),
        "paper": dict(depths=(1, 2, 3, 4, 5), specgd_steps=3000, max_steps=400_000),
    },
    seeds={"smoke": 1, "quick": 1, "paper": 1},
    size=lambda c: f"depths {c.depths}, SpecGD ~{c.specgd_steps} steps, GD at {c.gd_fraction:g} of its stability limit",
))
