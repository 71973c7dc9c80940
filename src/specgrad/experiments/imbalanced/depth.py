"""``imbalanced-depth``: per-class saturation times of GD and SpecGD on deep linear models.

Deep linear models ``W_L ... W_1`` (``L = 1..4``; ``L = 2`` is the bilinear model) on the
mixture of ``imbalanced-gmm`` (a), from the aligned balanced init (``L = 1``: zero;
``L >= 2``: every layer ``a_0 I`` with ``a_0^L = init_product``), population gradient, GD and
SpecGD, and Shampoo (specgrad's defaults, at SpecGD's step size: with Adam grafting each entry
moves by about the step size, as under SpecGD; measured, no closed form). A class is
*saturated* at the first step where the product's ``W[c, c]`` reaches
``saturation`` (90%) of its population optimum ``w*_c``; the *relative gap* is
``max_c t_c / min_c t_c - 1``. The study's formula ``((SNR + 1/p_min)/(SNR + 1/p_max))^{1/L} - 1``
is SpecGD's gap in the limit of small init and step; GD's gap is compared with its own
gradient-flow prediction. Step sizes: SpecGD ``(saturation w*_min)^{1/L} / specgd_steps`` (the
rarest class needs about ``specgd_steps`` steps), GD ``gd_fraction`` times its stability limit
at the solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from ...theory import imbalanced as th
from ..devices import cpu_only
from ..plots import save
from ..registry import Claim, Experiment, register
from ..series import seed_runs
from .deep_linear import COLORS, relative_gap, step_size, train_layers

METHODS = th.DEEP_METHODS + ("shampoo",)


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
    return step_size(mix, depth, method, saturation=cfg.saturation, specgd_steps=cfg.specgd_steps,
                     gd_fraction=cfg.gd_fraction)  # fmt: skip


def depth_run(cfg: DepthConfig, mix: th.Mixture, depth: int, method: str, advance=None) -> dict[str, list]:
    """One deep-linear run until every class is saturated: its saturation steps ``t_sat``
    (per class, from every step) and a thinned trajectory of the product's diagonal."""
    lr = depth_lr(cfg, mix, depth, method)
    if method == "shampoo":
        layers = th.init_deep(mix, depth, depth_init(cfg, depth))
        out = train_layers(mix, layers, method, lr, cfg.max_steps, saturation=cfg.saturation,
                           keep_points=cfg.keep_points, callback=advance)  # fmt: skip
        return {**out, "init_scale": [depth_init(cfg, depth)]}
    out = th.train_deep(mix, depth, method, lr, cfg.max_steps, init_scale=depth_init(cfg, depth),
                        stop_fraction=cfg.saturation, callback=advance)  # fmt: skip
    t_sat = [th.saturation_steps(out[f"w{c}"], float(mix.target[c]), cfg.saturation) for c in range(mix.k)]
    n = len(out["step"])
    keep = np.unique(np.linspace(0, n - 1, min(n, cfg.keep_points)).round().astype(int))
    thin = {key: [float(f"{out[key][i]:.8g}") for i in keep] for key in out if key != "step"}
    return {"step": keep.tolist(), **thin, "t_sat": t_sat, "lr": [lr], "init_scale": [depth_init(cfg, depth)]}


def run_seed(cfg: DepthConfig, seed: int, ctx) -> dict:
    """Deterministic (aligned init, population gradient): every seed is the same run."""
    cpu_only(ctx, "imbalanced-depth", "float64 population dynamics")
    mixes = depth_mixtures(cfg)
    ctx.steps(len(mixes) * len(cfg.depths) * len(METHODS), "depth sweep")
    out = {}
    for name, mix in mixes.items():
        for depth in cfg.depths:
            for method in METHODS:
                out[f"{method}/{name}/L{depth}"] = depth_run(cfg, mix, depth, method)
                ctx.advance()
    return out


def analyze(cfg: DepthConfig, series: dict) -> tuple[dict, list[Claim]]:
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
            shampoo = seed_runs(series, f"shampoo/{name}/L{L}")
            if shampoo:
                summary[f"{key}/shampoo_gap"] = relative_gap(shampoo[0]["t_sat"])
                summary[f"{key}/gd_over_shampoo_gap"] = summary[f"{key}/gd_gap"] / summary[f"{key}/shampoo_gap"]
            # which class saturates last: +1 the rarest (GD), -1 the most frequent (SpecGD)
            rare, freq = int(mix.priors.argmin()), int(mix.priors.argmax())
            summary[f"{key}/specgd_rare_minus_frequent"] = float(t_spec[rare] - t_spec[freq])
            summary[f"{key}/gd_rare_minus_frequent"] = float(t_gd[rare] - t_gd[freq])
    summary["specgd_steps_vs_exact_max_abs_diff"] = exact_err
    summary["gd_steps_vs_flow_max_rel_diff"] = flow_err
    claims += [
        Claim("specgd-saturation-exact", "SpecGD's measured saturation steps equal the exact discrete prediction "
              "ceil(((0.9 w*)^(1/L) - a0)/eta) for every class, depth and SNR (max abs difference in steps)",
              exact_err, 0.0, "max", kind="self-consistency"),
        Claim("gd-saturation-matches-flow", "GD's measured saturation steps are within 10% of the gradient-flow "
              "integral for every class, depth and SNR (step size 5% of the stability limit)", flow_err, 0.1, "max",
              kind="self-consistency"),
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
        shampoo = [summary.get(f"{name}/L{L}/gd_over_shampoo_gap") for L in cfg.depths]
        if all(r is not None for r in shampoo):
            summary[f"{name}/min_gd_over_shampoo_gap"] = min(shampoo)
            claims.append(Claim(
                f"shampoo-gap-below-gd{suffix}",
                f"Shampoo's gap is smaller than GD's at every depth ({name}; min over depths of GD gap / Shampoo gap)",
                min(shampoo), 1.0, "min"))  # fmt: skip
        if i == 0 and len(ratios) > 1:
            claims.append(Claim(
                "depth-widens-gd-over-specgd", f"depth amplifies the difference: GD gap / SpecGD gap grows with every "
                f"added layer ({name}; smallest ratio between consecutive depths)",
                min(b / a for a, b in zip(ratios, ratios[1:])), 1.0, "min"))  # fmt: skip
    return summary, claims


def plot(cfg: DepthConfig, series: dict, summary: dict, folder) -> list[str]:
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
        if all(f"{name}/L{L}/shampoo_gap" in summary for L in Ls):
            ax.plot(Ls, [summary[f"{name}/L{L}/shampoo_gap"] for L in Ls], "^-", color=COLORS["shampoo"],
                    label="Shampoo")  # fmt: skip
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
    config=DepthConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(depths=(1, 2), specgd_steps=200, low_snr_mu=0.0),
        "quick": dict(),
        "paper": dict(depths=(1, 2, 3, 4, 5), specgd_steps=3000, max_steps=400_000),
    },
    seeds={"smoke": 1, "quick": 1, "paper": 1},
    size=lambda c: f"depths {c.depths}, SpecGD ~{c.specgd_steps} steps, GD at {c.gd_fraction:g} of its stability limit",
))
