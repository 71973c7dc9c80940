"""Orthogonalizer speed against the machine's own matmul rate, measured in the same run.

For each shape it times, on one fixed Gaussian matrix (seeded):

* ``plain loop``: the five-line Newton-Schulz loop of Keller Jordan's ``muon.py``
  (``A = X @ X.T; B = b*A + c*A@A; X = a*X + B@X``, Jordan coefficients, 5 steps), a fresh
  tensor for every product and sum; the baseline the fused path is compared with;
* ``newton_schulz``: ``quintic_iteration(G, as_schedule(JORDAN), 5)``, the fast path the
  optimizers run (:mod:`specgrad.linalg.fast_polar`: the same Jordan coefficients, three
  products per step, two of them fused multiply-adds into preallocated buffers);
* ``polar_express``: ``quintic_iteration(G, polar_express_schedule(5), 5)`` (same kernels,
  other coefficients);
* ``svd``: ``orthogonalize(G, "svd")``, the exact polar factor from ``torch.linalg.svd``.

The plain loop is what the reference page :func:`specgrad.linalg.newton_schulz` computes
(which normalizes in float64 and iterates half precisions in float32).

What the columns mean:

* ``median ms``: median wall time of one call over the timed repeats (after one untimed
  warm-up call), ``spread`` the interquartile range of those repeats relative to the median.
  The SVD gets fewer repeats on the big shapes (a time cap per cell), never fewer than one.
* ``GFLOP/s``: the nominal flop count of 5 quintic steps, ``5 (4 m^2 n + 2 m^3)`` per
  ``m x n`` matrix with ``m <= n`` (``X X^T``: ``2 m^2 n``; ``A A``: ``2 m^3``; ``P X``:
  ``2 m^2 n``), times the batch, divided by the median time. It ignores the normalization and
  the elementwise work, so it is what a method would score if it were pure matrix products.
  Not defined for the SVD, whose time is the thing to compare.
* ``matmul GFLOP/s``: the rate of the machine's own matrix product at exactly the sizes the
  iteration uses, measured in the same run, in the same dtype, interleaved round by round
  with the methods: 5 x the three products ``(m x n)(n x m)``, ``(m x m)(m x m)``,
  ``(m x m)(m x n)`` (``mm``/``bmm`` into preallocated outputs). This is the ceiling of any
  implementation that does these products with these kernels.
* ``of matmul``: ``GFLOP/s / matmul GFLOP/s``. 100% means the iteration costs nothing beyond
  its matrix products; the project's target for the fused paths is >= 70% in float32 on CPU.
  A little above 100% is measurement noise (both are medians of separate timings).
* ``orth err``: ``orthogonality_error`` of the output, ``max_i |sigma_i - 1|`` over all
  singular values. Gaussian square matrices have a smallest singular value near 0
  (``~ 1/sqrt(n)`` of the typical one), which no 5-step polynomial lifts to 1, so the
  iterative methods show an error near 1 there; on the wide shapes the error is the width of
  the band the coefficients promise (Jordan's ~0.3 by design, Polar Express less). The SVD
  error is the output's rounding (``~1e-6`` float32, ``~1e-2`` bfloat16) -- or 1 where
  ``polar_svd`` dropped a singular value below its ``rtol`` (a nearly singular square matrix
  in the batch).

The machine may be shared: other processes steal cores and, with OpenMP threads waiting at
barriers for a descheduled sibling, can slow a 2-thread product 10-100x for a while. Timing
methods and their matmul reference in interleaved rounds keeps the ratio meaningful when
absolute times drift; a large ``spread`` flags a noisy cell, and shapes whose matmul
reference itself varied by more than 20% are named under the table, with the load average.
Thread count is torch's default (printed in the title); set ``OMP_NUM_THREADS`` to change
it. ``torch.utils.benchmark.Timer`` is not used because it runs with one thread unless told
otherwise.

    python benchmarks/orthogonalize.py                          # float32, ~1-3 min on 2 cores
    python benchmarks/orthogonalize.py --dtype float32 bfloat16 # one table, both dtypes
    python benchmarks/orthogonalize.py --quick                  # small shapes, seconds
    python benchmarks/orthogonalize.py --device cuda --dtype bfloat16

``make bench`` runs the first line (after installing the ``bench`` extras), then
``benchmarks/optimizer_step.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from specgrad.linalg import (
    JORDAN,
    as_schedule,
    orthogonality_error,
    orthogonalize,
    polar_express_schedule,
    quintic_iteration,
)

SHAPES = [(256, 256), (768, 768), (768, 3072), (1024, 4096), (16, 512, 512)]
QUICK_SHAPES = [(256, 256), (768, 768), (4, 256, 512)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STEPS = 5
NOISY_SPREAD = 0.2  # matmul reference spread above which a row is flagged


def plain_newton_schulz(G: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """Keller Jordan's loop, as written in ``muon.py`` (in the input's dtype)."""
    a, b, c = JORDAN
    X = G
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X


def nominal_flops(shape: tuple[int, ...], steps: int = STEPS) -> float:
    m, n = sorted(shape[-2:])
    batch = 1
    for d in shape[:-2]:
        batch *= d
    return float(steps * (4 * m * m * n + 2 * m**3) * batch)


def matmul_reference(shape: tuple[int, ...], dtype, device, gen) -> Callable[[], None]:
    """The iteration's products, at its sizes, without anything else: ``steps`` x
    ``(m x n)(n x m)``, ``(m x m)(m x m)``, ``(m x m)(m x n)``."""
    m, n = sorted(shape[-2:])
    batch = shape[:-2]
    if len(batch) > 1:
        raise ValueError(f"one batch dim at most, got shape {shape}")
    X = torch.randn(*batch, m, n, generator=gen, dtype=torch.float32).to(device, dtype)
    X /= X.norm(dim=(-2, -1), keepdim=True)
    A = torch.empty(*batch, m, m, dtype=dtype, device=device)
    P = torch.empty_like(A)
    Y = torch.empty_like(X)
    mm = torch.mm if not batch else torch.bmm

    def run() -> None:
        for _ in range(STEPS):
            mm(X, X.mT, out=A)
            mm(A, A, out=P)
            mm(P, X, out=Y)

    return run


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[], None],
    cap_s: float,
) -> dict[str, list[float]]:
    """Seconds per call of each function over ``repeats`` rounds; in each round every
    function runs once, in turn. A function whose timed calls already add up to ``cap_s``
    sits out the remaining rounds (after at least one timed call)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if times[name] and sum(times[name]) >= cap_s:
                continue
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # not on every platform
        return "?"


