"""``isotropic-curvature``: the optimal one-step spectral map of the isotropic curvature model.

Reproduces the theory part of Su, "Isotropic curvature model" (arXiv 2511.00674); the model
and its solver live in :mod:`specgrad.theory.curvature`. For gradients with white
(Marchenko-Pastur) and decaying spectra, every curvature family maps the singular values
``s -> s*``; the claims check the study's statements and the closed forms:

1. quadratic ``H`` gives a scaled gradient (``s*/s`` constant);
2. ``H = c r^4``: the solver's ``s*`` solves ``s*^3 + D s* = n(n+2) s / (8c)``, ``D = sum s*^2 / 2``
   (against an independent scalar root-finding solution);
3. super-quadratic ``H`` keeps the order of ``s`` and homogenizes it
   (``s*_i / s*_j <= s_i / s_j``);
4. a kink gives equal singular values (orthogonalization): with an infinite right slope (a
   bound, so it cannot fail: a sanity check) and with the theorem's finite one, decided at
   ``q = (1, ..., 1)`` by directional derivatives (:func:`~specgrad.theory.curvature.kink_descent`);
5. a kink is necessary (Proposition 6): a differentiable ``H``, however steep (a softplus kink),
   does not give equal singular values;
6. the case ``m < n`` that the paper leaves open: ``k = n/2`` singular values on the ``n``-sphere;
7. Newton-Schulz (Jordan's 5 steps) is not monotone, so it can reverse the order of
   singular values; Polar Express is compared alongside.

Every expectation is deterministic (:mod:`specgrad.theory.sphere`); ``grad_se`` is the
quadrature's error estimate.

The companion experiment ``curvature-profile`` (:mod:`.curvature_profile`)
measures ``H`` on a tiny GPT.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from ...linalg import as_schedule, polar_express_schedule
from ...theory import curvature as cv
from ..devices import cpu_only
from ..plots import save
from ..registry import Claim, Experiment, register, setting

FAMILIES = ("quadratic", "power3", "quartic", "quad_quartic", "quad_power", "kink", "kink_smooth")
SUPER = ("power3", "quartic", "quad_quartic", "quad_power")  # super-quadratic families
EXACT_SUPER = ("quartic", "quad_quartic")  # ... with exact sphere moments
BASELINES = ("orthogonal", "ns5", "polar_express")
COLORS = {"quadratic": "C0", "power3": "C1", "quartic": "C2", "quad_quartic": "C4", "quad_power": "C5",
          "kink": "C3", "kink_smooth": "C6", "orthogonal": "k", "ns5": "C7", "polar_express": "C8"}  # fmt: skip


@dataclass
class IsotropicCurvatureConfig:
    m: int = 128  # rows of G
    n: int = 64  # columns of G = dimension of zeta
    betas: tuple[float, ...] = (0.0, 1.0)  # spectra of Z diag(i^-beta): white, decaying
    input_scale: float = 1.0  # s is rescaled to max s = input_scale before solving
    power_p: float = 3.0  # the "power3" family: H = r^p (sampled)
    quad_power_p: float = 2.4  # the "quad_power" family: H = r^2 + r^p (sampled; the study's 2 + alpha)
    kink_left: float = 0.01  # left slope of the kinks at r = 1
    kink_right: float = 1e4  # right slope of the finite kink and of the softplus one ("kink": infinite)
    kink_width: float = setting(0.02, gt=0)  # softplus width of "kink_smooth" (differentiable)
    wide: bool = True  # the m < n case: the k = kink_n/2 largest singular values on the kink_n-sphere
    kink_n: int = setting(32, ge=2)  # the finite-slope and softplus kinks on (2 kink_n, kink_n) gradients
    kink_maxiter: int = setting(100, ge=1)  # L-BFGS-B iterations of the finite kink (it only gives a direction)
    ns_steps: int = 5
    grid: int = 2001  # points of the scalar-map figure on [1e-3, 1]


def families(cfg: IsotropicCurvatureConfig) -> dict[str, cv.Curvature]:
    return {
        "quadratic": cv.quadratic(1.0),
        "power3": cv.power(cfg.power_p),
        "quartic": cv.power(4.0),
        "quad_quartic": cv.quadratic_quartic(1.0, 1.0),
        "quad_power": cv.quadratic_power(1.0, 1.0, cfg.quad_power_p),
        "kink": cv.hard_kink(1.0, cfg.kink_left),
        "kink_smooth": cv.smoothed_kink(1.0, cfg.kink_left, cfg.kink_right, cfg.kink_width),
    }


def finite_kink(cfg: IsotropicCurvatureConfig) -> cv.Curvature:
    """The theorem's kink: slope ``kink_left`` below ``r = 1``, ``kink_right`` above."""
    return cv.kink(1.0, cfg.kink_left, cfg.kink_right)


