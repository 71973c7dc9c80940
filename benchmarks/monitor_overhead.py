"""Training-step time of the char-LM experiment's GPT with ``SpectralMonitor(model, every=10)``
against none.

The model is ``specgrad.models.GPT`` at a preset of the ``char-lm`` experiment (``quick``,
its default: 4 layers of width 128, context 64, batch 12; ``paper``: 6 x 384, context 256,
batch 64), vocabulary 65. Two copies with the same weights train on the same batches with
AdamW; one carries the monitor (every Linear and Embedding: fused QKV, attention and MLP
projections, both embeddings, the tied head). Steps are interleaved one by one (plain,
monitored, plain, ...) so that drift and other jobs on the machine hit both alike.
Reported, as medians over rounds of ``every`` steps each:

* the step time of each model and the overhead averaged over steps (goal < 5%), from
  medians: ``(sampled + (every - 1) * unsampled) / every`` against the plain step, and the
  median over rounds of the raw ratio of summed times (noisier);
* the time of a sampled step (activation Grams in the hooks plus the records in
  ``step()``) against an unsampled one of the monitored model (goal < 2x);
* for both goals, a 90% bootstrap interval over rounds and whether it lies below the goal
  ("unclear" when it straddles it: more rounds, or a quieter machine, decide);
* where a sampled step's extra time goes: the hooks, ``frobenius_nuclear_norms`` and the
  rest of ``SpectralMonitor.step``, each with the tensor ops it dispatches (views not
  counted): on a GPU each is at least one kernel launch, and what small models' sampled
  steps spend their time on; unlike times, these counts do not depend on the machine.

    python benchmarks/monitor_overhead.py                  # ~1 minute on 2 CPU cores
    python benchmarks/monitor_overhead.py --preset paper --rounds 1   # ~9 minutes on 2 CPU cores
    python benchmarks/monitor_overhead.py --quick          # fewer rounds
    python benchmarks/monitor_overhead.py --device cuda --preset paper --rounds 6 [--tf32]
    python benchmarks/monitor_overhead.py --threads 1 --clock cpu   # on a busy machine
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import bootstrap
from torch.utils._python_dispatch import TorchDispatchMode

from specgrad.diagnostics import SpectralMonitor
from specgrad.diagnostics import monitor as monitor_module
from specgrad.experiments import char_lm  # noqa: F401  (registers "char-lm")
from specgrad.experiments.registry import get
from specgrad.models import GPT, GPTConfig

VOCAB = 65
clock = time.perf_counter  # --clock cpu: time.process_time, the CPU time of this process


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def around_calls(obj, attr: str, around):
    """Run each call of ``obj.attr`` inside the context manager ``around()`` while the
    ``with`` block runs."""
    original = getattr(obj, attr)

    def call(*args, **kwargs):
        with around():
            return original(*args, **kwargs)

    setattr(obj, attr, call)
    try:
        yield
    finally:
        setattr(obj, attr, original)


class Timers:
    """Time (by `clock`) spent inside wrapped functions, summed per name."""

    def __init__(self, device):
        self.device = device
        self.total: dict[str, float] = {}

    def wrap(self, obj, attr: str, name: str):
        @contextmanager
        def timed():
            sync(self.device)
            t = clock()
            try:
                yield
            finally:
                sync(self.device)
                self.total[name] = self.total.get(name, 0.0) + clock() - t

        return around_calls(obj, attr, timed)


class OpCount(TorchDispatchMode):
    """Tensor ops dispatched inside the ``with`` block, views (free) not counted, in total
    and within wrapped functions, per name."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.within: dict[str, int] = {}
        self._inside: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.total += 1
            for name in self._inside:
                self.within[name] = self.within.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def wrap(self, obj, attr: str, name: str):
        @contextmanager
        def inside():
            self._inside.append(name)
            try:
                yield
            finally:
                self._inside.pop()

        return around_calls(obj, attr, inside)


