"""The condition-driven Hybrid optimizer: decisions follow nr(M) vs st(A), steps follow the
stated rules, and switching has hysteresis."""

import copy

import pytest
import torch
from torch import nn

from specgrad.linalg import polar_svd
from specgrad.optim import Hybrid, Muon, split_params


def random_features(act: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(50, 400, generator=g, dtype=torch.float64)
    V = torch.randn(100, 50, generator=g, dtype=torch.float64) / 50**0.5
    if act == "relu":
        A = torch.relu(V @ X)
    else:
        V2 = torch.randn(100, 50, generator=g, dtype=torch.float64) / 50**0.5
        A = nn.functional.silu(V @ X) * (V2 @ X)
    Y = (torch.randn(100, 100, generator=g, dtype=torch.float64) / 10) @ A
    return A, Y


def least_squares(A, Y, steps):
    net = nn.Sequential(nn.Identity(), nn.Linear(100, 100, bias=False)).double()
    nn.init.zeros_(net[1].weight)
    opt = Hybrid(net, lr=1.0, every=1, decision="decrease", momentum=0.0, orthogonalizer="svd",
                 overrides={"1.weight": "spectral"})
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (net(A.T) - Y.T).pow(2).sum(1).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    opt.close()
    return net, opt, losses


@pytest.mark.parametrize("act, expected", [("relu", "spectral"), ("swiglu", "euclidean")])
def test_decrease_rule_picks_the_study_winner_and_descends(act, expected):
    A, Y = random_features(act)
    _, opt, losses = least_squares(A, Y, 40)
    choices = opt.decisions()["choice"]
    assert (choices == expected).mean() > 0.6
    # both majorization steps guarantee descent on least squares
    assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:]))


def test_first_step_is_the_majorization_step():
    A, Y = random_features("relu")
    net, _, _ = least_squares(A, Y, 1)
    n = A.shape[1]
    G = -(Y @ A.T) / n  # gradient at W = 0
    nuc = torch.linalg.svdvals(G).sum()
    L_op = torch.linalg.matrix_norm(A, "fro") ** 2 / n
    expected = -(nuc / L_op) * polar_svd(G)  # nr(G) >= st(A) here: the spectral step
    torch.testing.assert_close(net[1].weight.detach(), expected, rtol=1e-9, atol=1e-12)


def test_ratio_rule_switches_with_hysteresis_only():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = Hybrid(net, every=1, hysteresis=0.25, smoothing=0.0)
    p = net[2].weight
    state = {"spectral": torch.tensor(1.0), "log_ratio": torch.tensor(float("nan"))}
    group = opt.param_groups[0]
    seq = [(2.0, 1.0), (0.9, 1.0), (0.85, 1.0), (0.7, 1.0), (1.1, 1.0), (1.2, 1.0), (1.3, 1.0)]
    choices = []
    for nr, st in seq:
        opt.decider.ratio_rule(p, state, nr, st, group)
        choices.append(bool(state["spectral"]))
    # 0.9 and 0.85 sit inside the band (1/1.25, 1.25): no flap; 0.7 leaves it; 1.1, 1.2 stay; 1.3 returns
    assert choices == [True, True, True, False, False, False, True]
    log = opt.decisions()
    assert list(log.columns) == ["step", "block", "nr", "st", "ratio", "smoothed_ratio", "choice"]
    assert set(log["block"]) == {"2.weight"}
    opt.close()


def test_training_logs_decisions_and_close_removes_hooks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = Hybrid(net, lr=1e-2, every=2, euclidean="sgd")
    x, y = torch.randn(128, 16), torch.randn(128, 1)
    first = None
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first
    log = opt.decisions()
    assert sorted(log["step"].unique().tolist()) == [0, 2, 4, 6, 8]
    assert (log["nr"] > 0).all() and (log["st"] >= 1).all()
    opt.close()
    assert all(not m._forward_hooks for m in net.modules())


def test_bad_settings_are_named():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match="euclidean"):
        Hybrid(net, euclidean="lion")
    with pytest.raises(ValueError, match="decision"):
        Hybrid(net, decision="vote")
    with pytest.raises(ValueError, match="force"):
        Hybrid(net, force="adam")
    with pytest.raises(ValueError, match="every"):
        Hybrid(net, every=0)
    with pytest.raises(ValueError, match="hysteresis"):
        Hybrid(net, hysteresis=-1.0)


