"""Tests of specgrad.optim: agreement with references, the optimizer contract, bad input."""

import copy
import math

import pytest
import torch
from torch import nn

from conftest import cuda_only, data, mlp, rel, train
from specgrad.linalg import polar_svd
from specgrad.optim import (
    FAST,
    ChainOptimizer,
    Muon,
    NonFiniteGradError,
    NormalizedGD,
    Shampoo,
    SignDescent,
    SpecGD,
    SpectralDescent,
    shape_scale,
    split_params,
)
from specgrad.optim.shampoo import ShampooPrecondition
from specgrad.optim.transforms import (
    Adam,
    ApplyLR,
    AsMatrix,
    DecoupledWeightDecay,
    Momentum,
    NuclearStep,
    Orthogonalize,
    Scale,
    ShapeScale,
    Sign,
)

JORDAN = (3.4445, -4.7750, 2.0315)
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only)]


# -- agreement with references -----------------------------------------------------------


def test_muon_matches_torch_muon_in_bfloat16_within_its_noise_floor():
    """torch.optim.Muon runs Newton-Schulz in bfloat16, whose rounding alone moves the
    result: we measure that floor (torch against itself on inputs perturbed by one bf16 ulp)
    and require our parameters to be no further from torch's than twice that."""
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
    ref = train(m := mlp(), torch.optim.Muon(m.parameters(), ns_coefficients=JORDAN, ns_steps=5, **kw), 20)
    # orthogonalizer named: Muon's default is Polar Express now (torch's rule is TORCH_MUON)
    ours = train(m := mlp(), Muon(m.parameters(), orthogonalizer="newton_schulz", ns_coefficients=JORDAN, ns_steps=5,
                                  ns_dtype=torch.bfloat16, **kw), 20)  # fmt: skip
    noisy = mlp()
    with torch.no_grad():
        for p in noisy.parameters():
            p.mul_(1 + 2**-9)
    floor = train(noisy, torch.optim.Muon(noisy.parameters(), ns_coefficients=JORDAN, ns_steps=5, **kw), 20)
    for a, b, c in zip(ours, ref, floor):
        assert rel(a, b) <= 2 * max(rel(c, b), 1e-3)
        assert rel(a, b) < 0.05


def reference_muon(params, grads_fn, steps, lr, mu, wd, nesterov=True):
    """Float64 Muon written out from its definition, with the exact polar factor's
    Newton-Schulz replaced by the same 5-step Jordan iteration in float64."""
    bufs = [torch.zeros_like(p) for p in params]
    for _ in range(steps):
        grads = grads_fn(params)
        for p, g, b in zip(params, grads, bufs):
            b.mul_(mu).add_(g, alpha=1 - mu)
            m = (1 - mu) * g + mu * b if nesterov else b
            X = m.T if m.shape[0] > m.shape[1] else m
            X = X / X.norm()
            for _ in range(5):
                A = X @ X.T
                X = JORDAN[0] * X + (JORDAN[1] * A + JORDAN[2] * A @ A) @ X
            O = X.T if m.shape[0] > m.shape[1] else X
            p.mul_(1 - lr * wd).sub_(lr * math.sqrt(max(1, p.shape[0] / p.shape[1])) * O)
    return params


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_float64_reference(nesterov):
    model = mlp(dtype=torch.float64)
    X, Y = data(torch.float64)
    ref_params = [p.detach().clone() for p in model.parameters()]

    @torch.enable_grad()
    def grads_fn(params):
        ps = [p.clone().requires_grad_() for p in params]
        h = X
        for i, p in enumerate(ps):
            h = h @ p.T
            if i < len(ps) - 1:
                h = torch.tanh(h)
        return torch.autograd.grad(nn.functional.mse_loss(h, Y), ps)

    with torch.no_grad():
        ref = reference_muon(ref_params, lambda ps: grads_fn(ps), 20, 0.02, 0.9, 0.1, nesterov)
    # Jordan's iteration in the gradient's dtype, named: the default is Polar Express in the
    # device's fastest precision now, so this reference no longer describes Muon()
    ours = train(model, Muon(model.parameters(), lr=0.02, momentum=0.9, weight_decay=0.1, nesterov=nesterov,
                             orthogonalizer="newton_schulz", ns_dtype=None), 20)  # fmt: skip
    for a, b in zip(ours, ref):
        assert rel(a, b) < 1e-10


