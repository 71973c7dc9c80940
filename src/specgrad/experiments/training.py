"""The language-model training loop shared by the experiments, its schedule and its
learning-rate sweep (the optimizers come from :mod:`.methods`)."""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..data import CharCorpus
from ..models import GPT, GPTConfig
from .methods import LM_METHODS, lm_optimizer  # noqa: F401 (importable from here too)


def load_corpus(path: Optional[str]) -> CharCorpus:
    """The text file at ``path``, or the embedded standard-library corpus when ``None``
    (the ``corpus`` setting of every language-model experiment)."""
    return CharCorpus.default() if path is None else CharCorpus.from_path(path)


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine decay to ``floor``
    at ``total`` (nanoGPT's schedule, ``min_lr = lr / 10``)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def final_or_inf(values) -> float:
    """The last value of a series; an empty or diverged one (NaN, or ``null`` once saved)
    counts as ``inf``."""
    last = values[-1] if len(values) else None
    return float(last) if last is not None and math.isfinite(last) else math.inf


def sweep_lowest(grids: dict[str, Sequence[float]], final: Callable[[str, float, dict], float],
                 label: Callable[[float], str] = str) -> tuple[dict, dict]:  # fmt: skip
    """A learning-rate sweep: ``final(key, lr, best)`` for every lr of every key's grid, in
    order. Returns ``(sweep, best)``: ``sweep[key][label(lr)]`` the finals and ``best[key]``
    the lr of the lowest one (the first on ties, as a float of its label). ``best`` fills in
    as the sweep goes, so a key's runs can read the winners of the keys before it (AdamW's
    lr, which drives the AdamW rule of the spectral methods)."""
    sweep, best = {}, {}
    for key, lrs in grids.items():
        sweep[key] = {label(lr): final(key, lr, best) for lr in lrs}
        best[key] = float(min(sweep[key], key=sweep[key].get))
    return sweep, best


def seeded_gpt(seed: int, device="cpu", **config) -> GPT:
    """``GPT(GPTConfig(**config))`` initialized after ``torch.manual_seed(seed)``, on ``device``."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(**config)).to(device)


@torch.no_grad()
def evaluate(model: nn.Module, corpus: CharCorpus, split: str, batches: int, batch_size: int,
             context: int, seed: int = 1234) -> float:  # fmt: skip
    """Mean loss over ``batches`` fixed batches (the same ones at every evaluation)."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = 0.0
    for _ in range(batches):
        x, y = corpus.get_batch(split, batch_size, context, g)
        total += float(model(x.to(device), y.to(device))[1])
    model.train(was)
    return total / batches


def train_lm(
    model: nn.Module,
    corpus: CharCorpus,
    opt: torch.optim.Optimizer,
    *,
    iters: int,
    batch_size: int,
    context: int,
    warmup: int,
    eval_every: int,
    eval_batches: int,
    seed: int,
    advance: Callable[[int], None] = lambda n: None,
    on_step: Optional[Callable[[int], None]] = None,
) -> dict[str, list]:
    """Train for ``iters`` steps with a warmup-cosine schedule on every group's initial lr;
    return per-evaluation ``step, train_loss, val_loss, seconds`` (training time only).

    ``on_step(step)`` runs after each backward, before the optimizer step (a monitor hook).
    A non-finite loss stops training early, before any step on its gradients (which the
    spectral optimizers would refuse); the series then ends with ``nan``.
    """
    device = next(model.parameters()).device
    base = [g["lr"] for g in opt.param_groups]
    g = torch.Generator().manual_seed(seed)
    out = {"step": [], "train_loss": [], "val_loss": [], "seconds": []}
    elapsed, window = 0.0, []
    for step in range(iters + 1):
        if step % eval_every == 0 or step == iters:
            out["step"].append(step)
            out["train_loss"].append(sum(window) / len(window) if window else math.nan)
            out["val_loss"].append(evaluate(model, corpus, "val", eval_batches, batch_size, context))
            out["seconds"].append(elapsed)
            window = []
        if step == iters:
            break
        t0 = time.perf_counter()
        scale = warmup_cosine(step, iters, warmup)
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * scale
        x, y = corpus.get_batch("train", batch_size, context, g)
        _, loss = model(x.to(device), y.to(device))
        value = loss.item()
        if not math.isfinite(value):  # diverged: stop before a step on non-finite gradients
            if out["step"][-1] != step:
                for key in out:
                    out[key].append(step)
            out["train_loss"][-1] = out["val_loss"][-1] = math.nan
            out["seconds"][-1] = elapsed
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if on_step is not None:
            on_step(step)
        opt.step()
        elapsed += time.perf_counter() - t0
        window.append(value)
        advance(1)
    for group, lr in zip(opt.param_groups, base):
        group["lr"] = lr
    return out