def test_forced_rules_are_the_pure_baselines():
    """force="euclidean" (adamw) is AdamW on every parameter (at lr x euclidean_scale on the
    blocks); force="spectral" in the
    decrease variant takes the spectral majorization step even where GD's is larger."""
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    adamw = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0}
    hyb = Hybrid(a, lr=5e-3, euclidean_scale=2.0, every=1, force="euclidean", adamw=adamw)
    ref = torch.optim.AdamW(b.parameters(), **adamw)
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    for _ in range(4):
        for net, opt in ((a, hyb), (b, ref)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert set(hyb.decisions()["choice"]) == {"euclidean"}
    hyb.close()

    A, Y = random_features("swiglu")  # the decrease rule would pick the Euclidean step here
    net = nn.Sequential(nn.Identity(), nn.Linear(100, 100, bias=False)).double()
    nn.init.zeros_(net[1].weight)
    opt = Hybrid(net, lr=1.0, every=1, decision="decrease", force="spectral", momentum=0.0,
                 orthogonalizer="svd", overrides={"1.weight": "spectral"})
    (0.5 * (net(A.T) - Y.T).pow(2).sum(1).mean()).backward()
    opt.step()
    n = A.shape[1]
    G = -(Y @ A.T) / n
    expected = -(torch.linalg.svdvals(G).sum() * n / torch.linalg.matrix_norm(A, "fro") ** 2) * polar_svd(G)
    torch.testing.assert_close(net[1].weight.detach(), expected, rtol=1e-9, atol=1e-12)
    opt.close()


def test_a_block_turning_spectral_takes_the_spectral_step_at_once():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = Hybrid(net, lr=1e-2, every=1, hysteresis=0.0, smoothing=0.0, orthogonalizer="svd", momentum=0.0)
    x = torch.randn(256, 8)

    def step():
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()

    step()
    assert opt.decisions()["choice"].iloc[-1] == "spectral"  # ReLU features: nr(M) > st(A)
    W = net[2].weight
    opt.state[W]["spectral"].fill_(0.0)  # as if the last measurement had said Euclidean
    before = W.detach().clone()
    step()
    assert opt.decisions()["choice"].iloc[-1] == "spectral"
    # the step taken is lr * match_rms_adamw scale * polar(G) of this step's gradient
    scale = 0.2 * 64**0.5
    torch.testing.assert_close(before - W.detach(), 1e-2 * scale * polar_svd(W.grad), rtol=1e-4, atol=1e-6)
    opt.close()


class TinyResNet(nn.Module):
    """A stem, one residual block of 3x3 convs with BatchNorm, a strided conv and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.head(torch.relu(self.down(x)).mean((2, 3)))


class PosEmbedNet(nn.Module):
    """A ViT-like position embedding ``(1, 65, 96)`` added to the tokens, then an MLP."""

    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 65, 96))
        self.proj = nn.Linear(96, 96)
        self.mid = nn.Linear(96, 96)
        self.head = nn.Linear(96, 4)

    def forward(self, x):
        h = torch.relu(self.proj(x + self.pos_embed))
        return self.head(torch.relu(self.mid(h)).mean(1))


def train_classifier(net, opt, x, y, steps=20):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("euclidean", ["adamw", "sgd"])
def test_hybrid_trains_a_conv_net_on_the_matrix_views(euclidean):
    torch.manual_seed(0)
    net = TinyResNet()
    # conv2 takes the Euclidean rule throughout, the others what the test says
    opt = Hybrid(net, lr=1e-2, every=2, euclidean=euclidean, force={"conv2.*": "euclidean"}, adamw={"lr": 1e-2})
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    losses = train_classifier(net, opt, x, y)
    assert losses[-1] < 0.8 * losses[0]
    assert all(torch.isfinite(p).all() for p in net.parameters())
    log = opt.decisions()
    assert set(log["block"]) == {"conv1.weight", "conv2.weight", "down.weight"}  # stem and head take AdamW
    assert sorted(log["step"].unique().tolist()) == list(range(0, 20, 2))
    assert (log["nr"] > 0).all() and (log["st"] >= 1).all()
    assert set(log[log["block"] == "conv2.weight"]["choice"]) == {"euclidean"}
    assert opt.state[net.down.weight]["exp_avg"].shape == net.down.weight.shape  # (16, 8, 3, 3)
    opt.close()
    assert all(not m._forward_hooks for m in net.modules())


def test_forced_spectral_hybrid_on_convs_is_muon_on_the_matrix_views():
    """force="spectral" is Muon (same momentum, shape scaling, polar factor of the
    (out, in*kh*kw) view) on the routed convs and AdamW on the rest."""
    torch.manual_seed(0)
    a, b = TinyResNet(), TinyResNet()
    b.load_state_dict(a.state_dict())
    adamw = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0}
    hyb = Hybrid(a, lr=1e-2, every=1, force="spectral", adamw=adamw)
    routing = split_params(b)
    muon = Muon(routing.param_groups(spectral={"lr": 1e-2, "shape_scaling": "match_rms_adamw"}, adamw=adamw),
                orthogonalizer="newton_schulz", ns_dtype=None)  # Hybrid's default orthogonalizer
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for net, opt in ((a, hyb), (b, muon)):
        train_classifier(net, opt, x, y, steps=4)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    hyb.close()


def test_hybrid_trains_a_3d_position_embedding():
    torch.manual_seed(0)
    net = PosEmbedNet()
    opt = Hybrid(net, lr=1e-2, every=2, overrides={"pos_embed": "spectral"}, adamw={"lr": 1e-2})
    x, y = torch.randn(16, 65, 96), torch.randint(0, 4, (16,))
    before = net.pos_embed.detach().clone()
    losses = train_classifier(net, opt, x, y)
    assert losses[-1] < 0.8 * losses[0]
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert not torch.equal(net.pos_embed.detach(), before)
    assert opt.state[net.pos_embed]["exp_avg"].shape == (1, 65, 96)
    log = opt.decisions()
    assert set(log["block"]) == {"mid.weight"}  # no layer feeds pos_embed: it keeps its rule
    assert len(log) == 10
    opt.close()


def test_state_dict_round_trip_continues_identically():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32),
                             nn.ReLU(), nn.Linear(32, 1))  # fmt: skip

    x, y = torch.randn(64, 8), torch.randn(64, 1)

    def train(net, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()

    net = make()
    opt = Hybrid(net, lr=1e-2, every=1, hysteresis=0.0)
    train(net, opt, 5)
    saved_net, saved_opt = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    train(net, opt, 5)
    resumed = make()
    resumed.load_state_dict(saved_net)
    opt2 = Hybrid(resumed, lr=1e-2, every=1, hysteresis=0.0)
    opt2.load_state_dict(saved_opt)
    train(resumed, opt2, 5)
    for p, q in zip(net.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt.decisions()["choice"].tolist()[-4:] == opt2.decisions()["choice"].tolist()[-4:]
    opt.close()
    opt2.close()


def test_a_failing_constructor_leaves_no_hooks():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match="momentum"):
        Hybrid(net, momentum=1.5)
    assert all(not m._forward_hooks for m in net.modules())


# -- matrix views: every block of the models users train -----------------------------------


def test_hybrid_on_gpt2_decides_every_conv1d_block():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = Hybrid(model, lr=1e-2, every=2)
    for _ in range(4):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    log = opt.decisions()
    expected = {f"transformer.h.{i}.{b}" for i in range(2) for b in
                ("attn.c_attn.q", "attn.c_attn.k", "attn.c_attn.v", "attn.c_proj.weight", "mlp.c_fc.weight",
                 "mlp.c_proj.weight")}  # fmt: skip
    assert sorted(log["step"].unique().tolist()) == [0, 2]
    for step in (0, 2):
        assert set(log[log["step"] == step]["block"]) == expected  # 8 Conv1D weights, c_attn as q, k, v
    assert (log["nr"] > 0).all() and (log["st"] >= 1).all()
    assert opt.decider.unmeasured == {}
    assert opt.state[model.transformer.h[0].attn.c_attn.weight]["spectral"].shape == (3,)
    opt.close()


def test_hybrid_decides_each_expert_and_each_attention_block():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=64, num_local_experts=4)  # fmt: skip
    model = transformers.MixtralForCausalLM(cfg)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = Hybrid(model, lr=1e-2, every=1)
    opt.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    blocks = set(opt.decisions()["block"])
    experts = "model.layers.0.mlp.experts"
    assert {f"{experts}.{w}.{e}" for w in ("gate_up_proj", "down_proj") for e in range(4)} <= blocks
    assert {f"model.layers.0.self_attn.{x}_proj.weight" for x in "qkvo"} <= blocks
    opt.close()
    mha = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0), nn.Linear(16, 2))
    opt = Hybrid(mha, lr=1e-2, every=1)
    nn.functional.mse_loss(mha(torch.randn(6, 3, 8)), torch.randn(6, 3, 2)).backward()
    opt.step()
    assert {"1.self_attn.q", "1.self_attn.k", "1.self_attn.v", "1.self_attn.out_proj.weight"} <= set(opt.decisions()["block"])
    opt.close()


class Experts(nn.Module):
    """A stack of 4 matrices ``(6, 5)`` whose input the monitor cannot see."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 6, 5) / 5**0.5)

    def forward(self, x):
        return torch.einsum("nd,eod->neo", x, self.w).mean(1)


@pytest.mark.parametrize("euclidean", ["adamw", "sgd"])
def test_a_stack_takes_each_matrix_from_its_own_rule(euclidean):
    x, y = torch.randn(32, 5, generator=torch.Generator().manual_seed(1)), torch.randn(32, 2)
    results = {}
    for name, mask in (("spectral", [1, 1, 1, 1]), ("euclidean", [0, 0, 0, 0]), ("mixed", [1, 0, 0, 1])):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(5, 5), Experts(), nn.Linear(6, 2))
        opt = Hybrid(net, lr=1e-2, every=1, euclidean=euclidean)
        assert "1.w" in opt.decider.unmeasured  # no measurement: each matrix keeps the rule it has
        for step in range(2):
            opt.param_groups[0]["lr"] = 0.0 if step == 0 else 1e-2  # the first step only fills the state
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            if step == 1:
                opt.state[net[1].w]["spectral"].copy_(torch.tensor(mask, dtype=torch.float32))
            opt.step()
        results[name] = net[1].w.detach().clone()
        opt.close()
    for e, rule in enumerate(["spectral", "euclidean", "euclidean", "spectral"]):
        torch.testing.assert_close(results["mixed"][e], results[rule][e], rtol=0, atol=0)
    assert not torch.equal(results["spectral"], results["euclidean"])


