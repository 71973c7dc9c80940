"""NorMuon, AdaMuon, cautious weight decay and QK-clip: float64 references of their update
rules on random inputs, the optimizer contract (state_dict, matrix views, routing), and
MuonClip keeping a tiny GPT's attention logits under tau."""

import copy
import math

import pytest
import torch
from torch import nn

from conftest import data, mlp, train
from specgrad.linalg import polar_svd
from specgrad.models import GPT, GPTConfig
from specgrad.optim import TORCH_MUON, AdaMuon, Muon, NorMuon, QKClip, SpecGD, split_params
from specgrad.optim.adamuon import ElementwiseSecondMoment, SignStabilize
from specgrad.optim.normuon import RowNormalize, rescale_to_polar_norm
from specgrad.optim.qkclip import max_logits
from specgrad.optim.transforms import DecoupledWeightDecay

F64 = torch.float64
SHAPES = [(6, 4), (4, 7), (5, 5)]  # tall, wide, square


def random_steps(shapes, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    W0 = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=F64) for s in shapes] for _ in range(steps)]
    return W0, grads


def run(opt_cls, W0, grads, **kw):
    params = [nn.Parameter(w.clone()) for w in W0]
    opt = opt_cls(params, orthogonalizer="svd", ns_dtype=None, **kw)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], opt


def nesterov(buf, g, mu):
    buf.mul_(mu).add_(g, alpha=1 - mu)
    return (1 - mu) * g + mu * buf


def scale(m, n):
    return math.sqrt(max(1.0, m / n))  # "original"


# -- update rules against float64 references ---------------------------------------------------


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_normuon_matches_float64_reference(wd):
    W0, grads = random_steps(SHAPES, 5)
    lr, mu, beta2, eps = 0.05, 0.9, 0.8, 1e-8
    ours, _ = run(NorMuon, W0, grads, lr=lr, momentum=mu, beta2=beta2, eps=eps, weight_decay=wd)
    for k, W in enumerate(W0):
        W, buf, v = W.clone(), torch.zeros_like(W), torch.zeros(W.shape[0], 1, dtype=F64)
        m, n = W.shape
        for gs in grads:
            O = polar_svd(nesterov(buf, gs[k], mu))
            v = beta2 * v + (1 - beta2) * (O**2).mean(dim=1, keepdim=True)  # one entry per row
            N = O / (v.sqrt() + eps)
            N = N * math.sqrt(min(m, n)) / N.norm()
            W = W * (1 - lr * wd) - lr * scale(m, n) * N
        torch.testing.assert_close(ours[k], W, rtol=1e-10, atol=1e-12)


def test_normuon_rows_have_equal_norms_at_the_first_step():
    """With v from one step, every row of the normalized update has the same norm (the
    point of NorMuon: no neuron dominates), whatever the rows of the polar factor."""
    W0, grads = random_steps([(8, 5)], 1)
    p = nn.Parameter(W0[0].clone())
    opt = NorMuon([p], lr=1.0, momentum=0.0, orthogonalizer="svd")
    p.grad = grads[0][0]
    opt.step()
    rows = (W0[0] - p.detach()).norm(dim=1)
    assert float(polar_svd(grads[0][0]).norm(dim=1).std()) > 0.05  # the polar factor's rows differ
    torch.testing.assert_close(rows, torch.full_like(rows, float(rows[0])), rtol=1e-6, atol=0)


@pytest.mark.parametrize("sign_momentum", [True, False])
def test_adamuon_matches_float64_reference(sign_momentum):
    W0, grads = random_steps(SHAPES, 5, seed=1)
    lr, mu, beta2, eps, wd = 0.05, 0.9, 0.9, 1e-8, 0.1
    ours, opt = run(AdaMuon, W0, grads, lr=lr, momentum=mu, beta2=beta2, eps=eps, weight_decay=wd,
                    sign_momentum=sign_momentum)  # fmt: skip
    for k, W in enumerate(W0):
        W, buf, V = W.clone(), torch.zeros_like(W), torch.zeros_like(W)
        m, n = W.shape
        for gs in grads:
            M = nesterov(buf, gs[k], mu)
            O = polar_svd(M.sign() if sign_momentum else M)
            V = beta2 * V + (1 - beta2) * O * O  # elementwise
            N = O / (V.sqrt() + eps)
            N = N * math.sqrt(min(m, n)) / N.norm()
            W = W * (1 - lr * wd) - lr * scale(m, n) * N
        torch.testing.assert_close(ours[k], W, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[opt.param_groups[0]["params"][k]]["exp_avg_sq"], V, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [Muon, NorMuon, AdaMuon])