def test_specgd_nuclear_step_is_exact():
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    G = torch.randn(6, 4, dtype=torch.float64)
    W0 = W.detach().clone()
    opt = SpecGD([W], lr=0.3, step_size="nuclear")
    W.grad = G.clone()
    opt.step()
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    assert torch.allclose(W.detach(), W0 - 0.3 * S.sum() * U @ Vh, rtol=0, atol=1e-12)


def test_spectral_descent_identity_is_sgd_and_ones_is_specgd():
    torch.manual_seed(0)
    G = torch.randn(5, 7, dtype=torch.float64)
    W1, W2 = nn.Parameter(torch.zeros(5, 7, dtype=torch.float64)), nn.Parameter(torch.zeros(5, 7, dtype=torch.float64))
    W1.grad, W2.grad = G.clone(), G.clone()
    SpectralDescent([W1], f=lambda s: s, lr=0.1).step()
    SpectralDescent([W2], f=torch.ones_like, lr=0.1).step()
    assert torch.allclose(W1.detach(), -0.1 * G, atol=1e-12)
    assert torch.allclose(W2.detach(), -0.1 * polar_svd(G), atol=1e-12)


def test_conv_weight_is_orthogonalized_as_its_matrix_view_with_scale_of_the_view():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False).double()  # view (4, 27): scale sqrt(max(1, 4/27)) = 1
    G = torch.randn_like(conv.weight)
    W0 = conv.weight.detach().clone()
    conv.weight.grad = G.clone()
    Muon([conv.weight], lr=0.1, momentum=0.0, orthogonalizer="svd").step()
    expected = W0 - 0.1 * polar_svd(G.reshape(4, -1)).reshape_as(G)
    assert torch.allclose(conv.weight.detach(), expected, atol=1e-12)
    wide = nn.Conv2d(8, 2, 1, bias=False).double()  # view (2, 8), tall view would be (8,2)
    tall = nn.Linear(2, 8, bias=False).double()
    tall.weight.grad = torch.randn(8, 2, dtype=torch.float64)
    T0 = tall.weight.detach().clone()
    Muon([tall.weight], lr=0.1, momentum=0.0, orthogonalizer="svd").step()
    assert torch.allclose(tall.weight.detach(), T0 - 0.1 * 2.0 * polar_svd(tall.weight.grad), atol=1e-12)
    del wide


def test_shampoo_first_step_matches_formula_without_grafting():
    torch.manual_seed(0)
    W = nn.Parameter(torch.zeros(4, 3, dtype=torch.float64))
    G = torch.randn(4, 3, dtype=torch.float64)
    W.grad = G.clone()
    Shampoo([W], lr=0.5, momentum=0.0, grafting="none", eps=1e-12).step()

    def root(S):
        lam, Q = torch.linalg.eigh(S)
        lam = lam.clamp_min(0) + 1e-12 * lam.max()
        return (Q * lam.pow(-0.25)) @ Q.T

    expected = -0.5 * root(G @ G.T) @ G @ root(G.T @ G)
    assert torch.allclose(W.detach(), expected, atol=1e-6)


def test_shampoo_grafting_gives_the_graft_norm_and_diagonal_fallback():
    torch.manual_seed(0)
    W = nn.Parameter(torch.zeros(6, 40, dtype=torch.float64))
    G = torch.randn(6, 40, dtype=torch.float64)
    W.grad = G.clone()
    opt = Shampoo([W], lr=1.0, momentum=0.0, grafting="sgd", max_precond_dim=16)
    opt.step()
    assert opt.state[W]["R"].shape == (40,)  # the long side fell back to a diagonal
    assert opt.state[W]["L"].shape == (6, 6)
    assert math.isclose(float(W.detach().norm()), float(G.norm()), rel_tol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: Muon(ps, lr=0.02),
        lambda ps: Muon(ps, lr=0.02, orthogonalizer="polar_express"),
        lambda ps: SpecGD(ps, lr=0.3, step_size="nuclear", momentum=0.9),
        lambda ps: Shampoo(ps, lr=0.01, precondition_frequency=3),
        lambda ps: NormalizedGD(ps, lr=0.05, momentum=0.9),
        lambda ps: SignDescent(ps, lr=0.001, momentum=0.9),
    ],
)
def test_every_optimizer_decreases_the_loss(make):
    model = mlp(bias=True)
    X, Y = data()
    loss0 = float(nn.functional.mse_loss(model(X), Y).detach())
    train(model, make(model.parameters()), 30)
    assert float(nn.functional.mse_loss(model(X), Y).detach()) < 0.9 * loss0


