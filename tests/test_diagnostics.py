"""Tests of specgrad.diagnostics: the monitor's statistics against analytic cases and
dense references, ``diagnose`` against the one-step theory, what counts as a training pass,
sampling, hook lifetime, the sketched path, fused blocks, loggers and bad input.

Every computation is float64 on CPU with an explicit seed (float32 activations are checked
against it once, to float32 precision).
"""

import gc
import json
import math
import weakref

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

from specgrad.diagnostics import (
    ActivationGram,
    CSVLogger,
    JSONLinesLogger,
    SpectralMonitor,
    TensorBoardLogger,
    TokenCounts,
    diagnose,
    plot_history,
)
from specgrad.diagnostics.monitor import COLUMNS
from specgrad.linalg import (
    Workspace,
    frobenius_nuclear_norms,
    nuclear_rank,
    stable_rank,
    top_eigenpairs,
    top_eigenvalues,
)
from specgrad.linalg import eigen as eigen_module
from specgrad.linalg import nuclear as nuclear_module

D = torch.float64
NORM_KEYS = ("st_A", "nr_G", "grad_fro", "grad_nuc", "act_fro", "act_op")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def one_row(rows):
    assert len(rows) == 1, rows
    return rows[0]


def assert_close_rows(a, b, keys=NORM_KEYS, rel=1e-10):
    for k in keys:
        assert a[k] == pytest.approx(b[k], rel=rel), (k, a[k], b[k])


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).to(D)


def monitored_step(model, batches, loss_fn, **kw):
    """One monitored step of gradient accumulation over ``batches``; returns its rows."""
    with SpectralMonitor(model, every=1, **kw) as mon:
        model.zero_grad(set_to_none=True)
        for x in batches:
            loss_fn(model(x)).backward()
        return mon.step()


# -- analytic cases ----------------------------------------------------------------------


def test_rank_one_activations_have_stable_rank_one():
    g = gen(0)
    v = torch.randn(12, generator=g, dtype=D)
    c = torch.randn(50, 1, generator=g, dtype=D)
    x = c * v  # x_i = c_i v
    torch.manual_seed(0)
    layer = nn.Linear(12, 7).to(D)
    row = one_row(monitored_step(layer, [x], lambda out: out.pow(2).sum()))
    assert row["st_A"] == pytest.approx(1.0, abs=1e-9)
    assert row["rows"] == 50
    assert row["act_fro"] == pytest.approx(float(x.norm()), rel=1e-12)
    assert row["act_op"] == pytest.approx(float(x.norm()), rel=1e-9)  # rank one: op = Fro


@pytest.mark.parametrize("out_features,in_features", [(5, 12), (12, 5)])
def test_orthogonal_gradient_has_nuclear_rank_min_dim(out_features, in_features):
    g = gen(1)
    m, n = out_features, in_features
    Q = torch.linalg.qr(torch.randn(max(m, n), min(m, n), generator=g, dtype=D))[0]
    Q = Q if m >= n else Q.T  # (m, n) with orthonormal columns or rows
    torch.manual_seed(1)
    layer = nn.Linear(n, m, bias=False).to(D)
    x = torch.randn(20, n, generator=g, dtype=D)
    loss = lambda out: (layer.weight * Q).sum() + 0 * out.sum()  # noqa: E731
    row = one_row(monitored_step(layer, [x], loss))
    assert torch.allclose(layer.weight.grad, Q)
    assert row["nr_G"] == pytest.approx(min(m, n), rel=1e-9)
    assert row["grad_fro"] == pytest.approx(math.sqrt(min(m, n)), rel=1e-12)
    assert row["grad_nuc"] == pytest.approx(min(m, n), rel=1e-9)
    assert row["shape"] == f"{m}x{n}"


def test_conv2d_matches_linear_on_unfolded_patches():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2).to(D)
    lin = nn.Linear(27, 4).to(D)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(4, 27))
        lin.bias.copy_(conv.bias)
    g = gen(2)
    x = torch.randn(2, 3, 9, 7, generator=g, dtype=D)
    R = torch.randn(2, 4, 5, 4, generator=g, dtype=D)  # conv output: (2, 4, 5, 4)

    def loss(out):  # out: (N, 4, Ho, Wo)
        return (out * R).sum() + 0.5 * out.pow(2).sum() + out[:, 0].pow(3).sum()

    patches = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2)  # (N, L, 27)

    def lin_loss(out):  # (N, L, 4) back to the conv layout
        return loss(out.transpose(1, 2).reshape(2, 4, 5, 4))

    rc = one_row(monitored_step(conv, [x], loss))
    rl = one_row(monitored_step(lin, [patches], lin_loss))
    assert torch.allclose(conv.weight.grad.reshape(4, 27), lin.weight.grad, rtol=1e-12, atol=1e-12)
    assert rc["kind"] == "conv2d" and rc["shape"] == "4x27" and rc["rows"] == rl["rows"] == 40
    assert_close_rows(rc, rl)
    dense = patches.reshape(-1, 27)
    assert rc["st_A"] == pytest.approx(float(stable_rank(dense)), rel=1e-10)
    assert rc["nr_G"] == pytest.approx(float(nuclear_rank(conv.weight.grad.reshape(4, 27))), rel=1e-9)
    assert rc["act_fro"] == pytest.approx(float(dense.norm()), rel=1e-12)


