"""Shampoo on matrix views (expert stacks, Conv1D, fused q/k/v) and on the gradients that
break naive implementations: zero, tiny, huge, half precision, empty matrices. Float64
references where values matter."""

import math

import pytest
import torch
from torch import nn

from specgrad.optim import NonFiniteGradError, Shampoo, split_params
from specgrad.optim.shampoo import inverse_root

F64 = dict(dtype=torch.float64)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def root(S, eps):
    """Reference ``(S + eps lambda_max I)^(-1/4)`` in float64."""
    lam, Q = torch.linalg.eigh(S.to(torch.float64))
    lam = lam.clamp_min(0)
    return (Q * (lam + eps * lam[-1]).pow(-0.25)) @ Q.T


def reference_steps(W0, grads, lr, eps=1e-6):
    """Shampoo in float64 with summed statistics, no momentum, no grafting, roots every step."""
    W = W0.to(torch.float64).clone()
    L = torch.zeros(W.shape[0], W.shape[0], **F64)
    R = torch.zeros(W.shape[1], W.shape[1], **F64)
    for G in grads:
        G = G.to(torch.float64)
        L, R = L + G @ G.T, R + G.T @ G
        W = W - lr * root(L, eps) @ G @ root(R, eps)
    return W


def host(*middle):
    """``middle`` as hidden layers between a first and a last layer (which route to AdamW)."""
    return nn.Sequential(nn.Linear(2, 2), *middle, nn.Linear(2, 2))


def run(opt, params, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()


SETTINGS = dict(lr=0.1, momentum=0.9, precondition_frequency=2, stat_decay=0.9)


@pytest.mark.parametrize("grafting", ["adam", "sgd", "none"])
def test_an_expert_stack_is_preconditioned_as_each_expert_alone(grafting):
    experts = nn.Module()
    experts.w = nn.Parameter(torch.randn(3, 5, 12, generator=gen(0), **F64))
    net = host(experts)
    singles = [nn.Parameter(experts.w[e].detach().clone()) for e in range(3)]
    grads = [torch.randn(3, 5, 12, generator=gen(s), **F64) for s in range(1, 5)]
    grads[1][2] = 0.0  # one expert gets no tokens on one step
    routing = split_params(net)
    assert str(routing.views()["1.w"]) == "3 x (5, 12)"
    # max_precond_dim=8: the 12-wide side falls back to a diagonal, per expert too
    settings = dict(SETTINGS, grafting=grafting, max_precond_dim=8)
    opt = Shampoo(routing.param_groups(spectral=settings))
    run(opt, [experts.w], [[g] for g in grads])
    assert opt.state[experts.w]["L"].shape == (3, 5, 5) and opt.state[experts.w]["R"].shape == (3, 12)
    run(Shampoo(singles, **settings), singles, [list(g.unbind()) for g in grads])
    for e, p in enumerate(singles):
        torch.testing.assert_close(experts.w[e], p, rtol=1e-12, atol=1e-12)


def test_a_conv1d_weight_is_preconditioned_as_the_equivalent_linear():
    transformers = pytest.importorskip("transformers")
    conv1d = transformers.pytorch_utils.Conv1D(12, 5).double()  # weight (5, 12): (in, out)
    linear = nn.Linear(5, 12).double()
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.T)
    grads = [torch.randn(5, 12, generator=gen(s), **F64) for s in range(4)]
    routing = split_params(host(conv1d), overrides={"0.*": "adamw"})
    assert str(routing.views()["1.weight"]) == "(12, 5)"
    opt = Shampoo(routing.param_groups(spectral=SETTINGS))
    run(opt, [conv1d.weight], [[g] for g in grads])
    assert opt.state[conv1d.weight]["L"].shape == (12, 12)  # the output side, as nn.Linear's
    run(Shampoo([linear.weight], **SETTINGS), [linear.weight], [[g.T] for g in grads])
    torch.testing.assert_close(conv1d.weight.T, linear.weight, rtol=1e-12, atol=1e-12)