def test_cautious_weight_decay_matches_float64_reference(cls):
    """One step from a given momentum-free update: the decay lands exactly on the
    coordinates where update and weight share a sign."""
    W0, grads = random_steps(SHAPES, 1, seed=2)
    lr, wd = 0.1, 0.5
    plain, _ = run(cls, W0, grads, lr=lr, momentum=0.0, weight_decay=0.0)
    ours, _ = run(cls, W0, grads, lr=lr, momentum=0.0, weight_decay=wd, cautious_weight_decay=True)
    for W, P, got in zip(W0, plain, ours):
        step = (W - P) / lr  # scale * update, the direction the optimizer subtracts
        mask = (step * W > 0).to(F64)
        assert 0.2 < float(mask.mean()) < 0.8
        torch.testing.assert_close(got, W - lr * (step + wd * mask * W), rtol=1e-12, atol=1e-14)
        untouched = mask == 0
        assert torch.equal(got[untouched], P[untouched])  # no decay where the update grows |W|


def test_cautious_weight_decay_on_every_rule_through_param_groups():
    """The key belongs to the weight-decay link, so any chain takes it: SpecGD's matrices and
    the AdamW rule of the vectors."""
    torch.manual_seed(0)
    W, b = nn.Parameter(torch.randn(5, 3, dtype=F64)), nn.Parameter(torch.randn(5, dtype=F64))
    W.grad, b.grad = torch.randn(5, 3, dtype=F64), torch.randn(5, dtype=F64)
    W0, b0 = W.detach().clone(), b.detach().clone()
    opt = SpecGD([{"params": [W], "weight_decay": 0.5, "cautious_weight_decay": True},
                  {"params": [b], "algorithm": "adamw", "lr": 0.1, "weight_decay": 0.5,
                   "cautious_weight_decay": True}], lr=0.1)  # fmt: skip
    opt.step()
    O = polar_svd(W.grad)
    torch.testing.assert_close(W.detach(), W0 - 0.1 * (O + 0.5 * (O * W0 > 0) * W0), rtol=1e-12, atol=1e-14)
    u = b.grad / (b.grad.abs() + 1e-8)  # Adam's first step: m_hat / (sqrt(v_hat) + eps)
    torch.testing.assert_close(b.detach(), b0 - 0.1 * (u + 0.5 * (u * b0 > 0) * b0), rtol=1e-12, atol=1e-14)


def test_links_check_their_hyperparameters():
    for link in (RowNormalize(), ElementwiseSecondMoment(), SignStabilize(), DecoupledWeightDecay()):
        link.validate(dict(link.defaults))
        for key in link.defaults:
            with pytest.raises(ValueError, match=key):
                link.validate({**link.defaults, key: "bad"})
    ps = list(mlp().parameters())
    with pytest.raises(ValueError, match=r"beta2 must be a number in \[0.0, 1.0\)"):
        NorMuon(ps, beta2=1.0)
    with pytest.raises(ValueError, match="eps"):
        AdaMuon(ps, eps=0.0)
    with pytest.raises(ValueError, match=r"unknown settings \['beta2'\]"):
        Muon(ps, beta2=0.9)
    with pytest.raises(ValueError, match="cautious_weight_decay must be True or False"):
        Muon(ps, cautious_weight_decay=1)


def test_rescale_to_polar_norm_keeps_zero():
    assert torch.equal(rescale_to_polar_norm(torch.zeros(3, 4)), torch.zeros(3, 4))


# -- the optimizer contract -------------------------------------------------------------------

MAKERS = {
    "normuon": lambda ps: NorMuon(ps, lr=0.02, weight_decay=0.1),
    "adamuon": lambda ps: AdaMuon(ps, lr=0.02, weight_decay=0.1),
    "muon-cautious": lambda ps: Muon(ps, lr=0.02, weight_decay=0.1, cautious_weight_decay=True),
    "muon-torch": lambda ps: Muon.torch_compatible(ps, lr=0.02),
}