def test_embedding_token_counts_match_dense_one_hot():
    vocab, dim = 7, 5
    g = gen(3)
    probs = torch.tensor([0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05], dtype=D)
    ids = torch.multinomial(probs, 60, replacement=True, generator=g).reshape(4, 15)
    ids[0, 0] = vocab - 1  # every id appears up to the largest, so one_hot has `vocab` columns
    torch.manual_seed(3)
    emb = nn.Embedding(vocab, dim).to(D)
    lin = nn.Linear(vocab, dim, bias=False).to(D)
    with torch.no_grad():
        lin.weight.copy_(emb.weight.T)
    R = torch.randn(4, 15, dim, generator=g, dtype=D)

    def loss(out):
        return (out * R).sum() + out.pow(2).sum() + out[..., :2].prod(-1).sum()

    one_hot = F.one_hot(ids).to(D)
    re = one_row(monitored_step(emb, [ids], loss))
    rl = one_row(monitored_step(lin, [one_hot], loss))
    counts = torch.bincount(ids.reshape(-1), minlength=vocab)
    p_max = float(counts.max()) / ids.numel()
    assert re["kind"] == "embedding" and re["shape"] == f"{dim}x{vocab}" and re["rows"] == 60
    assert re["st_A"] == pytest.approx(1 / p_max, rel=1e-12)
    assert re["st_A"] == pytest.approx(float(stable_rank(one_hot.reshape(-1, vocab))), rel=1e-10)
    assert TokenCounts(vocab).update(ids).stable_rank() == pytest.approx(1 / p_max, rel=1e-12)
    assert torch.allclose(emb.weight.grad.T, lin.weight.grad, rtol=1e-12, atol=1e-12)
    assert re["nr_G"] == pytest.approx(float(nuclear_rank(lin.weight.grad)), rel=1e-9)
    assert_close_rows(re, rl)


@pytest.mark.parametrize("kind", ["relu", "isotropic"])
def test_wide_activations_match_dense_stable_rank_and_float32_stays_within_its_precision(kind):
    """Inputs wider than 32 take the Lanczos path for ||A||_op; a dominant top eigenvalue
    (relu features) and a clustered one (isotropic Gaussian) both give the dense value.
    Float32 activations (Gram formed in float32) agree to float32 precision."""
    g = gen(13)
    x = torch.randn(600, 300, generator=g, dtype=D)
    x = torch.relu(x + 0.5) if kind == "relu" else x
    torch.manual_seed(13)
    layer = nn.Linear(300, 4).to(D)
    r64 = one_row(monitored_step(layer, [x[:250], x[250:]], _sq))
    # the monitor's guarantee is 1e-4 relative whatever the gap; with a dominant top the
    # error is about the residual squared
    rel = 1e-8 if kind == "relu" else 1e-4
    assert r64["st_A"] == pytest.approx(float(stable_rank(x)), rel=rel)
    assert r64["act_op"] == pytest.approx(float(torch.linalg.matrix_norm(x, ord=2)), rel=rel)
    r32 = one_row(monitored_step(layer.float(), [x.float()[:250], x.float()[250:]], _sq))
    assert r32["st_A"] == pytest.approx(r64["st_A"], rel=1e-5)
    assert r32["act_fro"] == pytest.approx(r64["act_fro"], rel=1e-6)


