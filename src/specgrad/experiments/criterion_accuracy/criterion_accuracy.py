"""``criterion-accuracy``: does the layerwise test ``nr(G) >= st(A)`` name the block step that
lowers the loss more?

For every model of :mod:`.models`, trained with AdamW and with Muon from the same init, at
four moments (init, early, middle, late), :func:`~specgrad.diagnostics.diagnose` probes each
block alone in float64: the predicted gain ``nr(G) / st(A)`` against the losses after one
Euclidean step (``1/L_F``) and one spectral step (``||G||_* / L_op`` times the polar factor).
The series keep one row per probed block (``<model>/<optimizer>/seed<k>``: columns of equal
length), so every table and claim can be recomputed from the result file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ...diagnostics import diagnose
from ..devices import cpu_only
from ..methods import lm_adamw_rule, make
from ..plots import save
from ..registry import Claim, Experiment, register
from ..series import key_of
from ..training import load_corpus
from . import analysis
from .models import TASKS, block_type, build

MOMENTS = ("init", "early", "middle", "late")
COLUMNS = ("block", "type", "moment", "step", "st_A", "nr_G", "predicted_gain", "measured", "loss_base",
           "loss_euclidean", "loss_spectral", "curvature", "note")  # fmt: skip


@dataclass
class CriterionAccuracyConfig:
    models: tuple[str, ...] = TASKS
    optimizers: tuple[str, ...] = ("adamw", "muon")
    steps: int = 150  # training steps per run; moments at 0, steps/10, steps/2, steps
    adamw_lr: float = 3e-3  # AdamW runs, and Muon's AdamW rule on non-matrix parameters
    muon_lr: float = 0.02
    corpus: str = ""  # a text file for the language models; "": the embedded standard-library corpus
    samples: int = 1024  # random features and sparse regression
    input_dim: int = 16
    width: int = 64  # feature dim (random features), hidden width (sparse regression)
    channels: int = 8  # conv-digits: channels of the first conv
    n_layer: int = 2  # language models
    n_embd: int = 64
    context: int = 32
    batch_size: int = 16
    probe_rows: int = 256  # rows of the fixed probe batch (regression, digits)
    probe_seqs: int = 4  # sequences of the fixed probe batch (language models)

    def validate(self):
        bad = [m for m in self.models if m not in TASKS]
        if bad or not self.models:
            raise ValueError(f"models must be names of {TASKS}, got {self.models!r}")
        if any(o not in ("adamw", "muon") for o in self.optimizers) or not self.optimizers:
            raise ValueError(f"optimizers must be 'adamw' and/or 'muon', got {self.optimizers!r}")
        if self.steps < 10:
            raise ValueError(f"steps must be at least 10 (four distinct moments), got {self.steps}")


def moments(steps: int) -> dict[int, str]:
    """Step -> moment name: init 0, early ``steps // 10``, middle ``steps // 2``, late ``steps``.

    Example:
        >>> moments(150)
        {0: 'init', 15: 'early', 75: 'middle', 150: 'late'}
    """
    return {0: "init", steps // 10: "early", steps // 2: "middle", steps: "late"}


def _cast64(x):
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    return type(x)(_cast64(v) for v in x) if isinstance(x, (tuple, list)) else x


def probe(task, step: int, moment: str) -> dict[str, list]:
    """One :func:`diagnose` probe of every block of ``task`` on its probe batch, with the
    float64 loss before any step."""
    model = task.model
    frame = diagnose(model, lambda m: task.loss(m, task.probe), probe=True)
    with torch.no_grad():
        base = float(task.loss(copy.deepcopy(model).double(), _cast64(task.probe)))
    out = {c: [] for c in COLUMNS}
    for r in frame.itertuples():
        values = dict(block=r.block, type=block_type(task.name, r.block), moment=moment, step=step, st_A=r.st_A,
                      nr_G=r.nr_G, predicted_gain=r.predicted_gain, measured=r.measured, loss_base=base,
                      loss_euclidean=r.loss_euclidean, loss_spectral=r.loss_spectral, curvature=r.curvature,
                      note=r.probe_note)  # fmt: skip
        for c in COLUMNS:
            v = values[c]
            out[c].append(float(v) if isinstance(v, (float, np.floating, int)) and c != "step" else v)
    return out


def _optimizer(cfg: CriterionAccuracyConfig, task, method: str):
    if method == "adamw":
        return make("adamw", task.model, cfg.adamw_lr)
    target = task.model if task.spectral is None else task.spectral
    return make("muon", target, cfg.muon_lr, adamw=lm_adamw_rule(cfg.adamw_lr))


def run_seed(cfg: CriterionAccuracyConfig, seed: int, ctx) -> dict:
    cpu_only(ctx, "criterion-accuracy", "small models probed in float64")
    corpus = load_corpus(cfg.corpus or None) if any(m.startswith(("gpt-", "hf-")) for m in cfg.models) else None
    at = moments(cfg.steps)
    ctx.steps(len(cfg.models) * len(cfg.optimizers) * cfg.steps, "training and probing")
    out = {}
    for name in cfg.models:
        for method in cfg.optimizers:
            task = build(name, cfg, seed, corpus)
            opt = _optimizer(cfg, task, method)
            rows = {c: [] for c in COLUMNS}
            for step in range(cfg.steps + 1):
                if step in at:
                    for c, v in probe(task, step, at[step]).items():
                        rows[c].extend(v)
                if step == cfg.steps:
                    break
                opt.zero_grad(set_to_none=True)
                task.loss(task.model, task.batches(step)).backward()
                opt.step()
                ctx.advance(1)
            out[f"{name}/{method}"] = rows
    return out


def table(series: dict) -> pd.DataFrame:
    """Every probed row of every run, with ``model``, ``optimizer`` and ``seed`` columns."""
    frames = []
    for key, rows in series.items():
        model, optimizer = key_of(key).split("/")
        f = pd.DataFrame(rows)
        f["model"], f["optimizer"], f["seed"] = model, optimizer, key.rsplit("/seed", 1)[1]
        frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*COLUMNS, "model"])


def analyze(cfg: CriterionAccuracyConfig, series: dict) -> tuple[dict, list[Claim]]:
    t = analysis.scored(table(series))
    summary: dict[str, float] = {"rows": len(t), "accuracy": analysis.accuracy(t), "majority": analysis.majority(t),
                                 "spearman": analysis.rank_correlation(t)}  # fmt: skip
    summary["accuracy_ci_low"], summary["accuracy_ci_high"] = analysis.bootstrap(t, analysis.accuracy)
    summary["spearman_ci_low"], summary["spearman_ci_high"] = analysis.bootstrap(t, analysis.rank_correlation, n=300)
    summary.update({f"confusion/{k}": v for k, v in analysis.confusion(t).items()})
    for m in analysis.margins(t):
        for k in ("rule_accuracy", "decisive_share", "decisive_accuracy"):
            summary[f"margin{m['c']:g}/{k}"] = m[k]
    for column in ("type", "model", "moment", "optimizer"):
        for r in analysis.by_group(t, column).itertuples():
            for k in ("rows", "accuracy", "ci_low", "ci_high", "majority", "spearman", "spectral_share"):
                summary[f"{column}/{r.group}/{k}"] = float(getattr(r, k))
    wrong = t[~t["correct"]]
    for reason, n in wrong.apply(analysis.why, axis=1).value_counts().items() if len(wrong) else ():
        summary[f"failures/{reason}"] = int(n)
    claims = [
        Claim("accuracy-above-majority",
              "the test (spectral iff nr(G) >= st(A)) names the measured one-step winner more often than always "
              "naming the most frequent winner: lower end of the 95% bootstrap interval of its accuracy over every "
              "probed block, model, optimizer and moment >= the majority-class rate of the same rows",
              summary["accuracy_ci_low"], summary["majority"]),
        Claim("gain-rank-correlation",
              "predicted gain nr(G)/st(A) and measured gain (spectral over Euclidean decrease) rise together: lower "
              "end of the 95% bootstrap interval of Spearman's rho over the probed blocks >= 0",
              summary["spearman_ci_low"], 0.0),
    ]  # fmt: skip
    ls = t[t["model"].str.startswith("rf-")]
    decisive = ls[(ls["predicted_gain"] >= 2) | (ls["predicted_gain"] <= 0.5)]
    statement = ("on least squares (random features) a prediction with margin 2 (nr >= 2 st, or nr <= st / 2) "
                 "is always right, as the majorization bounds guarantee: share of such blocks predicted right = 1")
    if len(decisive):
        summary["least_squares_decisive_rows"] = len(decisive)
        claims.append(Claim("least-squares-margin-2", statement, analysis.accuracy(decisive), 1.0,
                            kind="self-consistency"))  # fmt: skip
    else:
        claims.append(Claim.not_assessed("least-squares-margin-2", statement,
                                         "no random-feature block had a gain beyond the factor 2 in this run",
                                         threshold=1.0, kind="self-consistency"))  # fmt: skip
    return summary, claims


TYPE_STYLE = {"attn.q": "C0", "attn.k": "C1", "attn.v": "C2", "attn.qkv": "C9", "attn.o": "C3", "mlp.in": "C4",
              "mlp.out": "C5", "hidden": "C6", "input": "C8", "conv": "olive", "head": "k", "embedding": "0.6"}  # fmt: skip


def plot(cfg: CriterionAccuracyConfig, series: dict, summary: dict, folder) -> list[str]:
    t = analysis.scored(table(series))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ok = t[(t["dec_e"] > 0) & (t["dec_s"] > 0)]
    for kind, g in ok.groupby("type"):
        axes[0].scatter(g["predicted_gain"], g["measured_gain"], s=10, alpha=0.7, color=TYPE_STYLE.get(kind, "0.3"),
                        label=f"{kind} ({len(g)})")  # fmt: skip
    if len(ok):
        lo = float(min(ok["predicted_gain"].min(), ok["measured_gain"].min()))
        hi = float(max(ok["predicted_gain"].max(), ok["measured_gain"].max()))
        axes[0].plot([lo, hi], [lo, hi], "k--", lw=0.8)
    axes[0].axhline(1, color="0.5", lw=0.6)
    axes[0].axvline(1, color="0.5", lw=0.6)
    axes[0].set(xscale="log", yscale="log", xlabel="predicted gain nr(G)/st(A)",
                ylabel="measured gain (spectral / Euclidean decrease)",
                title=f"calibration ({len(ok)} blocks where both steps lowered the loss)")  # fmt: skip
    axes[0].legend(fontsize=7, ncol=2)
    m = analysis.margins(t)
    cs = [r["c"] for r in m]
    axes[1].plot(cs, [r["rule_accuracy"] for r in m], "o-", label="rule: spectral iff nr >= c st")
    axes[1].plot(cs, [r["decisive_accuracy"] for r in m], "s-", label="decisive rows (gain beyond c or 1/c)")
    axes[1].plot(cs, [r["decisive_share"] for r in m], "^:", color="0.5", label="share of decisive rows")
    axes[1].axhline(summary.get("majority", np.nan), color="C3", ls="--", lw=0.8, label="majority baseline")
    axes[1].set(xscale="log", xlabel="margin c", ylabel="accuracy / share", title="accuracy against the margin", ylim=(0, 1.02))
    axes[1].legend(fontsize=7)
    g = analysis.by_group(t, "type")
    x = np.arange(len(g))
    axes[2].bar(x, g["accuracy"], color=[TYPE_STYLE.get(k, "0.3") for k in g["group"]], alpha=0.8)
    axes[2].errorbar(x, g["accuracy"], yerr=[g["accuracy"] - g["ci_low"], g["ci_high"] - g["accuracy"]], fmt="none",
                     color="k", lw=0.8)  # fmt: skip
    axes[2].scatter(x, g["majority"], marker="_", s=200, color="C3", label="majority baseline", zorder=3)
    axes[2].set_xticks(x, [f"{k}\n({n})" for k, n in zip(g["group"], g["rows"])], fontsize=7)
    axes[2].set(ylabel="accuracy", ylim=(0, 1.02), title="accuracy by block type (95% bootstrap)")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"Does nr(G) >= st(A) predict the better one-step update? {len(t)} probed blocks", fontsize=11)
    return [save(fig, folder, "criterion_accuracy.png")]


register(Experiment(
    name="criterion-accuracy",
    description="the layerwise test nr(G) >= st(A) against the measured one-step winner, over models and training moments",
    config=CriterionAccuracyConfig, run_seed=run_seed, analyze=analyze, plot=plot,
    presets={
        "smoke": dict(models=("rf-relu", "sr-relu2", "gpt-relu2"), steps=10, samples=128, width=16, n_layer=1,
                      n_embd=16, context=8, batch_size=8, probe_rows=32, probe_seqs=2),
        "quick": dict(),
        "paper": dict(steps=1000, samples=4096, width=128, n_layer=4, n_embd=128, context=64, probe_rows=1024,
                      probe_seqs=16),
    },  # fmt: skip
    seeds={"smoke": 1, "quick": 1, "paper": 3},
    size=lambda c: f"{len(c.models)} models x {len(c.optimizers)} optimizers, {c.steps} steps",
    minutes={"smoke": 0.5, "quick": 15},
))
