"""Matrix views and routing on the models users have: transformers GPT-2, Llama, ViT and
Mixtral built from small configs (random init, nothing downloaded), nn.MultiheadAttention,
torch.compile."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from specgrad.optim import split_params
from specgrad.views import MatrixView, default_view, parse_view, view_of

transformers = pytest.importorskip("transformers")


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(0, 2), rows=st.integers(1, 4), cols=st.integers(1, 4), m=st.integers(1, 5),
       n=st.integers(1, 5), transposed=st.booleans(), data=st.data())  # fmt: skip
def test_matrices_and_restore_are_inverse_and_pick_the_blocks(batch, rows, cols, m, n, transposed, data):
    lead = tuple(data.draw(st.lists(st.integers(1, 3), min_size=batch, max_size=batch)))
    if transposed:
        batch, lead = 0, ()
    stored = (cols * n, rows * m) if transposed else (rows * m, cols * n)
    view = MatrixView(lead + stored, transposed=transposed, batch_dims=batch, row_blocks=rows, col_blocks=cols)
    W = torch.randn(view.shape, dtype=torch.float64)
    X = view.matrices(W)
    assert X.shape == (view.batch, m, n)
    assert torch.equal(view.restore(X), W)
    full = W.reshape(-1, *stored)[-1]
    full = full.T if transposed else full
    assert torch.equal(X[-1], full[(rows - 1) * m :, (cols - 1) * n :])  # the last block of the last matrix


def test_views_reject_shapes_they_cannot_split():
    with pytest.raises(ValueError, match="row_blocks=3"):
        MatrixView((10, 4), row_blocks=3)
    with pytest.raises(ValueError, match="2 dims"):
        MatrixView((4,))
    with pytest.raises(ValueError, match="unknown matrix view"):
        parse_view("diagonal", (4, 4))
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        default_view((4, 4)).matrices(torch.zeros(4, 5))


def test_view_of_each_module_kind():
    mha = nn.MultiheadAttention(16, 4)
    conv1d = transformers.pytorch_utils.Conv1D(48, 16)  # nf=48 outputs, nx=16 inputs: weight (16, 48)
    cases = [
        (nn.Linear(3, 5), "weight", "(5, 3)"),
        (nn.Conv2d(3, 8, 3), "weight", "(8, 27)"),
        (conv1d, "weight", "(48, 16)"),
        (mha, "in_proj_weight", "3 x (16, 16)"),
    ]
    for module, attr, expected in cases:
        assert str(view_of(module, attr, getattr(module, attr))) == expected
    assert str(view_of(conv1d, "weight", conv1d.weight, name="h.0.attn.c_attn.weight")) == "3 x (16, 16)"
    experts = nn.Module()
    experts.w = nn.Parameter(torch.zeros(4, 6, 3))
    assert str(view_of(experts, "w", experts.w)) == "4 x (6, 3)"
    assert view_of(nn.Linear(3, 5), "bias", nn.Linear(3, 5).bias) is None


def _gpt2(**kw):
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16, **kw)
    return transformers.GPT2LMHeadModel(cfg)


def _llama(tied: bool):
    cfg = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64, tie_word_embeddings=tied)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def _routes(model, **kw):
    return {row.name: (row.rule, row.view) for row in split_params(model, **kw).table().itertuples()}


def test_gpt2_conv1d_weights_are_transposed_and_c_attn_is_three_matrices():
    r = _routes(_gpt2())
    assert r["transformer.h.0.attn.c_attn.weight"] == ("spectral", "3 x (32, 32)")
    assert r["transformer.h.0.mlp.c_fc.weight"] == ("spectral", "(128, 32)")
    assert r["transformer.h.1.mlp.c_proj.weight"] == ("spectral", "(32, 128)")
    assert r["transformer.wte.weight"][0] == "adamw"  # tied to lm_head: routed once, as the embedding
    assert "lm_head.weight" not in r
    table = split_params(_gpt2()).table()
    assert "tied to lm_head.weight" in table.set_index("name").loc["transformer.wte.weight", "reason"]
    assert sum(rule == "spectral" for rule, _ in r.values()) == 8


@pytest.mark.parametrize("tied", [True, False])
def test_llama_routes_projections_spectral_and_embedding_head_adamw(tied):
    r = _routes(_llama(tied))
    spectral = [n for n, (rule, _) in r.items() if rule == "spectral"]
    assert len(spectral) == 7  # q, k, v, o, gate, up, down
    assert r["model.layers.0.self_attn.k_proj.weight"] == ("spectral", "(16, 32)")
    assert r["model.embed_tokens.weight"][0] == "adamw"
    assert ("lm_head.weight" in r) == (not tied)
    if not tied:
        assert r["lm_head.weight"][0] == "adamw"


def test_vit_tokens_and_position_embeddings_go_to_adamw():
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4, image_size=16, patch_size=4,
        num_labels=3))  # fmt: skip
    r = _routes(vit)
    assert r["vit.embeddings.cls_token"][0] == "adamw"
    assert r["vit.embeddings.position_embeddings"][0] == "adamw"
    assert r["vit.embeddings.patch_embeddings.projection.weight"][0] == "adamw"  # the first layer
    assert r["classifier.weight"][0] == "adamw"
    assert r["vit.layers.0.mlp.fc1.weight"] == ("spectral", "(64, 32)")
    # a timm/torchvision-style parameter held by a plain module
    m = nn.Sequential(nn.Linear(4, 96), nn.Linear(96, 96), nn.Linear(96, 2))
    m.pos_embed = nn.Parameter(torch.zeros(1, 65, 96))
    m.class_token = nn.Parameter(torch.zeros(1, 1, 96))
    r = _routes(m)
    assert r["pos_embed"][0] == r["class_token"][0] == "adamw"


def test_mixtral_experts_are_batches_and_the_router_goes_to_adamw():
    cfg = transformers.MixtralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=64, num_local_experts=4)  # fmt: skip
    r = _routes(transformers.MixtralForCausalLM(cfg))
    experts = {n: v for n, v in r.items() if ".experts." in n}
    assert experts and all(rule == "spectral" and view.startswith("4 x (") for rule, view in experts.values())
    assert r["model.layers.0.mlp.gate.weight"][0] == "adamw"


def test_multihead_attention_and_compiled_models():
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32), nn.Linear(16, 2))
    r = _routes(model)
    assert r["1.self_attn.in_proj_weight"] == ("spectral", "3 x (16, 16)")
    assert r["1.self_attn.out_proj.weight"] == ("spectral", "(16, 16)")
    assert _routes(model, per_head=True)["1.self_attn.in_proj_weight"] == ("spectral", "12 x (4, 16)")
    compiled = torch.compile(model)
    assert _routes(compiled) == r  # no _orig_mod. prefix, the same decisions


def test_view_overrides_and_unmatched_patterns():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 24), nn.Linear(24, 2))
    r = _routes(model, views={"1.weight": "rows=3"})
    assert r["1.weight"] == ("spectral", "3 x (8, 8)")
    with pytest.raises(ValueError, match="matched no parameter"):
        split_params(model, views={"nope.*": "rows=2"})


def test_per_head_views_split_attention_by_heads():
    r = _routes(_llama(False), per_head=True)
    assert r["model.layers.0.self_attn.q_proj.weight"] == ("spectral", "4 x (8, 32)")
    assert r["model.layers.0.self_attn.k_proj.weight"] == ("spectral", "2 x (8, 32)")  # GQA: 2 key/value heads
    assert r["model.layers.0.self_attn.o_proj.weight"] == ("spectral", "4 x (32, 8)")
    assert r["model.layers.0.mlp.up_proj.weight"] == ("spectral", "(64, 32)")  # not attention: whole
    g = _routes(_gpt2(), per_head=True)
    assert g["transformer.h.0.attn.c_attn.weight"] == ("spectral", "12 x (8, 32)")  # q, k, v heads
    assert g["transformer.h.0.attn.c_proj.weight"] == ("spectral", "4 x (32, 8)")
    assert g["transformer.h.0.mlp.c_proj.weight"] == ("spectral", "(32, 128)")
    mha = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32), nn.Linear(16, 2))
    assert _routes(mha, per_head=True)["1.self_attn.out_proj.weight"] == ("spectral", "4 x (16, 4)")
    assert _routes(_llama(False), head_dim=16)["model.layers.0.self_attn.q_proj.weight"] == ("spectral", "2 x (16, 32)")
    with pytest.raises(ValueError, match="head_dim"):
        split_params(mha, head_dim=0)


def test_muon_on_per_head_views_orthogonalizes_each_head():
    from specgrad.linalg import polar_svd
    from specgrad.optim import Muon

    model = _llama(False).double()
    attn = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(0)
    grads = {p: torch.randn(p.shape, generator=g, dtype=torch.float64) for p in (attn.q_proj.weight, attn.o_proj.weight)}
    before = {p: p.detach().clone() for p in grads}
    for p, G in grads.items():
        p.grad = G.clone()
    routing = split_params(model, per_head=True)
    Muon(routing.param_groups(spectral={"lr": 0.1, "momentum": 0.0, "orthogonalizer": "svd"})).step()
    q, o = attn.q_proj.weight, attn.o_proj.weight
    for h in range(4):
        rows, cols = slice(8 * h, 8 * (h + 1)), slice(8 * h, 8 * (h + 1))
        # q: head h's (8, 32) rows; o: head h's (32, 8) columns, shape scale sqrt(32 / 8) = 2
        torch.testing.assert_close(q[rows], before[q][rows] - 0.1 * polar_svd(grads[q][rows]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(o[:, cols], before[o][:, cols] - 0.1 * 2 * polar_svd(grads[o][:, cols]),
                                   rtol=1e-10, atol=1e-12)  # fmt: skip


def _train_twice(make_opt, seed=0):
    torch.manual_seed(seed)
    model = _llama(False)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    opt = make_opt(model)
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_routed_params_are_the_split_params_groups():
    from specgrad.optim import Muon, routed_params

    a = _train_twice(lambda m: Muon(routed_params(m), lr=0.02, adamw={"lr": 1e-3}))
    b = _train_twice(lambda m: Muon(split_params(m).param_groups(spectral={"lr": 0.02}, adamw={"lr": 1e-3})))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(TypeError, match="nn.Module"):
        routed_params([torch.zeros(2, 2)])


def test_an_optimizer_given_a_model_routes_it_like_split_params():
    from specgrad.optim import Muon, Shampoo

    a = _train_twice(lambda m: Muon(m, lr=0.02, adamw={"lr": 1e-3}))
    b = _train_twice(lambda m: Muon(split_params(m).param_groups(spectral={"lr": 0.02}, adamw={"lr": 1e-3})))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    model = _gpt2()
    opt = Shampoo(model, lr=1e-3)
    W = model.transformer.h[0].attn.c_attn.weight
    assert str(opt.matrix_views[W]) == "3 x (32, 32)"  # the matrix views travel with the groups
    assert opt.param_groups[-1]["algorithm"] == "adamw"
