"""``imbalanced-depth-random``: the depth experiment from random (non-aligned) inits, square and wide.

``imbalanced-depth`` starts every layer at ``a_0 I``, where each class evolves alone and the
saturation times have closed forms. Here the deep linear model ``W_L ... W_1`` starts from
Gaussian layers (:func:`.deep_linear.random_init`, product of size ``init_product``, a new
init per seed) of width ``k`` (square) and wider, on the same mixture (``p = (0.5, 0.3,
0.2)``, SNR 4) with the population gradient. GD, SpecGD (exact truncated SVD per layer) and
Shampoo (specgrad's defaults) run at the step-size rules of ``imbalanced-depth`` (GD a
fraction of its stability limit at the aligned solution; SpecGD and Shampoo so that SpecGD's
rarest class needs about ``specgd_steps`` steps). Per run: the saturation step of each class
(``W_eff[c, c] >= 0.9 w*_c``) and the relative gap ``max_c t_c / min_c t_c - 1``; the claims
compare seed means against two standard errors over the seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from ...theory import imbalanced as th
from ..devices import cpu_only
from ..plots import save
from ..registry import Claim, Experiment, register, setting
from ..series import seed_runs
from .deep_linear import COLORS, random_init, relative_gap, step_size, train_layers
from .verdicts import resolved, standard_error

METHODS = ("gd", "specgd", "shampoo")


@dataclass
class DepthRandomConfig:
    priors: tuple[float, ...] = (0.5, 0.3, 0.2)
    mu: float = 2.0
    sigma: float = 1.0
    depths: tuple[int, ...] = setting((1, 2, 3, 4), ge=1, nonempty=True)
    widths: tuple[int, ...] = setting((3, 16), ge=3, nonempty=True)  # hidden width (>= k = 3)
    init_product: float = setting(1e-3, gt=0)  # layers of size init_product^(1/L): product ~ init_product
    saturation: float = setting(0.9, gt=0, lt=1)
    specgd_steps: int = setting(300, ge=1)
    gd_fraction: float = setting(0.25, gt=0, lt=1)
    max_steps: int = setting(40_000, ge=1)
    keep_points: int = setting(200, ge=2)


def cells(cfg: DepthRandomConfig) -> list[tuple[int, int]]:
    """``(width, depth)`` pairs; a depth-1 model has no hidden width, so it appears once."""
    out = [(cfg.widths[0], 1)] if 1 in cfg.depths else []
    return out + [(w, L) for w in cfg.widths for L in cfg.depths if L > 1]


def run_seed(cfg: DepthRandomConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "imbalanced-depth-random", "float64 population dynamics")
    mix = th.mixture(cfg.priors, cfg.mu, cfg.sigma)
    ctx.steps(len(cells(cfg)) * len(METHODS), "random-init depth sweep")
    out = {}
    for width, depth in cells(cfg):
        gen = torch.Generator().manual_seed(1_000 * seed + 10 * width + depth)
        layers = random_init(mix, depth, width, cfg.init_product, gen)
        for method in METHODS:
            lr = step_size(mix, depth, method, saturation=cfg.saturation, specgd_steps=cfg.specgd_steps,
                           gd_fraction=cfg.gd_fraction)  # fmt: skip
            out[f"{method}/w{width}/L{depth}"] = train_layers(
                mix, layers, method, lr, cfg.max_steps, saturation=cfg.saturation, keep_points=cfg.keep_points)
            ctx.advance()
    return out


def _cell_stats(series: dict, method: str, width: int, depth: int) -> np.ndarray:
    return np.asarray([relative_gap(r["t_sat"]) for r in seed_runs(series, f"{method}/w{width}/L{depth}")])


def _cell_name(cell) -> str:
    if isinstance(cell[0], tuple):
        return " -> ".join(_cell_name(c) for c in cell)
    return f"width {cell[0]}, L={cell[1]}" if cell[1] > 1 else "L=1"


def _seed_claim(id: str, statement: str, per_cell: dict, *, center: float, direction: str) -> Claim:
    """The cell whose seed mean is least favourable to the statement, decided against two
    standard errors over its seeds (not assessed with fewer than two seeds)."""
    sign = 1.0 if direction == "min" else -1.0
    finite = {c: v for c, v in per_cell.items() if np.isfinite(v).all() and len(v)}
    if len(finite) < len(per_cell):
        missing = "; ".join(_cell_name(c) for c in per_cell if c not in finite)
        return Claim.not_assessed(id, statement, f"a class did not saturate within max_steps in {missing}",
                                  direction=direction)  # fmt: skip
    cell = min(finite, key=lambda c: sign * finite[c].mean())
    values = finite[cell]
    if len(values) < 2:
        reason = ("needs at least two seeds (random inits) to measure the spread over inits "
                  f"(worst cell {_cell_name(cell)}: {values.mean():.3g})")
        return Claim.not_assessed(id, statement, reason, direction=direction)
    noise = 2 * standard_error(values.tolist())
    return resolved(id, f"{statement} (worst cell {_cell_name(cell)})", float(values.mean()), noise, center=center,
                    direction=direction, size=f"{len(values)} seeds")  # fmt: skip


def analyze(cfg: DepthRandomConfig, series: dict) -> tuple[dict, list[Claim]]:
    mix = th.mixture(cfg.priors, cfg.mu, cfg.sigma)
    summary: dict[str, float] = {}
    gaps = {m: {c: _cell_stats(series, m, *c) for c in cells(cfg)} for m in METHODS}
    for (width, L) in cells(cfg):
        summary[f"w{width}/L{L}/study_gap"] = th.study_gap(mix, L)
        for m in METHODS:
            g = gaps[m][(width, L)]
            summary[f"w{width}/L{L}/{m}_gap"] = float(np.mean(g)) if len(g) else math.nan
            summary[f"w{width}/L{L}/{m}_gap_se"] = standard_error(g.tolist())
        runs = seed_runs(series, f"specgd/w{width}/L{L}")
        summary[f"w{width}/L{L}/specgd_off_at_saturation"] = float(np.mean([r["off_at_sat"][0] for r in runs]))
    claims: list[Claim] = []
    for m in ("specgd", "shampoo"):
        ratio = {c: gaps["gd"][c] / gaps[m][c] for c in cells(cfg)}
        claims.append(_seed_claim(f"{m}-gap-below-gd-random",
                                  f"from random inits, {m}'s relative gap is smaller than GD's at every depth and "
                                  "width (GD gap / its gap, seed mean, above 1)", ratio, center=1.0, direction="min"))
    grow, shrink, widen = {}, {}, {}
    for width in cfg.widths:
        Ls = [L for L in sorted(cfg.depths)]
        cols = [(width if L > 1 else cfg.widths[0], L) for L in Ls]
        for a, b in zip(cols, cols[1:]):
            grow[(a, b)] = gaps["gd"][b] - gaps["gd"][a]
            shrink[(a, b)] = gaps["specgd"][b] - gaps["specgd"][a]
            widen[(a, b)] = (gaps["gd"][b] / gaps["specgd"][b]) / (gaps["gd"][a] / gaps["specgd"][a])
    if grow:
        claims += [
            _seed_claim("gd-gap-grows-with-depth-random", "from random inits, GD's relative gap grows with every added "
                        "layer (increase from L to L+1, seed mean, above 0)", grow, center=0.0, direction="min"),
            _seed_claim("specgd-gap-shrinks-with-depth-random", "from random inits, SpecGD's relative gap shrinks with "
                        "every added layer (change from L to L+1, seed mean, below 0)", shrink, center=0.0,
                        direction="max"),
            _seed_claim("depth-widens-gd-over-specgd-random", "from random inits, GD gap / SpecGD gap grows with every "
                        "added layer (ratio between consecutive depths, seed mean, above 1)", widen, center=1.0,
                        direction="min"),
        ]  # fmt: skip
    return summary, claims


def plot(cfg: DepthRandomConfig, series: dict, summary: dict, folder) -> list[str]:
    mix = th.mixture(cfg.priors, cfg.mu, cfg.sigma)
    fig, axes = plt.subplots(1, len(cfg.widths), figsize=(5 * len(cfg.widths), 3.8), squeeze=False)
    for ax, width in zip(axes[0], cfg.widths):
        Ls = sorted(cfg.depths)
        cols = [(width if L > 1 else cfg.widths[0], L) for L in Ls]
        fine = np.linspace(min(Ls), max(Ls), 100)
        ax.plot(fine, [th.study_gap(mix, L) for L in fine], color="k", ls=":", label="study formula (SpecGD)")
        for m, marker in zip(METHODS, "so^"):
            mean = [summary.get(f"w{w}/L{L}/{m}_gap", math.nan) for w, L in cols]
            se = [summary.get(f"w{w}/L{L}/{m}_gap_se", math.nan) for w, L in cols]
            ax.errorbar(Ls, mean, yerr=np.nan_to_num(np.asarray(se) * 2), marker=marker, color=COLORS[m], label=m,
                        capsize=3)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xticks(Ls)
        ax.set_xlabel("depth L")
        ax.set_ylabel("relative gap max_c t_c / min_c t_c - 1")
        ax.set_title(f"random init, width {width}, product ~{cfg.init_product:g} (mean +- 2 SE over seeds)", fontsize=9)
        ax.legend(fontsize=7)
    return [save(fig, folder, "depth_random_gaps.png")]


register(Experiment(
    name="imbalanced-depth-random",
    description="deep linear models from random (non-aligned) inits, square and wide: per-class saturation gaps "
                "of GD, SpecGD and Shampoo as depth grows",
    config=DepthRandomConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(depths=(1, 2), widths=(8,), specgd_steps=100, max_steps=5_000),
        "quick": dict(),
        "paper": dict(depths=(1, 2, 3, 4, 5), widths=(3, 16, 64), specgd_steps=1000, max_steps=200_000),
    },
    seeds={"smoke": 1, "quick": 3, "paper": 5},
    size=lambda c: f"depths {c.depths}, widths {c.widths}, init product {c.init_product:g}",
))