def spread(ts: list[float]) -> float:
    if len(ts) < 3:
        return float("nan")
    q = statistics.quantiles(ts, n=4, method="inclusive")
    return (q[2] - q[0]) / statistics.median(ts)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def bench_shape(shape, dtype, device, repeats, cap_s, min_time_s, seed):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(*shape, generator=gen, dtype=torch.float32).to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    methods: dict[str, Callable[[], torch.Tensor]] = {
        "plain loop": lambda: plain_newton_schulz(G),
        "newton_schulz": lambda: quintic_iteration(G, as_schedule(JORDAN), STEPS),
        "polar_express": lambda: quintic_iteration(G, polar_express_schedule(STEPS), STEPS),
        "svd": lambda: orthogonalize(G, "svd"),
    }
    reference = matmul_reference(shape, dtype, device, gen)
    errors, warm = {}, {}
    for name, fn in {"matmul": reference, **methods}.items():  # warm-up; its output gives the error
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        warm[name] = time.perf_counter() - t
        if out is not None:
            errors[name] = orthogonality_error(out)
        del out
    # Cheap shapes get more rounds (up to min_time_s of rounds, SVD aside): medians of a
    # few milliseconds-long calls need many samples on a shared machine.
    per_round = sum(t for name, t in warm.items() if name != "svd")
    rounds = max(repeats, min(100, int(min_time_s / max(per_round, 1e-6))))
    times = time_interleaved({"matmul": reference, **methods}, rounds, sync, cap_s)
    flops = nominal_flops(shape)
    mm_times = times.pop("matmul")
    mm_rate = flops / statistics.median(mm_times)
    rows = []
    for name, ts in times.items():
        t = statistics.median(ts)
        rate = None if name == "svd" else flops / t
        rows.append((name, t, spread(ts), len(ts), rate, mm_rate, errors[name]))
    return rows, spread(mm_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:k]")
    parser.add_argument(
        "--dtype", nargs="+", default=["float32"], choices=sorted(DTYPES),
        help="one or more working dtypes (default float32)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None,
        help="least timed rounds per shape (default 5, quick 3); cheap shapes get more",
    )
    parser.add_argument(
        "--min-time", type=float, default=None,
        help="seconds of timed rounds per shape, SVD aside, that set how many rounds a cheap "
        "shape gets (default 2, quick 0.5)",
    )
    parser.add_argument(
        "--cap", type=float, default=None,
        help="seconds of timed calls after which a method stops repeating (default 8, quick 2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (3 if args.quick else 5)
    cap_s = args.cap if args.cap is not None else (2.0 if args.quick else 8.0)
    min_time_s = args.min_time if args.min_time is not None else (0.5 if args.quick else 2.0)
    console = Console()
    if not console.is_terminal:  # a pipe or a log file: do not squeeze the table into 80 columns
        console = Console(width=150)

    table = Table(
        title=(
            f"orthogonalize, {STEPS} steps: time and GFLOP/s vs the matmul rate of the same run\n"
            f"torch {torch.__version__}, {device.type}: {describe_device(device)}, "
            f"at least {repeats} rounds"
        )
    )
    for col in ("dtype", "shape", "method", "median ms", "spread", "n", "GFLOP/s",
                "matmul GFLOP/s", "of matmul", "orth err"):
        table.add_column(col, justify="left" if col in ("dtype", "shape", "method") else "right")

    start = time.perf_counter()
    load_before = load_average()
    noisy = []
    with console.status("") as status:
        for dname in args.dtype:
            for shape in shapes:
                label = " x ".join(map(str, shape))
                status.update(f"{dname} {label} ...")
                rows, mm_spread = bench_shape(
                    shape, DTYPES[dname], device, repeats, cap_s, min_time_s, args.seed
                )
                if mm_spread > NOISY_SPREAD:
                    noisy.append(f"{dname} {label} ({100 * mm_spread:.0f}%)")
                for i, (name, t, sp, n, rate, mm_rate, err) in enumerate(rows):
                    table.add_row(
                        dname if i == 0 else "",
                        label if i == 0 else "",
                        name,
                        f"{1e3 * t:.1f}" if t >= 0.01 else f"{1e3 * t:.2f}",
                        "-" if sp != sp else f"{100 * sp:.0f}%",
                        str(n),
                        "-" if rate is None else f"{rate / 1e9:.0f}",
                        f"{mm_rate / 1e9:.0f}" if i == 0 else "",
                        "-" if rate is None else f"{100 * rate / mm_rate:.0f}%",
                        f"{err:.1e}" if err < 1e-2 else f"{err:.3f}",
                    )
                table.add_section()
    console.print(table)
    console.print(
        f"total {time.perf_counter() - start:.0f} s; load average (1 min) "
        f"{load_before} before, {load_average()} after, on {os.cpu_count()} CPUs"
    )
    if noisy:
        console.print(
            f"[yellow]noisy: the matmul reference itself varied by more than "
            f"{100 * NOISY_SPREAD:.0f}% (interquartile/median) for {', '.join(noisy)}: other "
            f"processes were competing for the cores; rerun on an idle machine to trust "
            f"those rows.[/yellow]"
        )


if __name__ == "__main__":
    main()
