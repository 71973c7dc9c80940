"""The CUDA paths: every optimizer, the orthogonalizers, the monitor and ``diagnose`` give on
a GPU what they give on the CPU, checked against float64 CPU references. (The state_dict
round trip and the non-finite-gradient check run on CUDA in tests/test_optim.py.)

Skipped where ``torch.cuda.is_available()`` is False (CI has no GPU).
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import cuda_only, mlp, rel, train
from specgrad.diagnostics import SpectralMonitor, diagnose
from specgrad.linalg import JORDAN, frobenius_nuclear_norms, orthogonalize, polar_svd, top_eigenvalues
from specgrad.linalg.nuclear import NUCLEAR_LOWER
from specgrad.optim import (
    FAST,
    Hybrid,
    Muon,
    NormalizedGD,
    Shampoo,
    SignDescent,
    SpecGD,
    SpectralDescent,
)

pytestmark = cuda_only

D = torch.float64
CUDA = "cuda"


@pytest.fixture(autouse=True)
def exact_float32():
    """float32 matmuls in full precision (no TF32), whatever the session set."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


net = functools.partial(mlp, bias=True)  # both the spectral and the AdamW rules run


OPTIMIZERS = {
    "muon": lambda ps: Muon(ps, lr=0.02, weight_decay=0.1),
    "muon_polar_express": lambda ps: Muon(ps, lr=0.02, orthogonalizer="polar_express"),
    "muon_svd": lambda ps: Muon(ps, lr=0.02, orthogonalizer="svd"),
    "specgd_nuclear": lambda ps: SpecGD(ps, lr=0.01, step_size="nuclear"),
    "spectral_descent": lambda ps: SpectralDescent(ps, f=torch.sqrt, lr=0.01, momentum=0.5),
    "shampoo": lambda ps: Shampoo(ps, lr=0.01, precondition_frequency=3),
    "normalized_gd": lambda ps: NormalizedGD(ps, lr=0.05, momentum=0.9),
    "sign_descent": lambda ps: SignDescent(ps, lr=0.001, momentum=0.9),
}


# -- linalg -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express", "svd"])
@pytest.mark.parametrize("shape", [(64, 64), (96, 48), (33, 200), (4, 128, 256)])
@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e4])
def test_orthogonalizers_on_cuda_match_the_cpu_float64_result(method, shape, scale):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=D) * scale
    ref = orthogonalize(G, method)
    assert rel(orthogonalize(G.to(CUDA), method), ref) < 1e-12
    assert rel(orthogonalize(G.to(CUDA, torch.float32), method), ref) < 1e-4
    if method != "svd":
        # bfloat16 keeps about 3 significant digits; 5 steps compound that to a few percent
        assert rel(orthogonalize(G.to(CUDA), method, dtype=torch.bfloat16), ref) < 5e-2


# -- optimizers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_on_cuda_matches_itself_on_cpu_in_float64(name):
    make = OPTIMIZERS[name]
    cpu = train(m := net(dtype=D), make(m.parameters()), 10)
    model = net(dtype=D, device=CUDA)
    opt = make(model.parameters())
    gpu = train(model, opt, 10)
    for a, b in zip(gpu, cpu):
        assert a.device.type == "cuda"
        assert rel(a, b) < 1e-9, name
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.dim() > 0:
                assert v.device.type == "cuda"


def test_muon_on_cuda_matches_torch_muon_on_cuda_within_the_bfloat16_floor():
    """As on the CPU (tests/test_optim.py): our bfloat16 Muon is no further from torch's than
    torch is from itself on inputs perturbed by one bfloat16 ulp."""
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=JORDAN, ns_steps=5)

    def mlp(scale=1.0):
        model = net(device=CUDA)
        for layer in model[::2]:
            layer.bias = None
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
        return model

    ref = train(m := mlp(), torch.optim.Muon(m.parameters(), **kw), 20)
    ours = train(m := mlp(), Muon(m.parameters(), ns_dtype=torch.bfloat16, **kw), 20)
    floor = train(m := mlp(1 + 2**-9), torch.optim.Muon(m.parameters(), **kw), 20)
    for a, b, c in zip(ours, ref, floor):
        assert rel(a, b) <= 2 * max(rel(c, b), 1e-3)
        assert rel(a, b) < 0.05


def test_fast_muon_on_cuda_is_as_close_to_its_float64_iteration_as_on_cpu():
    """FAST in bfloat16 against the same iteration in float64: the GPU's bfloat16 GEMMs
    (another accumulation order) land no further from it than twice the CPU's. (Ten steps
    of bfloat16 Muon drift 3-7% from float64 on this model, on either device.)"""
    f64 = {**FAST, "ns_dtype": D}
    ref = train(m := net(dtype=D), Muon(m.parameters(), lr=0.02, **f64), 10)
    cpu = train(m := net(), Muon(m.parameters(), lr=0.02, **FAST), 10)
    gpu = train(m := net(device=CUDA), Muon(m.parameters(), lr=0.02, **FAST), 10)
    for a, b, c in zip(gpu, ref, cpu):
        assert rel(a, b) <= 2 * max(rel(c, b), 1e-3)


def test_hybrid_on_cuda_matches_cpu():
    def run(device):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 8))
        model = model.to(device, D)
        opt = Hybrid(model, lr=0.01, every=2, smoothing=0.0)
        params = train(model, opt, 8)
        choices = opt.decisions()["choice"].tolist()
        opt.close()
        return params, choices

    (cpu, cpu_choices), (gpu, gpu_choices) = run("cpu"), run(CUDA)
    assert gpu_choices == cpu_choices
    for a, b in zip(gpu, cpu):
        assert rel(a, b) < 1e-9


# -- diagnostics --------------------------------------------------------------------------