# -- the torch.optim contract ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: Muon(ps, lr=0.02, weight_decay=0.1),
        lambda ps: Muon(ps, lr=0.02, **FAST),
        lambda ps: SpecGD(ps, lr=0.01, momentum=0.9, nesterov=True),
        lambda ps: SpectralDescent(ps, f=torch.sqrt, lr=0.01, momentum=0.5),
        lambda ps: Shampoo(ps, lr=0.01, precondition_frequency=4),
        lambda ps: NormalizedGD(ps, lr=0.05, momentum=0.9),
        lambda ps: SignDescent(ps, lr=0.001, momentum=0.9),
    ],
)
@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip_is_bit_exact(make, device):
    full = mlp(bias=True, device=device)
    opt = make(full.parameters())
    expected = train(full, opt, 20)

    half = mlp(bias=True, device=device)
    opt = make(half.parameters())
    train(half, opt, 10)
    saved_model = copy.deepcopy(half.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())

    resumed = mlp(seed=99, bias=True, device=device)
    resumed.load_state_dict(saved_model)
    opt2 = make(resumed.parameters())
    opt2.load_state_dict(saved_opt)
    for a, b in zip(train(resumed, opt2, 10), expected):
        assert torch.equal(a, b)


def test_fast_settings_train_and_warn_where_they_can_diverge():
    model = mlp(bias=True)
    X, Y = data()
    loss0 = float(nn.functional.mse_loss(model(X), Y).detach())
    train(model, Muon(model.parameters(), lr=0.02, **FAST), 30)
    assert float(nn.functional.mse_loss(model(X), Y).detach()) < 0.9 * loss0
    with pytest.warns(RuntimeWarning, match="can diverge in half precision"):
        Muon(mlp().parameters(), orthogonalizer="polar_express", ns_gram="auto", ns_dtype=torch.bfloat16)


