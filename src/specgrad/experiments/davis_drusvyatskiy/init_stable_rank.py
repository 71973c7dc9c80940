"""``init-stable-rank``: post-activation stable rank at Gaussian initialization against the spike
bound ``B(sigma) = E[sigma(g)^2] / E[sigma(g)]^2``: one layer ``A = sigma(W X)`` (sweeping width
and sample count), a deep feedforward net per layer, and the tiny GPT at init."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from ...data import CharCorpus
from ...models import GPT, GPTConfig
from ...theory.random_features import ACTIVATIONS, LEAKY_SLOPES, post_activation, spike_bound, spike_bound_at_scale
from ..devices import cpu_only
from ..plots import mean_band, save
from ..registry import Claim, Experiment, register
from ..series import curve, finite_or, loglog_slope, seed_runs
from .stable_ranks import fast_stable_rank


MIN_WIDTH_GROWTH_CLAIM = 64  # the smallest width of the sweep the width-growth claim compares against
HOMOGENEOUS = ("abs", "relu", "leaky_relu", "relu2")  # sigma(c t) = c^p sigma(t) for c > 0


@dataclass
class InitStableRankConfig:
    activations: tuple[str, ...] = ACTIVATIONS
    leaky_q: float = LEAKY_SLOPES[0]  # leaky ReLU slope for t > 0
    leaky_p: float = LEAKY_SLOPES[1]  # leaky ReLU slope for t < 0
    # (a) one layer A = sigma(W X): W (m x d) with N(0, 1/d) entries, X (d x n) standard Gaussian
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)  # m = d = width ...
    samples_per_width: float = 2.0  # ... and n = samples_per_width * width
    sample_width: int = 512  # the sample sweep: m = d = sample_width ...
    sample_counts: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)  # ... and these n
    # (b) deep feedforward net: A_l = sigma(W_l A_{l-1} / rms(A_{l-1})), W_l N(0, 1/width), and the
    # plain net A_l = sigma(W_l A_{l-1}) with the same weights
    depth: int = 8
    deep_width: int = 512
    deep_samples: int = 1024
    # (c) the tiny GPT at initialization on one batch of the default character corpus
    gpt_mlps: tuple[str, ...] = ("gelu", "relu2", "swiglu")
    gpt_n_layer: int = 4
    gpt_n_head: int = 4
    gpt_n_embd: int = 128
    gpt_context: int = 64
    gpt_batch: int = 32
    bound_tolerance: float = 0.02  # finite-size slack of the "below B(sigma)" claims


def _one_layer(cfg: InitStableRankConfig, m: int, d: int, n: int, g: torch.Generator) -> dict[str, tuple[float, float]]:
    """``{activation: (st(A), empirical spike bound)}`` for one draw of ``W, X`` (shared by
    every activation; SwiGLU draws a second matrix for its up projection)."""
    X = torch.randn(d, n, generator=g, dtype=torch.float64)
    W = torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    Z = W @ X
    Z2 = (torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)) @ X if "swiglu" in cfg.activations else None
    out = {}
    for name in cfg.activations:
        A = post_activation(name, Z, Z2, (cfg.leaky_q, cfg.leaky_p))
        fro = float(A.square().sum())
        spike = float(A.sum()) ** 2 / (m * n)  # (1^T A 1)^2 / (m n) <= ||A||_op^2
        out[name] = (fast_stable_rank(A), fro / spike if spike > 0 else math.inf)
    return out


def _deep_net(cfg: InitStableRankConfig, name: str, g: torch.Generator) -> tuple[list[float], dict[str, list[float]]]:
    """Per-layer ``st(A_l)``, ``l = 1..depth``, of two nets with the same weights: every layer's
    input rescaled to unit mean square (what a norm layer does, so that each pre-activation is
    ~ N(0, 1)), and the plain net ``A_l = sigma(W_l A_{l-1})`` (``W_l`` N(0, 1/width)), whose
    pre-activation variance drifts with depth; the plain net's record has its st and that
    variance (the mean square of ``W_l A_{l-1}``)."""
    w, n = cfg.deep_width, cfg.deep_samples
    A = P = torch.randn(w, n, generator=g, dtype=torch.float64)
    leaky = (cfg.leaky_q, cfg.leaky_p)
    rescaled, plain = [], {"stable_rank": [], "pre_variance": []}
    for _ in range(cfg.depth):
        A = A / A.square().mean().sqrt()
        W = torch.randn(w, w, generator=g, dtype=torch.float64) / math.sqrt(w)
        W2 = torch.randn(w, w, generator=g, dtype=torch.float64) / math.sqrt(w) if name == "swiglu" else None
        A = post_activation(name, W @ A, W2 @ A if W2 is not None else None, leaky)
        rescaled.append(fast_stable_rank(A))
        Z = W @ P
        P = post_activation(name, Z, W2 @ P if W2 is not None else None, leaky)
        finite = bool(torch.isfinite(P).all())
        plain["pre_variance"].append(float(Z.square().mean()))
        plain["stable_rank"].append(fast_stable_rank(P) if finite and P.abs().max() > 0 else math.nan)
    return rescaled, plain


def _gpt_at_init(cfg: InitStableRankConfig, mlp: str, seed: int, corpus: CharCorpus) -> dict[str, list]:
    """Stable ranks inside the tiny GPT at init, per block: the LayerNorm outputs feeding Q/K/V
    (``ln_1``) and the MLP (``ln_2``), the MLP post-activation (input of ``mlp.c_proj``), and
    the token-indicator ``1/p_max`` of the batch."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, context=cfg.gpt_context, n_layer=cfg.gpt_n_layer,
                          n_head=cfg.gpt_n_head, n_embd=cfg.gpt_n_embd, mlp=mlp))  # fmt: skip
    idx, _ = corpus.get_batch("train", cfg.gpt_batch, cfg.gpt_context, torch.Generator().manual_seed(seed))
    captured: dict[str, Tensor] = {}
    hooks = []

    def keep(key):
        return lambda module, args, output: captured.__setitem__(key, args[0].detach().reshape(-1, args[0].shape[-1]))

    for i, block in enumerate(model.transformer.h):
        hooks.append(block.attn.c_attn.register_forward_hook(keep(f"attn_in{i}")))
        hooks.append(block.mlp.c_proj.register_forward_hook(keep(f"mlp_post{i}")))
        first = block.mlp.w1 if mlp == "swiglu" else block.mlp.c_fc
        hooks.append(first.register_forward_hook(keep(f"mlp_in{i}")))
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    counts = torch.bincount(idx.reshape(-1), minlength=corpus.vocab_size)
    token_st = idx.numel() / float(counts.max())
    L = cfg.gpt_n_layer
    return {
        "layer": list(range(L)),
        "st_attn_input": [fast_stable_rank(captured[f"attn_in{i}"]) for i in range(L)],
        "st_mlp_input": [fast_stable_rank(captured[f"mlp_in{i}"]) for i in range(L)],
        "st_mlp_post": [fast_stable_rank(captured[f"mlp_post{i}"]) for i in range(L)],
        "dim_attn_input": [cfg.gpt_n_embd] * L,
        "dim_mlp_post": [captured["mlp_post0"].shape[1]] * L,
        "token_indicator": [token_st] * L,
    }


