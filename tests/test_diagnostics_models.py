"""The diagnostics on the models users have: transformers GPT-2, Llama (tied and untied),
ViT and Mixtral built from small configs (random init, nothing downloaded), a ResNet-style
conv net, nn.MultiheadAttention, torch.compile.

Coverage: every matrix the routing sends to the spectral rule (a batched view counted as
its blocks) is monitored or listed as skipped with a reason. The numbers of a Conv1D block,
MultiheadAttention's q/k/v/out blocks and an expert are checked against float64 references
computed from inputs captured here.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specgrad.diagnostics import SpectralMonitor, diagnose
from specgrad.linalg import nuclear_rank, stable_rank
from specgrad.optim import split_params

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

D = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ids_batch(vocab=64, shape=(2, 16), seed=0):
    ids = torch.randint(0, vocab, shape, generator=gen(seed))
    return {"input_ids": ids, "labels": ids}


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0,
                                  eos_token_id=0)  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg), ids_batch()


def llama(tied=True, layers=2):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64, tie_word_embeddings=tied)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg), ids_batch()


def mixtral():
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=64, num_local_experts=4)  # fmt: skip
    return transformers.MixtralForCausalLM(cfg), ids_batch(shape=(2, 24))


def vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                 image_size=16, patch_size=4, num_labels=3)  # fmt: skip
    x = torch.randn(4, 3, 16, 16, generator=gen(1))
    return transformers.ViTForImageClassification(cfg), {"pixel_values": x, "labels": torch.tensor([0, 1, 2, 0])}


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3x3 convs with BatchNorm, a 1x1 projection when the shape
    changes, and a depthwise (grouped) conv that the monitor cannot unfold."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.depthwise = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride > 1 else None

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.depthwise(self.bn2(self.conv2(h)))
        return F.relu(h + (x if self.down is None else self.down(x)))


def resnet():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))  # fmt: skip
    x, y = torch.randn(8, 3, 8, 8, generator=gen(2)), torch.randint(0, 10, (8,), generator=gen(3))
    return net, (lambda m: F.cross_entropy(m(x), y))


def encoder(dropout=0.0):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32, dropout=dropout), nn.Linear(16, 2))
    x = torch.randn(5, 3, 8, generator=gen(4))
    return net, (lambda m: m(x).pow(2).mean())


MODELS = {"gpt2": gpt2, "llama-tied": lambda: llama(True), "llama-untied": lambda: llama(False), "vit": vit,
          "resnet": resnet, "multihead-attention": encoder, "mixtral": mixtral}  # fmt: skip
# blocks the routing sends to the spectral rule; of those, the ones skipped with a reason
ROUTED = {"gpt2": (12, 0), "llama-tied": (14, 0), "llama-untied": (14, 0), "vit": (6, 0), "resnet": (7, 2),
          "multihead-attention": (6, 0), "mixtral": (12, 0)}  # fmt: skip


def loss_of(model, batch):
    return batch(model) if callable(batch) else model(**batch).loss


@pytest.mark.parametrize("name", list(MODELS))
def test_coverage_is_every_routed_matrix_monitored_or_skipped_with_a_reason(name):
    model, batch = MODELS[name]()
    views = split_params(model).views()
    routed = sum(v.batch for v in views.values())
    with SpectralMonitor(model, every=1) as mon:
        cov = mon.coverage()
        loss_of(model, batch).backward()
        recorded = {r["block"] for r in mon.step()}
    spectral = cov[cov["parameter"].isin(views)]
    for pname, view in views.items():  # a batched view counts as its blocks
        assert (spectral["parameter"] == pname).sum() == view.batch, pname
    skipped = spectral[spectral["status"] == "skipped"]
    assert (len(spectral), len(skipped)) == (routed, ROUTED[name][1]) and routed == ROUTED[name][0]
    assert (skipped["reason"].str.len() > 0).all()
    # every monitored block of a routed matrix got a record
    assert set(spectral.loc[spectral["status"] == "monitored", "block"]) <= recorded
    # nothing silently missing: every parameter with >= 2 dims is somewhere in the coverage
    matrices = {n for n, p in model.named_parameters() if p.ndim >= 2}
    assert matrices <= set(cov["parameter"])
    assert set(cov.loc[cov["status"] == "skipped", "block"]) == set(mon.skipped)


def test_skip_reasons_name_what_the_monitor_cannot_see():
    skipped = SpectralMonitor(resnet()[0]).skipped
    assert skipped["3.depthwise"] == skipped["4.depthwise"] == "grouped convolution"
    skipped = SpectralMonitor(vit()[0]).skipped
    assert set(skipped) == {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"}
    assert all("position embedding" in r for r in skipped.values())
    skipped = SpectralMonitor(mixtral()[0]).skipped
    assert list(skipped) == ["model.layers.0.mlp.gate.weight"] and "add_block" in skipped["model.layers.0.mlp.gate.weight"]
    frozen = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    frozen[0].weight.requires_grad_(False)
    assert SpectralMonitor(frozen).skipped == {"0": "frozen (requires_grad=False)"}


class Scaled(nn.Linear):
    """A Linear with a matrix of its own the monitor knows nothing about."""

    def __init__(self, n):
        super().__init__(n, n)
        self.mix = nn.Parameter(torch.eye(n))

    def forward(self, x):
        return super().forward(x @ self.mix)


def test_conv1d_patches_and_unknown_matrices():
    torch.manual_seed(10)
    net = nn.Sequential(nn.Conv1d(3, 4, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten(), Scaled(20), nn.Linear(20, 1)).to(D)
    x = torch.randn(6, 3, 10, generator=gen(10), dtype=D)
    with SpectralMonitor(net, every=1) as mon:
        assert mon.skipped == {"3.mix": "Scaled.mix: the monitor does not know which input it multiplies (add_block with an "
                                        "activation getter)"}  # fmt: skip
        net(x).pow(2).sum().backward()
        rows = {r["block"]: r for r in mon.step()}
    patches = F.unfold(x.unsqueeze(2), (1, 5), padding=(0, 2), stride=(1, 2)).transpose(1, 2).reshape(-1, 15)
    r = rows["0"]
    assert (r["kind"], r["shape"], r["rows"]) == ("conv1d", "4x15", 30)
    assert r["st_A"] == pytest.approx(float(stable_rank(patches)), rel=1e-9)
    assert r["nr_G"] == pytest.approx(float(nuclear_rank(net[0].weight.grad.reshape(4, 15))), rel=1e-9)


def captured_inputs(module, store, key):
    return module.register_forward_pre_hook(lambda m, args, kwargs: store.__setitem__(key, (args, kwargs)),
                                            with_kwargs=True)  # fmt: skip


def test_gpt2_conv1d_blocks_match_float64_references_and_add_fused_splits_c_attn():
    model, batch = gpt2()
    model = model.to(D)
    attn = model.transformer.h[1].attn
    seen = {}
    handles = [captured_inputs(attn.c_attn, seen, "c_attn"),
               captured_inputs(model.transformer.h[1].mlp.c_proj, seen, "c_proj")]  # fmt: skip
    with SpectralMonitor(model, every=1) as mon:
        mon.add_fused("fused", attn.c_attn).add_block("whole", attn.c_attn)  # by hand, on the same tap
        model(**batch).loss.backward()
        rows = {r["block"]: r for r in mon.step()}
    for h in handles:
        h.remove()
    x = seen["c_attn"][0][0].detach().reshape(-1, 32)
    G = attn.c_attn.weight.grad.T  # (3d, d): the Conv1D stores (in, out)
    for i, part in enumerate("qkv"):
        r = rows[f"transformer.h.1.attn.c_attn.{part}"]
        assert r["shape"] == "32x32" and r["rows"] == 32
        assert r["st_A"] == pytest.approx(float(stable_rank(x)), rel=1e-7)
        assert r["nr_G"] == pytest.approx(float(nuclear_rank(G[32 * i : 32 * (i + 1)])), rel=1e-7)
        for key in ("st_A", "nr_G", "grad_fro"):
            assert rows[f"fused.{part}"][key] == pytest.approx(r[key], rel=1e-12)
    assert rows["whole"]["shape"] == "96x32"
    assert rows["whole"]["nr_G"] == pytest.approx(float(nuclear_rank(G)), rel=1e-7)
    h = seen["c_proj"][0][0].detach().reshape(-1, 128)
    r = rows["transformer.h.1.mlp.c_proj"]
    assert r["shape"] == "32x128"
    assert r["st_A"] == pytest.approx(float(stable_rank(h)), rel=1e-7)
    assert r["nr_G"] == pytest.approx(float(nuclear_rank(model.transformer.h[1].mlp.c_proj.weight.grad.T)), rel=1e-7)


def test_multihead_attention_q_k_v_and_out_proj_match_float64_references():
    """Cross-attention (query differs from key and value) with attention dropout: q is fed
    by the query, k and v by the key/value; out_proj by the attention output, recomputed
    with the forward's dropout masks (so its gradient is dY^T A exactly)."""
    torch.manual_seed(5)
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True).to(D)
    q = torch.randn(2, 3, 8, generator=gen(5), dtype=D)
    kv = torch.randn(2, 4, 8, generator=gen(6), dtype=D)
    R = torch.randn(2, 3, 8, generator=gen(7), dtype=D)
    with SpectralMonitor(nn.Sequential(mha), every=1) as mon:
        assert mon.blocks == ["0.q", "0.k", "0.v", "0.out_proj"]
        out, _ = mha(q, kv, kv, need_weights=False)
        dY = []
        out.register_hook(dY.append)
        ((out * R).sum() + out.pow(2).sum()).backward()
        A = mon.block("0.out_proj").statistic.kept  # rows kept as they are: (6, 8)
        rows = {r["block"]: r for r in mon.step()}
    G = mha.in_proj_weight.grad
    for i, (part, x) in enumerate(zip("qkv", (q, kv, kv))):
        r = rows[f"0.{part}"]
        assert r["rows"] == x.shape[0] * x.shape[1]
        assert r["st_A"] == pytest.approx(float(stable_rank(x.reshape(-1, 8))), rel=1e-7)
        assert r["nr_G"] == pytest.approx(float(nuclear_rank(G[8 * i : 8 * (i + 1)])), rel=1e-7)
    assert A is not None and A.shape == (6, 8)
    G_out = mha.out_proj.weight.grad
    assert torch.allclose(G_out, dY[0].reshape(-1, 8).T @ A, rtol=1e-10, atol=1e-12)  # the masks of the real forward
    assert rows["0.out_proj"]["st_A"] == pytest.approx(float(stable_rank(A)), rel=1e-7)
    assert rows["0.out_proj"]["nr_G"] == pytest.approx(float(nuclear_rank(G_out)), rel=1e-7)


