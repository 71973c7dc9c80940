"""Fault injection: every optimizer, every kind of bad gradient, every dtype and shape.

A model holds one parameter of each shape the optimizers see (a matrix, a conv kernel, an
expert stack, a vector). One step gets a bad gradient (zero, tiny, huge, NaN or Inf) in one
parameter or in all of them; after it the weights and the optimizer state are finite (or
the step raised :class:`NonFiniteGradError` / skipped, writing nothing), and the next step,
with a good gradient, moves every weight by a finite amount. Hypothesis draws the shapes,
the scales, the weights and where the bad entries go.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from specgrad.diagnostics import NonFiniteStatisticError, SpectralMonitor, diagnose
from specgrad.linalg import GramAccumulator
from specgrad.optim import (FAST, Hybrid, Muon, NonFiniteGradError, NormalizedGD, Shampoo, SignDescent, SpecGD,
                            SpectralDescent, split_params)  # fmt: skip

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
FAULTS = ["zero", "tiny", "huge", "nan", "inf"]
WHERE = ["matrix", "conv", "3d", "1d", "all"]
PARAMS = {"matrix": "mat.weight", "conv": "conv.weight", "3d": "experts.weight", "1d": "gain.weight"}
SETTINGS = settings(max_examples=2, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


class Experts(nn.Module):
    """An expert stack ``(E, out, in)``."""

    def __init__(self, E: int, out: int, inp: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(E, out, inp))


class Gain(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d))


class Toy(nn.Module):
    """One parameter of each shape: ``mat`` (2-D), ``conv`` (4-D), ``experts`` (3-D), ``gain``
    (1-D), drawn from ``seed``."""

    def __init__(self, m: int, n: int, k: int, E: int, *, seed: int = 0, dtype=torch.float32):
        super().__init__()
        self.mat = nn.Linear(n, m, bias=False, device="meta")
        self.conv = nn.Conv2d(n, m, k, bias=False, device="meta")
        self.experts = Experts(E, m, n)
        self.gain = Gain(m)
        g = torch.Generator().manual_seed(seed)
        for mod in (self.mat, self.conv, self.experts, self.gain):
            shape = mod.weight.shape
            w = torch.randn(shape, generator=g, dtype=torch.float64) / max(1, shape[1:].numel()) ** 0.5
            mod.weight = nn.Parameter((1 + w if len(shape) == 1 else w).to(dtype))


def build(name: str, model: Toy):
    params = list(model.parameters())
    if name == "muon":
        return Muon(params, lr=0.1, adamw={"lr": 0.1})
    if name == "muon_fast":
        return Muon(params, lr=0.1, adamw={"lr": 0.1}, **FAST)
    if name == "specgd":
        return SpecGD(params, lr=0.1, adamw={"lr": 0.1})
    if name == "specgd_nuclear":
        return SpecGD(params, lr=1e-3, step_size="nuclear", momentum=0.5, adamw={"lr": 0.1})
    if name == "spectral":
        return SpectralDescent(params, f=torch.sqrt, lr=0.1, adamw={"lr": 0.1})
    if name == "shampoo":
        return Shampoo(params, lr=0.1, precondition_frequency=1, adamw={"lr": 0.1})
    if name == "ngd":
        return NormalizedGD(params, lr=0.1, momentum=0.9)
    if name == "sign":
        return SignDescent(params, lr=0.1, momentum=0.9)
    if name == "hybrid":
        spectral = {PARAMS[k]: "spectral" for k in ("matrix", "conv", "3d")}
        return Hybrid(model, lr=0.1, every=1, overrides=spectral, adamw={"lr": 0.1})
    if name == "adamw":
        return Muon([{"params": params, "algorithm": "adamw", "lr": 0.1}])
    if name == "routed":  # split_params' groups: the first layer and the head go to AdamW
        return Muon(split_params(model).param_groups(spectral={"lr": 0.1}, adamw={"lr": 0.1}))
    raise AssertionError(name)


OPTIMIZERS = ["muon", "muon_fast", "specgd", "specgd_nuclear", "spectral", "shampoo", "ngd", "sign", "hybrid",
              "adamw", "routed"]  # fmt: skip

shapes = st.fixed_dictionaries({"m": st.integers(1, 5), "n": st.integers(1, 5), "k": st.integers(1, 2),
                                "E": st.integers(1, 3)})  # fmt: skip


def good_grads(model: Toy, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)


def bad_grad(p: torch.Tensor, fault: str, exponent: float, seed: int) -> torch.Tensor:
    """A gradient for ``p`` with ``fault``; entries of a tiny/huge one are at most
    ``10**exponent`` in size (for float16, whose range ends at 65504, at most 1e4)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(p.shape, generator=g, dtype=torch.float64)
    direction = direction / direction.abs().max()
    if fault == "zero":
        return torch.zeros_like(p)
    if fault in ("tiny", "huge"):
        scale = 10.0**exponent
        if p.dtype == torch.float16 and fault == "huge":
            scale = min(scale, 1e4)
        return (direction * scale).to(p.dtype)
    bad = direction.to(p.dtype)
    i = int(torch.randint(p.numel(), (1,), generator=g))
    bad.view(-1)[i] = float("nan") if fault == "nan" else float("inf") * (1 if i % 2 else -1)
    return bad