def run_seed(cfg: InitStableRankConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "init-stable-rank", "float64 on numpy/ARPACK")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, list]] = {}
    ctx.steps(len(cfg.widths) + len(cfg.sample_counts) + len(cfg.activations) + len(cfg.gpt_mlps), "sweeps")
    sweeps = [("width", w, w, max(1, round(cfg.samples_per_width * w))) for w in cfg.widths]
    sweeps += [("samples", cfg.sample_width, cfg.sample_width, n) for n in cfg.sample_counts]
    for sweep, m, d, n in sweeps:
        for name, (st, emp) in _one_layer(cfg, m, d, n, g).items():
            rec = out.setdefault(f"{sweep}/{name}", {"width": [], "samples": [], "stable_rank": [], "empirical_bound": []})
            rec["width"].append(m)
            rec["samples"].append(n)
            rec["stable_rank"].append(st)
            rec["empirical_bound"].append(emp)
        ctx.advance()
    for name in cfg.activations:
        rescaled, plain = _deep_net(cfg, name, g)
        out[f"deep/{name}"] = {"layer": list(range(1, cfg.depth + 1)), "stable_rank": rescaled}
        out[f"deep-plain/{name}"] = {"layer": list(range(1, cfg.depth + 1)), **plain}
        ctx.advance()
    if cfg.gpt_mlps:
        corpus = CharCorpus.default()
        for mlp in cfg.gpt_mlps:
            out[f"gpt/{mlp}"] = _gpt_at_init(cfg, mlp, seed, corpus)
            ctx.advance()
    return out