@pytest.mark.parametrize("check_every", [1, 3])
@pytest.mark.parametrize("rows_apart", [True, False])
def test_top_eigenvalues_match_eigvalsh_on_easy_hard_and_degenerate_matrices(check_every, rows_apart, monkeypatch):
    """Residual tests every step (CPU, large operators) or every few (3: CPU, small ones,
    so runs end between tests and at the last step too); kept rows of different lengths
    (multiplied one by one) or of one length (stacked into a batch)."""
    monkeypatch.setitem(eigen_module.CHECK_EVERY, "cpu", check_every)
    g = gen(14)
    X = torch.randn(3, 500, 300, generator=g, dtype=D)
    v = torch.randn(300, 1, generator=g, dtype=D)
    mats = [
        torch.relu(X[0] + 1).T @ torch.relu(X[0] + 1),  # dominant top: Lanczos converges fast
        X[1].T @ X[1],  # isotropic: clustered top
        torch.zeros(300, 300, dtype=D),  # zero: 0
        v @ v.T,  # rank one: the Krylov space is exhausted after one step
        X[2, :, :40].T @ X[2, :, :40],  # small: eigvalsh directly
        X[2, :, :280].T @ X[2, :, :280],  # another size, in a batch of its own
    ]
    # the same kinds as kept rows (A^T A never formed): one batch that finishes one by one
    n = [250, 290, 200, 5] if rows_apart else [200] * 4
    rows = [torch.relu(X[0, : n[0]] + 1), X[1, : n[1]], torch.zeros(n[2], 300, dtype=D), torch.ones(n[3], 1, dtype=D) @ v.T]
    kept = [ActivationGram(300).update(A) for A in rows]
    assert all(acc.kept is not None for acc in kept)
    exact = [float(torch.linalg.eigvalsh(S)[-1].clamp_min(0)) for S in mats + [A.T @ A for A in rows]]
    got = top_eigenvalues(mats + [acc.operator() for acc in kept])
    assert len(got) == len(exact)
    for t, e in zip(got, exact):
        assert t == pytest.approx(e, rel=1e-12, abs=1e-300)
    assert got[2] == 0.0 and got[len(mats) + 2] == 0.0
    with pytest.raises(ValueError, match="square"):
        top_eigenvalues([torch.zeros(3, 4, dtype=D)])


# -- hidden activations of a deep MLP ------------------------------------------------------


class SquaredReLU(nn.Module):
    def forward(self, x):
        return F.relu(x).square()


@pytest.mark.parametrize("seed", [0, 1])
def test_squared_relu_mlp_hidden_stable_ranks_are_far_below_width(seed):
    """128 -> 512 -> 512 -> 512 -> 1 at PyTorch's default init, n = 512 Gaussian inputs,
    y = x1 x2 x3: the study reports hidden post-activation stable ranks of at most ~6 of 512
    (we measured 3.1 to 5.8 over seeds 0..2)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(128, 512, bias=False), SquaredReLU(), nn.Linear(512, 512, bias=False), SquaredReLU(),
        nn.Linear(512, 512, bias=False), SquaredReLU(), nn.Linear(512, 1, bias=False),
    ).to(D)  # fmt: skip
    x = torch.randn(512, 128, generator=gen(seed), dtype=D)
    y = (x[:, 0] * x[:, 1] * x[:, 2]).unsqueeze(1)
    report = diagnose(net, (x, y), F.mse_loss).set_index("block")
    assert list(report.index) == ["0", "2", "4", "6"]
    hidden = report.loc[["2", "4", "6"], "st_A"]
    assert (hidden <= 10).all(), hidden
    assert (hidden >= 1).all(), hidden
    assert report.loc["0", "st_A"] > 20  # the Gaussian input itself is far from low rank
    assert (report["rows"] == 512).all()


# -- diagnose(probe=True) against the one-step theory ---------------------------------------


def half_mse(out, y):
    return 0.5 * (out - y).pow(2).sum(1).mean()


def least_squares_probe(A, Y, **kw):
    """Zero-init bias-free Linear on rows ``A^T`` with targets ``Y^T``; diagnose's one row."""
    layer = nn.Linear(A.shape[0], Y.shape[0], bias=False).to(D)
    nn.init.zeros_(layer.weight)
    report = diagnose(layer, (A.T, Y.T), half_mse, probe=True, **kw)
    assert len(report) == 1
    return layer, report.iloc[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_spectral_step_lands_lower_when_nr_at_least_twice_st(seed):
    g = gen(seed)
    V = torch.randn(100, 50, generator=g, dtype=D) / math.sqrt(50)
    X = torch.randn(50, 400, generator=g, dtype=D)
    A = torch.relu(V @ X)
    Y = (torch.randn(100, 100, generator=g, dtype=D) / 10) @ A
    layer, r = least_squares_probe(A, Y)
    assert r["nr_G"] >= 2 * r["st_A"], (r["nr_G"], r["st_A"])  # we measured ~6.3 vs ~3.0
    assert r["st_A"] == pytest.approx(float(stable_rank(A)), rel=1e-9)
    assert r["predicted_gain"] == pytest.approx(r["nr_G"] / r["st_A"], rel=1e-12)
    assert r["curvature"] == pytest.approx(1.0, abs=1e-6)  # exact for least squares
    assert r["loss_spectral"] < r["loss_euclidean"]
    assert r["verdict"] == "spectral" and r["measured"] == "spectral" and r["agrees"]
    # weights are restored; gradients are this batch's
    assert float(layer.weight.detach().abs().max()) == 0.0
    G_ref = -(Y @ A.T) / A.shape[1]
    assert torch.allclose(layer.weight.grad, G_ref, rtol=1e-10, atol=1e-12)
    # with the exact curvature given, the same losses
    _, r1 = least_squares_probe(A, Y, curvature=1.0)
    assert r1["loss_spectral"] == pytest.approx(r["loss_spectral"], rel=1e-5)
    assert r1["loss_euclidean"] == pytest.approx(r["loss_euclidean"], rel=1e-5)


def test_probe_euclidean_step_lands_lower_for_rank_one_gradient_and_isotropic_activations():
    g = gen(5)
    A = torch.randn(100, 400, generator=g, dtype=D)  # isotropic: st(A) ~ 100 / (1 + 1/2)^2
    u = torch.randn(100, 1, generator=g, dtype=D)
    w = torch.randn(100, 1, generator=g, dtype=D) / 10
    Y = u @ (w.T @ A)  # rank-one targets: G = -(1/n) Y A^T is rank one
    _, r = least_squares_probe(A, Y)
    assert r["nr_G"] == pytest.approx(1.0, rel=1e-6)
    assert r["st_A"] > 20
    assert r["curvature"] == pytest.approx(1.0, abs=1e-6)
    assert r["loss_euclidean"] < r["loss_spectral"]
    assert r["verdict"] == "euclidean" and r["measured"] == "euclidean" and r["agrees"]


def test_probe_does_not_depend_on_the_weights_memory_format():
    """A channels_last conv weight's matrix view is a copy; the probe must still move the
    weight (and put it back)."""
    torch.manual_seed(15)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 2)).to(D)
    g = gen(15)
    x, y = torch.randn(32, 3, 5, 5, generator=g, dtype=D), torch.randn(32, 2, generator=g, dtype=D)
    ref = diagnose(net, (x, y), half_mse, probe=True)
    net_cl = net.to(memory_format=torch.channels_last)
    assert not net_cl[0].weight.is_contiguous()
    before = net_cl[0].weight.detach().clone()
    got = diagnose(net_cl, (x, y), half_mse, probe=True)
    assert torch.equal(net_cl[0].weight.detach(), before)
    assert ref.loc[0, "curvature"] > 0
    for col in ("curvature", "loss_euclidean", "loss_spectral", "st_A", "nr_G"):
        assert got[col].tolist() == pytest.approx(ref[col].tolist(), rel=1e-9), col


