"""One optimizer step on the parameter set of a GPT, timed against baselines of the same run.

For a GPT of ``L`` layers and width ``d`` (q, k, v, o: ``d x d``; MLP in ``4d x d`` and out
``d x 4d``; token and position embeddings; norms), it times ``step()`` on the hidden
matrices of our ``Muon`` with its default, with each orthogonalizer and with
:data:`specgrad.optim.FAST` and :data:`specgrad.optim.TORCH_MUON`, of the Muon family
(``NorMuon``, ``AdaMuon``, Muon with cautious weight decay, each at its defaults),
``torch.optim.Muon`` (bfloat16 Newton-Schulz, per matrix) and ``torch.optim.AdamW``, plus
the Muon of ``pytorch-optimizer`` and ``heavyball`` when they are installed
(``pip install -e .[bench]``); then the whole parameter set: our ``Muon`` with its AdamW
rule (embeddings and norms) against ``torch.optim.Muon`` plus ``torch.optim.AdamW``. Every
Muon gets weight decay 0.1 (torch's default), every AdamW 0.01. Gradients are fixed random
tensors with a decaying spectrum (singular values ``~ 1/sqrt(i)``, like momentum
gradients), so every optimizer sees the same input. Times are medians over interleaved
rounds; ratios are to ``torch.optim.Muon`` measured in the same run, because the machine
is shared and noisy.

The ``orth err`` columns are the orthogonality error of each row's orthogonalizer,
``median over matrices of max_i |sigma_i - 1|`` restricted to singular values above
``1e-3 sigma_max`` (below that no 5-step method promises anything): on the benchmark's
gradients (``1/sqrt(i)``) and on a steeper spectrum (``1/i``, down to ``1/width``).

    python benchmarks/optimizer_step.py            # 6x384 and 12x768
    python benchmarks/optimizer_step.py --quick    # 6x384 only, fewer rounds
    python benchmarks/optimizer_step.py --size 2x256 --rounds 5   # one small size
    python benchmarks/optimizer_step.py --device cuda --rounds 50
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from orthogonalize import load_average, time_interleaved
from specgrad.linalg import JORDAN, orthogonalize_many
from specgrad.optim import FAST, TORCH_MUON, AdaMuon, Muon, NorMuon


def spectrum_grad(m: int, n: int, power: float, g: torch.Generator) -> torch.Tensor:
    """An ``m x n`` matrix with random singular vectors and singular values ``i^-power``."""
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k, generator=g))[0]
    V = torch.linalg.qr(torch.randn(n, k, generator=g))[0]
    return (U * torch.arange(1, k + 1).float().pow(-power)) @ V.T


def gpt_params(layers: int, width: int, vocab: int = 8192, context: int = 1024, seed: int = 0,
               device: torch.device = torch.device("cpu")):  # fmt: skip
    """(hidden matrices, other params) of a GPT, with gradients attached."""
    g = torch.Generator().manual_seed(seed)

    def param(*shape):
        p = torch.nn.Parameter((torch.randn(*shape, generator=g) * 0.02).to(device))
        grad = spectrum_grad(*shape, 0.5, g) if len(shape) == 2 else torch.randn(*shape, generator=g)
        p.grad = grad.to(device)
        return p

    hidden, other = [], [param(vocab, width), param(context, width)]
    for _ in range(layers):
        hidden += [param(width, width) for _ in range(4)]
        hidden += [param(4 * width, width), param(width, 4 * width)]
        other += [param(width), param(width)]
    other.append(param(width))
    return hidden, other


def median_times(steps: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each step over interleaved rounds (so drifts of a shared machine
    hit every row alike), after warm-up calls (state, buffers, compilation)."""
    for _ in range(3 if device.type == "cuda" else 1):
        for step in steps.values():
            step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = time_interleaved(steps, rounds, sync=sync, cap_s=float("inf"))
    return {k: statistics.median(v) for k, v in times.items()}


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

        found["pytorch-optimizer Muon"] = lambda ps: PoMuon([dict(params=ps, use_muon=True)], lr=0.02,
                                                             weight_decay=WEIGHT_DECAY)
    except Exception:  # noqa: BLE001 - optional peer; any import failure means "absent"
        pass
    try:
        import heavyball

        found["heavyball Muon"] = lambda ps: heavyball.Muon(ps, lr=0.02, weight_decay=WEIGHT_DECAY)
    except Exception:  # noqa: BLE001
        pass
    return found


WEIGHT_DECAY = 0.1  # torch.optim.Muon's default, given to every Muon so all do the same work

MUON_ROWS = {
    "default": {},
    "TORCH_MUON": TORCH_MUON,
    "newton_schulz (float32)": dict(orthogonalizer="newton_schulz", ns_dtype=torch.float32),
    "polar_express (bfloat16)": dict(orthogonalizer="polar_express", ns_dtype=torch.bfloat16),
    "polar_express (float32)": dict(orthogonalizer="polar_express", ns_dtype=torch.float32),
    "FAST": FAST,
    "svd": dict(orthogonalizer="svd"),
}
FAMILY_ROWS = {  # the default orthogonalizer, and each method's own link
    "specgrad NorMuon": lambda ps: NorMuon(ps, lr=0.02, weight_decay=WEIGHT_DECAY),
    "specgrad AdaMuon": lambda ps: AdaMuon(ps, lr=0.02, weight_decay=WEIGHT_DECAY),
    "specgrad Muon, cautious decay": lambda ps: Muon(ps, lr=0.02, weight_decay=WEIGHT_DECAY,
                                                     cautious_weight_decay=True),
}


