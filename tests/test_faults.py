"""Fault injection: every optimizer, every kind of bad gradient, every dtype and shape.

A model holds one parameter of each shape the optimizers see (a matrix, a conv kernel, an
expert stack, a vector). One step gets a bad gradient (zero, tiny, huge, NaN or Inf) in one
parameter or in all of them; after it the weights and the optimizer state are finite (or
the step raised :class:`NonFiniteGradError` / skipped, writing nothing), and the next step,
with a good gradient, moves every weight by a finite amount. Hypothesis draws the shapes,
the scales, the weights and where the bad entries go.
"""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from specgrad.diagnostics import NonFiniteStatisticError, SpectralMonitor, diagnose
from specgrad.linalg import GramAccumulator
from specgrad.optim.transforms import Transform
from specgrad.optim import (FAST, Hybrid, Muon, NonFiniteGradError, NormalizedGD, Shampoo, SignDescent, SpecGD,
                            SpectralDescent, split_params)  # fmt: skip

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
FAULTS = ["zero", "tiny", "huge", "nan", "inf"]
WHERE = ["matrix", "conv", "3d", "1d", "all"]
PARAMS = {"matrix": "mat.weight", "conv": "conv.weight", "3d": "experts.weight", "1d": "gain.weight"}
# no shrinking: a failing grid lists its failed cases, and shrinking would rerun it many times
SETTINGS = settings(max_examples=2, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip


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
    if name == "specgd":  # the nuclear step size, whose ||G||_* passes 65504 in float16
        return SpecGD(params, lr=0.1, step_size="nuclear", momentum=0.5, adamw={"lr": 0.1})
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
    if name == "routed":
        return Muon(split_params(model).param_groups(spectral={"lr": 0.1}, adamw={"lr": 0.1}))
    raise AssertionError(name)


# "routed": split_params sends the first layer (mat) and the head (conv) to AdamW, experts to Muon
OPTIMIZERS = ["muon", "muon_fast", "specgd", "spectral", "shampoo", "ngd", "sign", "hybrid", "routed"]

shapes = st.fixed_dictionaries({"m": st.integers(1, 5), "n": st.integers(1, 5), "k": st.integers(1, 2),
                                "E": st.integers(1, 3)})  # fmt: skip


def good_grads(model: Toy, seed: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = (scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype)


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
        good_grads(model, seed + 7, scale=10.0)  # a step that rounding cannot hide in half precision
        opt.step()
        assert_finite(model, opt)
        for (pname, p), b in zip(model.named_parameters(), before):
            assert not torch.equal(p.detach(), b), f"{pname} did not move on a good gradient"
    finally:
        if isinstance(opt, Hybrid):
            opt.close()


def run_grid(name, dtype, cases, dims, exponent, seed, warmup, nonfinite="raise") -> None:
    """:func:`run_case` for each ``(fault, where)`` of ``cases``; one assertion lists every
    case that failed."""
    failed = []
    for fault, where in cases:
        try:
            run_case(name, fault, where, dtype, dims, -exponent if fault == "tiny" else exponent, seed, warmup,
                     nonfinite)  # fmt: skip
        except Exception as e:  # noqa: BLE001: collected, reported below
            failed.append(f"{fault} gradient in {where}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    assert not failed, f"{name} in {dtype}, {len(failed)} of {len(cases)} cases failed:\n" + "\n".join(failed)


GRID = [(fault, where) for fault in FAULTS for where in WHERE]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", OPTIMIZERS)
@SETTINGS
@given(dims=shapes, exponent=st.floats(20, 30), seed=st.integers(0, 2**16), warmup=st.integers(0, 1))
def test_bad_gradient_writes_nothing_non_finite_and_the_next_step_works(one_thread, name, dtype, dims, exponent,
                                                                        seed, warmup):  # fmt: skip
    """Each example runs every fault in every place: 5 x 5 cases per optimizer and dtype."""
    run_grid(name, dtype, GRID, dims, exponent, seed, warmup)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", OPTIMIZERS)
@SETTINGS
@given(dims=shapes, seed=st.integers(0, 2**16))
def test_nonfinite_skip_skips_and_the_next_step_works(one_thread, name, dtype, dims, seed):
    run_grid(name, dtype, [("nan", "all"), ("inf", "matrix")], dims, 0.0, seed, warmup=1, nonfinite="skip")


# -- one error per bad input --------------------------------------------------------------


class Boom(Transform):
    def __call__(self, u):
        raise RuntimeError("boom")



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
    boom = Boom()
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


def test_nuclear_step_in_float16_past_65504_is_finite_and_matches_float32():
    G = torch.full((64, 64), 1000.0) + 1000.0 * torch.eye(64)  # ||G||_* = 128000 > 65504
    out = {}
    for dtype in (torch.float16, torch.float32):
        W = nn.Parameter(torch.zeros(64, 64, dtype=dtype))
        opt = SpecGD([W], lr=1e-3, step_size="nuclear")
        W.grad = G.to(dtype)
        opt.step()
        assert torch.isfinite(W).all()
        out[dtype] = W.detach().double()
    torch.testing.assert_close(out[torch.float16], out[torch.float32], rtol=2e-3, atol=1e-2)


# -- complex and integer inputs -------------------------------------------------------------


def test_adamw_rule_on_complex_params_matches_torch_adamw():
    g = torch.Generator().manual_seed(0)
    a = nn.Parameter(torch.randn(5, 3, dtype=torch.complex64, generator=g))
    b = nn.Parameter(a.detach().clone())
    ours = Muon([{"params": [a], "algorithm": "adamw", "lr": 0.1, "weight_decay": 0.01}])
    ref = torch.optim.AdamW([b], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    for _ in range(6):
        grad = torch.randn(5, 3, dtype=torch.complex64, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["svd", "newton_schulz", "polar_express"])
def test_orthogonalize_refuses_complex_matrices_with_one_message(method):
    from specgrad.linalg import newton_schulz, orthogonalize, orthogonalize_many, polar_svd, schedule_for

    G = torch.randn(4, 3, dtype=torch.complex64)
    with pytest.raises(ValueError, match="complex matrices are not supported"):
        orthogonalize(G, method)
    with pytest.raises(ValueError, match="complex matrices are not supported"):
        orthogonalize_many([G], method)
    reference = polar_svd if method == "svd" else lambda G: newton_schulz(G, schedule_for(method))
    with pytest.raises(ValueError, match="complex matrices are not supported"):
        reference(G)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64], ids=str)
def test_orthogonalize_refuses_a_non_floating_working_dtype(dtype):
    from specgrad.linalg import orthogonalize, orthogonalize_many

    with pytest.raises(ValueError, match=f"dtype must be a floating dtype, got {dtype}"):
        orthogonalize(torch.randn(4, 3), dtype=dtype)
    with pytest.raises(ValueError, match=f"dtype must be a floating dtype, got {dtype}"):
        orthogonalize_many([torch.randn(4, 3)], dtype=dtype)


def test_spectral_rules_refuse_complex_matrices_at_construction():
    W = nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))
    for make in (Muon, SpecGD, Shampoo):
        with pytest.raises(ValueError, match="is complex .*algorithm='adamw'"):
            make([W])
    Muon([{"params": [W], "algorithm": "adamw"}])  # the AdamW rule takes it