# -- what counts as a training pass --------------------------------------------------------


def _sq(out):
    return out.pow(2).sum()


def test_only_forwards_that_reach_backward_in_training_mode_count():
    x = torch.randn(32, 6, generator=gen(6), dtype=D)
    noise = torch.randn(50, 6, generator=gen(7), dtype=D) * 10 + 3
    model = mlp()
    reference = monitored_step(model, [x], _sq)
    with SpectralMonitor(model, every=1) as mon:
        model.eval()
        _sq(model(noise)).backward()  # eval mode, even though it reaches backward
        model.train()
        with torch.no_grad():
            model(noise)
        with torch.inference_mode():
            model(noise)
        _sq(model(noise))  # never backpropagated
        model.zero_grad(set_to_none=True)
        _sq(model(x)).backward()
        rows = mon.step()
    assert [r["block"] for r in rows] == ["0", "2"]
    for r, ref in zip(rows, reference):
        assert r["rows"] == 32
        assert_close_rows(r, ref, rel=1e-12)


def test_gradient_accumulation_over_micro_batches_equals_the_full_batch():
    x = torch.randn(40, 6, generator=gen(8), dtype=D)
    model = mlp(1)
    full = monitored_step(model, [x], _sq)
    g_full = [p.grad.clone() for p in model.parameters()]
    accumulated = monitored_step(model, [x[:15], x[15:]], _sq)
    for p, g in zip(model.parameters(), g_full):
        assert torch.allclose(p.grad, g, rtol=1e-12, atol=1e-12)
    assert len(full) == len(accumulated) == 2
    for a, f in zip(accumulated, full):
        assert a["rows"] == f["rows"] == 40
        assert_close_rows(a, f)