def analyze(cfg: InitStableRankConfig, series: dict) -> tuple[dict, list[Claim]]:
    leaky = (cfg.leaky_q, cfg.leaky_p)
    bounds = {a: spike_bound(a, leaky) for a in cfg.activations}
    spiked = [a for a in cfg.activations if math.isfinite(bounds[a])]
    summary: dict[str, float] = {f"bound/{a}": b for a, b in bounds.items() if math.isfinite(b)}
    worst, growth, deep_worst = 1e-300, 0.0, 1e-300
    plain_worst, homogeneous_diff = -math.inf, -math.inf
    for a in cfg.activations:
        for sweep in ("width", "samples"):
            runs = seed_runs(series, f"{sweep}/{a}")
            if not runs:
                continue
            st = np.asarray([r["stable_rank"] for r in runs], dtype=float)
            xs = np.asarray(runs[0]["width" if sweep == "width" else "samples"], dtype=float)
            summary[f"{sweep}/{a}/st_at_max"] = float(st[:, -1].mean())
            summary[f"{sweep}/{a}/st_at_min"] = float(st[:, 0].mean())
            summary[f"{sweep}/{a}/loglog_slope"] = finite_or(loglog_slope(np.tile(xs, st.shape[0]), st.ravel()), 0.0)
            if a in spiked:
                ratio = float(st.max()) / bounds[a]
                summary[f"{sweep}/{a}/max_st_over_bound"] = ratio
                worst = max(worst, ratio)
                if sweep == "width":
                    g = float(st[:, -1].mean() / st[:, 0].mean())
                    summary[f"width/{a}/growth_max_over_min"] = g
                    growth = max(growth, g)
        runs = seed_runs(series, f"deep/{a}")
        if runs:
            st = np.asarray([r["stable_rank"] for r in runs], dtype=float)
            summary[f"deep/{a}/max_st"] = float(st.max())
            summary[f"deep/{a}/last_layer_st"] = float(st[:, -1].mean())
            if a in spiked:
                deep_worst = max(deep_worst, float(st.max()) / bounds[a])
        plain_runs = seed_runs(series, f"deep-plain/{a}")
        if plain_runs and runs:
            pst = np.asarray([r["stable_rank"] for r in plain_runs], dtype=float)
            q = np.asarray([r["pre_variance"] for r in plain_runs], dtype=float)
            summary[f"deep-plain/{a}/last_layer_st"] = float(np.nanmean(pst[:, -1]))
            summary[f"deep-plain/{a}/last_pre_variance"] = float(np.exp(np.log(q[:, -1]).mean()))
            summary[f"deep-plain/{a}/overflowed_layers"] = float(np.isnan(pst).sum())
            ok = np.isfinite(pst)
            if ok.any():
                summary[f"deep-plain/{a}/max_rel_diff_vs_rescaled"] = float(np.max(np.abs(pst[ok] / st[ok] - 1)))
            if a in spiked and ok.any():
                layer_bounds = np.vectorize(lambda v: spike_bound_at_scale(a, float(v), leaky))(q)
                summary[f"deep-plain/{a}/max_st_over_layer_bound"] = float(np.max(pst[ok] / layer_bounds[ok]))
                summary[f"deep-plain/{a}/max_st_over_unit_bound"] = float(np.max(pst[ok]) / bounds[a])
                plain_worst = max(plain_worst, summary[f"deep-plain/{a}/max_st_over_layer_bound"])
            if a in HOMOGENEOUS and ok.any():
                homogeneous_diff = max(homogeneous_diff, summary[f"deep-plain/{a}/max_rel_diff_vs_rescaled"])
    for mlp in cfg.gpt_mlps:
        runs = seed_runs(series, f"gpt/{mlp}")
        if runs:
            for key in ("st_attn_input", "st_mlp_input", "st_mlp_post", "token_indicator"):
                summary[f"gpt/{mlp}/max_{key}"] = float(max(max(r[key]) for r in runs))
            summary[f"gpt/{mlp}/max_st_mlp_post_over_dim"] = summary[f"gpt/{mlp}/max_st_mlp_post"] / runs[0]["dim_mlp_post"][0]
            summary[f"gpt/{mlp}/max_st_attn_input_over_dim"] = summary[f"gpt/{mlp}/max_st_attn_input"] / runs[0]["dim_attn_input"][0]
    summary["max_st_over_bound"] = worst
    summary["max_width_growth_spiked"] = growth
    summary["deep/max_st_over_bound"] = deep_worst
    if math.isfinite(plain_worst):
        summary["deep-plain/max_st_over_layer_bound"] = plain_worst
    claims: list[Claim] = []
    tol = 1 + cfg.bound_tolerance
    if spiked and any(f"width/{a}/max_st_over_bound" in summary for a in spiked):
        claims.append(Claim(
            "one-layer-below-spike-bound",
            f"one layer at Gaussian init: st(sigma(WX)) <= B(sigma) = E[sigma^2]/E[sigma]^2 (pi/2 for |t|, pi for ReLU, "
            f"pi(q^2+p^2)/(q-p)^2 for leaky ReLU, 6 for ReLU^2, {bounds.get('gelu', math.nan):.3f} for GELU) at every "
            f"width and sample count, up to {cfg.bound_tolerance:.0%} finite-size slack: max st/B",
            worst, tol, "max"))  # fmt: skip
        statement = (f"these stable ranks do not grow with width: st at width {cfg.widths[-1]} over st at width "
                     f"{cfg.widths[0]} is at most 1.25 for every activation with a nonzero Gaussian mean (worst case)")
        if cfg.widths[0] < MIN_WIDTH_GROWTH_CLAIM:
            claims.append(Claim.not_assessed(
                "one-layer-bounded-in-width", statement,
                f"needs widths from {MIN_WIDTH_GROWTH_CLAIM} up: below it st is still rising towards B(sigma) "
                "(the O(1/width) finite-size deficit, 15% for ReLU^2 at width 64)", threshold=1.25, direction="max"))
        else:
            claims.append(Claim("one-layer-bounded-in-width", statement, growth, 1.25, "max"))  # fmt: skip
    if "swiglu" in cfg.activations and "width/swiglu/loglog_slope" in summary:
        claims.append(Claim(
            "swiglu-grows-with-width",
            "SwiGLU post-activations (zero mean, no spike) have a stable rank growing with width: log-log slope of "
            "st against width (m = d, n proportional) >= 0.7", summary["width/swiglu/loglog_slope"], 0.7, "min"))  # fmt: skip
    if spiked and any(f"deep/{a}/max_st" in summary for a in spiked):
        claims.append(Claim(
            "deep-net-below-spike-bound",
            f"deep feedforward net ({cfg.depth} layers, width {cfg.deep_width}) at init: every layer's "
            f"post-activation st <= B(sigma) (+{cfg.bound_tolerance:.0%}): max st/B over layers and activations",
            deep_worst, tol, "max"))  # fmt: skip
    if math.isfinite(plain_worst):
        claims.append(Claim(
            "deep-plain-net-below-layer-bound",
            f"plain deep feedforward net (no rescaling, W_l ~ N(0, 1/width)) at init: every layer's st(A_l) <= "
            f"E[sigma(z)^2]/E[sigma(z)]^2 for z ~ N(0, q_l), q_l the layer's measured pre-activation variance "
            f"(= B(sigma) for homogeneous sigma) (+{cfg.bound_tolerance:.0%}): max ratio over layers and activations",
            plain_worst, tol, "max"))  # fmt: skip
    if math.isfinite(homogeneous_diff):
        claims.append(Claim(
            "deep-plain-homogeneous-equals-rescaled",
            "for positively homogeneous sigma (|t|, ReLU, leaky ReLU, ReLU^2) rescaling a layer's input only rescales "
            "its output, so the plain and the rescaled net have the same st at every layer: max relative difference",
            homogeneous_diff, 1e-8, "max", kind="sanity"))  # fmt: skip
    plain = [m for m in cfg.gpt_mlps if m != "swiglu" and f"gpt/{m}/max_st_mlp_post_over_dim" in summary]
    if plain:
        value = max(max(summary[f"gpt/{m}/max_st_mlp_post_over_dim"], summary[f"gpt/{m}/max_st_attn_input_over_dim"])
                    for m in plain)  # fmt: skip
        summary["gpt/max_st_over_dim_non_gated"] = value
        claims.append(Claim(
            "gpt-init-low-stable-rank",
            f"tiny GPT at init ({'/'.join(plain)} MLP): the normalized inputs of Q/K/V and the MLP post-activations "
            "have stable rank at most 0.25 of their dimension (max over blocks)", value, 0.25, "max"))  # fmt: skip
    return summary, claims