def test_non_tensor_and_integer_params_are_refused_clearly():
    with pytest.raises(TypeError, match="Muon can only optimize Tensors, but params\\[1\\] is float"):
        Muon([nn.Parameter(torch.zeros(2, 2)), 1.0])
    with pytest.raises(ValueError, match="'w' has dtype torch.int32: only floating point parameters"):
        Muon([("w", torch.zeros(3, 3, dtype=torch.int32))])
    with pytest.raises(ValueError, match="dtype torch.int64"):
        SignDescent([torch.zeros(3, dtype=torch.int64)])


def test_sparse_gradients_are_refused_like_torch():
    emb = nn.Embedding(6, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    for opt in (Muon(emb.parameters()), SpecGD(emb.parameters()), SignDescent(emb.parameters())):
        before = emb.weight.detach().clone()
        with pytest.raises(RuntimeError, match="does not support sparse gradients"):
            opt.step()
        assert torch.equal(emb.weight.detach(), before)


# -- checkpoints ----------------------------------------------------------------------------


def test_fast_muon_state_dict_loads_with_weights_only():
    model = Toy(4, 6, 1, 2)
    opt = Muon(model.parameters(), **FAST)
    good_grads(model, 0)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    twin = Toy(4, 6, 1, 2)
    twin.load_state_dict(model.state_dict())
    resumed = Muon(twin.parameters(), **FAST)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[-1]["ns_coefficients"] == FAST["ns_coefficients"]
    assert "chain" not in resumed.param_groups[0]
    good_grads(model, 1)
    good_grads(twin, 1)
    opt.step()
    resumed.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("source,target", [("muon", "specgd"), ("muon", "shampoo"), ("shampoo", "muon"),
                                           ("specgd", "muon"), ("muon", "sign")])  # fmt: skip
def test_loading_another_optimizer_types_state_dict_is_refused(source, target):
    model = Toy(3, 4, 1, 2)
    a = build(source, model)
    good_grads(model, 0)
    a.step()
    b = build(target, model)
    with pytest.raises(ValueError, match=f"cannot load this state_dict into {type(b).__name__}"):
        b.load_state_dict(a.state_dict())


def test_a_group_with_another_chain_is_refused():
    model = Toy(3, 4, 1, 2)
    opt = Muon(model.parameters())
    saved = opt.state_dict()
    assert saved["param_groups"][-1]["chain"] == ["Momentum", "AsMatrix", "Orthogonalize", "ShapeScale",
                                                  "DecoupledWeightDecay", "ApplyLR"]  # fmt: skip
    saved["param_groups"][-1]["chain"] = ["Momentum", "AsMatrix", "ShampooPrecondition", "DecoupledWeightDecay",
                                          "ApplyLR"]  # fmt: skip
    with pytest.raises(ValueError, match="ran the chain Momentum -> AsMatrix -> ShampooPrecondition"):
        opt.load_state_dict(saved)


# -- non-finite statistics name the block ---------------------------------------------------


def nan_batch(n=16, d=4):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    x[3, 1] = float("nan")
    return x


def test_monitor_names_the_block_of_a_nan_activation_and_goes_on():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with SpectralMonitor(net, every=1) as mon:
        net(nan_batch()).sum().backward()
        with pytest.raises(NonFiniteStatisticError, match="non-finite activation at step 0 in block\\(s\\) '0'"):
            mon.step()
        net.zero_grad()
        net(torch.randn(16, 4)).sum().backward()
        rows = mon.step()
    assert [r["block"] for r in rows] == ["0", "2"] and all(r["step"] == 1 for r in rows)


def test_diagnose_with_a_nan_loss_names_the_blocks():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(NonFiniteStatisticError, match="non-finite gradient .*'0', '2'.*the loss on this batch is nan"):
        diagnose(net, torch.randn(16, 4), lambda out: out.sum() * float("nan"))


def test_gram_accumulator_after_a_nan_chunk_names_itself():
    acc = GramAccumulator(3, name="layer2")
    acc.update(torch.randn(5, 3))
    acc.update(torch.tensor([[1.0, float("nan"), 0.0]]))
    for read in (acc.stable_rank, acc.operator_sq, acc.frobenius_sq):
        with pytest.raises(NonFiniteStatisticError, match="activation Gram of 'layer2' is not finite"):
            read()


def test_hybrid_skip_skips_a_step_with_nan_activations():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = Hybrid(net, lr=0.01, every=1, nonfinite="skip")
    try:
        before = [p.detach().clone() for p in net.parameters()]
        net(nan_batch()).sum().backward()
        with pytest.warns(RuntimeWarning, match="skipped"):
            opt.step()
        for p, b in zip(net.parameters(), before):
            assert torch.equal(p.detach(), b)
        opt.zero_grad()
        net(torch.randn(16, 4)).sum().backward()
        opt.step()
        assert all(torch.isfinite(p).all() for p in net.parameters())
        assert not all(torch.equal(p.detach(), b) for p, b in zip(net.parameters(), before))
    finally:
        opt.close()


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in ("hybrid", "routed")])
def test_empty_parameters_step(name):
    params = [nn.Parameter(torch.zeros(*shape)) for shape in [(0, 5), (5, 0), (0,), (2, 0, 3, 3), (4, 3)]]
    model = nn.Module()
    model.parameters = lambda: iter(params)  # build() reads model.parameters()
    opt = build(name, model)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    assert torch.isfinite(params[-1]).all() and not torch.equal(params[-1].detach(), torch.zeros(4, 3))
