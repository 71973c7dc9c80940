"""``lm-spectra``: activation stable ranks and gradient nuclear ranks of every block of a tiny GPT
trained with Muon, measured along training by :class:`~specgrad.diagnostics.SpectralMonitor`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np

from ...diagnostics import SpectralMonitor
from ...models import GPT
from ..methods import lm_optimizer
from ..plots import save
from ..registry import Claim, Experiment, register
from ..series import curve, key_of, rounded, seed_runs
from ..training import load_corpus, seeded_gpt, train_lm

HIDDEN_KINDS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.in", "mlp.out")


@dataclass
class LMSpectraConfig:
    corpus: Optional[str] = None  # a text file; None: the embedded standard-library corpus
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    context: int = 64
    batch_size: int = 16
    mlp: str = "gelu"
    tied: bool = False  # False (default): wte and lm_head are separate blocks (as in modded-nanogpt)
    optimizer: str = "muon"  # any of training.LM_METHODS
    lr: float = 0.05  # spectral lr (Muon); AdamW on embeddings, head and norms at adamw_lr
    adamw_lr: float = 3e-3
    iters: int = 2000
    warmup: int = 50
    monitor_every: int = 25
    eval_every: int = 250
    eval_batches: int = 10


def _add_blocks(mon: SpectralMonitor, model: GPT, cfg: LMSpectraConfig) -> None:
    for i, block in enumerate(model.transformer.h):
        mon.add_fused(f"h{i}.attn", block.attn.c_attn)
        mon.add_block(f"h{i}.attn.o", block.attn.c_proj)
        if cfg.mlp == "swiglu":
            mon.add_block(f"h{i}.mlp.in", block.mlp.w1)
            mon.add_block(f"h{i}.mlp.in_up", block.mlp.w2)
        else:
            mon.add_block(f"h{i}.mlp.in", block.mlp.c_fc)
        mon.add_block(f"h{i}.mlp.out", block.mlp.c_proj)
    mon.add_block("embedding", model.transformer.wte, kind="embedding")
    mon.add_block("lm_head", model.lm_head)


def run_seed(cfg: LMSpectraConfig, seed: int, ctx) -> dict:
    corpus = load_corpus(cfg.corpus)
    model = seeded_gpt(seed, ctx.device, vocab_size=corpus.vocab_size, context=cfg.context, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_embd=cfg.n_embd, mlp=cfg.mlp, tied=cfg.tied)  # fmt: skip
    opt = lm_optimizer(cfg.optimizer, model, cfg.lr, cfg.adamw_lr)
    mon = SpectralMonitor(model, every=cfg.monitor_every, layers=[])
    _add_blocks(mon, model, cfg)
    ctx.steps(cfg.iters, "training")
    try:
        train = train_lm(model, corpus, opt, iters=cfg.iters, batch_size=cfg.batch_size, context=cfg.context,
                         warmup=min(cfg.warmup, max(1, cfg.iters // 10)), eval_every=cfg.eval_every,
                         eval_batches=cfg.eval_batches, seed=seed, advance=ctx.advance,
                         on_step=lambda step: mon.step())  # fmt: skip
        frame = mon.frame()
    finally:
        mon.close()
    out = {"training": {k: rounded(v) if k != "step" else v for k, v in train.items()}}
    for name, rows in frame.groupby("block", sort=False):
        rows = rows.sort_values("step")
        dim = int(str(rows["shape"].iloc[0]).split("x")[1])
        out[f"block/{name}"] = {"step": [int(s) for s in rows["step"]], "st_A": rounded(rows["st_A"]),
                                "nr_G": rounded(rows["nr_G"]), "in_dim": [dim]}  # fmt: skip
    return out


def _kind(block: str) -> str:
    """``"h0.attn.q"`` -> ``"attn.q"``, ``"h1.mlp.in_up"`` -> ``"mlp.in"``, others unchanged."""
    kind = block.split(".", 1)[1] if block.startswith("h") and "." in block else block
    return "mlp.in" if kind == "mlp.in_up" else kind


def _blocks(series: dict) -> list[str]:
    return sorted({key_of(k)[len("block/"):] for k in series if k.startswith("block/")})


def analyze(cfg: LMSpectraConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {"tied": float(cfg.tied)}
    train = seed_runs(series, "training")
    if train:
        summary["final_val_loss"] = float(np.mean([r["val_loss"][-1] for r in train]))
        summary["initial_val_loss"] = float(np.mean([r["val_loss"][0] for r in train]))
    post, normed, ratios = [], [], []
    for b in _blocks(series):
        runs = seed_runs(series, f"block/{b}")
        kind = _kind(b)
        st = np.concatenate([np.asarray(r["st_A"], dtype=float) for r in runs])
        nr = np.concatenate([np.asarray(r["nr_G"], dtype=float) for r in runs])
        dim = runs[0]["in_dim"][0]
        summary[f"{b}/max_st_A"] = float(st.max())
        summary[f"{b}/median_st_A"] = float(np.median(st))
        summary[f"{b}/median_nr_G"] = float(np.median(nr))
        ok = st > 0
        if ok.any():
            summary[f"{b}/median_nr_over_st"] = float(np.median(nr[ok] / st[ok]))
        if kind == "mlp.out":
            post.append(float(st.max()) / dim)
        if kind in ("attn.q", "mlp.in", "lm_head"):  # LayerNorm outputs: ln_1, ln_2, ln_f
            normed.append(float(st.max()) / dim)
        if kind in HIDDEN_KINDS:
            ratios.extend((nr[ok] / st[ok]).tolist())
    claims = []
    if post:
        summary["max_mlp_post_st_over_dim"] = max(post)
        claims.append(Claim(
            "mlp-post-activation-low-st",
            "MLP post-activations (input of mlp.c_proj) keep a stable rank below 0.25 of their dimension "
            "throughout training (max over blocks, recorded steps and seeds of st/dim)", max(post), 0.25, "max"))  # fmt: skip
    if normed:
        summary["max_normalized_input_st_over_dim"] = max(normed)
        claims.append(Claim(
            "normalized-inputs-low-st",
            "LayerNorm outputs feeding Q/K/V, the MLP and the head keep a stable rank below 0.25 of the width "
            "throughout training (max over blocks, steps and seeds of st/dim)", max(normed), 0.25, "max"))  # fmt: skip
    if ratios:
        arr = np.asarray(ratios)
        summary["hidden_median_nr_over_st"] = float(np.median(arr))
        summary["hidden_frac_nr_above_st"] = float(np.mean(arr >= 1))
        claims.append(Claim(
            "hidden-nr-above-st",
            "hidden-matrix gradients (Q, K, V, O, MLP in/out) have nuclear rank above the stable rank of their "
            "incoming activations: median of nr(G)/st(A) over blocks, recorded steps and seeds > 1",
            summary["hidden_median_nr_over_st"], 1.0))  # fmt: skip
    return summary, claims


def plot(cfg: LMSpectraConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    blocks = _blocks(series)
    styles = {"attn.q": ("C0", "-"), "attn.k": ("C1", "-"), "attn.v": ("C2", "-"), "attn.o": ("C3", "-"),
              "mlp.in": ("C4", "--"), "mlp.out": ("C5", "--"), "embedding": ("k", ":"), "lm_head": ("C7", ":")}  # fmt: skip
    act_label = {"attn.q": "ln_1 output (Q/K/V input)", "attn.o": "attention output (O input)",
                 "mlp.in": "ln_2 output (MLP input)", "mlp.out": "MLP post-activation",
                 "embedding": "token indicator 1/p_max", "lm_head": "ln_f output (head input)"}  # fmt: skip
    seen_a, seen_g = set(), set()
    for b in blocks:
        kind = _kind(b)
        if b.endswith("in_up"):
            continue
        cur = curve(series, f"block/{b}", "st_A")
        nrc = curve(series, f"block/{b}", "nr_G")
        color, ls = styles.get(kind, ("0.5", "-"))
        if kind in act_label:
            axes[0].plot(cur[0], cur[1].mean(0), color=color, ls=ls, lw=1,
                         label=act_label[kind] if kind not in seen_a else None)  # fmt: skip
            seen_a.add(kind)
        axes[1].plot(nrc[0], nrc[1].mean(0), color=color, ls=ls, lw=1, label=kind if kind not in seen_g else None)
        seen_g.add(kind)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("st(A) of the block's input")
    axes[1].set_ylabel("nr(G) of the block's gradient")
    axes[0].set_title(f"activation stable rank (width {cfg.n_embd}, MLP {cfg.mlp})", fontsize=10)
    axes[1].set_yscale("log")
    axes[1].set_title("gradient nuclear rank" + (" (wte = lm_head: tied)" if cfg.tied else ""), fontsize=10)
    for ax in axes[:2]:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    train = curve(series, "training", "val_loss")
    if train is not None:
        axes[2].plot(train[0], train[1].mean(0), color="C0")
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("validation loss")
        axes[2].set_title(f"{cfg.optimizer}, lr {cfg.lr:g} (AdamW {cfg.adamw_lr:g})", fontsize=10)
    fig.suptitle(f"tiny GPT {cfg.n_layer}x{cfg.n_embd} on characters: st(A) and nr(G) along training (mean over seeds)",
                 fontsize=11)  # fmt: skip
    return [save(fig, folder, "lm_spectra.png")]


register(Experiment(
    name="lm-spectra",
    description="Davis-Drusvyatskiy: activation stable ranks and gradient nuclear ranks of a tiny GPT trained with Muon",
    config=LMSpectraConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(n_layer=1, n_head=2, n_embd=32, context=16, batch_size=8, iters=30, warmup=5, monitor_every=10,
                      eval_every=15, eval_batches=2),
        "demo": dict(iters=1000),
        "quick": dict(),
        "paper": dict(n_layer=6, n_head=6, n_embd=384, context=256, batch_size=64, iters=5000, warmup=200, lr=0.02,
                      adamw_lr=1e-3, monitor_every=100, eval_every=250, eval_batches=50),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 2, "paper": 3},
    size=lambda c: f"{c.n_layer}x{c.n_embd}, ctx {c.context}, {c.iters} it, {c.optimizer}",
))
