"""The tiny GPT of ``specgrad.models``: shapes, causality, loss, init, training, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from specgrad.models import GPT, GPTConfig, swiglu_hidden

MLPS = ("gelu", "relu2", "swiglu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest and keeps the suite fast under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(seed: int = 0, **overrides) -> GPT:
    kwargs = dict(vocab_size=13, context=12, n_layer=2, n_head=2, n_embd=16)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**kwargs))


def tokens(B: int, T: int, V: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("mlp", MLPS)
def test_shapes_and_head_tying(mlp, tied):
    model = tiny(mlp=mlp, tied=tied)
    idx = tokens(3, 7)
    logits, loss = model(idx)
    assert logits.shape == (3, 7, 13) and logits.dtype == torch.float32 and loss is None
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    if tied:
        assert head is wte
    else:
        assert head is not wte and head.data_ptr() != wte.data_ptr()
    # a tied head is one parameter, counted once
    distinct = {id(p) for p in model.parameters()}
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert len(distinct) == len(list(model.parameters()))
    untied = tiny(mlp=mlp, tied=False)
    assert untied.num_params() - tiny(mlp=mlp, tied=True).num_params() == 13 * 16
    assert model.num_params(non_embedding=True) == model.num_params() - 12 * 16


def test_module_names_are_stable():
    """Hooks and optimizer routing find the layers under these names."""
    names = dict(tiny(mlp="gelu").named_modules())
    for name in ("transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head",
                 "transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.h.1.attn.c_attn",
                 "transformer.h.1.attn.c_proj", "transformer.h.0.mlp.c_fc",
                 "transformer.h.0.mlp.c_proj"):
        assert name in names, name
    assert names["transformer.h.0.attn.c_attn"].weight.shape == (48, 16)
    swiglu = dict(tiny(mlp="swiglu").named_modules())
    hidden = swiglu_hidden(16)
    assert hidden % 8 == 0 and hidden >= 8 * 16 / 3
    assert swiglu["transformer.h.0.mlp.w1"].weight.shape == (hidden, 16)
    assert swiglu["transformer.h.0.mlp.w2"].weight.shape == (hidden, 16)
    assert swiglu["transformer.h.0.mlp.c_proj"].weight.shape == (16, hidden)
    assert "transformer.h.0.mlp.c_fc" not in swiglu


@pytest.mark.parametrize("mlp", MLPS)
def test_causal_masking(mlp):
    model = tiny(mlp=mlp).double().eval()
    idx = tokens(2, 12)
    logits, _ = model(idx)
    for t in (0, 5, 10):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.arange(12 - t - 1)) % 13
        other, _ = model(changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(other[:, t + 1:], logits[:, t + 1:])


def test_loss_is_cross_entropy_and_ignores_minus_one():
    model = tiny()
    idx, targets = tokens(4, 9, seed=1), tokens(4, 9, seed=2)
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits.reshape(-1, 13), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert abs(loss.item() - math.log(13)) < 0.1  # small init: near-uniform predictions
    targets[:, :4] = -1
    _, masked = model(idx, targets)
    torch.testing.assert_close(masked, F.cross_entropy(logits[:, 4:].reshape(-1, 13),
                                                       targets[:, 4:].reshape(-1)))


def test_nanogpt_init():
    model = tiny(n_layer=4, n_embd=128, n_head=4, vocab_size=256, context=64)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() / (0.02 / math.sqrt(8)) - 1) < 0.1, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() / 0.02 - 1) < 0.1, name
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert torch.equal(p, torch.ones_like(p))
    biased = tiny(bias=True)
    assert all(b.abs().max().item() == 0 for n, b in biased.named_parameters()
               if n.endswith(".bias") and "ln" not in n)


@pytest.mark.parametrize("mlp", MLPS)
def test_adamw_learns_a_repeating_sequence(mlp):
    model = tiny(mlp=mlp, vocab_size=8, context=16, n_layer=1, n_head=2, n_embd=32)
    seq = torch.arange(8).repeat(5)  # 0 1 2 ... 7 0 1 ...
    idx = torch.stack([seq[i: i + 16] for i in range(8)])
    targets = torch.stack([seq[i + 1: i + 17] for i in range(8)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.5 and losses[-1] < 0.1, losses[::10]


@pytest.mark.parametrize("overrides, match", [
    (dict(n_head=3), "n_embd \\(16\\) must be divisible by n_head \\(3\\)"),
    (dict(vocab_size=0), "vocab_size must be a positive integer, got 0"),
    (dict(context=-4), "context must be a positive integer, got -4"),
    (dict(n_layer=1.5), "n_layer must be a positive integer, got 1.5"),
    (dict(n_embd=True), "n_embd must be a positive integer, got True"),
    (dict(mlp="tanh"), "mlp must be one of .*'tanh'"),
    (dict(dropout=1.0), "dropout must be a float in \\[0, 1\\), got 1.0"),
    (dict(tied="yes"), "tied must be a bool, got 'yes'"),
])
def test_bad_config_raises(overrides, match):
    kwargs = dict(vocab_size=13, context=12, n_layer=2, n_head=2, n_embd=16)
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_bad_input_raises():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds context 12"):
        model(tokens(1, 13))
    with pytest.raises(ValueError, match="long tensor, got \\(2, 3\\) torch.float32"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="long tensor, got \\(5,\\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have the shape of idx"):
        model(tokens(2, 4), tokens(2, 5))


def test_dropout_only_in_training():
    model = tiny(dropout=0.5)
    idx = tokens(2, 8)
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])
