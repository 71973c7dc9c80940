"""Orthogonalization, coefficient schedules and spectral maps of ``specgrad.linalg``.

Float64 on CPU is the reference: ``U V^T`` from ``torch.linalg.svd``. Iterative methods are
checked against the band their scalar polynomial map predicts (``predicted_band``), with a
rounding tolerance set by the dtype they run in.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specgrad.linalg import (
    JORDAN,
    METHODS,
    NEWTON_SCHULZ,
    QuinticSchedule,
    as_schedule,
    matrix_view,
    newton_schulz,
    optimal_quintic,
    orthogonality_error,
    orthogonalize,
    polar_express_schedule,
    polar_svd,
    predicted_band,
    quintic_iteration,
    scalar_map,
    singular_value_range,
    spectral_map,
)
from specgrad.linalg.coefficients import POLAR_EXPRESS_CUSHION

from conftest import gaussian, gen

F64 = torch.float64
ITERATIVE = ("newton_schulz", "polar_express")


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers




def with_spectrum(m: int, n: int, s, *, seed: int, batch=(), dtype=F64) -> torch.Tensor:
    """Random ``(*batch, m, n)`` matrices with singular values ``s`` (length ``min(m, n)``)."""
    g = gen(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, generator=g, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, generator=g, dtype=F64))
    s = torch.as_tensor(s, dtype=F64)
    return ((U * s) @ V.mT).to(dtype)


def log_spread(m: int, n: int, smallest: float, *, seed: int, batch=(), dtype=F64):
    """Singular values log-spaced from 1 down to ``smallest``."""
    k = min(m, n)
    s = torch.logspace(0.0, math.log10(smallest), k, dtype=F64) if k > 1 else [1.0]
    return with_spectrum(m, n, s, seed=seed, batch=batch, dtype=dtype)


def svd_polar_reference(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.to(F64), full_matrices=False)
    return U @ Vh


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    A, B = A.to(F64), B.to(F64)
    return float((A - B).norm() / B.norm())


def spectrum_lower(G: torch.Tensor) -> float:
    """``min`` over the batch of ``sigma_min / ||G||_F``, from the exact float64 SVD."""
    s = torch.linalg.svdvals(G.to(F64))
    return float((s[..., -1] / s.norm(dim=-1)).min())


# The tests below that take ``path`` run both orthogonalizers: the reference loop
# (orthogonalize's defaults) and the fast path, reached by naming the working precision
# (``dtype=``, here the input's). The same bounds hold for both.
PATHS = ("reference", "fast")


def orth(G: torch.Tensor, method: str, *args, path: str = "reference", **kwargs) -> torch.Tensor:
    if path == "fast":
        kwargs.setdefault("dtype", G.dtype)
    return orthogonalize(G, method, *args, **kwargs)


# Rounding tolerance of the measured singular values against the exact-arithmetic band.
# float64: the band itself is computed on a 20001-point grid, resolved to ~1e-6 (its
# docstring), which dominates float64 rounding (~1e-14 here).
BAND_TOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.bfloat16: 2e-2}

SHAPES = [(16, 16), (24, 8), (8, 24), (1, 17), (17, 1), (1, 1), (3, 5, 7), (2, 3, 6, 4)]


# ------------------------------------------------------------------ exact SVD polar factor


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scale", [1e-20, 1e-8, 1.0, 1e8, 1e20])
def test_svd_is_exact_polar_factor(shape, scale):
    G = gaussian(*shape, seed=sum(shape))
    O = orthogonalize(G * scale, "svd")
    assert O.shape == G.shape and O.dtype == F64
    assert rel_err(O, svd_polar_reference(G)) < 1e-12


@pytest.mark.parametrize("shape", [(12, 12), (20, 9), (9, 20), (4, 10, 7)], ids=str)
def test_svd_has_orthonormal_rows_or_columns(shape):
    O = orthogonalize(gaussian(*shape, seed=7), "svd")
    k = min(shape[-2:])
    gram = O.mT @ O if shape[-2] >= shape[-1] else O @ O.mT
    assert torch.allclose(gram, torch.eye(k, dtype=F64).expand_as(gram), atol=1e-13)
    assert orthogonality_error(O) < 1e-13


@pytest.mark.parametrize("m, n, r", [(10, 10, 3), (16, 7, 1), (7, 16, 5), (12, 12, 11)])
@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e20])
def test_svd_rank_deficient_gives_partial_isometry(m, n, r, scale):
    g = gen(100 * m + 10 * n + r)
    G = torch.randn(m, r, generator=g, dtype=F64) @ torch.randn(r, n, generator=g, dtype=F64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    expected = U[:, :r] @ Vh[:r]
    O = orthogonalize(G * scale, "svd")
    assert rel_err(O, expected) < 1e-12
    s = torch.linalg.svdvals(O)
    assert torch.allclose(s[:r], torch.ones(r, dtype=F64), atol=1e-12)
    assert float(s[r:].max()) < 1e-12


def test_svd_rtol_sets_which_singular_values_survive():
    G = with_spectrum(6, 9, [1.0, 0.5, 1e-3, 1e-5, 1e-14, 0.0], seed=3)
    expected_rank = {None: 5, 1e-2: 2, 1e-4: 3, 1e-6: 4, 1e-12: 4}
    for rtol, rank in expected_rank.items():
        s = torch.linalg.svdvals(orthogonalize(G, "svd", rtol=rtol))
        assert int((s > 0.5).sum()) == rank, rtol
        assert torch.allclose(s, (torch.arange(6) < rank).to(F64), atol=1e-9), rtol


def test_svd_of_rank_one_vector_is_normalized_vector():
    v = gaussian(1, 30, seed=2)
    assert torch.allclose(orthogonalize(v, "svd"), v / v.norm(), atol=1e-15, rtol=0)
    assert torch.allclose(orthogonalize(v.mT, "svd"), v.mT / v.norm(), atol=1e-15, rtol=0)


# ------------------------------------------------- iterative methods: the promised band


def _band_cases(dtype):
    """(label, G) pairs. bfloat16 only gets spectra far above its rounding floor: a
    singular value below ~2^-8 * ||G||_F is changed by the bf16 rounding of the
    normalized input itself, so no exact-arithmetic band can hold for it."""
    if dtype == torch.bfloat16:
        return [
            ("gauss-wide", gaussian(16, 48, seed=11, dtype=dtype)),
            ("gauss-tall", gaussian(40, 12, seed=12, dtype=dtype)),
            ("gauss-batched", gaussian(3, 8, 30, seed=13, dtype=dtype)),
            ("spread-1e-1-square", log_spread(16, 16, 1e-1, seed=14, dtype=dtype)),
            ("spread-1e-1-wide", log_spread(8, 32, 1e-1, seed=15, dtype=dtype)),
        ]
    return [
        ("gauss-square", gaussian(16, 16, seed=1, dtype=dtype)),
        ("gauss-wide", gaussian(12, 30, seed=2, dtype=dtype)),
        ("gauss-tall", gaussian(30, 12, seed=3, dtype=dtype)),
        ("row", gaussian(1, 20, seed=4, dtype=dtype)),
        ("column", gaussian(20, 1, seed=5, dtype=dtype)),
        ("gauss-batched", gaussian(2, 3, 10, 14, seed=6, dtype=dtype)),
        ("spread-1e-2", log_spread(16, 24, 1e-2, seed=7, dtype=dtype)),
        ("spread-1e-3", log_spread(24, 16, 1e-3, seed=8, dtype=dtype)),
        ("spread-batched", log_spread(10, 10, 1e-2, seed=9, batch=(3,), dtype=dtype)),
    ]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "method, steps, kwargs",
    [
        pytest.param("newton_schulz", 5, {}, id="jordan-5"),
        pytest.param("newton_schulz", 3, {}, id="jordan-3"),
        pytest.param("newton_schulz", 8, {"coefficients": "newton_schulz"}, id="classical-8"),
        pytest.param("newton_schulz", 4, {"coefficients": [JORDAN, JORDAN, NEWTON_SCHULZ]},
                     id="jordan-jordan-classical-4"),
        pytest.param("polar_express", 5, {}, id="polar-express-5"),
        pytest.param("polar_express", 3, {}, id="polar-express-3"),
        pytest.param("polar_express", 8, {}, id="polar-express-8"),
        pytest.param("polar_express", 5, {"lower": 1e-2}, id="polar-express-5-lower-1e-2"),
    ],
)
def test_iterative_singular_values_lie_in_predicted_band(dtype, method, steps, kwargs, path):
    tol = BAND_TOL[dtype]
    for label, G in _band_cases(dtype):
        lo, hi = predicted_band(method, steps, spectrum_lower(G), **kwargs)
        X = orth(G, method, steps, **kwargs, path=path)
        assert X.dtype == dtype and X.shape == G.shape, label
        smin, smax = singular_value_range(X)
        assert lo - tol <= smin and smax <= hi + tol, (label, (lo, hi), (smin, smax))


def test_band_is_tight_in_float64():
    """The band is attained, not just respected: a matrix whose singular values cover the
    whole normalized interval reaches both ends of it."""
    s = torch.logspace(0, -3, 128, dtype=F64)
    G = with_spectrum(128, 128, s, seed=0)
    for method in ITERATIVE:
        lo, hi = predicted_band(method, 5, spectrum_lower(G))
        smin, smax = singular_value_range(orthogonalize(G, method, 5))
        assert abs(smin - lo) < 1e-3 and abs(smax - hi) < 1e-3, (method, (lo, hi), (smin, smax))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_polar_express_beats_jordan_at_five_steps(dtype):
    inputs = [
        log_spread(16, 16, 1e-2, seed=1, dtype=dtype),
        log_spread(12, 40, 1e-2, seed=2, dtype=dtype),
        log_spread(40, 12, 1e-2, seed=3, dtype=dtype),
        gaussian(16, 16, seed=4, dtype=dtype),
        gaussian(24, 64, seed=5, dtype=dtype),
        gaussian(4, 20, 12, seed=6, dtype=dtype),
    ]
    for G in inputs:
        pe = orthogonality_error(orthogonalize(G, "polar_express", 5))
        jordan = orthogonality_error(orthogonalize(G, "newton_schulz", 5, coefficients="jordan"))
        assert pe < jordan, (tuple(G.shape), pe, jordan)


def test_scalar_map_matches_matrix_iteration():
    s = torch.logspace(0, -2, 12, dtype=F64)
    G = with_spectrum(12, 20, s, seed=4)
    for method in ITERATIVE:
        for steps in (1, 3, 5):
            # scalar_map takes singular values after normalization, which divides by
            # safety * ||G||_F (safety = 1.01 for Polar Express, 1 for Newton-Schulz)
            safety = 1.01 if method == "polar_express" else 1.0
            normalized = (s / (safety * s.norm())).numpy()
            predicted = np.sort(np.abs(scalar_map(method, normalized, steps)))
            measured = np.sort(torch.linalg.svdvals(orthogonalize(G, method, steps)).numpy())
            np.testing.assert_allclose(measured, predicted, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------- Polar Express coefficients


PAPER_FIRST_TRIPLE = (8.28721201814563, -23.595886519098837, 17.300387312530933)


def test_polar_express_first_triple_matches_paper():
    a, b, c = polar_express_schedule(steps=5, lower=1e-3, safety=1.01).coefficients[0]
    expected = [v / 1.01**p for v, p in zip(PAPER_FIRST_TRIPLE, (1, 3, 5))]
    np.testing.assert_allclose([a, b, c], expected, rtol=1e-12)
    exact = polar_express_schedule(steps=5, lower=1e-3, safety=1.0).coefficients[0]
    np.testing.assert_allclose(exact, PAPER_FIRST_TRIPLE, rtol=1e-12)


def test_polar_express_schedule_shape_and_validation():
    sched = polar_express_schedule(steps=6, lower=1e-3)
    assert len(sched.coefficients) == 6
    assert sched.normalization_safety == 1.01
    assert sched.steps(8)[-3:] == [sched.coefficients[-1]] * 3
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        polar_express_schedule(steps=0)
    with pytest.raises(ValueError, match=r"lower must lie in \(0, 1\)"):
        polar_express_schedule(steps=5, lower=1.0)
    with pytest.raises(ValueError, match="cushion"):
        polar_express_schedule(steps=5, cushion=1.5)
    with pytest.raises(ValueError, match="safety must be >= 1"):
        polar_express_schedule(steps=5, safety=0.9)


def _quintic(abc, x):
    a, b, c = abc
    return a * x + b * x**3 + c * x**5


INTERVALS = [(1e-3, 1.0), (1e-2, 1.0), (POLAR_EXPRESS_CUSHION, 1.0), (0.1, 1.0), (0.5, 1.0),
             (0.9, 1.0), (0.2, 3.0)]


@pytest.mark.parametrize("l, u", INTERVALS)
def test_optimal_quintic_equioscillates(l, u):
    abc = optimal_quintic(l, u)
    a, b, c = abc
    E = 1 - _quintic(abc, l)
    # Interior extrema of the error: stationary points of p, p'(x) = a + 3 b x^2 + 5 c x^4.
    roots = np.roots([5 * c, 0, 3 * b, 0, a])
    inner = np.sort(roots[(np.abs(roots.imag) < 1e-12) & (roots.real > l) & (roots.real < u)].real)
    assert inner.shape == (2,)
    points = np.array([l, inner[0], inner[1], u])
    np.testing.assert_allclose(1 - _quintic(abc, points), E * np.array([1, -1, 1, -1]),
                               rtol=1e-7, atol=1e-12)
    x = np.linspace(l, u, 200_001)
    assert abs(np.abs(1 - _quintic(abc, x)).max() - abs(E)) < 1e-9


@pytest.mark.parametrize("l, u", INTERVALS)
def test_no_perturbed_odd_quintic_does_better(l, u):
    abc = np.array(optimal_quintic(l, u))
    E = abs(1 - _quintic(abc, l))
    rng = np.random.default_rng(0)
    x = np.linspace(l, u, 20_001)
    size = 10.0 ** rng.uniform(-7, -1, size=(400, 1))
    trials = abc * (1 + size * rng.standard_normal((400, 3)))
    powers = np.stack([x, x**3, x**5])  # (3, grid)
    worst = np.abs(1 - trials @ powers).max(axis=1)
    assert worst.min() >= E * (1 - 1e-12), (worst.min(), E)


def test_optimal_quintic_point_interval_is_scaled_newton_schulz():
    for u in (0.5, 1.0, 2.0):
        abc = optimal_quintic(u, u)
        a, b, c = abc
        assert _quintic(abc, u) == pytest.approx(1.0, abs=1e-14)
        assert a + 3 * b * u**2 + 5 * c * u**4 == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="need 0 < l <= u"):
        optimal_quintic(0.0, 1.0)
    with pytest.raises(ValueError, match="need 0 < l <= u"):
        optimal_quintic(0.6, 0.5)


def test_schedule_validation_and_named_schedules():
    assert as_schedule("jordan").coefficients == (JORDAN,)
    assert as_schedule("newton_schulz").coefficients == (NEWTON_SCHULZ,)
    assert as_schedule((1, 2, 3)).coefficients == ((1.0, 2.0, 3.0),)
    sched = QuinticSchedule((JORDAN,))
    assert as_schedule(sched) is sched
    with pytest.raises(ValueError, match="unknown coefficient schedule 'bogus'"):
        as_schedule("bogus")
    with pytest.raises(ValueError, match="at least one"):
        QuinticSchedule(())
    with pytest.raises(ValueError, match="3 finite numbers"):
        QuinticSchedule(((1.0, float("nan"), 0.0),))
    with pytest.raises(ValueError, match="normalization_safety must be >= 1"):
        QuinticSchedule((JORDAN,), normalization_safety=0.5)
    with pytest.raises(ValueError, match=r"lower must lie in \(0, 1\]"):
        sched.band(0.0, 5)


# --------------------------------------------------------------- dtypes and orientation


ALL_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# Distance to the float64 result of the same method, relative in Frobenius norm.
DTYPE_TOL = {
    torch.float32: {"svd": 1e-5, "newton_schulz": 1e-5, "polar_express": 1e-5},
    torch.float16: {"svd": 2e-3, "newton_schulz": 1e-2, "polar_express": 1e-2},
    torch.bfloat16: {"svd": 1e-2, "newton_schulz": 3e-2, "polar_express": 3e-2},
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES[1:], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_returns_input_dtype_and_is_close(dtype, method, path):
    shapes = [(16, 40), (40, 16), (4, 8, 24)]
    if not (method == "polar_express" and dtype == torch.bfloat16):
        shapes.append((1, 30))  # see test_polar_express_rank_one_in_bfloat16
    for shape in shapes:
        G = gaussian(*shape, seed=len(shape) + shape[-1])
        X = orth(G.to(dtype), method, path=path)
        assert X.dtype == dtype and X.shape == G.shape
        assert torch.isfinite(X).all()
        assert rel_err(X, orthogonalize(G, method)) < DTYPE_TOL[dtype][method], shape


def test_polar_express_rank_one_in_bfloat16():
    """A single singular value sits at the top of the normalized interval, 1 / 1.01, where
    the 5-step Polar Express map is steep (slope ~50: a 0.2% change of the input moves the
    output by ~0.1). bfloat16 rounding of the normalized input (relative 2^-8) therefore
    moves the output by more than the 2e-2 band tolerance; the bound that holds is the
    range of the map over the rounding neighbourhood of 1 / 1.01."""
    delta = 2.0**-8
    x = np.linspace((1 - delta) / 1.01, (1 + delta) / 1.01, 4001)
    y = scalar_map("polar_express", x, 5)
    exact = float(scalar_map("polar_express", [1 / 1.01], 5)[0])
    for seed in range(4):
        v = gaussian(1, 30, seed=seed)
        out32 = orthogonalize(v.float(), "polar_express")
        assert abs(float(out32.double().norm()) - exact) < 1e-4
        out16 = float(orthogonalize(v.bfloat16(), "polar_express").double().norm())
        assert y.min() - 2e-2 <= out16 <= y.max() + 2e-2, (out16, y.min(), y.max())


@pytest.mark.parametrize("method", ITERATIVE)
def test_dtype_argument_sets_working_precision_not_output(method):
    G = gaussian(12, 36, seed=5, dtype=torch.float32)
    ref = orthogonalize(G.double(), method)
    in_f64 = orthogonalize(G, method, dtype=torch.float64)
    in_bf16 = orthogonalize(G, method, dtype=torch.bfloat16)
    assert in_f64.dtype == torch.float32 and in_bf16.dtype == torch.float32
    assert rel_err(in_f64, ref) < 1e-6  # only the final rounding to float32
    assert rel_err(in_bf16, ref) < 3e-2
    # bfloat16 working precision is visibly coarser than float64 working precision
    assert rel_err(in_bf16, ref) > 10 * rel_err(in_f64, ref)


ORIENT_TOL = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 4e-3}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", list(ORIENT_TOL), ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_tall_result_is_transpose_of_wide_result(dtype, method, path):
    for shape in [(24, 10), (17, 1), (3, 20, 6)]:
        G = gaussian(*shape, seed=shape[-2], dtype=dtype)
        tall = orth(G, method, path=path)
        wide = orth(G.mT.contiguous(), method, path=path)
        assert tall.shape == G.shape
        err = float((tall.to(F64) - wide.mT.to(F64)).abs().max())
        assert err <= ORIENT_TOL[dtype], (shape, err)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_matrix_by_matrix(method, path):
    G = gaussian(2, 3, 12, 20, seed=8)
    O = orth(G, method, path=path)
    for i in range(2):
        for j in range(3):
            assert torch.allclose(O[i, j], orth(G[i, j], method, path=path), atol=1e-13, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_empty_matrix_gives_empty_result(path):
    for method in METHODS:
        O = orth(torch.zeros(0, 5, dtype=F64), method, path=path)
        assert O.shape == (0, 5)


# -------------------------------------------------------- normalization: over/underflow


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e20, 1e-20, 1e30, 1e-30])
def test_float32_scaled_input_gives_same_result(method, scale, path):
    for shape in [(16, 24), (24, 16), (3, 16, 24)]:
        G = gaussian(*shape, seed=shape[-1], dtype=torch.float32)
        base = orth(G, method, path=path)
        scaled = orth(G * scale, method, path=path)
        assert torch.isfinite(scaled).all()
        assert rel_err(scaled, base) < 1e-5, (shape, rel_err(scaled, base))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", METHODS)
def test_float32_subnormal_input_stays_finite(method, path):
    """Entries near 1e-42 are float32 subnormals: few significant bits survive, so only
    finiteness is promised (1 / ||G||_F would overflow float32)."""
    G = gaussian(6, 9, seed=0, dtype=torch.float32)
    for scale in (1e-39, 1e-42, 1e-44):
        O = orth(G * scale, method, path=path)
        assert torch.isfinite(O).all(), scale
        assert float(O.abs().max()) > 0, scale


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix_maps_to_zero(dtype, method, path):
    for shape in [(5, 7), (7, 5), (1, 4), (2, 3, 4)]:
        O = orth(torch.zeros(*shape, dtype=dtype), method, path=path)
        assert O.dtype == dtype and O.shape == shape
        assert not torch.isnan(O).any(), shape
        assert (O == 0).all(), shape


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix_inside_a_batch(method, path):
    G = gaussian(3, 6, 9, seed=1, dtype=torch.float32)
    G[1] = 0
    O = orth(G, method, path=path)
    assert (O[1] == 0).all()
    for i in (0, 2):
        assert torch.allclose(O[i], orth(G[i], method, path=path), atol=1e-5)


def test_newton_schulz_with_explicit_schedule_matches_orthogonalize():
    G = gaussian(10, 14, seed=2)
    sched = polar_express_schedule(5, 1e-3)
    assert torch.equal(newton_schulz(G, sched, 5), orthogonalize(G, "polar_express", 5))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        newton_schulz(G, sched, 0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        quintic_iteration(G, sched, 0)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("method", METHODS)
def test_rejects_fewer_than_two_dims(method):
    with pytest.raises(ValueError, match=r"at least 2 dims.*got shape \(5,\)"):
        orthogonalize(torch.ones(5), method)
    with pytest.raises(ValueError, match=r"at least 2 dims.*got shape \(\)"):
        orthogonalize(torch.tensor(1.0), method)


@pytest.mark.parametrize("method", METHODS)
def test_rejects_non_finite_entries_and_counts_them(method):
    G = torch.ones(4, 5)
    G[0, 0] = float("nan")
    G[1, 2] = float("nan")
    G[3, 4] = float("inf")
    with pytest.raises(ValueError, match=r"3 non-finite entries \(2 NaN, 1 Inf\) out of 20"):
        orthogonalize(G, method)
    H = torch.ones(2, 3, 3, dtype=F64)
    H[1, 0, 0] = -float("inf")
    with pytest.raises(ValueError, match=r"1 non-finite entries \(0 NaN, 1 Inf\)"):
        orthogonalize(H, method)


def test_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'qr'"):
        orthogonalize(torch.ones(3, 3), "qr")
    with pytest.raises(ValueError, match="iterative method, got 'svd'"):
        predicted_band("svd", 5)
    with pytest.raises(ValueError, match="iterative method, got 'qr'"):
        scalar_map("qr", [0.5], 5)


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("steps", [0, -1, 2.5, "5", True])
def test_rejects_bad_steps(method, steps):
    with pytest.raises(ValueError, match=f"steps must be a positive integer, got {steps!r}"):
        orthogonalize(torch.ones(3, 4), method, steps)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64],
                         ids=str)
def test_rejects_non_floating_dtype(dtype):
    with pytest.raises(ValueError, match=f"floating tensor, got dtype {dtype}"):
        orthogonalize(torch.ones(3, 4).to(dtype), "svd")


def test_rejects_non_tensor_and_bad_schedule():
    with pytest.raises(ValueError, match="must be a torch.Tensor, got list"):
        orthogonalize([[1.0, 2.0]], "svd")
    with pytest.raises(ValueError, match="unknown coefficient schedule"):
        orthogonalize(torch.ones(3, 4), "newton_schulz", coefficients="bogus")
    with pytest.raises(ValueError, match=r"lower must lie in \(0, 1\)"):
        orthogonalize(torch.ones(3, 4), "polar_express", lower=0.0)


# --------------------------------------------------------------------- spectral maps


@pytest.mark.parametrize("shape", [(7, 7), (9, 4), (4, 9), (1, 6), (3, 5, 8)], ids=str)
def test_spectral_map_identity_reproduces_input(shape):
    G = gaussian(*shape, seed=11)
    assert rel_err(spectral_map(G, lambda s: s), G) < 1e-14


@pytest.mark.parametrize("shape", [(7, 7), (9, 4), (4, 9), (3, 5, 8)], ids=str)
def test_spectral_map_ones_is_svd_polar_factor(shape):
    G = gaussian(*shape, seed=12)
    assert rel_err(spectral_map(G, torch.ones_like), polar_svd(G)) < 1e-14


def test_spectral_map_applies_f_to_singular_values():
    s = torch.tensor([4.0, 2.0, 0.5], dtype=F64)
    G = with_spectrum(3, 6, s, seed=1)
    out = spectral_map(G, torch.sqrt)
    assert torch.allclose(torch.linalg.svdvals(out), s.sqrt(), atol=1e-14)
    # a map that mixes values across the spectrum (normalize by the largest)
    out = spectral_map(G, lambda v: v / v[..., :1])
    assert torch.allclose(torch.linalg.svdvals(out), s / 4, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_spectral_map_keeps_dtype(dtype):
    G = gaussian(6, 10, seed=3, dtype=dtype)
    out = spectral_map(G, lambda s: s)
    assert out.dtype == dtype
    # float32 SVD round trip (~ a few eps * sqrt(n)), plus one rounding to dtype
    assert rel_err(out, G) < 8 * torch.finfo(dtype).eps


def test_spectral_map_rejects_bad_f():
    G = gaussian(4, 6, seed=0)
    with pytest.raises(ValueError, match=r"f must return a tensor of shape \(4,\), got \(3,\)"):
        spectral_map(G, lambda s: s[:3])
    with pytest.raises(ValueError, match=r"f must return a tensor of shape \(4,\), got \(1, 4\)"):
        spectral_map(G, lambda s: s[None])
    with pytest.raises(ValueError, match="got list"):
        spectral_map(G, lambda s: s.tolist())
    with pytest.raises(ValueError, match="f must be callable"):
        spectral_map(G, 3.0)
    with pytest.raises(ValueError, match="at least 2 dims"):
        spectral_map(torch.ones(4), lambda s: s)


def test_matrix_view_of_conv_and_linear_weights():
    W = torch.randn(8, 3, 5, 5, generator=gen(0))
    M = matrix_view(W)
    assert M.shape == (8, 75)
    assert M.data_ptr() == W.data_ptr()  # a view, not a copy
    assert torch.equal(M[2, 3 * 25 - 1], W[2, 2, 4, 4])
    assert matrix_view(torch.zeros(8, 3, 5)).shape == (8, 15)
    L = torch.zeros(10, 4)
    assert matrix_view(L) is L
    with pytest.raises(ValueError, match=r"at least 2 dims, got shape \(4,\)"):
        matrix_view(torch.zeros(4))