def spectrum(cfg: IsotropicCurvatureConfig, beta: float, seed: int) -> np.ndarray:
    """Descending singular values of ``Z diag(i^-beta)``, ``Z`` Gaussian ``(m, n)``."""
    g = torch.Generator().manual_seed(1000 * seed + int(round(100 * beta)))
    Z = torch.randn(cfg.m, cfg.n, dtype=torch.float64, generator=g)
    Z = Z * torch.arange(1, cfg.n + 1, dtype=torch.float64).pow(-beta)
    return torch.linalg.svdvals(Z).numpy()


def baseline_map(name: str, s: np.ndarray, steps: int = 5) -> np.ndarray:
    """Singular values after orthogonalization: exact (ones), Jordan's Newton-Schulz or Polar
    Express (each normalizes ``G`` by its Frobenius norm, times the schedule's safety factor)."""
    if name == "orthogonal":
        return np.where(s > 0, 1.0, 0.0)
    sched = as_schedule("jordan") if name == "ns5" else polar_express_schedule(steps)
    return sched.scalar(s / (sched.normalization_safety * np.linalg.norm(s)), steps)


def scalar_curve(name: str, x: np.ndarray, steps: int = 5) -> np.ndarray:
    """A baseline's scalar map on already normalized inputs ``x``."""
    sched = as_schedule("jordan") if name == "ns5" else polar_express_schedule(steps)
    return sched.scalar(x / sched.normalization_safety, steps)


def largest_reversal(x: np.ndarray, y: np.ndarray) -> float:
    """``max over x_i < x_j of y_i - y_j``: how far an increasing input can lower the output
    (0 for a monotone map)."""
    order = np.argsort(x)
    y = np.asarray(y, dtype=float)[order]
    running_max = np.maximum.accumulate(y)
    return float(np.max(running_max - y))


def run_seed(cfg: IsotropicCurvatureConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "isotropic-curvature", "float64 numpy solver")
    fams = families(cfg)
    ctx.steps(len(cfg.betas) * (len(fams) + int(cfg.wide)), "solving")
    out: dict[str, dict] = {}
    for beta in cfg.betas:
        s = spectrum(cfg, beta, seed)
        x = s * (cfg.input_scale / s.max())
        tag = f"beta{beta:g}"
        for name, H in fams.items():
            if name == "kink_smooth":
                continue
            sol = cv.solve(x, H, cfg.n)
            out[f"{name}/{tag}"] = {"s": x.tolist(), "s_star": sol.q.tolist(), "residual": [sol.residual],
                                    "grad_se": [sol.grad_se], "iterations": [sol.iterations]}  # fmt: skip
            ctx.advance()
        # the kinks with finite slopes, on (2 kink_n, kink_n) gradients (each evaluation is a
        # two-dimensional quadrature): the softplus kink (differentiable), and the exact kink,
        # solved from the ray along s; orthogonalization q = 1 is optimal iff the objective
        # does not decrease from it, checked along the solution's direction, e_1 and s - mean(s)
        xk = spectrum(dataclasses.replace(cfg, m=2 * cfg.kink_n, n=cfg.kink_n), beta, seed)
        xk = xk * (cfg.input_scale / xk.max())
        sol = cv.solve(xk, fams["kink_smooth"], cfg.kink_n)
        out[f"kink_smooth/{tag}"] = {"s": xk.tolist(), "s_star": sol.q.tolist(), "residual": [sol.residual],
                                     "grad_se": [sol.grad_se], "iterations": [sol.iterations]}  # fmt: skip
        H = finite_kink(cfg)
        prog = cv.ReducedProgram(xk, H, cfg.kink_n)
        sol = cv.solve(xk, H, cfg.kink_n, x0=cv.ray_start(prog, xk), maxiter=cfg.kink_maxiter)
        gap, i = cv.kink_descent(xk, [sol.q - 1.0, np.eye(xk.size)[0], xk - xk.mean()], cfg.kink_left, cfg.kink_right)
        f1 = prog.value(np.ones(xk.size))
        out[f"kink_finite/{tag}"] = {"s": xk.tolist(), "s_star": sol.q.tolist(), "residual": [sol.residual],
                                     "grad_se": [sol.grad_se], "iterations": [sol.iterations],
                                     "objective_minus_orthogonal": [(sol.objective - f1) / xk.max()]}  # fmt: skip
        out[f"kink_finite_descent/{tag}"] = {"rate": [gap], "direction": [float(i)]}
        out[f"quartic_closed_form/{tag}"] = {"s": x.tolist(), "s_star": cv.quartic_fixed_point(x, 1.0, cfg.n).tolist()}
        ctx.advance()
        if cfg.wide:  # m < n: k = n/2 values on the n-sphere, finite-slope and hard kinks
            k = cfg.kink_n // 2
            for name, H in (("wide_kink_finite", finite_kink(cfg)), ("wide_kink", fams["kink"])):
                sol = cv.solve(xk[:k], H, cfg.kink_n)
                out[f"{name}/{tag}"] = {"s": xk[:k].tolist(), "s_star": sol.q.tolist(), "residual": [sol.residual],
                                        "grad_se": [sol.grad_se], "iterations": [sol.iterations]}  # fmt: skip
            ctx.advance()
        for name in BASELINES:
            out[f"{name}/{tag}"] = {"s": x.tolist(), "s_star": baseline_map(name, x, cfg.ns_steps).tolist()}
    grid = np.geomspace(1e-3, 1.0, cfg.grid)
    for name in ("ns5", "polar_express"):
        out[f"{name}_scalar/grid"] = {"x": grid.tolist(), "y": scalar_curve(name, grid, cfg.ns_steps).tolist()}
    return out


