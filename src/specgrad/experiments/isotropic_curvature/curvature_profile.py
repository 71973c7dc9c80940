"""``curvature-profile``: the measured curvature ``H(r)`` of a tiny GPT, and an optimizer built on it.

Second half of the reproduction of Su, "Isotropic curvature model" (arXiv 2511.00674); the
theory is :mod:`specgrad.theory.curvature`. The study measures GPT-2's curvature along update
directions and finds it quadratic near zero and super-quadratic further out (exponent
``2 + alpha``, ``alpha > 0``).

Measurement. After training the tiny GPT with AdamW and with Muon, for every hidden matrix
``W`` (the spectral-routed ones) and directions ``Q`` of unit operator norm with all singular
values 1 (so ``||Q zeta|| = 1`` for every unit ``zeta`` and the model's ``E H(||r Q zeta||)`` is
``H(r)`` itself; a wide ``W`` is seen from its output side, as in
:class:`~specgrad.theory.curvature.ICMMap`), the even part of the loss change is measured in
float64 on fixed batches::

    H(r) = [L(W + r Q) + L(W - r Q)] / 2 - L(W)

(the first-order term cancels exactly). Directions: ``random`` (polar factors of Gaussian
matrices) and ``gradient`` (``polar(G)``); for the latter the one-sided remainder
``L(W - r Q) - L(W) + r <G, Q>`` is kept too. Per curve, the local exponent is the slope of
``log H`` against ``log r`` over the smallest and over the largest radii; the mean curve of
the random directions is fitted by ``H(r) = c2 r^2 + cp r^p`` (least squares in ``log H``).

Training. The fitted ``H`` (from the tuning stage's AdamW model) drives ``SpectralDescent`` with
``icm_map(H)`` (absolute scale: the momentum's singular values are in the loss units of ``H``;
``s*`` is divided by its maximum so ``lr`` means what it means for Muon), Nesterov momentum
0.95 and Muon's ``"original"`` shape scaling, against Muon and AdamW, each at the best
learning rate of a short sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.optimize import least_squares

from ...data import CharCorpus
from ...linalg import polar_svd
from ...models import GPT
from ...optim import split_params
from ...theory import curvature as cv
from ..methods import lm_adamw_rule, lm_optimizer, lr_grid, lr_grid_field, make
from ..plots import band_plot, save
from ..registry import Claim, Experiment, register
from ..series import by_method, first_reach
from ..training import final_or_inf, load_corpus, seeded_gpt, sweep_lowest, train_lm

METHODS = ("adamw", "muon", "icm")


@dataclass
class CurvatureProfileConfig:
    corpus: Optional[str] = None  # a text file; None: the embedded standard-library corpus
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    context: int = 64
    batch_size: int = 16
    iters: int = 300
    warmup: int = 30
    eval_every: int = 50
    eval_batches: int = 10
    measure_iters: int = 200  # the tuning stage trains AdamW and Muon this long, then measures H
    measure_adamw_lr: float = 3e-3
    measure_muon_lr: float = 0.05
    radii: tuple[float, ...] = (0.003, 0.01, 0.02, 0.04, 0.1, 0.2, 0.4, 0.7, 1.0, 2.0)
    random_directions: int = 2
    probe_batches: int = 2  # fixed batches of batch_size x context tokens the loss is measured on
    fit_small: int = 3  # radii at each end for the local exponents
    fit_large: int = 4
    methods: tuple[str, ...] = METHODS
    adamw_lrs: tuple[float, ...] = lr_grid_field("adamw", default=(1e-3, 3e-3, 1e-2))
    muon_lrs: tuple[float, ...] = lr_grid_field("muon", default=(0.02, 0.05, 0.1))
    icm_lrs: tuple[float, ...] = lr_grid_field("icm", default=(0.02, 0.05, 0.1))
    sweep_iters: int = 100
    icm_samples: int = 1024  # Monte Carlo sample of the non-polynomial part of H


def make_model(cfg: CurvatureProfileConfig, corpus: CharCorpus, seed: int, device) -> GPT:
    return seeded_gpt(seed, device, vocab_size=corpus.vocab_size, context=cfg.context, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, n_embd=cfg.n_embd)  # fmt: skip


def curvature_from(params: dict) -> cv.Curvature:
    return cv.quadratic_power(params["c2"], params["cp"], params["p"])


def _optimizer(method, model, lr, adamw_lr, H, cfg):
    """``adamw`` and ``muon`` as in the char-LM comparison; ``icm``: the curvature-optimal map
    of ``H`` on the hidden matrices with Muon's momentum and shape scaling."""
    if method == "icm":
        return make("icm", model, lr, H=H, samples=cfg.icm_samples, momentum=0.95, nesterov=True,
                    shape_scaling="original", adamw=lm_adamw_rule(adamw_lr))  # fmt: skip
    return lm_optimizer(method, model, lr, adamw_lr)


