"""``lm-spectra``: activation stable ranks and gradient nuclear ranks of every block of a tiny GPT
trained with Muon (and, in the ``paper`` preset, AdamW), measured along training by
:class:`~specgrad.diagnostics.SpectralMonitor`.

The ``paper`` preset follows the study's NanoGPT shape at a reduced width and depth: RMSNorm
(no gain, as in modded-nanogpt) instead of LayerNorm, a ReLU^2 MLP, an untied head, 6 x 384 at
context 256 on a character corpus. With one optimizer the series keys are ``training`` and
``block/<name>``; with several, each is prefixed by the optimizer (``adamw/block/h0.mlp.out``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np

from torch import nn

from ...diagnostics import SpectralMonitor
from ...models import GPT
from ..methods import LM_METHODS, lm_optimizer
from ..plots import save
from ..registry import Claim, Experiment, register
from ..series import curve, key_of, rounded, seed_runs
from ..training import load_corpus, seeded_gpt, train_lm

# the paper preset: the study's shape, trained briefly (docs/reproductions/criterion-accuracy.md gives its run)
PAPER_ITERS, PAPER_BATCH = 60, 2
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
    norm: str = "layer"  # "layer" (nn.LayerNorm, the GPT's own) or "rms" (RMSNorm without gain)
    optimizers: tuple[str, ...] = ("muon",)  # any of training.LM_METHODS, each trained from the same init
    lr: float = 0.05  # spectral lr (Muon); AdamW on embeddings, head and norms at adamw_lr
    adamw_lr: float = 3e-3  # also the lr of a pure AdamW run
    iters: int = 2000
    warmup: int = 50
    monitor_every: int = 25
    eval_every: int = 250
    eval_batches: int = 10

    def validate(self):
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {self.norm!r}")
        bad = [o for o in self.optimizers if o not in LM_METHODS]
        if bad or not self.optimizers or len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"optimizers must be distinct names of {LM_METHODS}, got {self.optimizers!r}")


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


def rms_normed(model: GPT) -> GPT:
    """``model`` with every LayerNorm (``ln_1``, ``ln_2``, ``ln_f``) replaced by an RMSNorm
    without a learned gain (modded-nanogpt's ``F.rms_norm``), in place.

    Example:
        >>> from specgrad.models import GPTConfig
        >>> m = rms_normed(GPT(GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, n_embd=16)))
        >>> type(m.transformer.ln_f).__name__, sum(1 for n, _ in m.named_parameters() if "ln" in n)
        ('RMSNorm', 0)
    """
    width = model.config.n_embd
    for block in model.transformer.h:
        block.ln_1 = nn.RMSNorm(width, elementwise_affine=False)
        block.ln_2 = nn.RMSNorm(width, elementwise_affine=False)
    model.transformer.ln_f = nn.RMSNorm(width, elementwise_affine=False)
    return model


def _train_one(cfg: LMSpectraConfig, corpus, optimizer: str, seed: int, ctx) -> dict:
    model = seeded_gpt(seed, ctx.device, vocab_size=corpus.vocab_size, context=cfg.context, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_embd=cfg.n_embd, mlp=cfg.mlp, tied=cfg.tied)  # fmt: skip
    if cfg.norm == "rms":
        model = rms_normed(model).to(ctx.device)
    lr = cfg.adamw_lr if optimizer == "adamw" else cfg.lr
    opt = lm_optimizer(optimizer, model, lr, cfg.adamw_lr)
    mon = SpectralMonitor(model, every=cfg.monitor_every, layers=[])
    _add_blocks(mon, model, cfg)
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


def run_seed(cfg: LMSpectraConfig, seed: int, ctx) -> dict:
    corpus = load_corpus(cfg.corpus)
    ctx.steps(cfg.iters * len(cfg.optimizers), "training")
    if len(cfg.optimizers) == 1:
        return _train_one(cfg, corpus, cfg.optimizers[0], seed, ctx)
    return {f"{o}/{k}": v for o in cfg.optimizers for k, v in _train_one(cfg, corpus, o, seed, ctx).items()}


def by_optimizer(cfg: LMSpectraConfig, series: dict) -> dict[str, dict]:
    """``series`` split per optimizer, prefixes dropped: ``{optimizer: {"training/seed0": ...}}``
    (unprefixed keys belong to the single optimizer of the run)."""
    if len(cfg.optimizers) == 1:
        return {cfg.optimizers[0]: series}
    return {o: {k[len(o) + 1:]: v for k, v in series.items() if k.startswith(o + "/")} for o in cfg.optimizers}


def _kind(block: str) -> str:
    """``"h0.attn.q"`` -> ``"attn.q"``, ``"h1.mlp.in_up"`` -> ``"mlp.in"``, others unchanged."""
    kind = block.split(".", 1)[1] if block.startswith("h") and "." in block else block
    return "mlp.in" if kind == "mlp.in_up" else kind


def _blocks(series: dict) -> list[str]:
    return sorted({key_of(k)[len("block/"):] for k in series if k.startswith("block/")})


def _analyze_one(series: dict, summary: dict, prefix: str, acc: dict) -> None:
    """Per-block numbers of one optimizer's series into ``summary`` (keys prefixed by
    ``prefix``); st/dim of post-activations and normalized inputs and the hidden nr/st ratios
    into ``acc``."""
    train = seed_runs(series, "training")
    if train:
        summary[f"{prefix}final_val_loss"] = float(np.mean([r["val_loss"][-1] for r in train]))
        summary[f"{prefix}initial_val_loss"] = float(np.mean([r["val_loss"][0] for r in train]))
    for b in _blocks(series):
        runs = seed_runs(series, f"block/{b}")
        kind = _kind(b)
        st = np.concatenate([np.asarray(r["st_A"], dtype=float) for r in runs])
        nr = np.concatenate([np.asarray(r["nr_G"], dtype=float) for r in runs])
        dim = runs[0]["in_dim"][0]
        summary[f"{prefix}{b}/max_st_A"] = float(st.max())
        summary[f"{prefix}{b}/median_st_A"] = float(np.median(st))
        summary[f"{prefix}{b}/median_nr_G"] = float(np.median(nr))
        summary[f"{prefix}max_st_A/{kind}"] = max(summary.get(f"{prefix}max_st_A/{kind}", 0.0), float(st.max()))
        summary[f"{prefix}max_nr_G/{kind}"] = max(summary.get(f"{prefix}max_nr_G/{kind}", 0.0), float(nr.max()))
        ok = st > 0
        if ok.any():
            summary[f"{prefix}{b}/median_nr_over_st"] = float(np.median(nr[ok] / st[ok]))
        if kind == "mlp.out":
            acc["post"].append(float(st.max()) / dim)
        if kind in ("attn.q", "mlp.in", "lm_head"):  # normalized inputs: ln_1, ln_2, ln_f
            acc["normed"].append(float(st.max()) / dim)
        if kind in HIDDEN_KINDS:
            acc["ratios"].extend((nr[ok] / st[ok]).tolist())


def analyze(cfg: LMSpectraConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {"tied": float(cfg.tied)}
    acc: dict[str, list] = {"post": [], "normed": [], "ratios": []}
    groups = by_optimizer(cfg, series)
    for opt, sub in groups.items():
        _analyze_one(sub, summary, "" if len(groups) == 1 else f"{opt}/", acc)
    post, normed, ratios = acc["post"], acc["normed"], acc["ratios"]
    claims = []
    over = "optimizers, " if len(groups) > 1 else ""
    if post:
        summary["max_mlp_post_st_over_dim"] = max(post)
        claims.append(Claim(
            "mlp-post-activation-low-st",
            "MLP post-activations (input of mlp.c_proj) keep a stable rank below 0.25 of their dimension "
            f"throughout training (max over {over}blocks, recorded steps and seeds of st/dim)", max(post), 0.25, "max"))  # fmt: skip
    if normed:
        summary["max_normalized_input_st_over_dim"] = max(normed)
        claims.append(Claim(
            "normalized-inputs-low-st",
            "Normalized inputs (ln_1, ln_2, ln_f outputs) feeding Q/K/V, the MLP and the head keep a stable rank "
            f"below 0.25 of the width throughout training (max over {over}blocks, steps and seeds of st/dim)",
            max(normed), 0.25, "max"))  # fmt: skip
    if ratios:
        arr = np.asarray(ratios)
        summary["hidden_median_nr_over_st"] = float(np.median(arr))
        summary["hidden_frac_nr_above_st"] = float(np.mean(arr >= 1))
        claims.append(Claim(
            "hidden-nr-above-st",
            "hidden-matrix gradients (Q, K, V, O, MLP in/out) have nuclear rank above the stable rank of their "
            f"incoming activations: median of nr(G)/st(A) over {over}blocks, recorded steps and seeds > 1",
            summary["hidden_median_nr_over_st"], 1.0))  # fmt: skip
    return summary, claims


_STYLES = {"attn.q": ("C0", "-"), "attn.k": ("C1", "-"), "attn.v": ("C2", "-"), "attn.o": ("C3", "-"),
           "mlp.in": ("C4", "--"), "mlp.out": ("C5", "--"), "embedding": ("k", ":"), "lm_head": ("C7", ":")}  # fmt: skip


def _plot_one(cfg: LMSpectraConfig, series: dict, optimizer: str, axes) -> None:
    norm = "RMSNorm" if cfg.norm == "rms" else "ln"
    act_label = {"attn.q": f"{norm} 1 output (Q/K/V input)", "attn.o": "attention output (O input)",
                 "mlp.in": f"{norm} 2 output (MLP input)", "mlp.out": "MLP post-activation",
                 "embedding": "token indicator 1/p_max", "lm_head": f"{norm} f output (head input)"}  # fmt: skip
    seen_a, seen_g = set(), set()
    for b in _blocks(series):
        kind = _kind(b)
        if b.endswith("in_up"):
            continue
        cur = curve(series, f"block/{b}", "st_A")
        nrc = curve(series, f"block/{b}", "nr_G")
        color, ls = _STYLES.get(kind, ("0.5", "-"))
        if kind in act_label:
            axes[0].plot(cur[0], cur[1].mean(0), color=color, ls=ls, lw=1,
                         label=act_label[kind] if kind not in seen_a else None)  # fmt: skip
            seen_a.add(kind)
        axes[1].plot(nrc[0], nrc[1].mean(0), color=color, ls=ls, lw=1, label=kind if kind not in seen_g else None)
        seen_g.add(kind)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("st(A) of the block's input")
    axes[1].set_ylabel("nr(G) of the block's gradient")
    axes[0].set_title(f"{optimizer}: activation stable rank (width {cfg.n_embd}, MLP {cfg.mlp})", fontsize=10)
    axes[1].set_yscale("log")
    axes[1].set_title(f"{optimizer}: gradient nuclear rank" + (" (wte = lm_head: tied)" if cfg.tied else ""),
                      fontsize=10)  # fmt: skip
    for ax in axes[:2]:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    train = curve(series, "training", "val_loss")
    if train is not None:
        axes[2].plot(train[0], train[1].mean(0), color="C0")
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("validation loss")
        lr = cfg.adamw_lr if optimizer == "adamw" else cfg.lr
        rest = "" if optimizer == "adamw" else f" (AdamW {cfg.adamw_lr:g})"
        axes[2].set_title(f"{optimizer}, lr {lr:g}{rest}", fontsize=10)


def plot(cfg: LMSpectraConfig, series: dict, summary: dict, folder) -> list[str]:
    groups = by_optimizer(cfg, series)
    fig, axes = plt.subplots(len(groups), 3, figsize=(15, 4.2 * len(groups)), squeeze=False)
    for row, (opt, sub) in zip(axes, groups.items()):
        _plot_one(cfg, sub, opt, row)
    norm = "RMSNorm, " if cfg.norm == "rms" else ""
    fig.suptitle(f"GPT {cfg.n_layer}x{cfg.n_embd} ({norm}MLP {cfg.mlp}) on characters: st(A) and nr(G) along "
                 "training (mean over seeds)", fontsize=11)  # fmt: skip
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
        "paper": dict(corpus="../shared/data/tinyshakespeare.txt", n_layer=6, n_head=6, n_embd=384, context=256,
                      batch_size=PAPER_BATCH, mlp="relu2", norm="rms", optimizers=("muon", "adamw"), iters=PAPER_ITERS,
                      warmup=PAPER_ITERS // 10, lr=0.02, adamw_lr=1e-3, monitor_every=PAPER_ITERS // 12,
                      eval_every=PAPER_ITERS // 6, eval_batches=2),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 2, "paper": 1},
    size=lambda c: f"{c.n_layer}x{c.n_embd}, ctx {c.context}, {c.iters} it, {'+'.join(c.optimizers)}",
))