LEVEL = 0.9  # of the bootstrap intervals


def step_medians(rounds) -> tuple[float, float, float]:
    """Median plain, sampled and unsampled monitored step times of ``rounds``, each
    ``(plain step times, sampled step time, unsampled step times)``."""
    return (statistics.median(t for p, _, _ in rounds for t in p), statistics.median(s for _, s, _ in rounds),
            statistics.median(t for _, _, u in rounds for t in u))  # fmt: skip


def overhead_and_ratio(rounds, every: int) -> tuple[float, float]:
    """The overhead averaged over steps, ``(sampled + (every - 1) unsampled) / every`` over
    the plain step, and sampled / unsampled, from the medians (robust to the other jobs on
    the machine)."""
    plain, sampled, unsampled = step_medians(rounds)
    return (sampled + (every - 1) * unsampled) / every / plain - 1, sampled / unsampled


def bootstrap_interval(rounds, every: int, resamples: int = 2000):
    """Percentile bootstrap intervals (level ``LEVEL``) of :func:`overhead_and_ratio`,
    resampling whole rounds: ``((overhead_lo, ratio_lo), (overhead_hi, ratio_hi))``, NaN
    from fewer than 2 rounds."""
    if len(rounds) < 2:
        return (math.nan, math.nan), (math.nan, math.nan)
    res = bootstrap((np.arange(len(rounds)),), lambda idx: overhead_and_ratio([rounds[i] for i in idx], every),
                    vectorized=False, paired=False, n_resamples=resamples, confidence_level=LEVEL,
                    method="percentile", random_state=0)  # fmt: skip
    return tuple(res.confidence_interval.low), tuple(res.confidence_interval.high)


def against_goal(lo: float, hi: float, goal: float, fmt: str) -> tuple[str, str]:
    """The interval ``[lo, hi]`` of a quantity, as text by ``fmt``, and whether it lies below
    ``goal`` ("yes", "no", or "unclear" when it straddles it or is unknown)."""
    if math.isnan(lo):
        return "", "unclear"
    return f"{fmt.format(lo)} to {fmt.format(hi)}", "yes" if hi < goal else "no" if lo >= goal else "unclear"