def test_multihead_attention_per_head_views_and_separate_projections():
    model, _ = encoder()
    views = split_params(model, per_head=True).views()
    mon = SpectralMonitor(model, views=views)
    blocks = [b for b in mon.blocks if b.startswith("1.self_attn.")]
    assert len(blocks) == 12 + 4 and blocks[:2] == ["1.self_attn.q.0", "1.self_attn.q.1"]
    assert blocks[-4:] == [f"1.self_attn.out_proj.cols{h}" for h in range(4)]  # out_proj: one block per head's columns
    mon.close()
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=3)  # three separate weights
    mon = SpectralMonitor(nn.Sequential(mha), every=1)
    assert mon.blocks == ["0.q", "0.k", "0.v", "0.out_proj"]
    kv = torch.randn(4, 1, 5), torch.randn(4, 1, 3)
    mha(torch.randn(2, 1, 8), *kv)[0].sum().backward()
    rows = {r["block"]: r for r in mon.step()}
    assert (rows["0.k"]["shape"], rows["0.v"]["shape"], rows["0.k"]["rows"]) == ("8x5", "8x3", 4)
    mon.close()


def test_expert_blocks_match_float64_references_from_the_routed_tokens():
    model, batch = mixtral()
    model = model.to(D)
    model.set_experts_implementation("eager")  # grouped_mm has no float64
    experts = model.model.layers[0].mlp.experts
    seen = {}
    handle = captured_inputs(experts, seen, "experts")
    with SpectralMonitor(model, every=1) as mon:
        model(**batch).loss.backward()
        rows = {r["block"]: r for r in mon.step()}
    handle.remove()
    hidden, top_k_index, _ = seen["experts"][0]
    total = 0
    for e in range(4):
        x = hidden.detach()[(top_k_index == e).any(-1)]
        gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
        h = F.silu(gate) * up
        r1, r2 = rows[f"model.layers.0.mlp.experts.gate_up_proj.{e}"], rows[f"model.layers.0.mlp.experts.down_proj.{e}"]
        assert r1["rows"] == r2["rows"] == len(x) > 0
        assert (r1["shape"], r2["shape"]) == ("128x32", "32x64")
        assert r1["st_A"] == pytest.approx(float(stable_rank(x)), rel=1e-7)
        assert r2["st_A"] == pytest.approx(float(stable_rank(h.detach())), rel=1e-7)
        assert r1["nr_G"] == pytest.approx(float(nuclear_rank(experts.gate_up_proj.grad[e])), rel=1e-7)
        assert r2["nr_G"] == pytest.approx(float(nuclear_rank(experts.down_proj.grad[e])), rel=1e-7)
        total += len(x)
    assert total == 48 * 2  # every token goes to its top 2 experts


