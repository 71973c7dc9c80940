"""``imbalanced-gmm``: spectral vs Euclidean steps on an imbalanced Gaussian mixture.

(a) Linear model, squared loss, zero init, exact population gradient, ``d = k = 3``,
    ``p = (0.5, 0.3, 0.2)``: the diagonal ``W[c, c]`` over time under GD, normalized GD and
    SpecGD against the closed forms, and the population balanced accuracy of each
    trajectory (exact quadrature). The same three methods also run on a large seeded
    sample (empirical gradient) to show the population picture carries over.
(b) Linear model ``W`` ``(k, d)`` (bias-free, zero init), cross-entropy, ``d = 200``,
    ``k = 20``, ``p_c ~ 1/c``, full-batch steps on a seeded training sample; balanced
    validation and test sets. Methods: GD, normalized GD, sign descent, SpecGD (exact SVD),
    Muon (momentum 0.9, Nesterov, 5 Newton-Schulz steps), Shampoo (specgrad's defaults:
    momentum 0.9, summed statistics, Adam grafting, roots every 10 steps) and Adam, from the
    table of :mod:`specgrad.experiments.methods`; SpecGD and Muon use ``shape_scaling="none"``
    (for a ``20 x 200`` matrix Muon's default ``sqrt(max(1, out/in))`` is 1 anyway).
    Step sizes: the ``tune`` stage trains every method at every step size of its grid on
    seed 0 and keeps the one with the highest *validation* balanced accuracy at any step.
    Each seed then trains every method at its tuned step size on fresh data; a method's
    *early-stopped* test balanced accuracy is the one at the step of its best validation
    balanced accuracy, its *best stopping point* the maximum test balanced accuracy over
    steps (an oracle). The claim compares SpecGD early-stopped (validation) with the
    non-spectral methods at their oracle stopping points. The early gaps, in test balanced
    accuracy and in class-balanced test loss, are read over the first ``early_steps`` steps
    against the best non-spectral method at each step (:func:`.verdicts.gap_profile`).

Claims on the cross-entropy runs are decided against the test set's noise (two standard
errors, :mod:`.verdicts`): a difference inside it is reported as not resolved at that size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ...theory import imbalanced as th
from ..classification import balanced_scores, per_class_accuracy, per_class_loss
from ..devices import cpu_only
from ..methods import lr_grid, lr_grid_field, make
from ..plots import mean_band, save
from ..registry import Claim, Experiment, register, setting
from ..series import finite_mean, seed_runs
from .verdicts import gap_profile, resolved

LINEAR_METHODS = ("gd", "ngd", "specgd")
CE_METHODS = ("gd", "ngd", "sign", "specgd", "muon", "shampoo", "adam")
EUCLIDEAN = ("gd", "ngd", "sign")
SPECTRAL = ("specgd", "muon", "shampoo")
COLORS = {"gd": "C0", "ngd": "C9", "sign": "C1", "specgd": "C3", "muon": "C2", "shampoo": "C5", "adam": "C4"}
# settings of the cross-entropy methods beyond the methods table's defaults (Muon's momentum: the config)
SETTINGS = {"specgd": dict(orthogonalizer="svd", shape_scaling="none"),
            "muon": dict(nesterov=True, shape_scaling="none")}  # fmt: skip


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
    steps: int = setting(200, ge=1)
    methods: tuple[str, ...] = CE_METHODS
    muon_momentum: float = 0.9
    gd_lrs: tuple[float, ...] = lr_grid_field("gd", default=(0.3, 1.0, 3.0, 10.0, 30.0))
    ngd_lrs: tuple[float, ...] = lr_grid_field("ngd", default=(0.03, 0.1, 0.3, 1.0, 3.0))
    sign_lrs: tuple[float, ...] = lr_grid_field("sign", default=(0.001, 0.003, 0.01, 0.03, 0.1))
    specgd_lrs: tuple[float, ...] = lr_grid_field("specgd", default=(0.01, 0.03, 0.1, 0.3, 1.0))
    muon_lrs: tuple[float, ...] = lr_grid_field("muon", default=(0.01, 0.03, 0.1, 0.3, 1.0))
    shampoo_lrs: tuple[float, ...] = lr_grid_field("shampoo", default=(0.001, 0.003, 0.01, 0.03, 0.1))
    adam_lrs: tuple[float, ...] = lr_grid_field("adam", default=(0.001, 0.003, 0.01, 0.03, 0.1))
    early_steps: int = setting(50, ge=2)  # the early window of the gap curves (steps 1..early_steps)


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
        out["bal_loss"] = [th.population_balanced_loss(torch.as_tensor(w), mix) for w in W]
    return out


def optimizer(cfg: GMMConfig, method: str, W: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    settings = dict(SETTINGS.get(method, {}))
    if method == "muon":
        settings["momentum"] = cfg.muon_momentum
    return make(method, [W], lr, **settings)


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
    ``worst_acc``, ``minority_acc`` and ``minority_loss`` (the rarest class),
    ``minority_quarter_acc`` (mean recall of the rarest quarter of the classes), ``bal_loss``
    (class-balanced test cross-entropy) and the standard errors ``bal_acc_se``, ``bal_loss_se``
    over the test points (:func:`~specgrad.experiments.classification.balanced_scores`).
    """
    X, y = (t.float() if t.is_floating_point() else t for t in data["train"])
    Xv, yv = data["val"][0].float(), data["val"][1]
    Xt, yt = data["test"][0].float(), data["test"][1]
    k = cfg.k
    rare = list(range(k - max(1, k // 4), k))
    W = torch.nn.Parameter(torch.zeros(k, cfg.d))
    opt = optimizer(cfg, method, W, lr)
    keys = ("train_loss", "val_bal_acc", "bal_acc", "worst_acc", "minority_acc", "minority_loss",
            "minority_quarter_acc", "bal_loss", "bal_acc_se", "bal_loss_se")  # fmt: skip
    rows = np.full((cfg.steps + 1, len(keys)), np.nan)
    for t in range(cfg.steps + 1):
        if on_step is not None:
            on_step(t, W.detach().clone())
        with torch.no_grad():
            acc_v = per_class_accuracy(Xv @ W.T, yv, k)
            logits_t = Xt @ W.T
            acc_t = per_class_accuracy(logits_t, yt, k)
            loss_t = per_class_loss(logits_t, yt)
            scores = balanced_scores(logits_t, yt)
        loss = F.cross_entropy(X @ W.T, y)
        rows[t] = [float(loss.detach()), float(acc_v.mean()), float(acc_t.mean()), float(acc_t.min()), float(acc_t[-1]),
                   float(loss_t[-1]), float(acc_t[rare].mean()), scores["bal_loss"], scores["bal_acc_se"],
                   scores["bal_loss_se"]]  # fmt: skip
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


def tune(cfg: GMMConfig, ctx) -> dict:
    """Every step size of every method's grid on seed 0's data; the highest validation
    balanced accuracy at any step wins (ties: the one that gets there in fewer steps)."""
    cpu_only(ctx, "imbalanced-gmm", "float64 population dynamics")
    data = ce_data(cfg, 0)
    ctx.steps(sum(len(lr_grid(cfg, m)) for m in cfg.methods) * cfg.steps, "step-size sweep")
    sweep, best = {}, {}
    for method in cfg.methods:
        scores = {}
        for lr in lr_grid(cfg, method):
            out = ce_run(cfg, method, lr, data, ctx.advance)
            val = np.asarray(out["val_bal_acc"], dtype=float)
            scores[lr] = (float(np.nanmax(val)), -int(np.nanargmax(val))) if np.isfinite(val).any() else (-1.0, 0)
        sweep[method] = {f"{lr:g}": s[0] for lr, s in scores.items()}
        best[method] = max(sorted(scores), key=lambda lr: scores[lr])
    return {"rule": "highest validation balanced accuracy at any step on seed 0 (ties: fewer steps to it)",
            "val_bal_acc": sweep, "best_lr": best}  # fmt: skip


def run_seed(cfg: GMMConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "imbalanced-gmm", "float64 population dynamics")
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


def analyze(cfg: GMMConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary, claims = analyze_linear(cfg, series)
    more_summary, more_claims = analyze_ce(cfg, series)
    summary.update(more_summary)
    return summary, claims + more_claims


def analyze_linear(cfg: GMMConfig, series: dict) -> tuple[dict, list[Claim]]:
    """(a): closed forms against the simulation (self-consistency), and the study's early
    gaps on the population, exact up to float64 rounding (thresholds 0: there is no noise)."""
    mix = lin_mixture(cfg)
    k = mix.k
    steps = np.arange(cfg.lin_steps + 1)
    summary: dict[str, float] = {"snr": mix.snr}
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
    bloss = {m: np.asarray(r["bal_loss"], dtype=float) for m, r in pop.items()}
    loss = {m: np.asarray(r["loss"], dtype=float) for m, r in pop.items()}
    summary["lin/optimum_bal_acc"] = float(th.population_class_accuracy(mix.target, mix).mean())
    summary["lin/optimum_bal_loss"] = th.population_balanced_loss(mix.target, mix)
    summary["lin/ramp_steps"] = float(ramp)
    for m in LINEAR_METHODS:
        summary[f"lin/{m}/max_bal_acc"] = float(bal[m].max())
        summary[f"lin/{m}/final_bal_acc"] = float(bal[m][-1])
        summary[f"lin/{m}/final_bal_loss"] = float(bloss[m][-1])
        W = _diag(pop[m], k)
        summary[f"lin/{m}/early_ratio_major_minor"] = float(W[1, 0] / W[1, -1])  # after one step
    early = slice(1, ramp + 1)
    summary["lin/specgd_minus_gd_bal_acc_min_during_ramp"] = float((bal["specgd"][early] - bal["gd"][early]).min())
    summary["lin/specgd_minus_ngd_bal_acc_min_during_ramp"] = float((bal["specgd"][early] - bal["ngd"][early]).min())
    # class-balanced loss: against NGD at the same Frobenius step length, and against GD (a 4x
    # longer step) at equal population loss: GD's balanced loss interpolated at SpecGD's loss
    summary["lin/ngd_minus_specgd_bal_loss_min_during_ramp"] = float((bloss["ngd"] - bloss["specgd"])[early].min())
    at_equal = np.interp(loss["specgd"], loss["gd"][::-1], bloss["gd"][::-1])
    summary["lin/gd_minus_specgd_bal_loss_at_equal_loss_min_during_ramp"] = float(
        (at_equal - bloss["specgd"])[early].min())  # fmt: skip
    profiles = {"bal_acc_vs_gd": gap_profile(bal["specgd"] - bal["gd"], ramp),
                "bal_acc_vs_ngd": gap_profile(bal["specgd"] - bal["ngd"], ramp),
                "bal_loss_vs_ngd": gap_profile(bloss["ngd"] - bloss["specgd"], ramp),
                "bal_loss_vs_gd_at_equal_loss": gap_profile(at_equal - bloss["specgd"], ramp)}  # fmt: skip
    for name, prof in profiles.items():
        for key, v in prof.items():
            summary[f"lin/gap/{name}/{key}"] = float(v)
    for m in LINEAR_METHODS:
        runs = seed_runs(series, f"linear-sample/{m}")
        if runs:
            Wp = _diag(pop[m], k)
            summary[f"lin-sample/{m}/max_abs_diag_diff_vs_population"] = float(
                max(np.abs(_diag(r, k) - Wp).max() for r in runs))  # fmt: skip
            summary[f"lin-sample/{m}/max_offdiag"] = float(max(max(r["off"]) for r in runs))
    window = f"steps 1..{ramp}, SpecGD's ramp"
    claims = [
        Claim("gd-closed-form", "GD's simulated diagonal W[c,c] equals the discrete closed form "
              "(s_yx/s_xx)(1 - (1 - eta s_xx)^t) (max abs error over classes and steps, float64)",
              summary["lin/gd_closed_form_max_error"], 1e-10, "max", kind="self-consistency"),
        Claim("gd-flow-within-bound", "GD's simulated diagonal stays within the proven bound "
              "w* a/(2e(1-a)), a = eta s_xx, of the continuous closed form (1 - exp(-eta s_xx t)) "
              "(max ratio deviation/bound)", summary["lin/gd_flow_gap_over_bound"], 1.0, "max",
              kind="self-consistency"),
        Claim("specgd-closed-form", "SpecGD's simulated diagonal equals the closed form: slope eta for every "
              "class until it passes s_yx/s_xx, then a 2-cycle within eta of it (max abs error)",
              summary["lin/specgd_closed_form_max_error"], 1e-10, "max", kind="self-consistency"),
        Claim("specgd-equal-rates", "before any class saturates, SpecGD's diagonal entries are equal for "
              "all classes (max spread)", summary["lin/specgd_ramp_max_spread"], 1e-12, "max"),
        Claim("specgd-balanced-accuracy-early", "population balanced accuracy: SpecGD >= GD at every step of "
              "SpecGD's ramp (min difference)", summary["lin/specgd_minus_gd_bal_acc_min_during_ramp"], 0.0, "min"),
        Claim("specgd-balanced-loss-early", "class-balanced population loss: SpecGD below NGD at the same "
              f"Frobenius step length at every step of the ramp (min of NGD - SpecGD, {window})",
              summary["lin/ngd_minus_specgd_bal_loss_min_during_ramp"], 0.0, "min"),
        Claim("specgd-balanced-loss-at-equal-loss", "class-balanced population loss at equal population loss: "
              f"SpecGD below GD at every step of the ramp (min of GD - SpecGD, {window})",
              summary["lin/gd_minus_specgd_bal_loss_at_equal_loss_min_during_ramp"], 0.0, "min"),
        Claim("balanced-loss-gap-grows", "the class-balanced loss gap (NGD - SpecGD) grows over the early window "
              f"(least-squares change over {window}; it peaks at step "
              f"{profiles['bal_loss_vs_ngd']['peak_step']})", profiles["bal_loss_vs_ngd"]["growth"], 0.0, "min"),
        Claim("balanced-accuracy-gap-grows", "the population balanced-accuracy gap (SpecGD - GD) grows over the "
              f"early window (least-squares change over {window}; it peaks at step "
              f"{profiles['bal_acc_vs_gd']['peak_step']})", profiles["bal_acc_vs_gd"]["growth"], 0.0, "min"),
    ]  # fmt: skip
    return summary, claims


def _step_values(runs: list[dict], metric: str, steps: list[int]) -> list[float]:
    return [float(_values(r, metric)[int(s)]) for r, s in zip(runs, steps)]


def analyze_ce(cfg: GMMConfig, series: dict) -> tuple[dict, list[Claim]]:
    """(b): early-stopped and oracle accuracies, and the early gaps in balanced accuracy and
    class-balanced loss against the best non-spectral method at each step; every claim is
    decided against two standard errors of the test set's noise, averaged over seeds."""
    summary: dict[str, float] = {}
    claims: list[Claim] = []
    runs_of = {m: seed_runs(series, f"ce/{m}") for m in cfg.methods}
    runs_of = {m: r for m, r in runs_of.items() if r}
    for m, runs in runs_of.items():
        es = [early_stopped(r) for r in runs]
        summary[f"ce/{m}/lr"] = float(runs[0]["lr"][0])
        grid = lr_grid(cfg, m)
        summary[f"ce/{m}/lr_at_grid_edge"] = float(runs[0]["lr"][0] in (min(grid), max(grid)))
        summary[f"ce/{m}/early_stopped_bal_acc"] = finite_mean([b for _, b in es])
        summary[f"ce/{m}/early_stop_step"] = finite_mean([s for s, _ in es])
        summary[f"ce/{m}/early_stopped_bal_acc_se"] = finite_mean(_step_values(runs, "bal_acc_se", [s for s, _ in es]))
        oracle = [int(np.nanargmax(_values(r, "bal_acc"))) for r in runs]
        summary[f"ce/{m}/oracle_bal_acc"] = finite_mean(_step_values(runs, "bal_acc", oracle))
        summary[f"ce/{m}/oracle_bal_acc_se"] = finite_mean(_step_values(runs, "bal_acc_se", oracle))
        summary[f"ce/{m}/oracle_worst_acc"] = finite_mean([float(np.nanmax(_values(r, "worst_acc"))) for r in runs])
        summary[f"ce/{m}/min_bal_loss"] = finite_mean([float(np.nanmin(_values(r, "bal_loss"))) for r in runs])
        summary[f"ce/{m}/final_bal_acc"] = finite_mean([_values(r, "bal_acc")[-1] for r in runs])
        summary[f"ce/{m}/final_worst_acc"] = finite_mean([_values(r, "worst_acc")[-1] for r in runs])
        summary[f"ce/{m}/final_minority_loss"] = finite_mean([_values(r, "minority_loss")[-1] for r in runs])
        summary[f"ce/{m}/min_minority_loss"] = finite_mean([np.nanmin(_values(r, "minority_loss")) for r in runs])
        stops = [s for s, _ in es]
        summary[f"ce/{m}/early_stopped_minority_acc"] = finite_mean(_step_values(runs, "minority_acc", stops))
        summary[f"ce/{m}/early_stopped_worst_acc"] = finite_mean(_step_values(runs, "worst_acc", stops))
    ref = seed_runs(series, "ce-reference/balanced-bayes")
    if ref:
        summary["ce/balanced_bayes_bal_acc"] = finite_mean([r["bal_acc"][0] for r in ref])
        summary["ce/balanced_bayes_worst_acc"] = finite_mean([r["worst_acc"][0] for r in ref])
    summary["ce/lrs_at_grid_edge"] = sum(v for k_, v in summary.items() if k_.endswith("/lr_at_grid_edge"))
    eu = [m for m in EUCLIDEAN if m in runs_of]
    if not eu:
        return summary, claims
    n_seeds = min(len(r) for r in runs_of.values())
    per_class = cfg.test_per_class
    size = f"{cfg.k} classes x {per_class} test points, {n_seeds} seed{'s' * (n_seeds > 1)}"
    best_eu = max(eu, key=lambda m: summary[f"ce/{m}/oracle_bal_acc"])
    summary["ce/best_euclidean_oracle_bal_acc"] = summary[f"ce/{best_eu}/oracle_bal_acc"]
    names = ", ".join(eu)
    for m in [m for m in SPECTRAL if m in runs_of]:
        diff = summary[f"ce/{m}/early_stopped_bal_acc"] - summary[f"ce/{best_eu}/oracle_bal_acc"]
        noise = 2 * math.hypot(summary[f"ce/{m}/early_stopped_bal_acc_se"], summary[f"ce/{best_eu}/oracle_bal_acc_se"])
        summary[f"ce/{m}_early_minus_euclidean_oracle"] = diff
        summary[f"ce/{m}_early_minus_euclidean_oracle_noise"] = noise / math.sqrt(n_seeds)
        claims.append(resolved(
            f"{m}-early-stopped-beats-euclidean",
            f"{m} early-stopped on validation balanced accuracy beats the best stopping point (oracle, on test) "
            f"of every non-spectral method ({names}) in test balanced accuracy (difference of means over seeds)",
            diff, noise / math.sqrt(n_seeds), size=size))  # fmt: skip
    if "specgd" in runs_of:
        summary["ce/specgd_early_worst_minus_euclidean_oracle_worst"] = (
            summary["ce/specgd/early_stopped_worst_acc"] - max(summary[f"ce/{m}/oracle_worst_acc"] for m in eu))
        claims += _early_gap_claims(cfg, runs_of, eu, summary, n_seeds, size)
    return summary, claims


def _mean_curve(runs: list[dict], metric: str, n: int) -> np.ndarray:
    return np.nanmean(np.stack([_values(r, metric)[:n] for r in runs]), 0)


def _at_equal_train_loss(train: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values`` of a run read at the training losses ``at``: interpolated along the steps
    where its training loss reaches a new minimum (``nan`` outside the range it covered)."""
    order = [0]
    for t in range(1, len(train)):
        if np.isfinite(train[t]) and train[t] < train[order[-1]]:
            order.append(t)
    x, y = train[order][::-1], values[order][::-1]
    return np.where((at >= x[0]) & (at <= x[-1]), np.interp(at, x, y), np.nan)


def _early_gap_claims(cfg, runs_of, eu, summary, n_seeds, size) -> list[Claim]:
    """SpecGD against the best non-spectral method over steps ``1..early_steps``: test
    balanced accuracy at each step (``argmax`` ignores the scale of ``W``), class-balanced
    test loss at each step, and class-balanced test loss at equal training loss (each
    non-spectral run read where its training loss equals SpecGD's: the loss depends on the
    scale of ``W``, so equal steps compare step sizes as much as directions). Claims: the
    mean gap over the window and its growth (:func:`.verdicts.gap_profile`). The noise of
    the gap at a step is ``sqrt(se_SpecGD^2 + se_other^2) / sqrt(seeds)``; the mean gap
    must exceed twice its window average, the growth (a difference of two fitted values)
    ``2 sqrt(2)`` times it."""
    n = cfg.steps + 1
    window = min(cfg.early_steps, cfg.steps)
    claims = []
    train = {m: _mean_curve(runs_of[m], "train_loss", n) for m in ["specgd"] + eu}
    comparisons = (("bal_acc", 1.0, "balanced accuracy", False), ("bal_loss", -1.0, "class-balanced loss", False),
                   ("bal_loss", -1.0, "class-balanced loss at equal training loss", True))  # fmt: skip
    for metric, sign, label, matched in comparisons:
        spec = _mean_curve(runs_of["specgd"], metric, n)
        se_spec = _mean_curve(runs_of["specgd"], f"{metric}_se", n)
        others, ses = [], []
        for m in eu:
            v, se = _mean_curve(runs_of[m], metric, n), _mean_curve(runs_of[m], f"{metric}_se", n)
            if matched:
                v, se = (_at_equal_train_loss(train[m], x, train["specgd"]) for x in (v, se))
            others.append(v)
            ses.append(se)
        others, ses = np.stack(others), np.stack(ses)
        scored = np.where(np.isfinite(others), sign * others, -np.inf)
        choice = scored.argmax(0)
        best = scored[choice, np.arange(n)]
        gap = np.where(np.isfinite(best), sign * spec - best, np.nan)
        se = np.sqrt(se_spec**2 + ses[choice, np.arange(n)] ** 2) / math.sqrt(n_seeds)
        name = metric + ("_matched" if matched else "")
        key = f"ce/gap/{name}"
        if not np.isfinite(gap[1 : window + 1]).all():
            summary[f"{key}/steps_compared"] = float(np.isfinite(gap[1 : window + 1]).sum())
            claims.append(Claim.not_assessed(f"specgd-{name.replace('_', '-')}-early-ce", f"cross-entropy: SpecGD's "
                          f"test {label} over steps 1..{window}", "a non-spectral run never reached SpecGD's "
                          "training loss at some step of the window"))  # fmt: skip
            continue
        prof = gap_profile(gap, window)
        for k_, v in prof.items():
            summary[f"{key}/{k_}"] = float(v)
        noise = float(np.nanmean(se[1 : window + 1]))
        summary[f"{key}/noise"] = noise
        where = (f"steps 1..{window}; the gap peaks at step {prof['peak_step']} and "
                 + (f"falls below half its peak at step {prof['shrink_step']:g}" if math.isfinite(prof["shrink_step"])
                    else "stays above half its peak"))  # fmt: skip
        claims.append(resolved(f"specgd-{name.replace('_', '-')}-early-ce",
                               f"cross-entropy: SpecGD's test {label} is better than the best non-spectral method's "
                               f"({', '.join(eu)}) on average over the early window ({where})",
                               prof["early_mean"], 2 * noise, size=size))  # fmt: skip
        if metric == "bal_acc" or matched:
            claims.append(resolved(f"{name.replace('_', '-')}-gap-grows-ce",
                                   f"cross-entropy: that {label} gap grows over the early window (least-squares "
                                   f"change, {where})", prof["growth"], 2 * math.sqrt(2) * noise, size=size))
    return claims


def plot(cfg: GMMConfig, series: dict, summary: dict, folder) -> list[str]:
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

    fig, axes = plt.subplots(1, 4, figsize=(20, 3.8))
    for ax, metric, label in zip(axes, ("bal_acc", "bal_loss", "worst_acc", "minority_loss"),
                                 ("test balanced accuracy", "class-balanced test loss", "test worst-class accuracy",
                                  "test loss of the rarest class")):  # fmt: skip
        for m in cfg.methods:
            runs = seed_runs(series, f"ce/{m}")
            if not runs:
                continue
            ys = np.stack([np.asarray(r[metric], dtype=float) for r in runs])
            mean_band(ax, np.arange(ys.shape[1]), ys, COLORS[m], f"{m} (lr={runs[0]['lr'][0]:g})", alpha=0.15)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if metric in ("minority_loss", "bal_loss"):
            ax.set_yscale("log")
        if metric in ("bal_acc", "bal_loss"):
            ax.axvline(min(cfg.early_steps, cfg.steps), color="gray", ls="--", lw=0.8)  # end of the early window
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
    config=GMMConfig, run_seed=run_seed, analyze=analyze, plot=plot, tune=tune,
    presets={
        "smoke": dict(lin_steps=80, lin_sample_n=2000, k=6, d=30, n_train=400, val_per_class=20,
                      test_per_class=40, steps=30, early_steps=10, methods=("ngd", "sign", "specgd", "muon", "shampoo"),
                      ngd_lrs=(0.3, 1.0), sign_lrs=(0.01, 0.03), specgd_lrs=(0.1, 0.3), muon_lrs=(0.1, 0.3),
                      shampoo_lrs=(0.01, 0.03)),
        "quick": dict(),
        "paper": dict(n_train=10000, steps=500, test_per_class=500, val_per_class=200),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 5},
    size=lambda c: f"(a) k=3, {c.lin_steps} steps; (b) k={c.k}, d={c.d}, n={c.n_train}, {c.steps} steps",
))