def run(args, console: Console) -> None:
    device = torch.device(args.device)
    cfg = get("char-lm").make_config(args.preset, args.set)
    torch.manual_seed(0)
    conf = GPTConfig(vocab_size=VOCAB, context=cfg.context, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, mlp=cfg.mlp)  # fmt: skip
    plain = GPT(conf).to(device)
    watched = copy.deepcopy(plain)
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-4) for m in (plain, watched)]
    g = torch.Generator().manual_seed(0)
    # a fixed stream of random "character" batches (the data do not matter for timing)
    data = torch.randint(0, VOCAB, (64, cfg.batch_size, cfg.context + 1), generator=g).to(device)

    def train_step(model, opt, i, mon=None):
        sync(device)
        t = clock()
        opt.zero_grad(set_to_none=True)
        forward_backward(model, data, i)
        if mon is not None:
            mon.step()
        opt.step()
        sync(device)
        return clock() - t

    options = {} if args.max_dim is None else {"max_dim": args.max_dim}
    mon = SpectralMonitor(watched, every=args.every, **options)
    for i in range(args.warmup * args.every):  # warm-up: allocator, threads, AdamW state
        train_step(plain, opts[0], i)
        train_step(watched, opts[1], i, mon)

    timers = Timers(device)
    rounds: list[tuple[list[float], float, list[float]]] = []  # (plain, sampled, unsampled) step times
    parts: dict[str, list[float]] = {}  # per sampled step: seconds in each wrapped function
    seen: dict[str, float] = {}
    with timers.wrap(mon, "step", "step"), \
            timers.wrap(monitor_module, "frobenius_nuclear_norms", "norms"):  # fmt: skip
        for r in range(args.rounds):
            plain_round, unsampled_round, sampled_step = [], [], math.nan
            for j in range(args.every):
                i = (r + args.warmup) * args.every + j
                sampled = mon.sampling
                seen = dict(timers.total)
                # alternate which model goes first so neither always runs on a warm cache
                if (r + j) % 2:
                    tp = train_step(plain, opts[0], i)
                    tw = train_step(watched, opts[1], i, mon)
                else:
                    tw = train_step(watched, opts[1], i, mon)
                    tp = train_step(plain, opts[0], i)
                plain_round.append(tp)
                if sampled:  # one step a round; the wrapped parts' time within it
                    sampled_step = tw
                    for name, total in timers.total.items():
                        parts.setdefault(name, []).append(total - seen.get(name, 0.0))
                else:
                    unsampled_round.append(tw)
            rounds.append((plain_round, sampled_step, unsampled_round))
    mon.close()
    # the hooks' work is spread over forward and backward: time it apart, below
    hook_time = hook_cost(watched, data, device, options, repeats=max(3, args.rounds // 2))
    ops = op_counts(watched, data, options)

    n_blocks = len(mon.records) // max(1, len({r["step"] for r in mon.records}))
    med_plain, med_sampled, med_unsampled = step_medians(rounds)
    overhead, ratio = overhead_and_ratio(rounds, args.every)
    (overhead_lo, ratio_lo), (overhead_hi, ratio_hi) = bootstrap_interval(rounds, args.every)
    raw = statistics.median((s + sum(u)) / sum(p) - 1 for p, s, u in rounds)
    params = sum(p.numel() for p in plain.parameters())
    title = (f"char-lm GPT ({args.preset}) {cfg.n_layer}x{cfg.n_embd} {cfg.mlp} ({params / 1e6:.2f}M params), "
             f"batch {cfg.batch_size}x{cfg.context}, "
             f"{n_blocks} monitored blocks, every={args.every}, {args.rounds} rounds, "
             f"{device.type}{' (TF32)' if args.tf32 else ''}, {torch.get_num_threads()} threads, "
             f"{args.clock} clock")  # fmt: skip
    table = Table(title=title)
    for col in ("measure", "value", f"{100 * LEVEL:.0f}% interval", "goal", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    table.add_row("plain step, median (ms)", f"{1e3 * med_plain:.1f}", "", "", "")
    table.add_row("monitored step, averaged over steps (ms)", f"{1e3 * med_plain * (1 + overhead):.1f}", "", "", "")
    interval, met = against_goal(100 * overhead_lo, 100 * overhead_hi, 5.0, "{:+.1f}%")
    table.add_row("overhead averaged over steps", f"{100 * overhead:+.1f}%", interval, "< 5%", met)
    table.add_row("  same, median over rounds of raw sums", f"{100 * raw:+.1f}%", "", "", "")
    table.add_row("unsampled monitored step, median (ms)", f"{1e3 * med_unsampled:.1f}", "", "", "")
    table.add_row("sampled step, median (ms)", f"{1e3 * med_sampled:.1f}", "", "", "")
    interval, met = against_goal(ratio_lo, ratio_hi, 2.0, "{:.2f}x")
    table.add_row("sampled / unsampled step", f"{ratio:.2f}x", interval, "< 2x", met)
    # (extra / every + per-step cost) / plain < 5%  <=>  every > extra / (5% plain - per-step cost)
    room = 0.05 * med_plain - (med_unsampled - med_plain)
    least = math.floor((med_sampled - med_unsampled) / room) + 1 if room > 0 else math.inf
    table.add_row("least `every` for < 5% averaged over steps", f"{least}", "", "", "")
    console.print(table)

    where = Table(title="where a sampled step's extra time goes (medians, ms per sampled step; "
                        "tensor ops dispatched, views not counted)")  # fmt: skip
    for col in ("part", "ms", "ops"):
        where.add_column(col, justify="left" if col == "part" else "right")
    step = statistics.median(parts["step"])
    norms = statistics.median(parts["norms"])
    rest = statistics.median(c - g for c, g in zip(parts["step"], parts["norms"]))
    where.add_row("hooks: activation Grams (measured apart)", f"{1e3 * hook_time:.1f}", f"{ops['hooks']}")
    where.add_row("monitor.step()", f"{1e3 * step:.1f}", f"{ops['step']}")
    where.add_row("  of which frobenius_nuclear_norms (nr(G))", f"{1e3 * norms:.1f}", f"{ops['norms']}")
    where.add_row("  of which the rest (st(A): top eigenvalues, records)", f"{1e3 * rest:.1f}",
                  f"{ops['step'] - ops['norms']}")  # fmt: skip
    where.add_row("sampled - unsampled step (medians)", f"{1e3 * (med_sampled - med_unsampled):.1f}",
                  f"{ops['hooks'] + ops['step']}")  # fmt: skip
    console.print(where)


def forward_backward(model, data, i: int) -> None:
    batch = data[i % len(data)]
    model(batch[:, :-1], targets=batch[:, 1:])[1].backward()


def op_counts(model, data, options: dict) -> dict[str, int]:
    """Tensor ops (views not counted) that the monitor adds to a sampled step: in the hooks
    (a sampled forward/backward against an unsampled one), in ``step()`` and, of those, in
    ``frobenius_nuclear_norms``. Counted on the third sampled step, when Lanczos starts
    from the top vectors of the one before, as in training."""
    mon = SpectralMonitor(model, every=2, **options)
    sampled, unsampled = OpCount(), OpCount()
    try:
        for i in range(4):
            forward_backward(model, data, i)
            mon.step()
            model.zero_grad(set_to_none=True)
        with sampled.wrap(mon, "step", "step"), \
                sampled.wrap(monitor_module, "frobenius_nuclear_norms", "norms"), sampled:  # fmt: skip
            forward_backward(model, data, 4)
            hooked = sampled.total
            mon.step()
        model.zero_grad(set_to_none=True)
        with unsampled:
            forward_backward(model, data, 5)
        model.zero_grad(set_to_none=True)
    finally:
        mon.close()
    return {"hooks": hooked - unsampled.total, **sampled.within}


def hook_cost(model, data, device, options: dict, repeats: int) -> float:
    """Median extra time of a forward/backward when the hooks accumulate (a sampled step)
    over an unsampled (unhooked) one, measured alternately (``every=2``)."""
    mon = SpectralMonitor(model, every=2, **options)
    on, off = [], []

    def fwd_bwd(i):
        sync(device)
        t = clock()
        forward_backward(model, data, i)
        sync(device)
        model.zero_grad(set_to_none=True)
        return clock() - t

    try:
        for i in range(2 * repeats):  # sampled, then not: hooked, then unhooked
            (on if mon.sampling else off).append(fwd_bwd(i))
            mon.step()  # the gradients are gone: it resets the statistics and computes nothing
    finally:
        mon.close()
    return max(0.0, statistics.median(on) - statistics.median(off))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="preset of the char-lm experiment (quick: its default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a char-lm setting, e.g. --set batch_size=32 (repeatable)")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--max-dim", type=int, default=None, help="the monitor's max_dim (default: its own)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds of `every` steps")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tf32", action="store_true",
                        help="float32 matmuls in TF32 on CUDA (both models), as many training scripts set")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time, which other jobs on a busy machine do not inflate "
                             "(use with --threads 1; more threads add their spin-waiting)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 5
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.clock == "cpu":
        global clock
        clock = time.process_time
    try:
        args.set = dict(item.split("=", 1) for item in args.set)
    except ValueError:
        raise SystemExit(f"--set takes KEY=VALUE, got {args.set}") from None
    run(args, Console(width=max(110, Console().width)))


if __name__ == "__main__":
    main()