def test_sketched_micro_batches_are_sketched_independently():
    """Micro-batches x, -x and z: the stacked activation has st ~ 3.5 (st(x) ~ 1.6,
    st(z) ~ 21). One Gaussian sketch shared by the micro-batches would cancel x against -x
    and see only z; a merge that dropped a micro-batch would see only x."""
    g = gen(9)
    x = torch.relu(torch.randn(200, 64, generator=g, dtype=D) + 1.0)
    z = 3 * torch.randn(100, 64, generator=g, dtype=D)
    torch.manual_seed(9)
    layer = nn.Linear(64, 10).to(D)
    exact = one_row(monitored_step(layer, [x, -x, z], _sq))
    sketched = one_row(monitored_step(layer, [x, -x, z], _sq, max_dim=16))
    assert exact["st_A"] == pytest.approx(float(stable_rank(torch.cat([x, -x, z]))), rel=1e-9)
    assert sketched["rows"] == exact["rows"] == 500
    assert sketched["act_fro"] == pytest.approx(exact["act_fro"], rel=1e-12)
    assert sketched["st_A"] == pytest.approx(exact["st_A"], rel=0.2)


# -- exact statistics: kept rows, the float64 Gram, reused buffers -------------------------


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    dim=st.integers(2, 40),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    log_scale=st.floats(-6, 6),
    seed=st.integers(0, 2**16),
)
def test_kept_rows_and_the_folded_gram_agree_with_the_dense_reference(dim, sizes, dtype, log_scale, seed):
    """Rows fed in chunks are kept while they fit in the Gram's bytes and folded past it;
    either way ``||A||_F^2`` and ``||A||_op^2`` (Lanczos on the rows, or on the Gram) match
    float64 SVD of the stacked rows, and after an explicit fold the Gram path agrees."""
    g = gen(seed)
    chunks = [(torch.randn(n, dim, generator=g, dtype=D) + torch.randn(dim, generator=g, dtype=D))
              * 10.0**log_scale for n in sizes]  # fmt: skip
    chunks = [c.to(dtype) for c in chunks]
    A = torch.cat(chunks).to(D)  # the values actually fed
    acc = ActivationGram(dim)
    for c in chunks:
        acc.update(c)
    kept = len(A) <= acc.capacity(dtype)
    assert (acc.kept is not None) == kept
    rel = 1e-9 if dtype == D else 1e-5
    fro_sq, op_sq = float(A.square().sum()), float(torch.linalg.matrix_norm(A, ord=2)) ** 2
    assert acc.rows == len(A)
    assert acc.frobenius_sq() == pytest.approx(fro_sq, rel=rel)
    (lanczos, _), = top_eigenpairs([acc.operator(direct_below=1)], tol=1e-12, direct_below=1)  # fmt: skip
    assert lanczos == pytest.approx(op_sq, rel=rel)
    gram = acc.gram  # folds kept rows for good
    assert acc.kept is None and acc.rows == len(A)
    assert torch.allclose(gram, A.T @ A, rtol=rel, atol=rel * fro_sq)
    assert acc.frobenius_sq() == pytest.approx(fro_sq, rel=rel)
    assert acc.operator_sq() == pytest.approx(op_sq, rel=rel)


def test_a_reused_input_buffer_does_not_change_the_micro_batches_already_seen():
    """Gradient accumulation through one static input tensor, overwritten between
    micro-batches (as with CUDA graphs or pinned staging buffers): the monitor copies the
    rows it keeps when backward reaches them, so the records equal the stacked batch's."""
    g = gen(21)
    xs = [torch.randn(12, 40, generator=g, dtype=D) * (i + 1) for i in range(3)]  # 36 <= 40 rows: kept
    torch.manual_seed(21)
    layer = nn.Linear(40, 5).to(D)
    reference = one_row(monitored_step(layer, [torch.cat(xs)], _sq))
    buf = torch.empty(12, 40, dtype=D)
    with SpectralMonitor(layer, every=1) as mon:
        layer.zero_grad(set_to_none=True)
        for x in xs:
            buf.copy_(x)
            _sq(layer(buf)).backward()
        buf.zero_()  # overwritten once more before step()
        row = one_row(mon.step())
    assert row["rows"] == 36
    assert row["st_A"] == pytest.approx(float(stable_rank(torch.cat(xs))), rel=1e-9)
    assert_close_rows(row, reference, rel=1e-9)