def snapshot(opt) -> list:
    return [(k, {key: v.clone() if isinstance(v, torch.Tensor) else v for key, v in st_.items()})
            for k, st_ in opt.state.items()]  # fmt: skip


def assert_finite(model: Toy, opt) -> None:
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"{name} holds non-finite weights"
    for st_ in opt.state.values():
        for key, v in st_.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and key != "log_ratio":  # NaN until measured
                assert torch.isfinite(v).all(), f"optimizer state {key!r} holds non-finite values"


def run_case(name, fault, where, dtype, dims, exponent, seed, warmup, nonfinite="raise"):
    model = Toy(**dims, seed=seed, dtype=dtype)
    opt = build(name, model)
    opt.nonfinite = nonfinite
    try:
        for k in range(warmup):
            good_grads(model, seed + 100 + k)
            opt.step()
        good_grads(model, seed + 50)
        for pname, p in model.named_parameters():
            if where == "all" or pname == PARAMS[where]:
                p.grad = bad_grad(p, fault, exponent, seed)
        grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        before = [p.detach().clone() for p in model.parameters()]
        state_before = snapshot(opt)
        if grads_finite:
            opt.step()
        elif nonfinite == "raise":
            with pytest.raises(NonFiniteGradError):
                opt.step()
        else:
            with pytest.warns(RuntimeWarning, match="step skipped"):
                opt.step()
        if not grads_finite:  # nothing written
            for a, b in zip(model.parameters(), before):
                assert torch.equal(a.detach(), b)
            assert len(opt.state) == len(state_before)
            for k, v in state_before:
                for key, x in v.items():
                    if isinstance(x, torch.Tensor):
                        assert torch.equal(opt.state[k][key], x) or (x.isnan().all() and opt.state[k][key].isnan().all())
        assert_finite(model, opt)
        # the next good gradient moves every weight, by a finite amount (from the weights of
        # before the fault: a huge step may have left weights whose rounding hides a normal one)
        with torch.no_grad():
            for p, b in zip(model.parameters(), before):
                p.copy_(b)
        good_grads(model, seed + 7)
        opt.step()
        assert_finite(model, opt)
        for (pname, p), b in zip(model.named_parameters(), before):
            assert not torch.equal(p.detach(), b), f"{pname} did not move on a good gradient"
    finally:
        if isinstance(opt, Hybrid):
            opt.close()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", OPTIMIZERS)
@SETTINGS
@given(dims=shapes, exponent=st.floats(20, 30), seed=st.integers(0, 2**16), warmup=st.integers(0, 1))
def test_bad_gradient_writes_nothing_non_finite_and_the_next_step_works(one_thread, name, fault, where, dtype, dims,
                                                                        exponent, seed, warmup):  # fmt: skip
    run_case(name, fault, where, dtype, dims, -exponent if fault == "tiny" else exponent, seed, warmup)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("fault", ["nan", "inf"])
@pytest.mark.parametrize("name", OPTIMIZERS)
@SETTINGS
@given(dims=shapes, seed=st.integers(0, 2**16))
def test_nonfinite_skip_skips_and_the_next_step_works(one_thread, name, fault, dtype, dims, seed):
    run_case(name, fault, "all", dtype, dims, 0.0, seed, warmup=1, nonfinite="skip")


# -- one error per bad input --------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_step_that_raises_does_not_count(name):
    model = Toy(3, 4, 1, 2)
    opt = build(name, model)
    good_grads(model, 0)
    opt.step()
    counters = {k: float(v["step"]) for k, v in opt.state.items()}
    good_grads(model, 1)
    # a link that fails part way: the last one of every chain
    chains = opt._chains
    saved = {a: c[-1] for a, c in chains.items()}

    def boom(u):
        raise RuntimeError("boom")

    for c in chains.values():
        c[-1] = boom
    try:
        with pytest.raises(RuntimeError, match="boom"):
            opt.step()
    finally:
        for a, c in chains.items():
            c[-1] = saved[a]
    assert {k: float(v["step"]) for k, v in opt.state.items()} == counters
    # a group that failed on its first step keeps no half-made state
    fresh = Muon([nn.Parameter(torch.randn(3, 3))])
    fresh.param_groups[0]["params"][0].grad = torch.randn(3, 3)
    fresh._chains["muon"][-1] = boom
    with pytest.raises(RuntimeError):
        fresh.step()
    assert len(fresh.state) == 0
    if isinstance(opt, Hybrid):
        opt.close()