def plot(cfg: InitStableRankConfig, series: dict, summary: dict, folder) -> list[str]:
    leaky = (cfg.leaky_q, cfg.leaky_p)
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    for ax, sweep, xkey, title in ((axes[0], "width", "width", f"m = d = width, n = {cfg.samples_per_width:g} width"),
                                   (axes[1], "samples", "samples", f"m = d = {cfg.sample_width}, n samples")):  # fmt: skip
        for k, a in enumerate(cfg.activations):
            cur = curve(series, f"{sweep}/{a}", "stable_rank", x=xkey)
            if cur is None:
                continue
            mean_band(ax, *cur, f"C{k}", a, marker="o", ms=3)
            b = spike_bound(a, leaky)
            if math.isfinite(b):
                ax.axhline(b, color=f"C{k}", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xkey)
        ax.set_ylabel("st(sigma(W X))")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("post-activation stable rank at Gaussian init (dotted: B = E[s^2]/E[s]^2)", fontsize=11)
    files.append(save(fig, folder, "one_layer.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    for k, a in enumerate(cfg.activations):
        cur = curve(series, f"deep/{a}", "stable_rank", x="layer")
        if cur is not None:
            axes[0].plot(cur[0], cur[1].mean(0), "o-", color=f"C{k}", ms=3, label=a)
        cur = curve(series, f"deep-plain/{a}", "stable_rank", x="layer")
        if cur is not None and a not in HOMOGENEOUS:  # homogeneous: the same curve
            axes[0].plot(cur[0], np.nanmean(cur[1], 0), "x--", color=f"C{k}", ms=4, lw=1, label=f"{a}, plain")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("st(A_l)")
    axes[0].set_title(f"deep net at init, width {cfg.deep_width}, n = {cfg.deep_samples} (dashed: no rescaling)",
                      fontsize=10)  # fmt: skip
    axes[0].legend(fontsize=7, ncol=2)
    ax = axes[1]
    token = []
    for j, mlp in enumerate(cfg.gpt_mlps):
        runs = seed_runs(series, f"gpt/{mlp}")
        if not runs:
            continue
        layers = np.asarray(runs[0]["layer"]) + 0.06 * (j - (len(cfg.gpt_mlps) - 1) / 2)
        for key, marker, ls, what in (("st_attn_input", "o", "-", "ln_1 out (Q/K/V input)"),
                                      ("st_mlp_input", "s", "--", "ln_2 out (MLP input)"),
                                      ("st_mlp_post", "^", ":", f"MLP post-act. (dim {runs[0]['dim_mlp_post'][0]})")):  # fmt: skip
            vals = np.mean([r[key] for r in runs], axis=0)
            ax.plot(layers, vals, marker=marker, ls=ls, color=f"C{j}", label=f"{mlp}: {what}")
        token.append(float(np.mean([r["token_indicator"][0] for r in runs])))
    if token:
        ax.axhline(float(np.mean(token)), color="k", ls=":", lw=1, label="token indicator 1/p_max")
    ax.set_xticks(range(cfg.gpt_n_layer))
    ax.set_xlabel("block")
    ax.set_ylabel("stable rank")
    ax.set_title(f"tiny GPT at init ({cfg.gpt_n_layer}x{cfg.gpt_n_embd}), one batch of "
                 f"{cfg.gpt_batch}x{cfg.gpt_context} tokens", fontsize=10)  # fmt: skip
    ax.legend(fontsize=6, ncol=2)
    files.append(save(fig, folder, "deep_and_transformer.png"))
    return files


register(Experiment(
    name="init-stable-rank",
    description="Davis-Drusvyatskiy: post-activation stable rank at Gaussian init vs E[s^2]/E[s]^2",
    config=InitStableRankConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(widths=(16, 32, 64), sample_width=32, sample_counts=(16, 64), depth=3, deep_width=48,
                      deep_samples=64, gpt_mlps=("gelu", "swiglu"), gpt_n_layer=1, gpt_n_head=2, gpt_n_embd=32,
                      gpt_context=16, gpt_batch=8),
        "demo": dict(widths=(64, 128, 256, 512, 1024), sample_counts=(64, 256, 1024, 4096)),
        "quick": dict(),
        "paper": dict(widths=(64, 128, 256, 512, 1024, 2048, 4096), sample_width=1024,
                      sample_counts=(128, 256, 512, 1024, 2048, 4096, 8192, 16384), depth=12, deep_width=1024,
                      deep_samples=2048, gpt_n_layer=6, gpt_n_head=6, gpt_n_embd=384, gpt_context=256, gpt_batch=64),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 5},
    size=lambda c: f"widths {c.widths[0]}..{c.widths[-1]}, depth {c.depth}, GPT {c.gpt_n_layer}x{c.gpt_n_embd}",
))