def test_transposed_expert_blocks_of_gpt_oss_match_float64_references():
    """gpt-oss stores experts ``(E, in, out)`` and calls them with ``router_indices``; its
    ``down_proj`` input is the module's own clamped gate."""
    torch.manual_seed(0)
    cfg = transformers.GptOssConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8, vocab_size=64, num_local_experts=4,
                                    num_experts_per_tok=2, layer_types=["full_attention"])  # fmt: skip
    model = transformers.GptOssForCausalLM(cfg).to(D)
    model.set_experts_implementation("eager")
    experts = model.model.layers[0].mlp.experts
    seen = {}
    handle = captured_inputs(experts, seen, "experts")
    with SpectralMonitor(model, every=1) as mon:
        assert not [s for s in mon.skipped if "experts" in s]
        model(**ids_batch(shape=(2, 24))).loss.backward()
        rows = {r["block"]: r for r in mon.step()}
    handle.remove()
    hidden, router_indices, _ = seen["experts"][0]
    for e in range(4):
        x = hidden.detach()[(router_indices == e).any(-1)]
        h = experts._apply_gate(x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]).detach()
        r1, r2 = rows[f"model.layers.0.mlp.experts.gate_up_proj.{e}"], rows[f"model.layers.0.mlp.experts.down_proj.{e}"]
        assert (r1["shape"], r2["shape"]) == ("96x32", "32x48")
        assert r1["st_A"] == pytest.approx(float(stable_rank(x)), rel=1e-7)
        assert r2["st_A"] == pytest.approx(float(stable_rank(h)), rel=1e-7)
        assert r1["nr_G"] == pytest.approx(float(nuclear_rank(experts.gate_up_proj.grad[e])), rel=1e-7)
        assert r2["nr_G"] == pytest.approx(float(nuclear_rank(experts.down_proj.grad[e])), rel=1e-7)


