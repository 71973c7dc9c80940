"""Property tests (hypothesis) of ``specgrad.linalg``: invariances and rank bounds.

Hypothesis draws shapes, seeds and scalars; matrices come from seeded ``torch.Generator``s,
so every failing example is reproducible from what hypothesis prints. Matrices stay small
(at most 12 x 12) and runs are derandomized so the suite is fast and deterministic.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.linalg import (
    GramAccumulator,
    nuclear_rank,
    orthogonalize,
    stable_rank,
)
from specgrad.linalg import gram as gram_module

F64 = torch.float64
EPS = torch.finfo(F64).eps

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)


from conftest import gen

pytestmark = pytest.mark.usefixtures("one_thread")

dims = st.integers(min_value=1, max_value=12)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
scales = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False)




def random_orthogonal(n: int, g: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return Q * torch.sign(torch.diagonal(R))  # Haar-distributed


def condition(G: torch.Tensor) -> float:
    s = torch.linalg.svdvals(G)
    return float(s[0] / s[-1])


# ------------------------------------------------------------ orthogonal equivariance


@SETTINGS
@given(m=dims, n=dims, seed=seeds)
def test_svd_polar_is_orthogonally_equivariant(m, n, seed):
    g = gen(seed)
    G = torch.randn(m, n, generator=g, dtype=F64)
    P, Q = random_orthogonal(m, g), random_orthogonal(n, g)
    lhs = orthogonalize(P @ G @ Q, "svd")
    rhs = P @ orthogonalize(G, "svd") @ Q
    # the polar factor moves by ~eps * cond(G) under a rounding-size perturbation of G
    assert float((lhs - rhs).norm()) <= 1e-13 * condition(G)


@SETTINGS
@given(m=dims, n=dims, seed=seeds)
def test_newton_schulz_is_orthogonally_equivariant(m, n, seed):
    g = gen(seed)
    G = torch.randn(m, n, generator=g, dtype=F64)
    P, Q = random_orthogonal(m, g), random_orthogonal(n, g)
    lhs = orthogonalize(P @ G @ Q, "newton_schulz")
    rhs = P @ orthogonalize(G, "newton_schulz") @ Q
    # a fixed polynomial in G G^T times G: rounding only, no dependence on cond(G)
    assert float((lhs - rhs).norm()) <= 1e-12


# ------------------------------------------------------------------ scale invariance


@SETTINGS
@given(m=dims, n=dims, seed=seeds, c=scales)
def test_orthogonalize_is_invariant_to_positive_scaling(m, n, seed, c):
    G = torch.randn(m, n, generator=gen(seed), dtype=F64)
    kappa = condition(G)
    for method in ("svd", "newton_schulz", "polar_express"):
        diff = float((orthogonalize(c * G, method) - orthogonalize(G, method)).norm())
        bound = 1e-13 * kappa if method == "svd" else 1e-12
        assert diff <= bound, (method, diff)


@SETTINGS
@given(m=dims, n=dims, seed=seeds, exponent=st.sampled_from([-20, -10, 10, 20]))
def test_float32_orthogonalize_is_invariant_to_huge_and_tiny_scales(m, n, seed, exponent):
    G = torch.randn(m, n, generator=gen(seed), dtype=torch.float32)
    c = 10.0**exponent
    eps32 = torch.finfo(torch.float32).eps
    for method in ("svd", "newton_schulz", "polar_express"):
        base = orthogonalize(G, method).double()
        scaled = orthogonalize(G * c, method).double()
        assert torch.isfinite(scaled).all()
        # c * G is G rounded to float32 (relative eps/2 per entry). The exact polar factor
        # amplifies that by ~cond(G); the iterative maps by their slope (up to ~50 for
        # Polar Express near the top of its interval), which the float32 tolerance covers.
        bound = 16 * eps32 * condition(G.double()) if method == "svd" else 1e-4
        assert float((scaled - base).norm() / base.norm()) <= bound, method


# --------------------------------------------------------------------- rank bounds


@SETTINGS
@given(m=dims, n=dims, seed=seeds, c=scales)
def test_nuclear_rank_at_most_min_dim_with_equality_for_orthogonal(m, n, seed, c):
    k = min(m, n)
    G = torch.randn(m, n, generator=gen(seed), dtype=F64) * c
    nr = float(nuclear_rank(G))
    assert 1 - 1e-12 <= nr <= k * (1 + 1e-12)
    O = orthogonalize(G, "svd")  # orthonormal rows or columns
    assert float(nuclear_rank(O)) == pytest.approx(k, rel=1e-12)
    assert float(nuclear_rank(c * O)) == pytest.approx(k, rel=1e-12)


@SETTINGS
@given(m=dims, n=dims, seed=seeds, c=scales)
def test_stable_rank_of_rank_one_is_one(m, n, seed, c):
    g = gen(seed)
    u = torch.randn(m, generator=g, dtype=F64)
    v = torch.randn(n, generator=g, dtype=F64)
    A = c * torch.outer(u, v)
    assert float(stable_rank(A)) == pytest.approx(1.0, abs=1e-12)


@SETTINGS
@given(m=dims, n=dims, r=dims, seed=seeds)
def test_stable_rank_between_one_and_rank(m, n, r, seed):
    r = min(r, m, n)
    g = gen(seed)
    A = torch.randn(m, r, generator=g, dtype=F64) @ torch.randn(r, n, generator=g, dtype=F64)
    rank = int(torch.linalg.matrix_rank(A))
    assert rank == r
    sr, nr = float(stable_rank(A)), float(nuclear_rank(A))
    assert 1.0 <= sr <= rank * (1 + 1e-12)
    assert 1 - 1e-12 <= nr <= rank * (1 + 1e-12)
    # the stable rank never exceeds the nuclear rank (s_1 * ||s||_1 >= ||s||_2^2)
    assert sr <= nr * (1 + 1e-12)


# --------------------------------------------------------------- Gram accumulation


@SETTINGS
@given(
    rows=st.integers(min_value=1, max_value=40),
    dim=dims,
    seed=seeds,
    cuts=st.lists(st.integers(min_value=1, max_value=39), max_size=8),
)
def test_gram_accumulator_chunks_equal_one_shot(rows, dim, seed, cuts):
    A = torch.randn(rows, dim, generator=gen(seed), dtype=F64)
    bounds = sorted({c for c in cuts if c < rows} | {0, rows})
    acc = GramAccumulator(dim)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        acc.update(A[lo:hi])
    assert acc.rows == rows
    s = torch.linalg.svdvals(A)
    assert acc.frobenius_sq() == pytest.approx(float(s.square().sum()), rel=1e-12)
    assert acc.operator_sq() == pytest.approx(float(s[0] ** 2), rel=1e-12)
    assert acc.stable_rank() == pytest.approx(float(stable_rank(A)), rel=1e-10)


@SETTINGS
@given(
    rows=st.integers(min_value=0, max_value=30),
    dim=st.integers(min_value=1, max_value=30),
    block=st.integers(min_value=1, max_value=8),
    dtype=st.sampled_from([torch.float32, F64]),
    accumulate=st.booleans(),
    seed=seeds,
)
def test_blocked_gram_product_equals_the_full_product(rows, dim, block, dtype, accumulate, seed):
    """``gram_product`` with blocks of ``block`` columns (uneven edges included) against
    ``X^T X``: equal to rounding, added onto ``out`` with ``accumulate``."""
    g = gen(seed)
    X = torch.randn(rows, dim, generator=g, dtype=F64).to(dtype)
    start = torch.randn(dim, dim, generator=g, dtype=F64)
    start = (start + start.T).to(dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gram_module, "GRAM_BLOCK", block)
        out = gram_module.gram_product(X, start.clone(), accumulate=accumulate)
    ref = X.double().T @ X.double() + (start.double() if accumulate else 0)
    tol = 1e-12 if dtype == F64 else 1e-5
    assert torch.allclose(out.double(), ref, rtol=tol, atol=tol * float(ref.abs().max().clamp_min(1)))


@SETTINGS
@given(
    rows_a=st.integers(min_value=0, max_value=20),
    rows_b=st.integers(min_value=0, max_value=20),
    dim=dims,
    seed=seeds,
)
def test_gram_accumulator_merge_equals_concatenation(rows_a, rows_b, dim, seed):
    g = gen(seed)
    A = torch.randn(rows_a, dim, generator=g, dtype=F64)
    B = torch.randn(rows_b, dim, generator=g, dtype=F64)
    merged = GramAccumulator(dim).update(A).merge(GramAccumulator(dim).update(B))
    whole = GramAccumulator(dim).update(torch.cat([A, B]))
    assert merged.rows == whole.rows == rows_a + rows_b
    assert torch.allclose(merged.gram, whole.gram, rtol=1e-13, atol=1e-13)
    assert merged.frobenius_sq() == pytest.approx(whole.frobenius_sq(), rel=1e-13)
    assert merged.stable_rank() == pytest.approx(whole.stable_rank(), rel=1e-10)