def _train(cfg, corpus, method, lr, adamw_lr, iters, seed, ctx, H=None):
    model = make_model(cfg, corpus, seed, ctx.device)
    opt = _optimizer(method, model, lr, adamw_lr, H, cfg)
    out = train_lm(model, corpus, opt, iters=iters, batch_size=cfg.batch_size, context=cfg.context,
                   warmup=min(cfg.warmup, iters // 10), eval_every=cfg.eval_every,
                   eval_batches=cfg.eval_batches, seed=seed, advance=ctx.advance)  # fmt: skip
    if hasattr(opt, "icm_log") and opt.icm_log["raw_step"]:
        out["icm_homogenization_mean"] = [float(np.mean(opt.icm_log["homogenization"]))]
        out["icm_raw_step_median"] = [float(np.median(opt.icm_log["raw_step"]))]
    return model, out


# --------------------------------------------------------------------------------------
# measuring H


def _unit_directions(W: torch.Tensor, G: torch.Tensor, count: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``gradient``: ``polar(G)``; ``random<i>``: polar factors of Gaussian matrices (all singular
    values 1, so operator norm 1)."""
    out = {"gradient": polar_svd(G)}
    for i in range(count):
        out[f"random{i}"] = polar_svd(torch.randn(W.shape, dtype=W.dtype, generator=gen))
    return out


@torch.no_grad()
def _probe_loss(model, batches) -> float:
    return float(sum(model(x, y)[1] for x, y in batches)) / len(batches)


def measure_profile(model: torch.nn.Module, corpus: CharCorpus, cfg: CurvatureProfileConfig, seed: int,
                    advance=lambda n=1: None) -> dict[str, dict]:  # fmt: skip
    """``{"<param>/<direction>": {"r": radii, "H": even part, "H_onesided": ... (gradient only)}}``
    for every spectral-routed matrix of a float64 copy of ``model``."""
    import copy

    m = copy.deepcopy(model).double().cpu().eval()
    g = torch.Generator().manual_seed(50_000 + seed)
    batches = [corpus.get_batch("train", cfg.batch_size, cfg.context, g) for _ in range(cfg.probe_batches)]
    names = split_params(m).names("spectral")
    params = dict(m.named_parameters())
    m.zero_grad()
    with torch.enable_grad():
        loss = sum(m(x, y)[1] for x, y in batches) / len(batches)
        loss.backward()
    base = float(loss.detach())
    gen = torch.Generator().manual_seed(70_000 + seed)
    out = {}
    radii = np.asarray(cfg.radii, dtype=float)
    for name in names:
        p = params[name]
        W0, G = p.detach().clone(), p.grad.detach().clone()
        for dname, Q in _unit_directions(W0, G, cfg.random_directions, gen).items():
            plus, minus = [], []
            for r in radii:
                p.data.copy_(W0 + r * Q)
                plus.append(_probe_loss(m, batches))
                p.data.copy_(W0 - r * Q)
                minus.append(_probe_loss(m, batches))
                advance(1)
            p.data.copy_(W0)
            plus, minus = np.asarray(plus), np.asarray(minus)
            rec = {"r": radii.tolist(), "H": (0.5 * (plus + minus) - base).tolist()}
            if dname == "gradient":
                rec["H_onesided"] = (minus - base + radii * float((G * Q).sum())).tolist()
                rec["grad_dot"] = [float((G * Q).sum())]
            out[f"{name}/{dname}"] = rec
    return out


def local_exponent(r, H, idx) -> float:
    """Least-squares slope of ``log H`` on ``log r`` over the points ``idx`` (``nan`` if any ``H <= 0``)."""
    r, H = np.asarray(r, dtype=float)[idx], np.asarray(H, dtype=float)[idx]
    if np.any(~np.isfinite(H)) or np.any(H <= 0):
        return math.nan
    return float(np.polyfit(np.log(r), np.log(H), 1)[0])


def fit_quadratic_power(r, H) -> dict:
    """``H(r) ~ c2 r^2 + cp r^p`` (``c2, cp >= 0``, ``2 < p <= 8``) by least squares in ``log H`` over
    the points with ``H > 0``; returns ``c2, cp, p`` and the rms log error."""
    r, H = np.asarray(r, dtype=float), np.asarray(H, dtype=float)
    keep = np.isfinite(H) & (H > 0)
    r, H = r[keep], H[keep]
    if r.size < 4:
        return {"c2": math.nan, "cp": math.nan, "p": math.nan, "rms_log_error": math.nan}

    def resid(theta):
        lc2, lcp, p = theta
        return np.log(np.exp(lc2) * r**2 + np.exp(lcp) * r**p) - np.log(H)

    c2_0 = float(np.median(H[:3] / r[:3] ** 2))
    best = None
    for p0 in (2.3, 3.0, 4.0):
        cp0 = max(float(np.median(H[-3:] / r[-3:] ** p0)), 1e-12)
        res = least_squares(resid, [math.log(c2_0), math.log(cp0), p0],
                            bounds=([-60, -60, 2.0 + 1e-6], [60, 60, 8.0]))  # fmt: skip
        if best is None or res.cost < best.cost:
            best = res
    lc2, lcp, p = best.x
    return {"c2": float(math.exp(lc2)), "cp": float(math.exp(lcp)), "p": float(p),
            "rms_log_error": float(np.sqrt(np.mean(best.fun**2)))}  # fmt: skip


def mean_random_profile(profile: dict) -> tuple[np.ndarray, np.ndarray]:
    """Radii and the mean of every random-direction ``H`` curve of one model."""
    curves = [np.asarray(v["H"]) for k, v in profile.items() if "/random" in k]
    r = np.asarray(next(iter(profile.values()))["r"])
    return r, np.mean(curves, 0)


# --------------------------------------------------------------------------------------
# stages


def _measure_total(cfg, model_params: int) -> int:
    return model_params * (1 + cfg.random_directions) * len(cfg.radii)


def tune(cfg: CurvatureProfileConfig, ctx) -> dict:
    """(1) train AdamW and Muon ``measure_iters`` steps (seed 0), measure ``H`` on both, fit
    ``c2 r^2 + cp r^p`` to the AdamW model's mean random-direction curve: the ICM's ``H``;
    (2) every candidate lr of every method for ``sweep_iters`` steps on seed 0 (AdamW first;
    its best lr also drives the AdamW rule of the others); the best final validation loss wins."""
    corpus = load_corpus(cfg.corpus)
    n_mat = len(split_params(make_model(cfg, corpus, 0, "cpu")).names("spectral"))
    methods = ["adamw"] + [m for m in cfg.methods if m != "adamw"]
    total = 2 * cfg.measure_iters + 2 * _measure_total(cfg, n_mat)
    total += sum(len(lr_grid(cfg, m)) for m in methods) * cfg.sweep_iters
    ctx.steps(total, "measure + lr sweep")
    profiles, fits = {}, {}
    for method, lr in (("adamw", cfg.measure_adamw_lr), ("muon", cfg.measure_muon_lr)):
        model, _ = _train(cfg, corpus, method, lr, cfg.measure_adamw_lr, cfg.measure_iters, 0, ctx)
        profiles[method] = measure_profile(model, corpus, cfg, 0, ctx.advance)
        fits[method] = fit_quadratic_power(*mean_random_profile(profiles[method]))
    H_params = fits["adamw"]
    if not all(math.isfinite(v) for v in H_params.values()):
        raise RuntimeError(f"could not fit H to the measured profile: {H_params}")
    H = curvature_from(H_params)

    def final(method, lr, best):
        _, out = _train(cfg, corpus, method, lr, best.get("adamw", lr), cfg.sweep_iters, 0, ctx, H)
        return final_or_inf(out["val_loss"])

    sweep, best = sweep_lowest({m: lr_grid(cfg, m) for m in methods}, final)
    return {"H": H_params, "H_fit_muon_model": fits["muon"], "sweep_val_loss": sweep, "best_lr": best,
            "rule": "best final validation loss after sweep_iters steps on seed 0"}  # fmt: skip


def run_seed(cfg: CurvatureProfileConfig, seed: int, ctx) -> dict:
    corpus = load_corpus(cfg.corpus)
    best = ctx.tuning["best_lr"]
    H_params = ctx.tuning["H"]
    H = curvature_from(H_params)
    n_mat = len(split_params(make_model(cfg, corpus, 0, "cpu")).names("spectral"))
    measured = [m for m in ("adamw", "muon") if m in cfg.methods]
    ctx.steps(len(cfg.methods) * cfg.iters + len(measured) * _measure_total(cfg, n_mat), "train + measure")
    out = {}
    for method in cfg.methods:
        model, curves = _train(cfg, corpus, method, best[method], best["adamw"], cfg.iters, seed, ctx, H)
        curves["lr"] = [best[method]]
        if method == "icm":
            curves.update({f"H_{k}": [v] for k, v in H_params.items()})
        out[method] = curves
        if method in measured:
            for key, rec in measure_profile(model, corpus, cfg, seed, ctx.advance).items():
                out[f"profile-{method}/{key}"] = rec
    return out


# --------------------------------------------------------------------------------------
# analysis


def _profiles(series: dict, model: str) -> dict[str, dict]:
    """``{"<param>/<direction>/seed<k>": record}`` of one trained model kind."""
    pre = f"profile-{model}/"
    return {k[len(pre):]: v for k, v in series.items() if k.startswith(pre)}


def _direction(key: str) -> str:
    """``"<param>/<direction>/seed<k>"`` -> ``"<direction>"``."""
    return key.rsplit("/seed", 1)[0].rsplit("/", 1)[-1]


def analyze(cfg: CurvatureProfileConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    n_r = len(cfg.radii)
    small, large = list(range(cfg.fit_small)), list(range(n_r - cfg.fit_large, n_r))
    for model in ("adamw", "muon"):
        prof = _profiles(series, model)
        if not prof:
            continue
        for kind in ("random", "gradient"):
            recs = [v for k, v in prof.items() if _direction(k).startswith(kind)]
            if not recs:
                continue
            lo = [local_exponent(v["r"], v["H"], small) for v in recs]
            hi = [local_exponent(v["r"], v["H"], large) for v in recs]
            summary[f"{model}/{kind}/exponent_small_r_median"] = float(np.nanmedian(lo)) if np.isfinite(lo).any() else math.nan
            summary[f"{model}/{kind}/exponent_large_r_median"] = float(np.nanmedian(hi)) if np.isfinite(hi).any() else math.nan
            # a curve whose H is not positive at the small radii has no exponent: it counts
            # as a miss (infinitely far from 2), not as absent
            summary[f"{model}/{kind}/exponent_small_r_deviation_median"] = float(
                np.median([abs(x - 2.0) if math.isfinite(x) else math.inf for x in lo]))
            H = [np.asarray(v["H"], dtype=float) for v in recs]  # null (NaN) after a resume
            summary[f"{model}/{kind}/fraction_nonpositive_H"] = float(np.mean([np.mean(~(h > 0)) for h in H]))
            r = np.asarray(recs[0]["r"], dtype=float)
            fit = fit_quadratic_power(r, np.mean(H, 0))
            for key, value in fit.items():
                summary[f"{model}/{kind}/fit_{key}"] = value
            summary[f"{model}/{kind}/fit_alpha"] = fit["p"] - 2
        grads = [v for k, v in prof.items() if "H_onesided" in v]
        if grads:
            hi = [local_exponent(v["r"], v["H_onesided"], large) for v in grads]
            summary[f"{model}/gradient/onesided_exponent_large_r_median"] = float(np.nanmedian(hi)) if np.isfinite(hi).any() else math.nan
    vals = by_method({k: v for k, v in series.items() if not k.startswith("profile-")}, "val_loss")
    claims: list[Claim] = []
    if "adamw" in vals:
        steps, adam = vals["adamw"]
        target = float(np.mean(adam[:, -1]))
        for m, (xs, ys) in vals.items():
            curve = ys.mean(0)
            summary[f"{m}/final_val_loss"] = float(curve[-1])
            summary[f"{m}/steps_to_adamw_final"] = first_reach(xs, curve, target)
        icm = [v for k, v in series.items() if k.startswith("icm/") and "icm_homogenization_mean" in v]
        if icm:
            summary["icm/homogenization_mean"] = float(np.mean([v["icm_homogenization_mean"][0] for v in icm]))
            summary["icm/raw_step_median"] = float(np.median([v["icm_raw_step_median"][0] for v in icm]))
            H = icm[0]
            if all(f"H_{x}" in H for x in ("c2", "cp", "p")):
                c2, cpp, p = H["H_c2"][0], H["H_cp"][0], H["H_p"][0]
                # c2 r^2 = cp r^p at r_c = (c2 / cp)^(1 / (p - 2)) (in logs: p may sit at 2 + 1e-6)
                log_rc = math.log(c2 / cpp) / (p - 2) if cpp > 0 and c2 > 0 else math.inf
                summary["icm/H_crossover_radius"] = math.exp(log_rc) if log_rc < 700 else math.inf
        if "icm" in vals and "muon" in vals:
            summary["icm_minus_muon_final_val_loss"] = summary["icm/final_val_loss"] - summary["muon/final_val_loss"]
            claims.append(Claim("icm-matches-muon",
                                "the curvature-optimal map (fitted H) ends within 0.01 nats of Muon's final "
                                "validation loss or below it (mean over seeds, tuned lrs)",
                                summary["icm_minus_muon_final_val_loss"], 0.01, "max", kind="study"))  # fmt: skip
            claims.append(Claim("icm-beats-muon",
                                "the curvature-optimal map ends below Muon's final validation loss",
                                summary["icm_minus_muon_final_val_loss"], 0.0, "max"))  # fmt: skip
    for model in ("adamw", "muon"):
        key = f"{model}/random/exponent_small_r_deviation_median"
        if key in summary:
            claims.append(Claim(f"{model}-quadratic-near-zero",
                                f"{model}-trained model: H is quadratic near zero (median over curves of the "
                                f"local exponent's distance from 2 over the {cfg.fit_small} smallest radii, a curve "
                                f"with H <= 0 there counting as a miss, at most 0.1)",
                                summary[key], 0.1, "max", kind="sanity"))  # fmt: skip
        key = f"{model}/random/fit_alpha"
        if key in summary:
            claims.append(Claim(f"{model}-super-quadratic-further-out",
                                f"{model}-trained model: H is super-quadratic further out: the fitted exponent 2 + alpha "
                                "of c2 r^2 + cp r^p (mean random-direction curve, radii up to "
                                f"{max(cfg.radii):g}) has alpha >= 0.01 (the fit's floor is 1e-6; r^0.01 changes by "
                                "under 7% over the radii, about the fit's rms log error)", summary[key], 0.01,
                                "min"))  # fmt: skip
    return summary, claims


def plot(cfg: CurvatureProfileConfig, series: dict, summary: dict, folder) -> list[str]:
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, model in zip(axes, ("adamw", "muon")):
        prof = {k: v for k, v in _profiles(series, model).items() if k.endswith("/seed0")}
        for k, v in sorted(prof.items()):
            r, H = np.asarray(v["r"]), np.asarray(v["H"])
            kind = "gradient" if "/gradient" in k else "random"
            ok = H > 0
            ax.plot(r[ok], H[ok], "-", lw=0.8, alpha=0.6, color="C3" if kind == "gradient" else "C0")
        c2, cp, p = (summary.get(f"{model}/random/fit_{x}", math.nan) for x in ("c2", "cp", "p"))
        if all(math.isfinite(x) for x in (c2, cp, p)):
            r = np.geomspace(min(cfg.radii), max(cfg.radii), 100)
            ax.plot(r, c2 * r**2 + cp * r**p, "k--", lw=1.5, label=f"fit {c2:.3g} r^2 + {cp:.3g} r^{p:.2f}")
            ax.plot(r, c2 * r**2, ":", color="gray", lw=1, label="c2 r^2")
        ax.plot([], [], color="C0", label="random directions")
        ax.plot([], [], color="C3", label="gradient-aligned")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("r (operator norm of the step)")
        ax.set_title(f"{model}-trained tiny GPT: even part of the loss change")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("H(r) = [L(W+rQ) + L(W-rQ)]/2 - L(W)")
    files.append(save(fig, folder, "profile.png"))

    lm = {k: v for k, v in series.items() if not k.startswith("profile-")}
    if lm:
        fig, ax = plt.subplots(figsize=(6, 4))
        band_plot(ax, lm, "val_loss")
        lo = min(np.nanmin(v[1]) for v in by_method(lm, "val_loss").values())
        ax.set_ylim(lo * 0.97, lo * 1.5)
        ax.set_title("validation loss (mean over seeds, min-max band)")
        files.append(save(fig, folder, "training.png"))
    return files


register(Experiment(
    name="curvature-profile",
    description="measured curvature H(r) of a tiny GPT; a curvature-optimal spectral map vs Muon and AdamW",
    config=CurvatureProfileConfig, run_seed=run_seed, analyze=analyze, plot=plot, tune=tune,
    presets={
        "smoke": dict(n_layer=1, n_head=2, n_embd=16, context=16, batch_size=8, iters=12, warmup=2,
                      eval_every=6, eval_batches=2, measure_iters=10, radii=(0.01, 0.03, 0.1, 0.3, 1.0),
                      random_directions=1, probe_batches=1, fit_small=2, fit_large=2,
                      adamw_lrs=(3e-3,), muon_lrs=(0.05,), icm_lrs=(0.05,), sweep_iters=6, icm_samples=256),
        "demo": dict(iters=120, measure_iters=100, random_directions=1, probe_batches=1, sweep_iters=40,
                     radii=(0.003, 0.01, 0.03, 0.1, 0.3, 0.7, 1.0, 2.0), fit_large=3, adamw_lrs=(3e-3,),
                     muon_lrs=(0.02,), icm_lrs=(0.02,), icm_samples=512),
        "quick": dict(),
        "paper": dict(n_layer=4, n_head=4, n_embd=128, context=128, batch_size=32, iters=2000, warmup=100,
                      eval_every=100, eval_batches=20, measure_iters=1000, random_directions=4,
                      probe_batches=4, sweep_iters=500, icm_samples=2048),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 2, "paper": 3},
    size=lambda c: f"{c.n_layer}x{c.n_embd}, ctx {c.context}, {c.iters} it, {len(c.radii)} radii",
))