@pytest.mark.parametrize("name", MAKERS)
def test_each_trains_and_round_trips_state_dict_bit_exactly(name):
    make = MAKERS[name]
    X, Y = data()
    model = mlp(bias=True)
    loss0 = float(nn.functional.mse_loss(model(X), Y).detach())
    expected = train(model, make(model.parameters()), 20)
    assert float(nn.functional.mse_loss(model(X), Y).detach()) < 0.9 * loss0

    half = mlp(bias=True)
    opt = make(half.parameters())
    train(half, opt, 10)
    saved_model, saved_opt = copy.deepcopy(half.state_dict()), copy.deepcopy(opt.state_dict())
    resumed = mlp(seed=99, bias=True)
    resumed.load_state_dict(saved_model)
    opt2 = make(resumed.parameters())
    opt2.load_state_dict(saved_opt)
    for a, b in zip(train(resumed, opt2, 10), expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [NorMuon, AdaMuon])
def test_fused_qkv_view_normalizes_each_block_like_a_separate_matrix(cls):
    """nn.MultiheadAttention's in_proj_weight (3d, d) is viewed as 3 matrices (d, d): the
    row statistics and the rescale are per block, as if q, k, v were separate weights."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, bias=False).double()
    routing = split_params(mha, overrides={"in_proj_weight": "spectral", "out_proj.weight": "adamw"})
    kw = dict(lr=0.05, momentum=0.9, orthogonalizer="svd", weight_decay=0.1, cautious_weight_decay=True)
    opt = cls(routing.param_groups(spectral=kw, adamw={"lr": 1e-3}), **kw)
    W = mha.in_proj_weight
    blocks = [nn.Parameter(b.detach().clone()) for b in W.chunk(3)]
    ref = cls(blocks, **kw)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        G = torch.randn(24, 8, generator=g, dtype=F64)
        W.grad = G.clone()
        mha.out_proj.weight.grad = None
        for b, gb in zip(blocks, G.chunk(3)):
            b.grad = gb.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(W.detach(), torch.cat([b.detach() for b in blocks]), rtol=1e-10, atol=1e-12)


def test_torch_compatible_preset_matches_torch_muon_to_bfloat16_rounding():
    """The named preset is torch.optim.Muon's rule; the test of test_optim bounds the
    bfloat16 noise floor, here the two stay within a loose relative bound."""
    kw = dict(lr=0.02, weight_decay=0.1)
    ref = train(m := mlp(), torch.optim.Muon(m.parameters(), **kw), 10)
    ours = train(m := mlp(), Muon.torch_compatible(m.parameters(), **kw), 10)
    for a, b in zip(ours, ref):
        assert float((a - b).norm() / b.norm()) < 0.02
    assert Muon.torch_compatible(mlp().parameters()).defaults["lr"] == 1e-3
    assert all(Muon(mlp().parameters(), **TORCH_MUON).defaults[k] == v for k, v in TORCH_MUON.items())


# -- QK-clip ----------------------------------------------------------------------------------


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=13, context=8, n_layer=2, n_head=4, n_embd=16)
    return GPT(GPTConfig(**{**cfg, **kw})).double()


def logits_of(model, idx):
    """Each layer's (n_head,) largest causal logit, read from a plain forward."""
    seen = []
    hooks = [b.attn.c_attn.register_forward_hook(lambda m, a, o: seen.append(max_logits(o.double(), 4)))
             for b in model.transformer.h]  # fmt: skip
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    return seen


def naive_max_logits(model, idx, inputs=None):
    """Each layer's (n_head,) largest causal logit written out from the attention formula,
    and the inputs of each ``c_attn`` (or of ``inputs``, when given: the clip's guarantee
    is about the batch it read)."""
    out, seen = [], []
    with torch.no_grad():
        x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(idx.shape[1]))
        for i, block in enumerate(model.transformer.h):
            h = block.ln_1(x) if inputs is None else inputs[i]
            seen.append(h)
            W = block.attn.c_attn.weight
            q, k = h @ W[:16].T, h @ W[16:32].T
            heads = []
            for j in range(4):
                S = q[..., 4 * j : 4 * j + 4] @ k[..., 4 * j : 4 * j + 4].transpose(-2, -1) / 2.0  # sqrt(hd = 4)
                T = S.shape[-1]
                heads.append(S.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), -math.inf).max())
            out.append(torch.stack(heads))
            x = block(x)
    return out, seen