def test_compiled_model_is_monitored_through_its_original_modules():
    """Names without ``_orig_mod.``, the records of the eager model; the monitored steps run
    eagerly and the others run the compiled graph."""
    model, batch = encoder()
    graph_calls = []

    def backend(gm, example_inputs):
        return lambda *args: graph_calls.append(1) or gm.forward(*args)

    def train(m, mon, steps=4):
        calls = []
        for _ in range(steps):
            m.zero_grad()
            before = len(graph_calls)
            loss_of(m, batch).backward()
            mon.step()
            calls.append(len(graph_calls) - before)
        return calls

    with SpectralMonitor(model, every=2) as mon:
        train(model, mon)
        ref = mon.frame()
    compiled = torch.compile(model, backend=backend)
    with SpectralMonitor(compiled, every=2) as mon:
        assert not any("_orig_mod" in b for b in mon.blocks) and mon.blocks == list(dict.fromkeys(ref["block"]))
        calls = train(compiled, mon)
        got = mon.frame()
    assert calls[0] == calls[2] == 0 and calls[1] > 0 and calls[3] > 0
    assert list(got["block"]) == list(ref["block"])
    for key in ("st_A", "nr_G", "rows"):
        assert got[key].tolist() == pytest.approx(ref[key].tolist(), rel=1e-7)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in compiled.modules()) == 0
    assert (split_params(compiled).names("spectral") == split_params(model).names("spectral"))
    report = diagnose(compiled, batch)
    assert list(report["block"]) == list(dict.fromkeys(ref["block"]))


