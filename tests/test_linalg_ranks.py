"""Rank measures, norms, operator norms and streaming Gram accumulation of ``specgrad.linalg``."""

from __future__ import annotations

import math

import pytest
import torch

from specgrad.linalg import (
    GramAccumulator,
    effective_rank,
    matrix_norms,
    nuclear_rank,
    operator_norm,
    stable_rank,
)
from specgrad.linalg import eigen as eigen_module

from conftest import gaussian, gen

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")




def with_spectrum(m: int, n: int, s, *, seed: int) -> torch.Tensor:
    g = gen(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=F64))
    return (U * torch.as_tensor(s, dtype=F64)) @ V.mT


# --------------------------------------------------------------------------- norms


def test_matrix_norms_match_definitions():
    A = gaussian(3, 7, 5, seed=0)
    norms = matrix_norms(A)
    s = torch.linalg.svdvals(A)
    assert norms.frobenius.shape == (3,) and norms.frobenius.dtype == F64
    assert torch.allclose(norms.frobenius, torch.linalg.matrix_norm(A, "fro"), rtol=1e-14)
    assert torch.allclose(norms.nuclear, torch.linalg.matrix_norm(A, "nuc"), rtol=1e-14)
    assert torch.allclose(norms.operator, torch.linalg.matrix_norm(A, 2), rtol=1e-14)
    assert torch.allclose(norms.operator, s[:, 0], rtol=0, atol=0)
    # float32 input is measured in float64
    assert matrix_norms(A.float()).nuclear.dtype == F64


def test_matrix_norms_of_empty_and_zero():
    norms = matrix_norms(torch.zeros(4, 6))
    assert float(norms.frobenius) == float(norms.nuclear) == float(norms.operator) == 0.0
    norms = matrix_norms(torch.zeros(2, 0, 5))
    assert norms.operator.shape == (2,) and (norms.operator == 0).all()


# --------------------------------------------------------------------- rank measures


@pytest.mark.parametrize("shape", [(6, 6), (4, 11), (11, 4), (1, 8)], ids=str)
def test_rank_one_has_all_ranks_one(shape):
    m, n = shape
    g = gen(m * n)
    A = torch.outer(torch.randn(m, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64))
    assert float(stable_rank(A)) == pytest.approx(1.0, abs=1e-12)
    assert float(nuclear_rank(A)) == pytest.approx(1.0, abs=1e-12)
    assert float(effective_rank(A)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 17, 64])
def test_identity_ranks_equal_n(n):
    eye = torch.eye(n, dtype=F64)
    assert float(effective_rank(eye)) == pytest.approx(n, rel=1e-12)
    assert float(stable_rank(eye)) == pytest.approx(n, rel=1e-12)
    assert float(nuclear_rank(eye)) == pytest.approx(n, rel=1e-12)
    assert float(effective_rank(eye.float())) == pytest.approx(n, rel=1e-6)


def test_ranks_of_known_spectra():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=F64)
    A = with_spectrum(4, 9, s, seed=1)
    assert float(stable_rank(A)) == pytest.approx(14 / 9, rel=1e-12)
    assert float(nuclear_rank(A)) == pytest.approx(36 / 14, rel=1e-12)
    p = s[:3] / 6
    assert float(effective_rank(A)) == pytest.approx(math.exp(-(p * p.log()).sum()), rel=1e-10)
    # equal nonzero singular values: every rank measure is the rank
    B = with_spectrum(7, 5, [2.0, 2.0, 2.0, 0.0, 0.0], seed=2)
    for measure in (stable_rank, nuclear_rank, effective_rank):
        assert float(measure(B)) == pytest.approx(3.0, rel=1e-12), measure.__name__


def test_ranks_are_scale_invariant_and_batched():
    A = gaussian(2, 3, 6, 10, seed=3)
    for measure in (stable_rank, nuclear_rank, effective_rank):
        r = measure(A)
        assert r.shape == (2, 3) and r.dtype == F64
        assert torch.allclose(measure(A * 1e-100), r, rtol=1e-12)
        assert torch.allclose(measure(A * 1e100), r, rtol=1e-12)
        for i in range(2):
            for j in range(3):
                assert float(measure(A[i, j])) == pytest.approx(float(r[i, j]), rel=1e-13)


def test_zero_matrix_has_rank_zero():
    Z = torch.zeros(5, 3)
    for measure in (stable_rank, nuclear_rank, effective_rank):
        assert float(measure(Z)) == 0.0, measure.__name__
    batch = gaussian(3, 4, 4, seed=4)
    batch[1] = 0
    for measure in (stable_rank, nuclear_rank, effective_rank):
        r = measure(batch)
        assert float(r[1]) == 0.0 and (r[[0, 2]] >= 1).all(), measure.__name__


