"""``random-features``: GD vs SpecGD (and SpecGD restarted from GD iterates) on random-feature
least squares ``min_W (1/2n) ||W A - Y||_F^2`` with ReLU features (low ``st(A)``: SpecGD wins)
and SwiGLU features (high ``st(A)``: GD wins); the problem and both steps are
:mod:`specgrad.theory.random_features`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from ...linalg import nuclear_rank
from ...theory.random_features import RandomFeatureProblem, random_feature_problem
from ..devices import cpu_only
from ..plots import mean_band, save
from ..registry import Claim, Experiment, register, setting
from ..series import at, curve, finite_max, geomean, key_of, paired_ratios, rounded, seed_runs

NORMS = {"gd": "frobenius", "specgd": "spectral"}  # each method's majorization step


@dataclass
class RandomFeaturesConfig:
    dim: int = setting(100, ge=1)  # W and W# are dim x dim; A = sigma(V X) has dim rows
    feature_dim: int = setting(50, ge=1)  # X is feature_dim x samples, V is dim x feature_dim (entries N(0, 1/feature_dim))
    samples: int = setting(400, ge=1)
    activations: tuple[str, ...] = ("relu", "swiglu")
    relu_steps: int = setting(1000, ge=1)
    swiglu_steps: int = setting(400, ge=1)
    restart_every: int = setting(100, ge=0)  # SpecGD restarted from the GD iterate every this many steps (0: none)
    restart_from_peak: bool = True  # ... and from the GD step where nr(G) peaks
    mid_step: int = setting(100, ge=0)  # step of the mid-run gap ratio in the summary

    def steps(self, activation: str) -> int:
        return self.swiglu_steps if activation == "swiglu" else self.relu_steps



def problem(cfg: RandomFeaturesConfig, activation: str, seed: int) -> RandomFeatureProblem:
    return random_feature_problem(cfg.dim, cfg.feature_dim, cfg.samples, activation, seed)


def _path(prob: RandomFeatureProblem, W: Tensor, start: int, stop: int, method: str,
          keep: frozenset = frozenset()):  # fmt: skip
    """Run ``method`` (``"gd"`` or ``"specgd"``) from ``W`` at step ``start`` to ``stop``;
    return the series and the iterates at the steps in ``keep`` (before their update)."""
    rec = {"step": [], "loss": [], "objective_gap": [], "nuclear_rank": []}
    saved = {}
    for t in range(start, stop):
        if t in keep:
            saved[t] = W.clone()
        loss, G = prob.loss_and_gradient(W)
        rec["step"].append(t)
        rec["loss"].append(loss)
        rec["objective_gap"].append(loss - prob.f_star)
        rec["nuclear_rank"].append(float(nuclear_rank(G)))
        W = prob.step(W, G, NORMS[method])
    return {k: (v if k == "step" else rounded(v)) for k, v in rec.items()}, saved


def _gd_iterate(prob: RandomFeatureProblem, steps: int) -> Tensor:
    """The GD iterate after ``steps`` steps from zero (the same arithmetic as :func:`_path`)."""
    W = torch.zeros(prob.Y.shape[0], prob.A.shape[0], dtype=prob.A.dtype)
    for _ in range(steps):
        W = prob.step(W, prob.loss_and_gradient(W)[1], "frobenius")
    return W


def run_seed(cfg: RandomFeaturesConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "random-features", "float64 least squares")
    out = {}
    plans = {}
    for act in cfg.activations:
        T = cfg.steps(act)
        plans[act] = list(range(cfg.restart_every, T, cfg.restart_every)) if cfg.restart_every > 0 else []
    ctx.steps(sum(cfg.steps(a) * (3 + len(plans[a])) for a in cfg.activations), "GD/SpecGD paths")
    for act in cfg.activations:
        T, starts = cfg.steps(act), plans[act]
        prob = problem(cfg, act, seed)
        zero = torch.zeros(cfg.dim, cfg.dim, dtype=torch.float64)
        gd, saved = _path(prob, zero, 0, T, "gd", keep=frozenset(starts))
        out[f"{act}/gd"] = gd
        ctx.advance(T)
        out[f"{act}/specgd"] = _path(prob, zero, 0, T, "specgd")[0]
        ctx.advance(T)
        for s0 in starts:
            out[f"{act}/specgd_from_{s0}"] = _path(prob, saved[s0], s0, T, "specgd")[0]
            ctx.advance(T)
        if cfg.restart_from_peak:
            peak = int(np.argmax(gd["nuclear_rank"]))
            path = _path(prob, _gd_iterate(prob, peak), peak, T, "specgd")[0]
            path["start"] = [peak]
            out[f"{act}/specgd_from_peak"] = path
        ctx.advance(T)
        out[f"{act}/data"] = {"stable_rank_A": [prob.stable_rank], "f_star": [prob.f_star],
                              "op_norm_sq": [prob.op_sq], "fro_norm_sq": [prob.fro_sq]}  # fmt: skip
    return out


def _gap_ratio(num: list[dict], den: list[dict], step: int) -> float:
    """Geometric mean over seeds of ``gap_num(step) / gap_den(step)`` (gaps floored at 1e-300)."""
    return geomean(paired_ratios(num, den, "objective_gap", step))


def analyze(cfg: RandomFeaturesConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    for act in cfg.activations:
        gd, spec, data = seed_runs(series, f"{act}/gd"), seed_runs(series, f"{act}/specgd"), seed_runs(series, f"{act}/data")
        if not (gd and spec and data):
            continue
        last = cfg.steps(act) - 1
        mid = min(cfg.mid_step, last)
        st = [d["stable_rank_A"][0] for d in data]
        summary[f"{act}/stable_rank_A"] = float(np.mean(st))
        summary[f"{act}/f_star_max"] = float(max(d["f_star"][0] for d in data))
        summary[f"{act}/gd_final_gap"] = geomean([at(r, "objective_gap", last) for r in gd])
        summary[f"{act}/specgd_final_gap"] = geomean([at(r, "objective_gap", last) for r in spec])
        summary[f"{act}/gd_over_specgd_final"] = _gap_ratio(gd, spec, last)
        summary[f"{act}/gd_over_specgd_final_min_seed"] = min(paired_ratios(gd, spec, "objective_gap", last))
        summary[f"{act}/gd_over_specgd_mid"] = _gap_ratio(gd, spec, mid)
        ratios = [float(np.nanmin(np.asarray(r["nuclear_rank"], dtype=float))) / s for r, s in zip(gd, st)]
        summary[f"{act}/gd_min_nr_over_st"] = float(min(ratios))
        summary[f"{act}/gd_frac_steps_nr_above_st"] = float(np.mean(
            [np.mean(np.asarray(r["nuclear_rank"], dtype=float) >= s) for r, s in zip(gd, st)]))
        summary[f"{act}/gd_nr_peak"] = float(np.mean([finite_max(r["nuclear_rank"]) for r in gd]))
        summary[f"{act}/gd_nr_init"] = float(np.mean([r["nuclear_rank"][0] for r in gd]))
        peak = seed_runs(series, f"{act}/specgd_from_peak")
        if peak:
            summary[f"{act}/peak_step"] = float(np.mean([r["start"][0] for r in peak]))
            summary[f"{act}/gd_over_specgd_from_peak_final"] = _gap_ratio(gd, peak, last)
        methods = {key_of(k) for k in series if k.startswith(f"{act}/specgd_from_")}
        restarts = sorted(methods - {f"{act}/specgd_from_peak"})
        if restarts:
            beating = sum(_gap_ratio(gd, seed_runs(series, m), last) > 1 for m in restarts)
            summary[f"{act}/restarts_beating_gd_at_end"] = float(beating)
            summary[f"{act}/restarts"] = float(len(restarts))
    claims = []
    if "relu/gd_over_specgd_final" in summary:
        claims += [
            Claim("relu-specgd-far-below-gd",
                  f"ReLU features: SpecGD's objective gap after {cfg.relu_steps} steps is at least 10x below GD's "
                  "(geometric mean over seeds of gap_GD / gap_SpecGD)", summary["relu/gd_over_specgd_final"], 10.0),
            Claim("relu-nr-exceeds-st",
                  "ReLU features: along the whole GD path the gradient's nuclear rank exceeds st(A) "
                  "(min over steps and seeds of nr(G_t)/st(A))", summary["relu/gd_min_nr_over_st"], 1.0),
        ]  # fmt: skip
        if "relu/gd_over_specgd_from_peak_final" in summary:
            claims.append(Claim(
                "relu-restart-from-peak-beats-gd",
                "ReLU features: SpecGD restarted from the GD iterate where nr(G) peaks ends below GD "
                "(gap_GD / gap_restart at the last step)", summary["relu/gd_over_specgd_from_peak_final"], 1.0))  # fmt: skip
    if "swiglu/gd_over_specgd_final" in summary:
        r = summary["swiglu/gd_over_specgd_final"]
        value = 1.0 / r if math.isfinite(r) and r > 0 else math.nan
        summary["swiglu/specgd_over_gd_final"] = value
        claims.append(Claim(
            "swiglu-gd-wins",
            f"SwiGLU features (high st(A)): GD ends below SpecGD after {cfg.swiglu_steps} steps "
            "(gap_SpecGD / gap_GD, geometric mean over seeds)", value, 1.0))  # fmt: skip
    return summary, claims


def plot(cfg: RandomFeaturesConfig, series: dict, summary: dict, folder) -> list[str]:
    acts = [a for a in cfg.activations if seed_runs(series, f"{a}/gd")]
    fig, axes = plt.subplots(len(acts), 2, figsize=(11.5, 3.8 * len(acts)), squeeze=False)
    for row, act in zip(axes, acts):
        ax = row[0]
        restarts = sorted({key_of(k) for k in series if k.startswith(f"{act}/specgd_from_")})
        for m in restarts:
            r = seed_runs(series, m)[0]
            peak = m.endswith("peak")
            ax.plot(r["step"], np.maximum(r["objective_gap"], 1e-300), color="C2" if peak else "0.6",
                    lw=1.4 if peak else 0.8, label="SpecGD from nr peak" if peak else None)  # fmt: skip
        for m, color, label in (("gd", "C0", "GD"), ("specgd", "C3", "SpecGD")):
            xs, ys = curve(series, f"{act}/{m}", "objective_gap")
            mean_band(ax, xs, np.maximum(ys, 1e-300), color, label, center=lambda y, axis: np.exp(np.log(y).mean(axis)))
        ax.plot([], [], color="0.6", lw=0.8, label=f"SpecGD restarts (every {cfg.restart_every})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("objective gap f(W_t) - f*")
        ax.set_title(f"{act} features: st(A) = {summary.get(f'{act}/stable_rank_A', math.nan):.2f} (seed 0 restarts)",
                     fontsize=10)  # fmt: skip
        ax.legend(fontsize=7)
        ax = row[1]
        for m, color, label in (("gd", "C0", "nr(grad) along GD"), ("specgd", "C3", "nr(grad) along SpecGD")):
            mean_band(ax, *curve(series, f"{act}/{m}", "nuclear_rank"), color, label)
        ax.axhline(summary.get(f"{act}/stable_rank_A", math.nan), color="k", ls="--", lw=1, label="st(A)")
        ax.set_xlabel("step")
        ax.set_ylabel("nuclear rank")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(f"random features: W {cfg.dim}x{cfg.dim}, V {cfg.dim}x{cfg.feature_dim}, n = {cfg.samples} "
                 "(mean over seeds, min-max band)", fontsize=11)  # fmt: skip
    return [save(fig, folder, "random_features.png")]


register(Experiment(
    name="random-features",
    description="Davis-Drusvyatskiy: GD vs SpecGD on random-feature regression (ReLU: SpecGD wins, SwiGLU: GD wins)",
    config=RandomFeaturesConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(dim=20, feature_dim=10, samples=60, relu_steps=40, swiglu_steps=30, restart_every=15, mid_step=10),
        "demo": dict(relu_steps=500, swiglu_steps=300),
        "quick": dict(),
        "paper": dict(),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 5},
    size=lambda c: f"W {c.dim}x{c.dim}, n {c.samples}, {c.relu_steps}/{c.swiglu_steps} steps",
))