@pytest.mark.parametrize("recompute", [True, False])
def test_qk_clip_caps_heads_over_tau_and_leaves_the_rest(recompute):
    model = tiny_gpt()
    with torch.no_grad():  # blow up heads 0 and 2 of every layer
        for block in model.transformer.h:
            for j in (0, 2):
                block.attn.c_attn.weight[4 * j : 4 * j + 4] *= 30.0
                block.attn.c_attn.weight[16 + 4 * j : 16 + 4 * j + 4] *= 30.0
    idx = torch.randint(13, (3, 8), generator=torch.Generator().manual_seed(0))
    before, inputs = naive_max_logits(model, idx)
    for got, want in zip(logits_of(model, idx), before):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)  # max_logits is the formula
    tau = 0.5 * float(torch.stack(before).max())
    over = [s > tau for s in before]
    assert all(o.any() and not o.all() for o in over)  # some heads over tau, some under
    weights = [b.attn.c_attn.weight.detach().clone() for b in model.transformer.h]
    clip = QKClip(model, tau=tau, recompute=recompute)
    model(idx)
    reported = clip.step()
    for r, want in zip(reported, before):
        torch.testing.assert_close(r, want, rtol=1e-10, atol=1e-12)
    for s, o, W0, block in zip(naive_max_logits(model, idx, inputs)[0], over, weights, model.transformer.h):
        W = block.attn.c_attn.weight.detach()
        assert bool((s <= tau * (1 + 1e-9)).all())
        torch.testing.assert_close(s[o], torch.full_like(s[o], tau), rtol=1e-9, atol=0)  # exactly at tau
        for j in range(4):
            rows = [*range(4 * j, 4 * j + 4), *range(16 + 4 * j, 16 + 4 * j + 4)]
            if o[j]:
                assert not torch.equal(W[rows], W0[rows])
            else:
                assert torch.equal(W[rows], W0[rows])  # heads under tau untouched
        assert torch.equal(W[32:], W0[32:])  # values untouched
    clip.remove()


def test_qk_clip_finds_heads_and_rejects_bad_input():
    with pytest.raises(ValueError, match="tau"):
        QKClip(tiny_gpt(), tau=0.0)
    with pytest.raises(ValueError, match="no attention module"):
        QKClip(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="divisible by n_head"):
        max_logits(torch.zeros(1, 2, 9), n_head=2)
    assert len(QKClip(tiny_gpt()).layers) == 2


def max_logit_in_training(lr, clip_tau=None, steps=40):
    """Muon at ``lr`` on one repeated batch of a tiny GPT: the largest attention logit any
    training forward saw from step 5 on, and (with QK-clip, run after each step) the
    largest logit of the final, clipped weights on the last forward's ``c_attn`` inputs."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, context=8, n_layer=2, n_head=2, n_embd=16))
    idx = torch.randint(13, (8, 8), generator=torch.Generator().manual_seed(0))
    opt = Muon(split_params(model).param_groups(spectral={"lr": lr}, adamw={"lr": 1e-3}), **TORCH_MUON)
    if clip_tau is not None:
        QKClip(model, tau=clip_tau, optimizer=opt)
    seen, inputs = [], {}

    def hook(module, args, out):
        seen.append(float(max_logits(out.detach(), 2).max()))
        inputs[module] = args[0].detach()

    hooks = [b.attn.c_attn.register_forward_hook(hook) for b in model.transformer.h]
    for step in range(steps):
        if step == 5:
            seen.clear()
        opt.zero_grad()
        model(idx, targets=idx.roll(-1, 1))[1].backward()
        opt.step()
    for h in hooks:
        h.remove()
    with torch.no_grad():
        final = max(float(max_logits(nn.functional.linear(x, m.weight), 2).max()) for m, x in inputs.items())
    return max(seen), final


def test_muon_clip_keeps_attention_logits_at_tau_at_a_high_learning_rate():
    """Without the clip a high learning rate drives the largest logit past 50 tau; with it
    the clipped weights sit at tau exactly on the batch the clip read, and every training
    forward stays within the one step's drift of the layers' inputs (under 2 tau)."""
    tau = 10.0
    assert max_logit_in_training(lr=0.02)[0] < tau  # a sane lr stays under tau anyway
    assert max_logit_in_training(lr=0.5)[0] > 50 * tau
    during, final = max_logit_in_training(lr=0.5, clip_tau=tau)
    assert final <= tau * (1 + 1e-5)
    assert during < 2 * tau