def test_rank_measures_reject_bad_input():
    bad = torch.ones(3, 3)
    bad[1, 1] = float("nan")
    for measure, name in ((stable_rank, "A"), (nuclear_rank, "G"), (effective_rank, "B")):
        with pytest.raises(ValueError, match=rf"{name} has 1 non-finite entries \(1 NaN, 0 Inf\)"):
            measure(bad)
        with pytest.raises(ValueError, match=rf"{name} must have at least 2 dims"):
            measure(torch.ones(3))
        with pytest.raises(ValueError, match="floating tensor, got dtype torch.int64"):
            measure(torch.ones(3, 3, dtype=torch.int64))


# ------------------------------------------------------------------------ operator norm


RANDOM_SHAPES = [(30, 30), (50, 7), (7, 50), (64, 48), (1, 20), (20, 1), (13, 29), (45, 45)]


@pytest.fixture(params=["svd", "lanczos"])
def path(request, monkeypatch):
    """Small matrices take the exact SVD; with ``DIRECT_BELOW = 0`` they run Lanczos."""
    if request.param == "lanczos":
        monkeypatch.setattr(eigen_module, "DIRECT_BELOW", 0)
    return request.param


def assert_top_pair(A, norm, v, rel):
    true = float(torch.linalg.svdvals(A)[0])
    assert norm <= true * (1 + 1e-14), (norm, true)  # a Ritz value: a lower bound
    assert (true - norm) / true <= rel, (true - norm) / true
    assert v.shape == (A.shape[1],) and v.dtype == F64
    assert float(v.norm()) == pytest.approx(1.0, rel=1e-12)
    assert float((A @ v).norm()) == pytest.approx(true, rel=rel)


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-10])
def test_operator_norm_within_tolerance_on_random_matrices(tol, path):
    for i, shape in enumerate(RANDOM_SHAPES):
        A = gaussian(*shape, seed=100 + i)
        norm, v = operator_norm(A, tol=tol)
        assert_top_pair(A, norm, v, rel=tol if path == "lanczos" else 1e-14)


def test_operator_norm_close_top_singular_values(path):
    """s_2 / s_1 = 0.99: the residual test, not a small step between iterates, ends Lanczos."""
    s = torch.cat([torch.tensor([1.0, 0.99], dtype=F64), torch.linspace(0.9, 0.1, 28, dtype=F64)])
    A = with_spectrum(40, 30, s, seed=5)
    norm, v = operator_norm(A, tol=1e-6)
    assert_top_pair(A, norm, v, rel=1e-6)


def test_operator_norm_of_large_matrices_by_lanczos_warm_started_or_falling_back(monkeypatch):
    """Above DIRECT_BELOW: a separated top (s_2 / s_1 = 0.9) is found by Lanczos to 1e-10;
    the vector it returns warm-starts the next call on a nearby matrix, which then takes
    fewer steps; an isotropic Gaussian's clustered top, which Lanczos does not finish,
    falls back to the exact SVD."""
    X = gaussian(600, 300, seed=20)
    A = with_spectrum(600, 300, torch.cat([torch.ones(1), torch.linspace(0.9, 0.01, 299)]), seed=22)
    norm, v = operator_norm(A)
    assert_top_pair(A, norm, v, rel=1e-10)
    again, u = operator_norm(A)
    assert again == norm and torch.equal(u, v)  # reproducible: a fixed start
    steps = []
    apply = eigen_module._apply
    monkeypatch.setattr(eigen_module, "_apply", lambda *args: steps.append(1) or apply(*args))
    B = A + 1e-4 * gaussian(600, 300, seed=21)
    warm, w = operator_norm(B, start=v)
    assert_top_pair(B, warm, w, rel=1e-10)
    warm_steps = len(steps)
    assert operator_norm(B)[0] == pytest.approx(warm, rel=1e-10)
    assert warm_steps < len(steps) - warm_steps
    norm, v = operator_norm(X)
    assert_top_pair(X, norm, v, rel=1e-10)
    A32 = torch.relu(X + 0.5).float()
    assert operator_norm(A32)[0] == pytest.approx(float(torch.linalg.svdvals(A32.double())[0]), rel=1e-10)