def test_sampled_steps_reuse_their_buffers_and_start_from_zero():
    g = gen(22)
    batches = [torch.randn(n, 30, generator=g, dtype=D) + i for i, n in enumerate((20, 90, 25))]
    model = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 4)).to(D)
    fresh = [monitored_step(model, [x], _sq) for x in batches]
    with SpectralMonitor(model, every=1) as mon:
        stats = []
        for x in batches:  # kept rows, then a folded Gram, then kept rows again
            model.zero_grad(set_to_none=True)
            _sq(model(x)).backward()
            stats.append([mon.block(name).statistic for name in mon.blocks])
            rows = mon.step()
            for r, ref in zip(rows, fresh[len(stats) - 1]):
                assert r["rows"] == len(x)
                assert_close_rows(r, ref, rel=1e-9)
    assert all(a is b for a, b in zip(stats[0], stats[2]))  # the same accumulators, reset


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(1, 3)), min_size=1, max_size=5),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    log_scale=st.floats(-8, 8),
    rank_one=st.booleans(),
    stacked=st.booleans(),
    method=st.sampled_from(["eigvalsh", "iteration"]),
    seed=st.integers(0, 2**16),
)
def test_frobenius_nuclear_norms_match_float64_singular_values(shapes, dtype, log_scale, rank_one, stacked, method, seed):
    """Mixed shapes (some repeated) and dtypes, batches forced small, and either conversion
    chunks forced small or same-shape matrices stacked for one product: ``||G||_F`` and
    ``||G||_*`` equal float64 SVD's of the same values, by either method. A rank-one
    float32 gradient keeps ``nr = 1``: its Gram is float64, whose rounding stays far below
    the null space's."""
    g = gen(seed)
    mats = []
    for m, n, copies in shapes:
        for _ in range(copies):
            G = torch.randn(m, 1, generator=g, dtype=D) @ torch.randn(1, n, generator=g, dtype=D) if rank_one \
                else torch.randn(m, n, generator=g, dtype=D)  # fmt: skip
            mats.append((G * 10.0**log_scale).to(dtype))
    workspace = Workspace()
    for _ in range(2):  # the second call reuses the workspace's buffers
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(nuclear_module, "BATCH_BYTES", 8 * 24 * 24 * 2)  # two Grams per batch
            # three rows per chunk, or up to four 24 x 24 matrices per stack
            patch.setattr(nuclear_module, "CHUNK_BYTES", 8 * 24 * (96 if stacked else 3))
            got = frobenius_nuclear_norms(mats, method=method, workspace=workspace)
        for G, (fro, nuc) in zip(mats, got):
            s = torch.linalg.svdvals(G.to(D))
            assert fro == pytest.approx(float(s.square().sum().sqrt()), rel=1e-12)
            assert nuc == pytest.approx(float(s.sum()), rel=1e-7 if rank_one else 1e-9)
            if rank_one:
                assert (nuc / fro) ** 2 == pytest.approx(1.0, abs=1e-6)


def test_nuclear_norm_iteration_keeps_its_stated_bound_on_spectra_down_to_zero():
    """The composed Polar Express map is within 1e-15 of 1 on [NUCLEAR_LOWER, 1] and rises
    monotonically (up to rounding) from 0 to at most 1 below it; so on spectra spanning 1 to 1e-14 and exact
    zeros, ``||G||_*`` by iteration is within ``min(m, n) * NUCLEAR_LOWER`` relative."""
    lower, steps = nuclear_module.NUCLEAR_LOWER, nuclear_module.NUCLEAR_STEPS
    schedule = nuclear_module._nuclear_schedule()
    x = torch.cat([torch.zeros(1, dtype=D), torch.logspace(-18, 0, 4001, dtype=D)]).numpy()
    p = schedule.scalar(x, steps)
    assert p.min() >= 0 and p.max() <= 1 + 1e-15
    assert abs(p[x >= lower] - 1).max() <= 1e-15
    assert (p[x < lower][1:] >= p[x < lower][:-1] - 1e-15).all()  # monotone up to rounding
    g = gen(21)
    for m, n, zeros in [(96, 96, 0), (40, 130, 10), (200, 64, 30)]:
        k = min(m, n)
        s = torch.logspace(0, -14, k, dtype=D)
        s[k - zeros :] = 0
        U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=D))[0]
        V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=D))[0]
        G = (U * s) @ V.T
        exact = float(s.sum())
        # both orientations in one call: one batch, the tall one transposed into it
        for fro, nuc in frobenius_nuclear_norms([G, G.T], method="iteration"):
            assert fro == pytest.approx(float(s.square().sum().sqrt()), rel=1e-12)
            assert abs(nuc - exact) <= k * lower * exact


