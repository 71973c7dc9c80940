"""Every optimizer on the models users train: transformers GPT-2, Llama (tied and untied),
ViT and Mixtral from small configs (random init, nothing downloaded), a ResNet-style conv
net, nn.MultiheadAttention; 20 steps each on one batch, loss down and weights finite."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from specgrad.optim import Hybrid, Muon, Shampoo, SpecGD, split_params

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def resnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), ResBlock(8), ResBlock(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))  # fmt: skip


def lm_batch(vocab=64, seed=0):
    ids = torch.randint(0, vocab, (4, 16), generator=torch.Generator().manual_seed(seed))
    return lambda m: m(input_ids=ids, labels=ids).loss


def image_batch(classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, classes, (8,), generator=g)
    return x, y


def make(name):
    """(model, loss(model) on a fixed batch)."""
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=16)
        return transformers.GPT2LMHeadModel(cfg), lm_batch()
    if name.startswith("llama"):
        cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, vocab_size=64, tie_word_embeddings=name == "llama-tied")  # fmt: skip
        return transformers.LlamaForCausalLM(cfg), lm_batch()
    if name == "mixtral":
        cfg = transformers.MixtralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=64, num_local_experts=4)  # fmt: skip
        return transformers.MixtralForCausalLM(cfg), lm_batch()
    if name == "vit":
        cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                     image_size=16, patch_size=4, num_labels=3)  # fmt: skip
        x, y = image_batch(3)
        return transformers.ViTForImageClassification(cfg), lambda m: m(pixel_values=x, labels=y).loss
    if name == "resnet":
        x, y = image_batch(5)
        return resnet(), lambda m: F.cross_entropy(m(x), y)
    if name == "gpt-oss":  # experts stored (E, in, out): is_transposed
        cfg = transformers.GptOssConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=8, vocab_size=64, num_local_experts=4,
                                        num_experts_per_tok=2, layer_types=["full_attention"])  # fmt: skip
        return transformers.GptOssForCausalLM(cfg), lm_batch()
    if name == "mha":
        model = nn.Sequential(nn.Linear(8, 32), nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0), nn.Linear(32, 2))
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(12, 4, 8, generator=g), torch.randn(12, 4, 2, generator=g)
        return model, lambda m: F.mse_loss(m(x), y)
    raise ValueError(name)


MODELS = ("gpt2", "llama-tied", "llama-untied", "mixtral", "gpt-oss", "vit", "resnet", "mha")
UNMEASURED: dict[str, set] = {}  # per model, matrices Hybrid cannot measure (they would keep their rule)
OPTIMIZERS = {
    "muon": lambda m: Muon(split_params(m).param_groups(spectral={"lr": 0.02}, adamw={"lr": 3e-3})),
    "specgd": lambda m: SpecGD(split_params(m).param_groups(spectral={"lr": 0.01}, adamw={"lr": 3e-3})),
    "shampoo": lambda m: Shampoo(split_params(m).param_groups(spectral={"lr": 3e-3}, adamw={"lr": 3e-3})),
    "hybrid": lambda m: Hybrid(m, lr=1e-2, every=5),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", MODELS)
def test_twenty_steps_lower_the_loss_and_keep_weights_finite(name, optimizer):
    model, loss_of = make(name)
    model.train()
    opt = OPTIMIZERS[optimizer](model)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    if optimizer == "hybrid":
        # every matrix of every spectral parameter is measured and decided (a view's matrices each)
        routing = split_params(model)
        views = routing.views()
        unmeasured = UNMEASURED.get(name, set())
        assert set(opt.decider.unmeasured) == unmeasured
        blocks = sum(views[n].batch for n in routing.names("spectral") if n not in unmeasured)
        log = opt.decisions()
        assert len(log[log["step"] == 0]) == blocks, (len(log[log["step"] == 0]), blocks)
        opt.close()
    assert all(math.isfinite(x) for x in losses)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert min(losses[-5:]) < 0.9 * losses[0], losses


def test_muon_on_a_conv1d_weight_equals_muon_on_the_equivalent_linear():
    conv1d = transformers.pytorch_utils.Conv1D(24, 16)  # weight (16, 24): (in, out)
    linear = nn.Linear(16, 24)
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.T)
    g = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))
    conv1d.weight.grad, linear.weight.grad = g.clone(), g.T.clone()
    host = nn.Sequential(nn.Linear(2, 16), conv1d, nn.Linear(24, 2))  # conv1d is a hidden layer
    Muon(split_params(host, overrides={"0.*": "adamw"}).param_groups(spectral={"lr": 0.1, "momentum": 0.0})).step()
    Muon([linear.weight], lr=0.1, momentum=0.0).step()
    torch.testing.assert_close(conv1d.weight.T, linear.weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_opt", [
    lambda params, **kw: Muon(params, momentum=0.0, **kw),
    lambda params, **kw: SpecGD(params, step_size="nuclear", **kw),  # ||G_e||_* of each expert, not of the stack
], ids=["muon", "specgd-nuclear"])  # fmt: skip
def test_an_expert_stack_is_updated_as_its_experts_one_by_one(make_opt):
    experts = nn.Module()
    experts.w = nn.Parameter(torch.randn(4, 12, 8, generator=torch.Generator().manual_seed(1)))
    host = nn.Sequential(nn.Linear(2, 8), experts, nn.Linear(8, 2))
    g = torch.randn(4, 12, 8, generator=torch.Generator().manual_seed(2)) * torch.tensor([1.0, 3.0, 0.1, 10.0]).view(4, 1, 1)
    singles = [nn.Parameter(experts.w[e].detach().clone()) for e in range(4)]
    experts.w.grad = g.clone()
    for e, p in enumerate(singles):
        p.grad = g[e].clone()
    routing = split_params(host)
    assert str(routing.views()["1.w"]) == "4 x (12, 8)"
    make_opt(routing.param_groups(spectral={"lr": 0.1})).step()
    make_opt(singles, lr=0.1).step()
    for e, p in enumerate(singles):
        torch.testing.assert_close(experts.w[e], p, rtol=1e-5, atol=1e-6)


def test_transposed_experts_are_viewed_out_by_in_and_updated_per_expert():
    model, _ = make("gpt-oss")
    views = split_params(model).views()
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.shape == (4, 32, 96) and str(views["model.layers.0.mlp.experts.gate_up_proj"]) == "4 x (96, 32)"
    assert str(views["model.layers.0.mlp.experts.down_proj"]) == "4 x (32, 48)"
    g = torch.randn(experts.down_proj.shape, generator=torch.Generator().manual_seed(0))
    singles = [nn.Parameter(experts.down_proj[e].detach().T.clone()) for e in range(4)]  # (out, in)
    for p in model.parameters():
        p.grad = None
    experts.down_proj.grad = g.clone()
    for e, p in enumerate(singles):
        p.grad = g[e].T.clone()
    Muon(split_params(model).param_groups(spectral={"lr": 0.1, "momentum": 0.0})).step()
    Muon(singles, lr=0.1, momentum=0.0).step()
    for e, p in enumerate(singles):
        torch.testing.assert_close(experts.down_proj[e].T, p, rtol=1e-5, atol=1e-6)