def test_forced_spectral_hybrid_on_an_expert_stack_is_muon_per_expert():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 5), Experts(), nn.Linear(6, 2))
    b = copy.deepcopy(a)
    x, y = torch.randn(32, 5), torch.randn(32, 2)
    hyb = Hybrid(a, lr=1e-2, every=1, force="spectral")  # Muon's chain with Hybrid's default orthogonalizer
    muon = Muon(split_params(b).param_groups(spectral={"lr": 1e-2, "shape_scaling": "match_rms_adamw"},
                                             adamw={"lr": 3e-4, "betas": (0.9, 0.95)}),
                orthogonalizer="newton_schulz", ns_dtype=None)  # fmt: skip
    for net, opt in ((a, hyb), (b, muon)):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    hyb.close()


def test_per_head_hybrid_decides_each_head():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64,
                                                                 n_positions=16))  # fmt: skip
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = Hybrid(model, lr=1e-2, every=1, per_head=True)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    blocks = opt.decisions()["block"].tolist()
    attn = "transformer.h.0.attn"
    assert blocks[:12] == [f"{attn}.c_attn.{part}.{h}" for part in "qkv" for h in range(4)]
    assert blocks[12:16] == [f"{attn}.c_proj.cols{h}" for h in range(4)]  # the output projection's head columns
    assert len(blocks) == 18 and opt.decider.unmeasured == {}
    opt.close()