def test_diagnose_takes_a_dict_batch_and_reports_a_tied_weight_once():
    model, batch = gpt2()
    report = diagnose(model, batch)  # model(**batch).loss, no loss_fn
    assert report.attrs["skipped"] == {}
    tied = report[report["tied"] != ""]
    assert tied["block"].tolist() == ["lm_head"] and tied["tied"].iloc[0] == "transformer.wte, lm_head"
    assert "transformer.wte" not in set(report["block"])
    assert tied["parameter"].iloc[0] == "transformer.wte.weight"
    G = model.lm_head.weight.grad  # the combined gradient of both uses
    assert tied["nr_G"].iloc[0] == pytest.approx(float(nuclear_rank(G.double())), rel=1e-6)
    assert {"transformer.h.0.attn.c_attn.q", "transformer.h.1.mlp.c_proj"} <= set(report["block"])
    assert (report["verdict"].isin(["spectral", "euclidean"])).all()
    same = diagnose(model, lambda m: m(**batch).loss)  # a model-call function
    for key in ("st_A", "nr_G"):
        assert same[key].tolist() == pytest.approx(report[key].tolist(), rel=1e-6)
    ids = batch["input_ids"]
    logits = diagnose(model, {"input_ids": ids},
                      lambda out: F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)))
    assert logits["nr_G"].tolist() == pytest.approx(report["nr_G"].tolist(), rel=1e-4)


def test_probe_runs_in_float64_and_gives_a_verdict_for_every_matrix_of_a_tiny_llama():
    """After 20 AdamW steps (at initialization the loss is not convex along most
    gradients): every block but the embedding gets a measured verdict, the probe's numbers
    are those of an explicit float64 copy, and the float32 model is left as it was."""
    model, batch = llama(tied=False, layers=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(20):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = diagnose(model, batch, probe=True)
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in model.named_parameters())
    probed = report[report["measured"] != "n/a"]
    assert len(probed) == len(report) - 1 == 8, report[["block", "curvature", "probe_note"]]
    assert report.set_index("block").loc["model.embed_tokens", "probe_note"].startswith("embedding")
    assert (probed["curvature"] > 0).all() and probed["agrees"].notna().all()
    reference = diagnose(copy.deepcopy(model).to(D), batch, probe=True)
    for key in ("curvature", "loss_euclidean", "loss_spectral"):
        assert report[key].tolist() == pytest.approx(reference[key].tolist(), rel=1e-9, nan_ok=True)


def test_diagnose_restores_batchnorm_buffers_modes_and_the_random_state():
    model, batch = resnet()
    model.train()
    model[3].bn1.eval()  # a frozen BatchNorm inside a training model
    modes = {n: m.training for n, m in model.named_modules()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    report = diagnose(model, batch, probe=True)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert set(report.attrs["skipped"]) == {"3.depthwise", "4.depthwise"}
    assert len(report) == 7  # the 5 routed convs it can unfold, the first conv and the head


class WithUnused(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body, self.unused = body, nn.Linear(6, 6)

    def forward(self, x):
        return self.body(x)


def test_all_zero_gradient_says_no_gradient_and_unprobeable_blocks_are_marked():
    torch.manual_seed(8)
    net = WithUnused(nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 1))).to(D)
    x, y = torch.randn(64, 6, generator=gen(8), dtype=D), torch.randn(64, 1, generator=gen(9), dtype=D)
    with torch.no_grad():
        net.body[2].weight.zero_()  # layers 0 and 2 get all-zero gradients: nothing flows back through 2
    report = diagnose(net, (x, y), F.mse_loss, probe=True, max_dim=16).set_index("block")
    assert report.loc["body.0", "verdict"] == report.loc["unused", "verdict"] == "no gradient"
    assert report.loc["body.0", "probe_note"] == report.loc["unused", "probe_note"] == "no gradient"
    assert report.loc["body.2", "verdict"] in ("spectral", "euclidean")
    assert report.loc["body.2", "measured"] == "n/a" and "max_dim" in report.loc["body.2", "probe_note"]  # 40 > 16
    assert report.loc["body.4", "measured"] in ("spectral", "euclidean")  # the others are still probed
    with SpectralMonitor(net, every=1) as mon:
        F.mse_loss(net(x), y).backward()
        rows = {r["block"]: r for r in mon.step()}
    assert rows["body.0"]["verdict"] == "no gradient" and rows["body.0"]["nr_G"] == 0.0
