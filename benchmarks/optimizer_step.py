"""One optimizer step on the parameter set of a GPT, timed against baselines of the same run.

For a GPT of ``L`` layers and width ``d`` (q, k, v, o: ``d x d``; MLP in ``4d x d`` and out
``d x 4d``; token and position embeddings; norms), it times ``step()`` of our ``Muon`` with
each orthogonalizer, ``torch.optim.Muon`` (bfloat16 Newton-Schulz, per matrix) and
``torch.optim.AdamW``, plus the Muon of ``pytorch-optimizer`` and ``heavyball`` when they are
installed (``pip install -e .[bench]``). Gradients are fixed random tensors with a decaying
spectrum (singular values ``~ 1/sqrt(i)``, like momentum gradients), so every optimizer
sees the same input. Times are medians over repeats; ratios are to ``torch.optim.Muon``
measured in the same run, because the machine is shared and noisy.

The ``orth err`` column is the orthogonality error of the orthogonalizer on the hidden
matrices of that run, ``median over matrices of max_i |sigma_i - 1|`` restricted to singular
values above ``1e-3 sigma_max`` (below that no 5-step method promises anything).

    python benchmarks/optimizer_step.py            # 6x384 and 12x768
    python benchmarks/optimizer_step.py --quick    # 6x384 only, fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from specgrad.linalg import orthogonalize
from specgrad.optim import Muon


def gpt_params(layers: int, width: int, vocab: int = 8192, context: int = 1024, seed: int = 0):
    """(hidden matrices, other params) of a GPT, with gradients attached."""
    g = torch.Generator().manual_seed(seed)

    def param(*shape):
        p = torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.02)
        if len(shape) == 2:
            m, n = shape
            k = min(m, n)
            U = torch.linalg.qr(torch.randn(m, k, generator=g))[0]
            V = torch.linalg.qr(torch.randn(n, k, generator=g))[0]
            p.grad = (U * torch.arange(1, k + 1).float().rsqrt()) @ V.T
        else:
            p.grad = torch.randn(*shape, generator=g)
        return p

    hidden, other = [], [param(vocab, width), param(context, width)]
    for _ in range(layers):
        hidden += [param(width, width) for _ in range(4)]
        hidden += [param(4 * width, width), param(width, 4 * width)]
        other += [param(width), param(width)]
    other.append(param(width))
    return hidden, other


def median_time(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up: state allocation, coefficient tables
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def orth_error(orth: Callable[[torch.Tensor], torch.Tensor], grads) -> float:
    errs = []
    for G in grads:
        s = torch.linalg.svdvals(orth(G).double())
        s0 = torch.linalg.svdvals(G.double())
        keep = s0 > 1e-3 * s0[0]
        # svdvals sorts; match kept singular values by count (the maps keep the order here)
        errs.append(float((s[: int(keep.sum())] - 1).abs().max()))
    return statistics.median(errs)


def peers():
    """Muon implementations of other libraries that import here."""
    found = {}
    try:
        from pytorch_optimizer import Muon as PoMuon

        found["pytorch-optimizer Muon"] = lambda ps: PoMuon(ps, lr=0.02)
    except Exception:  # noqa: BLE001 - optional peer; any import failure means "absent"
        pass
    try:
        import heavyball

        found["heavyball Muon"] = lambda ps: heavyball.Muon(ps, lr=0.02)
    except Exception:  # noqa: BLE001
        pass
    return found


def run(layers: int, width: int, repeats: int, console: Console) -> None:
    hidden, other = gpt_params(layers, width)
    n_hidden = sum(p.numel() for p in hidden)
    jordan = (3.4445, -4.7750, 2.0315)
    ns_bf16 = lambda G: orthogonalize(G, "newton_schulz", 5, dtype=torch.bfloat16)  # noqa: E731
    sample = [p.grad for p in hidden[:6]]
    rows = [
        ("torch.optim.Muon (bf16)", lambda: torch.optim.Muon(hidden, lr=0.02, ns_coefficients=jordan), ns_bf16),
        ("torch.optim.AdamW", lambda: torch.optim.AdamW(hidden + other, lr=1e-3), None),
    ]
    for name, method, dtype in (
        ("newton_schulz", "newton_schulz", torch.bfloat16),
        ("newton_schulz", "newton_schulz", torch.float32),
        ("polar_express", "polar_express", torch.bfloat16),
        ("polar_express", "polar_express", torch.float32),
        ("svd", "svd", None),
    ):
        label = f"specgrad Muon {name}" + (f" ({str(dtype)[6:]})" if dtype else "")
        rows.append((
            label,
            lambda m=method, d=dtype: Muon(hidden + other, lr=0.02, orthogonalizer=m, ns_dtype=d),
            lambda G, m=method, d=dtype: orthogonalize(G, m, 5, dtype=d),
        ))
    for label, make in peers().items():
        rows.append((label, lambda make=make: make(hidden), None))

    results = []
    for label, make, orth in rows:
        try:
            opt = make()
        except Exception as e:  # noqa: BLE001 - a peer that cannot build is reported, not fatal
            results.append((label, None, f"failed: {type(e).__name__}"))
            continue
        seconds = median_time(opt.step, repeats)
        err = f"{orth_error(orth, sample):.3f}" if orth else "-"
        results.append((label, seconds, err))

    base = next(s for label, s, _ in results if label.startswith("torch.optim.Muon"))
    table = Table(title=f"optimizer step, GPT {layers} layers x width {width} ({n_hidden / 1e6:.1f}M hidden-matrix params), {torch.get_num_threads()} threads")
    for col in ("optimizer", "ms / step", "x torch Muon", "orth err"):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for label, s, err in results:
        if s is None:
            table.add_row(label, "-", "-", err)
        else:
            table.add_row(label, f"{1e3 * s:.1f}", f"{s / base:.2f}", err)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6x384 only, 3 repeats")
    args = parser.parse_args()
    console = Console()
    sizes = [(6, 384)] if args.quick else [(6, 384), (12, 768)]
    for layers, width in sizes:
        run(layers, width, 3 if args.quick else 5, console)


if __name__ == "__main__":
    main()
