"""The condition-driven Hybrid optimizer: decisions follow nr(M) vs st(A), steps follow the
stated rules, and switching has hysteresis."""


import pytest
import torch
from torch import nn

from specgrad.linalg import polar_svd
from specgrad.optim import Hybrid


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
        opt._decide(p, state, nr, st, group)
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