def test_nuclear_norm_iteration_pads_a_few_small_gradients_into_a_larger_batch(monkeypatch):
    """Groups of a quarter the size of a batch of larger matrices or less join it zero-padded
    (one batch fewer: the same norms, as SVD's); a group as large as a quarter plus one
    keeps its own batch."""
    g = gen(22)
    big = [torch.randn(12, 20, generator=g, dtype=D) for _ in range(8)]
    small = [torch.randn(5, 7, generator=g, dtype=D), torch.randn(20, 3, generator=g, dtype=D),
             torch.randn(3, 20, generator=g, dtype=D)]  # fmt: skip
    apart = [torch.randn(12, 14, generator=g, dtype=D) for _ in range(3)]
    batches = []
    original = nuclear_module._norms_by_iteration
    monkeypatch.setattr(nuclear_module, "_norms_by_iteration",
                        lambda mats, k, l, ws: batches.append((len(mats), k, l)) or original(mats, k, l, ws))  # fmt: skip
    mats = small + big + apart
    got = frobenius_nuclear_norms(mats, method="iteration")
    assert sorted(batches) == [(3, 12, 14), (8 + 3, 12, 20)]
    for G, (fro, nuc) in zip(mats, got):
        s = torch.linalg.svdvals(G)
        assert fro == pytest.approx(float(s.square().sum().sqrt()), rel=1e-12)
        assert nuc == pytest.approx(float(s.sum()), rel=1e-9)


# -- sampling and lifetime -----------------------------------------------------------------


def test_records_only_on_every_kth_step_and_hooks_only_the_sampled_ones():
    model = mlp(2)
    x = torch.randn(16, 6, generator=gen(10), dtype=D)
    returned, hooked = [], []
    with SpectralMonitor(model, every=3) as mon:
        for _ in range(7):
            hooked.append(sum(len(m._forward_hooks) for m in model.modules()))
            model.zero_grad()
            _sq(model(x)).backward()
            returned.append(len(mon.step()))
    assert hooked == [2, 0, 0, 2, 0, 0, 2]  # an unsampled step runs the model unhooked
    steps = [r["step"] for r in mon.records]
    assert sorted(set(steps)) == [0, 3, 6]
    assert len(steps) == 6  # two blocks per sampled step
    assert returned == [2, 0, 0, 2, 0, 0, 2]
    assert list(mon.frame()["step"]) == steps


def test_hooks_are_removed_on_exit_and_the_model_can_be_collected():
    model = mlp(3)
    refs = [weakref.ref(m) for m in model.modules()]  # the model and every layer

    def train_once(mon):  # keeps the graph out of this frame
        _sq(model(torch.ones(4, 6, dtype=D))).backward()
        mon.step()

    with SpectralMonitor(model, every=1) as mon:
        assert all(len(m._forward_hooks) == 1 for m in (model[0], model[2]))
        train_once(mon)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert len(mon.records) == 2
    del model
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    assert mon.records  # the monitor outlives the model


# -- sketched path -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_sketched_activation_is_close_to_exact(seed):
    g = gen(seed)
    x = torch.relu(torch.randn(300, 64, generator=g, dtype=D) + 1.0)  # relu features with a mean
    torch.manual_seed(seed)
    layer = nn.Linear(64, 10).to(D)
    exact = one_row(monitored_step(layer, [x], _sq))
    sketched = one_row(monitored_step(layer, [x], _sq, max_dim=16))
    assert exact["st_A"] == pytest.approx(float(stable_rank(x)), rel=1e-9)
    assert exact["st_A"] < 4  # low stable rank, as post-activations are
    assert sketched["st_A"] != exact["st_A"]  # the sketch, not the Gram, was used
    assert sketched["st_A"] == pytest.approx(exact["st_A"], rel=0.2)
    assert sketched["act_fro"] == pytest.approx(exact["act_fro"], rel=1e-12)
    assert sketched["nr_G"] == pytest.approx(exact["nr_G"], rel=1e-12)


# -- fused blocks --------------------------------------------------------------------------


def test_add_fused_parts_match_row_blocks_of_the_gradient():
    d, n = 8, 30
    torch.manual_seed(11)
    qkv = nn.Linear(d, 3 * d).to(D)
    x = torch.randn(n, d, generator=gen(11), dtype=D)
    with SpectralMonitor(nn.Sequential(), every=1).add_fused("attn", qkv) as mon:
        assert mon.blocks == ["attn.q", "attn.k", "attn.v"]
        q, k, v = qkv(x).split(d, dim=-1)
        att = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)
        (att @ v).pow(2).sum().backward()
        rows = {r["block"]: r for r in mon.step()}
    G = qkv.weight.grad
    for i, part in enumerate("qkv"):
        r = rows[f"attn.{part}"]
        block = G[i * d : (i + 1) * d]
        assert r["shape"] == f"{d}x{d}"
        assert r["nr_G"] == pytest.approx(float(nuclear_rank(block)), rel=1e-9)
        assert r["grad_fro"] == pytest.approx(float(block.norm()), rel=1e-12)
        assert r["st_A"] == pytest.approx(float(stable_rank(x)), rel=1e-9)
    nrs = [rows[f"attn.{p}"]["nr_G"] for p in "qkv"]
    assert max(nrs) - min(nrs) > 1e-3  # the parts differ, so a wrong slice would show