def test_operator_norm_exact_cases_and_scaling(path):
    norm, v = operator_norm(torch.diag(torch.tensor([3.0, 1.0, 0.5])))
    assert norm == pytest.approx(3.0, rel=1e-12) and abs(float(v[0])) == pytest.approx(1.0, rel=1e-12)
    assert operator_norm(torch.zeros(4, 5))[0] == 0.0
    A = gaussian(12, 9, seed=7)
    assert operator_norm(A)[0] == operator_norm(A)[0]
    row = gaussian(1, 9, seed=8)
    assert operator_norm(row)[0] == pytest.approx(float(row.norm()), rel=1e-12)
    assert operator_norm(A * 1e-100)[0] == pytest.approx(1e-100 * operator_norm(A)[0], rel=1e-12)
    norm, v = operator_norm(torch.zeros(0, 3))
    assert norm == 0.0 and v.shape == (3,)


def test_operator_norm_rejects_bad_input():
    with pytest.raises(ValueError, match=r"single \(m, n\) matrix, got shape \(2, 3, 3\)"):
        operator_norm(torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match=r"tol must be a number in \(0.0, inf\), got 0.0"):
        operator_norm(torch.ones(3, 3), tol=0.0)
    with pytest.raises(ValueError, match=r"1 non-finite entries \(0 NaN, 1 Inf\)"):
        operator_norm(torch.tensor([[1.0, float("inf")]]))


# ----------------------------------------------------------------- Gram accumulation


def test_gram_accumulator_streams_to_one_shot_values():
    A = gaussian(103, 9, seed=9)
    acc = GramAccumulator(9)
    for chunk in A.split(17):
        assert acc.update(chunk) is acc
    assert acc.rows == 103
    assert torch.allclose(acc.gram, A.mT @ A, rtol=1e-13, atol=1e-12)
    s = torch.linalg.svdvals(A)
    assert acc.frobenius_sq() == pytest.approx(float(s.square().sum()), rel=1e-12)
    assert acc.operator_sq() == pytest.approx(float(s[0] ** 2), rel=1e-12)
    assert acc.stable_rank() == pytest.approx(float(stable_rank(A)), rel=1e-12)


def test_gram_accumulator_flattens_leading_dims_and_sums_in_float64():
    """Float32 chunks are multiplied in float32 (documented: exact to float32 rounding per
    entry), float64 chunks in float64; the running sum is float64 either way."""
    X = gaussian(4, 6, 5, seed=10, dtype=torch.float32)
    acc = GramAccumulator(5).update(X)
    flat = X.reshape(-1, 5).double()
    ref = flat.mT @ flat
    assert acc.rows == 24 and acc.gram.dtype == F64
    assert torch.allclose(acc.gram, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))
    assert acc.stable_rank() == pytest.approx(float(stable_rank(flat)), rel=1e-5)
    exact = GramAccumulator(5).update(flat)
    assert torch.allclose(exact.gram, ref, rtol=1e-12)
    assert exact.stable_rank() == pytest.approx(float(stable_rank(flat)), rel=1e-10)


def test_gram_accumulator_merge_and_reset():
    A, B = gaussian(20, 6, seed=11), gaussian(35, 6, seed=12)
    merged = GramAccumulator(6).update(A).merge(GramAccumulator(6).update(B))
    whole = GramAccumulator(6).update(torch.cat([A, B]))
    assert merged.rows == whole.rows == 55
    assert torch.allclose(merged.gram, whole.gram, rtol=1e-13)
    assert merged.stable_rank() == pytest.approx(whole.stable_rank(), rel=1e-12)
    merged.reset()
    assert merged.rows == 0 and (merged.gram == 0).all()
    assert merged.stable_rank() == 0.0 and merged.operator_sq() == 0.0


def test_gram_accumulator_of_rank_one_rows():
    u = gaussian(8, seed=13)
    rows = torch.outer(gaussian(30, seed=14), u)
    acc = GramAccumulator(8)
    for chunk in rows.split(7):
        acc.update(chunk)
    assert acc.stable_rank() == pytest.approx(1.0, abs=1e-12)


def test_gram_accumulator_rejects_bad_input():
    with pytest.raises(ValueError, match="dim must be a positive integer, got 0"):
        GramAccumulator(0)
    with pytest.raises(ValueError, match="dim must be a positive integer, got 2.0"):
        GramAccumulator(2.0)
    acc = GramAccumulator(4)
    with pytest.raises(ValueError, match=r"last dim 4, got shape \(3, 5\)"):
        acc.update(torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"last dim 4, got shape \(\)"):
        acc.update(torch.tensor(1.0))
    with pytest.raises(ValueError, match="cannot merge dim 3 into dim 4"):
        acc.merge(GramAccumulator(3))
    assert acc.rows == 0  # nothing was added by the failed calls