def test_nesterov_leaves_gradients_untouched():
    model = mlp()
    X, Y = data()
    opt = Muon(model.parameters(), nesterov=True)
    for _ in range(2):  # the second step reuses the Nesterov buffers of the first
        opt.zero_grad()
        nn.functional.mse_loss(model(X), Y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_lr_scheduler_and_closure():
    model = mlp()
    opt = Muon(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    X, Y = data()

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[0]["lr"] = 0.0
    opt.step(closure)
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a.detach(), b)  # lr 0 and no weight decay: nothing moves


def test_vectors_are_routed_to_adamw_and_explicit_groups_are_respected():
    model = mlp(bias=True)
    opt = Muon(model.parameters(), lr=0.02, adamw={"lr": 1e-3})
    groups = {g["algorithm"]: g for g in opt.param_groups}
    assert all(p.ndim == 1 for p in groups["adamw"]["params"])
    assert all(p.ndim == 2 for p in groups["muon"]["params"])
    assert groups["adamw"]["lr"] == 1e-3 and groups["muon"]["lr"] == 0.02
    w = [p for p in model.parameters() if p.ndim == 2]
    opt = Muon([{"params": w[:1], "algorithm": "adamw", "lr": 5e-4}, {"params": w[1:]}])
    assert [g["algorithm"] for g in opt.param_groups] == ["adamw", "muon"]
    assert opt.param_groups[0]["lr"] == 5e-4
    with pytest.raises(ValueError, match="needs parameters with >= 2 dims"):
        Muon([{"params": [nn.Parameter(torch.zeros(3))], "algorithm": "muon"}])


def test_adamw_rule_matches_torch_adamw():
    torch.manual_seed(0)
    b1, b2 = nn.Parameter(torch.randn(7)), nn.Parameter(torch.randn(7))
    b2.data.copy_(b1.data)
    ours = Muon([b1], adamw={"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1})
    ref = torch.optim.AdamW([b2], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for k in range(15):
        g = torch.randn(7, generator=torch.Generator().manual_seed(k))
        b1.grad, b2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(b1.detach(), b2.detach(), rtol=1e-5, atol=1e-6)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_gradient_raises_naming_the_parameter_and_writes_nothing(device):
    model = mlp(bias=True, device=device)
    opt = Muon(model.named_parameters(), lr=0.02, weight_decay=0.1)
    train(model, opt, 2)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    X, Y = data(device=device)
    opt.zero_grad()
    nn.functional.mse_loss(model(X), Y).backward()
    model[2].weight.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradError, match=r"2\.weight"):
        opt.step()
    for a, b in zip(model.parameters(), params):
        assert torch.equal(a.detach(), b)
    after = opt.state_dict()
    for k, st in state["state"].items():
        for key, v in st.items():
            assert torch.equal(after["state"][k][key], v)


def test_nonfinite_skip_warns_and_leaves_everything_untouched():
    model = mlp(bias=True)
    opt = Muon(model.parameters(), lr=0.02, nonfinite="skip")
    train(model, opt, 1)
    params = [p.detach().clone() for p in model.parameters()]
    X, Y = data()
    opt.zero_grad()
    nn.functional.mse_loss(model(X), Y).backward()
    model[0].bias.grad[0] = float("inf")
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    for a, b in zip(model.parameters(), params):
        assert torch.equal(a.detach(), b)
    assert all(float(s["step"]) == 1 for s in opt.state.values())


def test_huge_finite_gradient_is_not_mistaken_for_nonfinite():
    W = nn.Parameter(torch.zeros(4, 4))
    W.grad = torch.full((4, 4), 1e30)
    Muon([W], lr=0.1, momentum=0.0).step()
    assert torch.isfinite(W).all() and W.abs().max() > 0


def test_parameter_without_grad_is_skipped_entirely():
    model = mlp()
    opt = Muon(model.parameters(), lr=0.02, weight_decay=0.5)
    X, Y = data()
    for p in model[0].parameters():
        p.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), Y).backward()
        opt.step()
    assert torch.equal(model[0].weight.detach(), frozen)
    assert model[0].weight not in opt.state


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(ns_steps=0), "ns_steps"),
        (dict(orthogonalizer="qr"), "orthogonalizer"),
        (dict(shape_scaling="huge"), "shape_scaling"),
        (dict(ns_coefficients=(1.0, 2.0)), "coefficients"),
        (dict(nonfinite="ignore"), "nonfinite"),
        (dict(adamw={"betas": (0.9, 1.5)}), r"betas\[1\]"),
        (dict(adamw={"learning_rate": 1}), "unknown AdamW"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(ns_norm="nuclear"), "ns_norm must be one of"),
        (dict(ns_gram="sometimes"), "ns_gram must be True, False or 'auto'"),
    ],
)
def test_muon_rejects_bad_hyperparameters_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon(mlp().parameters(), **kwargs)


def test_other_optimizers_reject_bad_hyperparameters():
    ps = list(mlp().parameters())
    with pytest.raises(ValueError, match="step_size"):
        SpecGD(ps, step_size="armijo")
    with pytest.raises(ValueError, match="grafting"):
        Shampoo(ps, grafting="adagrad")
    with pytest.raises(ValueError, match="precondition_frequency"):
        Shampoo(ps, precondition_frequency=0)
    with pytest.raises(ValueError, match="callable"):
        SpectralDescent(ps, f=3)
    with pytest.raises(ValueError, match="unknown algorithm"):
        Muon([{"params": ps, "algorithm": "lion"}])


LINKS = [Momentum(), Orthogonalize(), NuclearStep(), ShapeScale(), Scale("euclidean_scale"), Adam(),
         DecoupledWeightDecay(), ShampooPrecondition()]  # fmt: skip