def _runs(series: dict, prefix: str) -> list[dict]:
    """Every ``prefix/<spectrum>/seed<k>`` entry."""
    return [v for k, v in sorted(series.items()) if k.startswith(prefix + "/")]


def analyze(cfg: IsotropicCurvatureConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    for name in FAMILIES + BASELINES + ("wide_kink_finite", "wide_kink", "kink_finite"):
        runs = _runs(series, name)
        if not runs:
            continue
        pairs = [(np.asarray(r["s"]), np.asarray(r["s_star"])) for r in runs]
        summary[f"{name}/homogenization_ratio"] = float(np.mean([cv.homogenization_ratio(s, q) for s, q in pairs]))
        summary[f"{name}/max_pair_ratio"] = max(cv.max_pair_ratio(s, q) for s, q in pairs)
        summary[f"{name}/order_violations"] = float(sum(cv.order_violations(s, q) for s, q in pairs))
        summary[f"{name}/min_over_max"] = min(float(q.min() / q.max()) for _, q in pairs)
        for beta in cfg.betas:
            tagged = [np.asarray(v["s_star"]) for k, v in sorted(series.items()) if k.startswith(f"{name}/beta{beta:g}/")]
            if tagged:
                summary[f"{name}/beta{beta:g}/min_over_max"] = min(float(q.min() / q.max()) for q in tagged)
        if "residual" in runs[0]:
            summary[f"{name}/max_residual"] = max(r["residual"][0] for r in runs)
            summary[f"{name}/max_grad_se"] = max(r["grad_se"][0] for r in runs)
    for name in ("quadratic", "quartic"):
        if not _runs(series, name):
            return summary, []
    quad = [np.asarray(r["s_star"]) / np.asarray(r["s"]) for r in _runs(series, "quadratic")]
    summary["quadratic/ratio_spread"] = max(float(np.ptp(v) / np.mean(v)) for v in quad)
    quartic = {k.split("/", 1)[1]: np.asarray(v["s_star"]) for k, v in series.items() if k.startswith("quartic/")}
    closed = {k.split("/", 1)[1]: np.asarray(v["s_star"]) for k, v in series.items()
              if k.startswith("quartic_closed_form/")}  # fmt: skip
    summary["quartic/closed_form_rel_error"] = max(float(np.max(np.abs(quartic[k] - closed[k]) / closed[k].max()))
                                                   for k in closed)  # fmt: skip
    n = cfg.n
    resid = []
    for r in _runs(series, "quartic"):
        q, s = np.asarray(r["s_star"]), np.asarray(r["s"])
        D = 0.5 * float(np.sum(q**2))
        resid.append(float(np.max(np.abs(q**3 + D * q - n * (n + 2) * s / 8)) / (n * (n + 2) * s.max() / 8)))
    summary["quartic/equation_residual"] = max(resid)
    for name in ("ns5", "polar_express"):
        grid = _runs(series, f"{name}_scalar")
        if grid:
            summary[f"{name}/largest_reversal_on_grid"] = max(largest_reversal(np.asarray(g["x"]), np.asarray(g["y"]))
                                                              for g in grid)  # fmt: skip
    super_viol = sum(summary.get(f"{f}/order_violations", 0.0) for f in SUPER)
    summary["super_quadratic/order_violations"] = super_viol
    summary["exact_super_quadratic/max_pair_ratio"] = max(summary[f"{f}/max_pair_ratio"] for f in EXACT_SUPER)
    summary["quadrature_super_quadratic/max_pair_ratio"] = max(summary[f"{f}/max_pair_ratio"]
                                                               for f in SUPER if f not in EXACT_SUPER)  # fmt: skip
    summary["quadrature/max_grad_se"] = max(summary.get(f"{f}/max_grad_se", 0.0) for f in FAMILIES)
    smooth = ("quadratic", "power3", "quartic", "quad_quartic", "quad_power", "kink_smooth")
    summary["differentiable/max_min_over_max"] = max(min(r["s_star"]) / max(r["s_star"])
                                                     for f in smooth for r in _runs(series, f))  # fmt: skip
    summary["differentiable/max_residual"] = max(summary[f"{f}/max_residual"] for f in smooth)
    rates = [v["rate"][0] for v in _runs(series, "kink_finite_descent")]
    for beta in cfg.betas:
        tagged = [v["rate"][0] for k, v in series.items() if k.startswith(f"kink_finite_descent/beta{beta:g}/")]
        if tagged:
            summary[f"kink_finite/beta{beta:g}/descent_rate"] = min(tagged)
    summary["kink_finite/descent_rate"] = min(rates)
    summary["kink_finite/objective_minus_orthogonal"] = min(v["objective_minus_orthogonal"][0]
                                                            for v in _runs(series, "kink_finite"))  # fmt: skip
    claims = [
        Claim("quadratic-scaled-gradient", "quadratic H: s*/s is constant (relative spread <= 1e-9)",
              summary["quadratic/ratio_spread"], 1e-9, "max", kind="self-consistency"),
        Claim("quartic-closed-form",
              "H = r^4: the solver's s* equals the independent root of s*^3 + D s* = n(n+2) s/8, "
              "D = sum s*^2 / 2 (largest difference <= 1e-9 of max s*)",
              summary["quartic/closed_form_rel_error"], 1e-9, "max", kind="self-consistency"),
        Claim("super-quadratic-keeps-order",
              "super-quadratic H (r^3, r^4, r^2 + r^4, r^2 + r^2.4) never reverses the order of singular "
              "values (pairs reversed by more than 1e-9 relative, all spectra)", super_viol, 0.0, "max"),
        Claim("quadrature-super-quadratic-homogenizes",
              "non-polynomial super-quadratic H (r^3, r^2 + r^2.4, deterministic quadrature): s*_i/s*_j <= s_i/s_j "
              "(largest ratio of ratios <= 1 + 1e-6, the quadrature's error allowance)",
              summary["quadrature_super_quadratic/max_pair_ratio"], 1 + 1e-6, "max"),
        Claim("super-quadratic-homogenizes",
              "exact super-quadratic H: s*_i/s*_j <= s_i/s_j for all s_i > s_j (largest ratio of ratios "
              "<= 1 + 1e-9)", summary["exact_super_quadratic/max_pair_ratio"], 1 + 1e-9, "max"),
        Claim("kink-orthogonalizes",
              f"kinked H (slope {cfg.kink_left:g} below r = 1, infinite above, i.e. the bound ||Q||_op <= 1): all s* "
              "equal (min s* / max s* >= 0.99); the bound makes this hold for any small left slope",
              summary["kink/min_over_max"], 0.99, "min", kind="sanity"),
        Claim("finite-slope-kink-orthogonalizes",
              f"kinked H with finite slopes {cfg.kink_left:g} / {cfg.kink_right:g} at r = 1 (the theorem's assumption): "
              f"orthogonalization is optimal ({2 * cfg.kink_n}x{cfg.kink_n} gradients), i.e. the objective does not "
              "decrease from q = (1, ..., 1) along the solver's solution, e_1 or s - mean(s) (smallest rate of change "
              "relative to max s, every spectrum, >= -1e-6, the quadrature's error allowance; a negative rate "
              "proves it is not optimal)",
              summary["kink_finite/descent_rate"], -1e-6, "min"),
        Claim("kink-necessary",
              f"a kink is necessary (Proposition 6): every differentiable H here, including a softplus kink of width "
              f"{cfg.kink_width:g} and slopes {cfg.kink_left:g} / {cfg.kink_right:g}, gives unequal s* (largest "
              "min s* / max s* <= 0.999, far from the solver's stationarity residual)",
              summary["differentiable/max_min_over_max"], 0.999, "max"),
        Claim("ns5-not-monotone",
              "Jordan's 5-step Newton-Schulz map is not monotone on [1e-3, 1]: a larger input lands at "
              "least 0.1 lower", summary.get("ns5/largest_reversal_on_grid", math.nan), 0.1, "min"),
    ]  # fmt: skip
    wide = (f"m < n (left open by the paper): the k = {cfg.kink_n // 2} largest singular values on the "
            f"{cfg.kink_n}-sphere,")
    if "wide_kink_finite/min_over_max" in summary:
        claims += [
            Claim("wide-finite-kink-orthogonalizes",
                  f"{wide} finite-slope kink: all s* equal (min s* / max s* >= 0.99)",
                  summary["wide_kink_finite/min_over_max"], 0.99, "min"),
            Claim("wide-hard-kink-orthogonalizes", f"{wide} infinite right slope (the bound): all s* equal "
                  "(min s* / max s* >= 0.99)", summary["wide_kink/min_over_max"], 0.99, "min", kind="sanity"),
        ]  # fmt: skip
    else:
        claims.append(Claim.not_assessed("wide-finite-kink-orthogonalizes", f"{wide} finite-slope kink orthogonalizes",
                                         "the run has wide=false"))  # fmt: skip
    return summary, claims


def plot(cfg: IsotropicCurvatureConfig, series: dict, summary: dict, folder) -> list[str]:
    files = []
    tags = [f"beta{b:g}" for b in cfg.betas]
    fig, axes = plt.subplots(1, len(tags), figsize=(5.2 * len(tags), 4.2), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for name in FAMILIES + BASELINES:
            key = f"{name}/{tag}/seed0"
            if key not in series:
                continue
            s, q = np.asarray(series[key]["s"]), np.asarray(series[key]["s_star"])
            y = q / q.max() if name in FAMILIES else q
            ax.plot(s / s.max(), y, ".-" if name in FAMILIES else "--", ms=3, lw=1, color=COLORS[name],
                    label=name)  # fmt: skip
        ax.set_xlabel("s / max s")
        ax.set_ylabel("s* / max s*  (baselines: raw output)")
        ax.set_title(f"{'white' if tag == 'beta0' else 'decaying'} spectrum ({tag}), {cfg.m}x{cfg.n}")
        ax.set_ylim(0, 1.3)
        ax.legend(fontsize=7, ncol=2)
    files.append(save(fig, folder, "maps.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("ns5", "polar_express"):
        key = f"{name}_scalar/grid/seed0"
        if key in series:
            ax.plot(series[key]["x"], series[key]["y"], color=COLORS[name], label=f"{name} (5 steps)")
    x = np.geomspace(1e-3, 1, 200)
    ax.plot(x, np.ones_like(x), "k--", lw=1, label="orthogonal")
    ax.set_xscale("log")
    ax.set_xlabel("normalized singular value")
    ax.set_ylabel("output")
    ax.set_title("scalar maps: NS5 overshoots and turns back (not monotone)")
    ax.legend(fontsize=8)
    files.append(save(fig, folder, "scalar_maps.png"))
    return files


register(Experiment(
    name="isotropic-curvature",
    description="isotropic curvature model: optimal one-step spectral maps vs orthogonalization",
    config=IsotropicCurvatureConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(m=16, n=8, kink_n=4, kink_maxiter=15, grid=201),
        "quick": dict(),
        "paper": dict(m=768, n=256, betas=(0.0, 0.5, 1.0, 1.5), kink_n=64),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 5},
    size=lambda c: f"{c.m}x{c.n} (kinks {2 * c.kink_n}x{c.kink_n}), {len(c.betas)} spectra",
))
