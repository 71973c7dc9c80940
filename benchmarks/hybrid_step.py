"""Training-step time of ``Hybrid`` against ``Muon`` (and AdamW) on the char-LM's GPT.

Three copies of one GPT (the repository's ``specgrad.models.GPT``) train on the same batches,
one with each optimizer; steps are interleaved (Muon, Hybrid, AdamW, Muon, ...) so drift and
other jobs on the machine hit all alike. Hybrid measures ``nr`` and ``st`` every ``every``
steps (its default, 10): activation Grams in forward hooks, and on those steps ``||M||_*``
of every block (Euclidean ones included) from its singular values; its Adam moments
follow every block all the time so a switch starts warm. Reported, as medians
over rounds of ``every`` steps:

* the whole step (forward, backward, ``step()``) of each, and Hybrid over Muon (goal <= 1.15x);
* ``step()`` alone, Hybrid over Muon;
* how many blocks Hybrid ran spectral at the end.

    python benchmarks/hybrid_step.py              # 4 layers x 128, ~1 minute on 2 CPU cores
    python benchmarks/hybrid_step.py --quick
    python benchmarks/hybrid_step.py --device cuda --layers 6 --width 384
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from specgrad.data import CharCorpus
from specgrad.experiments.training import lm_optimizer
from specgrad.models import GPT, GPTConfig
from specgrad.optim import Hybrid


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    device = torch.device(args.device)
    corpus = CharCorpus.default()
    torch.manual_seed(0)
    conf = GPTConfig(vocab_size=corpus.vocab_size, context=args.context, n_layer=args.layers,
                     n_head=4, n_embd=args.width)  # fmt: skip
    base = GPT(conf).to(device)
    models = {name: copy.deepcopy(base) for name in ("muon", "hybrid", "adamw")}
    adamw = {"lr": 3e-3, "betas": (0.9, 0.99), "weight_decay": 0.0}
    opts = {
        "muon": lm_optimizer("muon", models["muon"], 0.02, 3e-3),
        "hybrid": Hybrid(models["hybrid"], lr=0.02, every=args.every, shape_scaling="original",
                         euclidean_scale=3e-3 / 0.02, betas=(0.9, 0.99), adamw=adamw),
        "adamw": lm_optimizer("adamw", models["adamw"], 3e-3, 3e-3),
    }
    g = torch.Generator().manual_seed(0)
    whole = {k: [] for k in opts}
    step_only = {k: [] for k in opts}
    for r in range(rounds + 1):  # round 0 warms up (state allocation, first decisions)
        acc = {k: [0.0, 0.0] for k in opts}
        for _ in range(args.every):
            x, y = (t.to(device) for t in corpus.get_batch("train", args.batch, args.context, g))
            for name, opt in opts.items():
                sync(device)
                t0 = time.perf_counter()
                loss = models[name](x, y)[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                sync(device)
                t1 = time.perf_counter()
                opt.step()
                sync(device)
                t2 = time.perf_counter()
                acc[name][0] += t2 - t0
                acc[name][1] += t2 - t1
        if r > 0:
            for name in opts:
                whole[name].append(acc[name][0] / args.every)
                step_only[name].append(acc[name][1] / args.every)
    med = {k: statistics.median(v) for k, v in whole.items()}
    med_step = {k: statistics.median(v) for k, v in step_only.items()}
    log = opts["hybrid"].decisions()
    last = log[log["step"] == log["step"].max()]
    table = Table(title=f"GPT {args.layers}x{args.width}, batch {args.batch}x{args.context}, "
                        f"every={args.every}, {rounds} rounds, {torch.get_num_threads()} threads, {device}")  # fmt: skip
    for col in ("optimizer", "ms / step (whole)", "x Muon", "ms step()", "x Muon step()"):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for name in opts:
        table.add_row(name, f"{1e3 * med[name]:.1f}", f"{med[name] / med['muon']:.3f}",
                      f"{1e3 * med_step[name]:.2f}", f"{med_step[name] / med_step['muon']:.3f}")  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"Hybrid's blocks at the last decision: {int((last['choice'] == 'spectral').sum())} spectral, "
                  f"{int((last['choice'] == 'euclidean').sum())} euclidean (goal: whole step <= 1.15x Muon; "
                  f"measured {med['hybrid'] / med['muon']:.3f}x)")  # fmt: skip
    opts["hybrid"].close()


if __name__ == "__main__":
    main()