def test_a_fused_qkv_is_three_matrices():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)
    model = transformers.GPT2LMHeadModel(cfg).double()
    W = model.transformer.h[0].attn.c_attn.weight  # (8, 24): q, k, v side by side
    parts = [nn.Parameter(W[:, 8 * k : 8 * (k + 1)].T.detach().clone()) for k in range(3)]
    grads = [torch.randn(8, 24, generator=gen(s), **F64) for s in range(3)]
    opt = Shampoo(split_params(model).param_groups(spectral=SETTINGS))
    run(opt, [W], [[g] for g in grads])
    assert opt.state[W]["L"].shape == (3, 8, 8)
    run(Shampoo(parts, **SETTINGS), parts, [[g[:, 8 * k : 8 * (k + 1)].T for k in range(3)] for g in grads])
    for k, p in enumerate(parts):
        torch.testing.assert_close(W[:, 8 * k : 8 * (k + 1)].T, p, rtol=1e-12, atol=1e-12)


# -- gradients that break naive Shampoo -------------------------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def finite_state(state):
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


@pytest.mark.parametrize("grafting", ["adam", "sgd", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30], ids=["zero", "tiny", "huge"])
def test_zero_tiny_and_huge_gradients_leave_weights_and_state_finite(scale, dtype, grafting):
    W = nn.Parameter(torch.randn(6, 4, generator=gen(0)).to(dtype))
    conv = nn.Parameter(torch.randn(3, 2, 3, 3, generator=gen(1)).to(dtype))
    G = torch.randn(6, 4, generator=gen(2)) * scale
    Gc = torch.randn(3, 2, 3, 3, generator=gen(3)) * scale
    opt = Shampoo([W, conv], lr=1e-2, grafting=grafting, precondition_frequency=1)
    W0 = W.detach().clone()
    if not torch.isfinite(G.to(dtype)).all():  # 1e30 is inf in float16: refused before anything is written
        W.grad, conv.grad = G.to(dtype), Gc.to(dtype)
        with pytest.raises(NonFiniteGradError):
            opt.step()
        assert torch.equal(W.detach(), W0) and not opt.state
        G, Gc = G * 0, Gc * 0
    for step in range(3):  # the bad gradient, then good ones: the state must not be poisoned
        W.grad = (G if step == 0 else torch.randn(6, 4, generator=gen(10 + step))).to(dtype)
        conv.grad = (Gc if step == 0 else torch.randn(3, 2, 3, 3, generator=gen(20 + step))).to(dtype)
        opt.step()
        assert bool(torch.isfinite(W).all()) and bool(torch.isfinite(conv).all()), f"step {step}"
        assert finite_state(opt.state[W]) and finite_state(opt.state[conv])
        if step == 0 and scale == 0.0:
            assert torch.equal(W.detach(), W0)  # no gradient, no step
    assert not torch.equal(W.detach(), W0)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_shampoo_is_scale_free_in_float32_as_in_float64(scale):
    """``L^{-1/4} G R^{-1/4}`` does not change when the gradients are scaled: float32 Shampoo on
    ``c G`` matches the float64 reference on ``G``, for ``c`` whose ``G G^T`` under- or
    overflows float32."""
    W0 = torch.randn(5, 7, generator=gen(0))
    grads = [torch.randn(5, 7, generator=gen(s)) for s in range(1, 4)]
    W = nn.Parameter(W0.clone())
    opt = Shampoo([W], lr=0.1, momentum=0.0, grafting="none", precondition_frequency=1)
    run(opt, [W], [[g * scale] for g in grads])
    torch.testing.assert_close(W.detach().double(), reference_steps(W0, grads, 0.1), rtol=1e-4, atol=1e-4)