def test_blocks_expose_weight_gradient_and_activation_statistic_until_step():
    """The public read surface: ``mon.block(name)`` gives the weight, the gradient in its
    matrix view (a part of it for a fused block), the kind and the activation statistic,
    which agree with the records ``step()`` then writes; a wide block's sketch and an
    embedding's token counts have no Gram."""
    torch.manual_seed(12)
    emb, qkv, wide = nn.Embedding(10, 8).to(D), nn.Linear(8, 24).to(D), nn.Linear(24, 2).to(D)
    mon = SpectralMonitor(nn.Sequential(), every=1, max_dim=16)
    mon.add_block("emb", emb, kind="embedding").add_fused("attn", qkv).add_block("wide", wide)
    ids = torch.tensor([[1, 2, 2, 7, 3]])
    with mon:
        _sq(wide(qkv(emb(ids)))).backward()
        blocks = {name: mon.block(name) for name in mon.blocks}
        stats = {name: (b.statistic.frobenius_sq(), b.statistic.operator_sq()) for name, b in blocks.items()}
        k = blocks["attn.k"]
        assert (k.kind, k.module, k.dim, k.rows) == ("linear", qkv, 8, slice(8, 16))
        assert k.param() is qkv.weight and torch.equal(k.grad(), qkv.weight.grad[8:16])
        assert blocks["emb"].grad().shape == (8, 10) and blocks["emb"].gram() is None
        assert blocks["wide"].gram() is None and blocks["attn.q"].statistic is k.statistic
        x = emb(ids).reshape(-1, 8)
        assert torch.allclose(k.gram(), x.T @ x, rtol=1e-12)
        rows = {r["block"]: r for r in mon.step()}
    for name, (fro_sq, op_sq) in stats.items():
        assert rows[name]["act_fro"] ** 2 == pytest.approx(fro_sq, rel=1e-12)
        assert rows[name]["act_op"] ** 2 == pytest.approx(op_sq, rel=1e-9)
    with pytest.raises(KeyError, match="no block named 'nope'"):
        mon.block("nope")


# -- loggers -------------------------------------------------------------------------------


def test_loggers_write_one_row_per_record(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = mlp(4)
    x = torch.randn(16, 6, generator=gen(12), dtype=D)
    loggers = [CSVLogger(tmp_path / "m.csv"), JSONLinesLogger(tmp_path / "m.jsonl"),
               TensorBoardLogger(tmp_path / "tb")]  # fmt: skip
    with SpectralMonitor(model, every=2, loggers=loggers) as mon:
        for _ in range(5):
            model.zero_grad()
            _sq(model(x)).backward()
            mon.step()
    records = mon.records
    assert len(records) == 6  # steps 0, 2, 4 x two blocks

    csv = pd.read_csv(tmp_path / "m.csv")
    assert list(csv.columns) == COLUMNS
    assert len(csv) == len(records)
    assert list(csv["step"]) == [r["step"] for r in records]
    assert list(csv["block"].astype(str)) == [r["block"] for r in records]
    assert csv["nr_G"].tolist() == pytest.approx([r["nr_G"] for r in records], rel=1e-12)

    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert len(lines) == len(records)
    for line, r in zip(lines, records):
        obj = json.loads(line)
        assert set(obj) == set(COLUMNS)
        assert obj["st_A"] == pytest.approx(r["st_A"], rel=1e-12) and obj["block"] == r["block"]

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {f"spectral/{b}/{k}" for b in ("0", "2") for k in ("nr_G", "st_A", "ratio")}
    assert tags == expected
    for b in ("0", "2"):
        for key in ("nr_G", "st_A", "ratio"):
            events = acc.Scalars(f"spectral/{b}/{key}")
            ref = [r for r in records if r["block"] == b]
            assert [e.step for e in events] == [r["step"] for r in ref]
            assert [e.value for e in events] == pytest.approx([r[key] for r in ref], rel=1e-6)

    png = tmp_path / "history.png"
    fig = plot_history(mon.frame(), png)
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 1


# -- bad input -----------------------------------------------------------------------------


def test_bad_input_raises_with_a_message_naming_the_problem():
    model = mlp()
    with pytest.raises(ValueError, match="every"):
        SpectralMonitor(model, every=0)
    with pytest.raises(ValueError, match="no_such_layer"):
        SpectralMonitor(model, layers=["0", "no_such_layer"])
    x = torch.randn(8, 6, dtype=D)
    with pytest.raises(ValueError, match="curvature"):
        diagnose(model, (x, torch.zeros(8, 3, dtype=D)), F.mse_loss, curvature=-1)
    mon = SpectralMonitor(model, every=1)
    mon.close()
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    with pytest.raises(RuntimeError, match="closed"):
        mon.step()