def run(layers: int, width: int, rounds: int, console: Console, device: torch.device) -> None:
    hidden, other = gpt_params(layers, width, device=device)
    n_hidden = sum(p.numel() for p in hidden)
    g = torch.Generator().manual_seed(1)
    samples = {  # a square, an MLP-in and an MLP-out matrix per spectrum
        "1/sqrt(i)": [p.grad for p in hidden[3:6]],
        "1/i": [spectrum_grad(*p.shape, 1.0, g).to(device) for p in hidden[3:6]],
    }

    def orth_of(settings: dict):
        g = Muon(hidden[:1], **settings).param_groups[0]  # "auto" resolved for the device
        kw = dict(coefficients=g["ns_coefficients"], dtype=g.get("ns_dtype"), norm=g.get("ns_norm", "frobenius"),
                  gram=g.get("ns_gram", False))  # fmt: skip
        return lambda G: orthogonalize_many([G], g["orthogonalizer"], g["ns_steps"], **kw)[0]

    rows: dict[str, tuple] = {
        "torch.optim.Muon (bf16)": (lambda: torch.optim.Muon(hidden, lr=0.02, weight_decay=WEIGHT_DECAY,
                                                             ns_coefficients=JORDAN),
                                    orth_of(TORCH_MUON)),
        "torch.optim.AdamW": (lambda: torch.optim.AdamW(hidden, lr=1e-3), None),
    }
    for name, settings in MUON_ROWS.items():
        rows[f"specgrad Muon {name}"] = (lambda s=settings: Muon(hidden, lr=0.02, weight_decay=WEIGHT_DECAY, **s),
                                         orth_of(settings))
    for label, make in FAMILY_ROWS.items():
        rows[label] = (lambda make=make: make(hidden), None)
    peer_rows = peers()
    for label, make in peer_rows.items():
        rows[label] = (lambda make=make: make(hidden), None)

    # other libraries may drop the gradients after their step (heavyball sets them to None)
    # or change them in place (pytorch-optimizer's Nesterov): every timed step puts its
    # gradient tensors back first, peers get copies of their own, and ours and torch's are
    # checked unchanged at the end
    params = hidden + other
    grads = [p.grad for p in params]
    checksum = [float(g.double().square().sum()) for g in grads]

    def with_grads(step, own_copy: bool = False):
        mine = [g.clone() for g in grads] if own_copy else grads

        def run_step():
            for p, g in zip(params, mine):
                p.grad = g
            step()

        return run_step

    steps, errors, failed = {}, {}, {}
    for label, (make, orth) in rows.items():
        try:
            steps[label] = with_grads(make().step, own_copy=label in peer_rows)
        except Exception as e:  # noqa: BLE001 - a peer that cannot build is reported, not fatal
            failed[label] = f"failed: {type(e).__name__}"
            continue
        errors[label] = [f"{orth_error(orth, grads):.3f}" if orth else "-" for grads in samples.values()]
    # the whole parameter set: one optimizer of ours against torch's two
    # embeddings, like norms, go to the AdamW rule, as split_params routes them
    ours_all = Muon([dict(params=hidden), dict(params=other, algorithm="adamw", lr=1e-3, weight_decay=0.01)],
                    lr=0.02, weight_decay=WEIGHT_DECAY)  # fmt: skip
    torch_muon = torch.optim.Muon(hidden, lr=0.02, weight_decay=WEIGHT_DECAY, ns_coefficients=JORDAN)
    torch_adamw = torch.optim.AdamW(other, lr=1e-3, weight_decay=0.01)
    steps["all params: specgrad Muon default (+ its AdamW rule)"] = with_grads(ours_all.step)
    steps["all params: torch.optim.Muon + torch.optim.AdamW"] = with_grads(lambda: (torch_muon.step(), torch_adamw.step()))
    seconds = median_times(steps, rounds, device)
    if [float(g.double().square().sum()) for g in grads] != checksum:
        raise RuntimeError("an optimizer changed the gradients in place; the timings are not comparable")

    base = seconds["torch.optim.Muon (bf16)"]
    default_dtype = Muon(hidden[:1]).param_groups[0]["ns_dtype"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    table = Table(title=f"optimizer step, GPT {layers} layers x width {width} ({n_hidden / 1e6:.1f}M hidden-matrix params), "
                        f"{where}, torch {torch.__version__}, median of {rounds} rounds, load {load_average()}; "
                        f"default ns_dtype here: {default_dtype}")  # fmt: skip
    for col in ("optimizer", "ms / step", "x torch Muon", *(f"orth err {k}" for k in samples)):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for label in rows:
        if label in failed:
            table.add_row(label, "-", "-", failed[label], "")
        else:
            table.add_row(label, f"{1e3 * seconds[label]:.1f}", f"{seconds[label] / base:.2f}", *errors[label])
    full_base = seconds["all params: torch.optim.Muon + torch.optim.AdamW"]
    for label in [k for k in steps if k.startswith("all params")]:
        table.add_row(label, f"{1e3 * seconds[label]:.1f}", f"{seconds[label] / full_base:.2f} (of torch pair)", "", "")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6x384 only, 3 rounds")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:k]")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7, quick 3)")
    parser.add_argument("--size", default=None, help="one size LAYERSxWIDTH, e.g. 2x256 (overrides --quick)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    console = Console(width=150)
    sizes = [(6, 384)] if args.quick else [(6, 384), (12, 768)]
    if args.size:
        layers, width = args.size.lower().split("x")
        sizes = [(int(layers), int(width))]
    for layers, width in sizes:
        run(layers, width, args.rounds or (3 if args.quick else 7), console, device)


if __name__ == "__main__":
    main()