def test_a_huge_gradient_between_normal_ones_matches_the_float64_reference():
    W0 = torch.randn(5, 7, generator=gen(0))
    grads = [torch.randn(5, 7, generator=gen(s)) for s in range(1, 5)]
    grads[1] = grads[1] * 1e30  # G G^T is 1e60: inf in float32
    W = nn.Parameter(W0.clone())
    opt = Shampoo([W], lr=0.1, momentum=0.0, grafting="none", precondition_frequency=1)
    run(opt, [W], [[g] for g in grads])
    torch.testing.assert_close(W.detach().double(), reference_steps(W0, grads, 0.1), rtol=1e-4, atol=1e-4)


def test_a_zero_gradient_first_is_no_step_and_leaves_no_trace():
    W0 = torch.randn(4, 3, generator=gen(0), **F64)
    G = torch.randn(4, 3, generator=gen(1), **F64)
    W = nn.Parameter(W0.clone())
    opt = Shampoo([W], lr=0.5, momentum=0.0, grafting="none")
    run(opt, [W], [[torch.zeros_like(G)], [G]])
    torch.testing.assert_close(W.detach(), reference_steps(W0, [G], 0.5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_weights_take_the_float64_step(dtype):
    W0 = torch.randn(6, 5, generator=gen(0)).to(dtype)
    grads = [torch.randn(6, 5, generator=gen(s)).to(dtype) for s in range(1, 4)]
    W = nn.Parameter(W0.clone())
    opt = Shampoo([W], lr=0.1, momentum=0.0, grafting="none", precondition_frequency=1)
    run(opt, [W], [[g] for g in grads])
    assert opt.state[W]["L"].dtype == torch.float32  # statistics in float32, not in the weights' dtype
    expected = reference_steps(W0, grads, 0.1)
    rounding = float(torch.finfo(dtype).eps) * float(expected.abs().max())  # of one rounding of W
    assert float((W.detach().double() - expected).abs().max()) < 4 * rounding


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (2, 0, 3)])
def test_an_empty_matrix_is_no_step(shape):
    W = nn.Parameter(torch.zeros(shape))
    W.grad = torch.zeros(shape)
    opt = Shampoo([W], lr=0.1)
    opt.step()
    opt.step()
    assert W.shape == shape


def test_inverse_root_is_batched_and_zero_for_an_empty_statistic():
    A = torch.randn(3, 4, 6, generator=gen(0), **F64)
    S = A @ A.mT
    S[1] = 0.0
    batched = inverse_root(S, 4, 1e-6)
    for k in (0, 2):
        torch.testing.assert_close(batched[k], root(S[k], 1e-6), rtol=1e-10, atol=1e-12)
    assert torch.equal(batched[1], torch.zeros(4, 4, **F64))
    diag = inverse_root(torch.tensor([[16.0, 1.0], [0.0, 0.0]], **F64), 4, 1e-12, diagonal=True)
    torch.testing.assert_close(diag, torch.tensor([[0.5, 1.0], [0.0, 0.0]], **F64))
    assert inverse_root(torch.zeros(0, 0), 4, 1e-6).shape == (0, 0)


def test_state_dict_round_trip_of_an_expert_stack_is_bit_exact():
    def make():
        experts = nn.Module()
        experts.w = nn.Parameter(torch.randn(3, 4, 6, generator=gen(0)))
        net = host(experts)
        return net, experts.w, Shampoo(split_params(net).param_groups(spectral=SETTINGS))

    grads = [torch.randn(3, 4, 6, generator=gen(s)) * 10.0 ** (4 * s) for s in range(6)]  # sizes 1 to 1e20
    _, w, opt = make()
    run(opt, [w], [[g] for g in grads])
    expected = w.detach().clone()
    net, w, opt = make()
    run(opt, [w], [[g] for g in grads[:3]])
    saved, weights = opt.state_dict(), w.detach().clone()
    net2, w2, opt2 = make()
    with torch.no_grad():
        w2.copy_(weights)
    opt2.load_state_dict(saved)
    run(opt2, [w2], [[g] for g in grads[3:]])
    assert torch.equal(w2.detach(), expected)
    assert math.isfinite(float(w2.detach().abs().max()))