@pytest.mark.parametrize("link", LINKS, ids=lambda t: type(t).__name__)
def test_each_link_owns_its_hyperparameters(link):
    """A link's defaults pass its own check, and a bad value of each key it declares is
    refused naming that key."""
    link.validate(dict(link.defaults))
    for key in link.defaults:
        with pytest.raises(ValueError, match=key):
            link.validate({**link.defaults, key: "bad"})


def test_a_chain_fills_and_checks_its_groups_from_its_links():
    class Signum(ChainOptimizer):
        rule = "signum"

        def chain(self):
            return [Momentum(), Sign(), DecoupledWeightDecay(), ApplyLR()]

    W = nn.Parameter(torch.zeros(2, 2))
    opt = Signum([W], {"lr": 0.1, "momentum": 0.5})
    group = opt.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.5, False, 0.0)
    with pytest.raises(ValueError, match="nesterov must be True or False"):
        Signum([W], {"lr": 0.1, "nesterov": "yes"})
    with pytest.raises(ValueError, match="lr must be a number"):
        Signum([W], {})
    # SpecGD's groups carry the orthogonalizer keys it takes no argument for; a state_dict
    # saved without them loads and steps
    opt = SpecGD([W], orthogonalizer="newton_schulz")
    assert (opt.param_groups[0]["ns_norm"], opt.param_groups[0]["ns_gram"]) == ("frobenius", False)
    saved = opt.state_dict()
    for g in saved["param_groups"]:  # as saved before Orthogonalize read these keys
        del g["ns_norm"], g["ns_gram"]
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["ns_norm"] == "frobenius"
    W.grad = torch.eye(2)
    opt.step()


def test_shape_scale_presets():
    assert shape_scale("original", 1024, 256) == 2.0
    assert shape_scale("original", 256, 1024) == 1.0
    assert shape_scale("match_rms_adamw", 256, 1024) == pytest.approx(0.2 * 32)
    assert shape_scale("spectral", 256, 1024) == 0.5
    assert shape_scale("none", 3, 5) == 1.0


# -- routing ----------------------------------------------------------------------------------


class TinyLM(nn.Module):
    def __init__(self, tied=True):
        super().__init__()
        self.wte = nn.Embedding(50, 16)
        self.ln = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.fc = nn.Linear(16, 64)
        self.proj = nn.Linear(64, 16)
        self.head = nn.Linear(16, 50, bias=False)
        if tied:
            self.head.weight = self.wte.weight


@pytest.mark.parametrize("tied", [True, False])
def test_split_params_routes_embeddings_heads_norms_and_hidden_matrices(tied):
    r = split_params(TinyLM(tied))
    t = r.table().set_index("name")
    assert t.loc["wte.weight", "rule"] == "adamw"
    assert t.loc["ln.weight", "rule"] == "adamw"
    assert t.loc["qkv.bias", "rule"] == "adamw"
    for name in ("qkv.weight", "fc.weight", "proj.weight"):
        assert t.loc[name, "rule"] == "spectral", name
    if tied:
        assert "head.weight" not in t.index  # the same tensor as wte.weight
    else:
        assert t.loc["head.weight", "rule"] == "adamw"
        assert "head" in t.loc["head.weight", "reason"]


def test_split_params_first_layer_overrides_and_param_groups():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    r = split_params(net)
    assert r.names("spectral") == ["2.weight"]
    r = split_params(net, overrides={"0.weight": "spectral", "2.*": "adamw"})
    assert r.names("spectral") == ["0.weight"]
    groups = r.param_groups(spectral={"lr": 0.05}, adamw={"lr": 1e-3})
    opt = Muon(groups)
    assert opt.param_groups[0]["param_names"] == ["0.weight"]
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[1]["lr"] == 1e-3
    with pytest.raises(ValueError, match="matched no parameter"):
        split_params(net, overrides={"decoder.*": "adamw"})
    with pytest.raises(ValueError, match="needs >= 2 dims"):
        split_params(net, overrides={"0.bias": "spectral"})