class Mixed(nn.Module):
    """Embedding, Conv2d, a wide Linear (Lanczos path for ||A||_op) and a narrow one."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.wide = nn.Linear(5 * 8 * 8 + 6, 40)
        self.head = nn.Linear(40, 4)

    def forward(self, ids, img):
        h = torch.cat([F.relu(self.conv(img)).flatten(1), self.emb(ids).mean(1)], dim=1)
        return self.head(torch.relu(self.wide(h)))


def mixed_inputs(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (48, 5), generator=g)
    img = torch.randn(48, 3, 8, 8, generator=g, dtype=D)
    y = torch.randn(48, 4, generator=g, dtype=D)
    return ids.to(device), img.to(device), y.to(device)


def test_monitor_on_cuda_records_what_it_records_on_cpu():
    """Same records up to the CUDA path's stated tolerances: ``||G||_*`` by float64 Polar
    Express within ``min(m, n) * 1e-8`` (CPU: eigvalsh), ``||A||_op`` by Lanczos to a
    residual of 1e-4 on both (so within 1e-8 with these dominant tops)."""

    def records(device):
        torch.manual_seed(5)
        model = Mixed().to(device, D)
        ids, img, y = mixed_inputs(device)
        with SpectralMonitor(model, every=1) as mon:
            model.zero_grad()
            for half in (slice(0, 20), slice(20, 48)):  # two micro-batches
                F.mse_loss(model(ids[half], img[half]), y[half], reduction="sum").backward()
            return {r["block"]: r for r in mon.step()}

    cpu, gpu = records("cpu"), records(CUDA)
    assert sorted(cpu) == sorted(gpu) == ["conv", "emb", "head", "wide"]
    for block, r in cpu.items():
        for key, tol in [("grad_fro", 1e-12), ("act_fro", 1e-12), ("grad_nuc", 4e-7), ("nr_G", 1e-6),
                         ("act_op", 1e-8), ("st_A", 1e-8), ("ratio", 1e-6)]:  # fmt: skip
            assert gpu[block][key] == pytest.approx(r[key], rel=tol), (block, key)
        assert gpu[block]["verdict"] == r["verdict"] and gpu[block]["shape"] == r["shape"]


def test_monitor_sketch_on_cuda_is_close_to_exact():
    g = torch.Generator().manual_seed(7)
    x = torch.relu(torch.randn(400, 300, generator=g, dtype=D) + 0.5).to(CUDA)
    torch.manual_seed(7)
    layer = nn.Linear(300, 4).to(CUDA, D)
    with SpectralMonitor(layer, every=1, max_dim=64) as mon:
        layer(x).pow(2).sum().backward()
        (row,) = mon.step()
    dense = x.cpu()
    assert row["act_fro"] == pytest.approx(float(dense.norm()), rel=0.1)
    assert row["st_A"] == pytest.approx(float(torch.linalg.matrix_norm(dense, "fro") ** 2
                                              / torch.linalg.matrix_norm(dense, 2) ** 2), rel=0.25)


def test_diagnose_probe_on_cuda_matches_cpu():
    def report(device):
        g = torch.Generator().manual_seed(2)
        V = torch.randn(100, 50, generator=g, dtype=D) / 50**0.5
        A = torch.relu(V @ torch.randn(50, 400, generator=g, dtype=D))
        Y = (torch.randn(100, 100, generator=g, dtype=D) / 10) @ A
        layer = nn.Linear(100, 100, bias=False).to(device, D)
        nn.init.zeros_(layer.weight)
        def half_mse(out, y):
            return 0.5 * (out - y).pow(2).sum(1).mean()
        return diagnose(layer, (A.T.to(device), Y.T.to(device)), half_mse, probe=True).iloc[0]

    cpu, gpu = report("cpu"), report(CUDA)
    for key in ("st_A", "nr_G", "ratio", "loss_spectral", "loss_euclidean"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-8), key
    assert gpu["measured"] == cpu["measured"] == "spectral"


@pytest.mark.parametrize("k", [16, 128, 384])
def test_gradient_norms_and_top_eigenvalues_on_cuda_match_cpu_eigvalsh(k):
    g = torch.Generator().manual_seed(k)
    mats = [torch.randn(k, 3 * k, generator=g, dtype=D), torch.randn(k, k, generator=g, dtype=D),
            torch.randn(k, 1, generator=g, dtype=D) @ torch.randn(1, 2 * k, generator=g, dtype=D)]  # fmt: skip
    mats += [mats[0].T, mats[0] * 1e-30, mats[1].float() * 1e20]  # a tall one batches with its wide twin
    ref = frobenius_nuclear_norms(mats, method="eigvalsh")
    got = frobenius_nuclear_norms([G.to(CUDA) for G in mats])  # auto: the iteration on CUDA
    for (f, n), (f0, n0) in zip(got, ref):
        assert f == pytest.approx(f0, rel=1e-12)
        assert n == pytest.approx(n0, rel=k * NUCLEAR_LOWER)
    grams = [torch.relu(X).T @ torch.relu(X) for X in torch.randn(3, 2 * k, k, generator=g, dtype=D)]
    exact = [float(torch.linalg.eigvalsh(S)[-1]) for S in grams]
    for value, e in zip(top_eigenvalues([S.to(CUDA) for S in grams]), exact):
        assert value == pytest.approx(e, rel=1e-10)


def test_polar_svd_on_cuda_is_orthogonal_in_float64():
    G = torch.randn(8, 64, 96, generator=torch.Generator().manual_seed(0), dtype=D).to(CUDA)
    O = polar_svd(G)
    eye = torch.eye(64, dtype=D, device=CUDA)
    assert float((O @ O.mT - eye).abs().max()) < 1e-12
