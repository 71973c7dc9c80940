"""The fast path (:mod:`specgrad.linalg.fast_polar`) against the reference page
(:mod:`specgrad.linalg.polar`): every entry point of the fast module is compared with the
reference loop :func:`~specgrad.linalg.newton_schulz` in float64 on random shapes, scales,
batch dims and orientations, with bounds matched to the precision; then what only the fast
path has: Schatten-8 normalization, the Gram form in half precision, reused buffers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.linalg import (
    JORDAN,
    QuinticSchedule,
    Workspace,
    as_schedule,
    newton_schulz,
    normalize_spectrum,
    orthogonality_error,
    orthogonalize,
    orthogonalize_many,
    polar_express_schedule,
    polar_svd,
    quintic_iteration,
    quintic_iteration_many,
    schedule_for,
    stack_normalized,
)
from specgrad.optim import FAST

from conftest import gaussian, gen

F64 = torch.float64
SCHEDULES = {
    "jordan": as_schedule("jordan"),
    "polar_express": polar_express_schedule(5),
    "fast": FAST["ns_coefficients"],
}
# Float64 rounding (eps 2.2e-16) of the two loops, amplified by the slope of the composed
# map: at most Jordan's a^8 ~ 2e4 over 8 steps, so ~5e-12 relative to the largest entry.
F64_TOL = 1e-11
# Relative error of a normalized matrix written in a dtype: its rounding (half an ulp) plus
# that of a float32-summed norm; float64 only when input and output are float64.
NORMALIZE_TOL = {torch.float64: 1e-15, torch.float32: 2e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}

pytestmark = pytest.mark.usefixtures("one_thread")


def spectrum(m: int, n: int, power: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Random singular vectors, singular values ``i^-power`` (``power=None``: Gaussian)."""
    if power is None:
        return gaussian(m, n, seed=seed, dtype=dtype)
    k = min(m, n)
    g = gen(seed)
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    return ((U * torch.arange(1, k + 1, dtype=torch.float64).pow(-power)) @ V.T).to(dtype)


def reference(G: torch.Tensor, schedule: QuinticSchedule, steps: int, norm: str = "frobenius") -> torch.Tensor:
    """The reference loop; ``norm="schatten8"`` as one extra first step ``(k, 0, 0)`` with
    ``k = ||G||_F / ||G||_S8``, which turns ``G / ||G||_F`` into ``G / ||G||_S8``."""
    if norm == "frobenius":
        return newton_schulz(G, schedule, steps)
    out = []
    for X in G.reshape(-1, *G.shape[-2:]):
        s = torch.linalg.svdvals(X.double())
        k = float(s.norm() / s.pow(8).sum().pow(1 / 8)) if s.max() > 0 else 1.0
        pre = QuinticSchedule(((k, 0.0, 0.0), *schedule.steps(steps)), schedule.normalization_safety)
        out.append(newton_schulz(X, pre, steps + 1))
    return torch.stack(out).reshape(G.shape)


def assert_near_reference(out: torch.Tensor, ref: torch.Tensor, tol: float = F64_TOL) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=tol * float(ref.abs().max().clamp_min(1e-300)))


# ------------------------------------------------------------- against the reference loop


batch_shapes = st.sampled_from([(), (1,), (3,), (2, 2)])


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 24), n=st.integers(1, 24), batch=batch_shapes, steps=st.integers(1, 8),
       norm=st.sampled_from(["frobenius", "schatten8"]), gram=st.sampled_from([False, True, "auto"]),
       schedule=st.sampled_from(sorted(SCHEDULES)), log_scale=st.floats(-30, 30), seed=st.integers(0, 2**16))  # fmt: skip
def test_quintic_iteration_equals_the_reference_loop_in_float64(m, n, batch, steps, norm, gram, schedule,
                                                                log_scale, seed):  # fmt: skip
    G = gaussian(*batch, m, n, seed=seed) * 10.0**log_scale
    sched = SCHEDULES[schedule]
    assert_near_reference(quintic_iteration(G, sched, steps, norm=norm, gram=gram), reference(G, sched, steps, norm))


POOL = [(3, 7), (7, 3), (5, 5), (1, 6), (6, 1), (4, 9), (9, 4)]


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.sampled_from(POOL), min_size=1, max_size=6),
       method=st.sampled_from(["newton_schulz", "polar_express", "svd"]), steps=st.integers(1, 6),
       norm=st.sampled_from(["frobenius", "schatten8"]), gram=st.sampled_from([False, True, "auto"]),
       workspace=st.booleans(), log_scale=st.floats(-30, 30), seed=st.integers(0, 2**16))  # fmt: skip
def test_orthogonalize_many_equals_the_reference_matrix_by_matrix(shapes, method, steps, norm, gram, workspace,
                                                                  log_scale, seed):  # fmt: skip
    """Shapes mixed, repeated and transposed (a tall matrix batches with its transpose's
    wide ones); every result against the reference of that matrix alone."""
    mats = [gaussian(*shape, seed=seed + i) * 10.0 ** (log_scale + i) for i, shape in enumerate(shapes)]
    ws = Workspace() if workspace else None
    out = orthogonalize_many(mats, method, steps, norm=norm, gram=gram, workspace=ws)
    for G, O in zip(mats, out):
        if method == "svd":
            torch.testing.assert_close(O, polar_svd(G), rtol=0, atol=1e-12)
        else:
            assert_near_reference(O, reference(G, schedule_for(method, steps), steps, norm))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 24), count=st.integers(1, 4), steps=st.integers(1, 6),
       norm=st.sampled_from(["frobenius", "schatten8"]), gram=st.sampled_from([False, True, "auto"]),
       transposed=st.booleans(), stacked=st.booleans(), log_scale=st.floats(-30, 30), seed=st.integers(0, 2**16))  # fmt: skip
def test_quintic_iteration_many_equals_the_reference_loop(m, n, count, steps, norm, gram, transposed, stacked,
                                                          log_scale, seed):  # fmt: skip
    m, n = min(m, n), max(m, n)
    G = gaussian(count, m, n, seed=seed) * 10.0**log_scale
    mats = G if stacked else [gaussian(n, m, seed=seed + k).mT * 10.0**log_scale if transposed else x
                              for k, x in enumerate(G)]  # fmt: skip
    sched = SCHEDULES["fast"]
    out = quintic_iteration_many(mats, sched, steps, norm=norm, gram=gram)
    assert_near_reference(out, reference(torch.stack(list(mats)), sched, steps, norm))


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 16), n=st.integers(1, 16), count=st.integers(1, 3), src=st.sampled_from(DTYPES),
       dst=st.sampled_from([None, *DTYPES]), safety=st.sampled_from([1.0, 1.01, 1.03]),
       log_scale=st.floats(-30, 30), seed=st.integers(0, 2**16))  # fmt: skip
def test_normalizations_equal_the_reference_normalization(m, n, count, src, dst, safety, log_scale, seed):
    """``normalize_spectrum`` and ``stack_normalized`` against the reference's own
    normalization: its loop with one identity step ``(1, 0, 0)``."""
    if src == torch.float16:
        log_scale /= 8  # float16 holds magnitudes up to 6.5e4 only
    G = (gaussian(count, m, n, seed=seed) * 10.0**log_scale).to(src)
    exact = newton_schulz(G.double(), QuinticSchedule(((1.0, 0.0, 0.0),), safety), 1)
    tol = max(NORMALIZE_TOL[src], NORMALIZE_TOL[dst or src])
    for X in (normalize_spectrum(G, safety, dst), stack_normalized(list(G), safety, dst), stack_normalized(G, safety, dst)):
        assert X.dtype == (dst or src)
        torch.testing.assert_close(X.double(), exact, rtol=tol, atol=tol * float(exact.abs().max()))


# Distance to the float64 reference, relative in Frobenius norm, of the fast path run in a
# lower precision (the bounds of test_linalg_polar's DTYPE_TOL).
LOW_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", list(LOW_TOL), ids=str)
@pytest.mark.parametrize("method", ["newton_schulz", "polar_express"])
def test_orthogonalize_many_in_low_precision_is_close_to_the_float64_reference(dtype, method):
    shapes = [(16, 40), (40, 16), (8, 24), (24, 8), (8, 24)]  # some batch, the tall ones with the wide ones
    mats = [gaussian(*shape, seed=k, dtype=torch.float32) for k, shape in enumerate(shapes)]
    for inputs, kw in ((mats, {"dtype": dtype}), ([G.to(dtype) for G in mats], {})):
        for G, O in zip(inputs, orthogonalize_many(inputs, method, 5, **kw)):
            R = reference(G.double(), schedule_for(method), 5)
            assert O.dtype == G.dtype and torch.isfinite(O).all()
            assert float((O.double() - R).norm() / R.norm()) < LOW_TOL[dtype]


def test_orthogonalize_runs_the_reference_loop_unless_a_fast_option_is_set():
    G = gaussian(3, 10, 14, seed=2)
    sched = SCHEDULES["polar_express"]
    assert torch.equal(orthogonalize(G, "polar_express", 5), newton_schulz(G, sched, 5))
    for kw in ({"dtype": F64}, {"norm": "schatten8"}, {"gram": True}, {"gram": "auto"}):
        assert torch.equal(orthogonalize(G, "polar_express", 5, **kw), quintic_iteration(G, sched, 5, **kw)), kw


def test_normalize_spectrum_bounds_and_range():
    G = gaussian(2, 10, 30, seed=3)
    for safety in (1.0, 1.01):
        X = normalize_spectrum(G, safety)
        frob = torch.linalg.matrix_norm(X)
        assert torch.allclose(frob, torch.full((2,), 1 / safety, dtype=F64), rtol=1e-14)
    big = normalize_spectrum(G * 1e150)
    small = normalize_spectrum(G * 1e-150)
    assert torch.allclose(big, normalize_spectrum(G), rtol=1e-13)
    assert torch.allclose(small, normalize_spectrum(G), rtol=1e-13)
    assert normalize_spectrum(G.float(), dtype=torch.bfloat16).dtype == torch.bfloat16
    Z = normalize_spectrum(torch.zeros(4, 4, dtype=torch.float32))
    assert (Z == 0).all()


@pytest.mark.parametrize("src, dst", [(torch.float32, torch.bfloat16), (torch.float16, torch.float32),
                                      (torch.float64, None), (torch.float32, None)])  # fmt: skip
def test_stack_normalized_and_many_equal_the_stacked_path(src, dst):
    g = torch.Generator().manual_seed(5)
    mats = [torch.randn(6, 9, generator=g).to(src), torch.randn(9, 6, generator=g).to(src).mT,
            torch.zeros(6, 9, dtype=src)]  # fmt: skip
    stacked = torch.stack(mats)
    # equal up to the summation order of float32 norms (a transposed view sums by columns)
    close = dict(rtol=2e-6, atol=0) if (dst or src) != torch.bfloat16 else dict(rtol=2**-7, atol=0)
    torch.testing.assert_close(stack_normalized(mats, 1.01, dst), normalize_spectrum(stacked, 1.01, dst), **close)
    torch.testing.assert_close(stack_normalized(stacked, 1.01, dst), normalize_spectrum(stacked, 1.01, dst), **close)
    sched = as_schedule(JORDAN)
    many = quintic_iteration_many(mats, sched, 5, dtype=dst)
    assert many.dtype == src
    torch.testing.assert_close(many, quintic_iteration(stacked, sched, 5, dtype=dst), **close)
    with pytest.raises(ValueError, match="wide"):
        quintic_iteration_many([m.mT for m in mats], sched, 5)



# --------------------------------------------------------------- what only the fast path has


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 24), n=st.integers(1, 24), steps=st.integers(1, 8), batch=st.integers(1, 3),
       norm=st.sampled_from(["frobenius", "schatten8"]), schedule=st.sampled_from(sorted(SCHEDULES)),
       log_scale=st.floats(-30, 30), seed=st.integers(0, 2**16))  # fmt: skip
def test_gram_form_equals_matrix_form_in_float64(m, n, steps, batch, norm, schedule, log_scale, seed):
    G = gaussian(batch, m, n, seed=seed) * 10.0**log_scale
    sched = SCHEDULES[schedule]
    ref = quintic_iteration(G, sched, steps, norm=norm, gram=False)
    out = quintic_iteration(G, sched, steps, norm=norm, gram=True)
    # the same polynomial in exact arithmetic; float64 rounding grows with the slopes
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-7 * ref.abs().max().clamp_min(1))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 20), n=st.integers(1, 20), steps=st.integers(1, 6), gram=st.booleans(),
       power=st.sampled_from([None, 0.5, 1.0, 2.0]), log_scale=st.floats(-20, 20), seed=st.integers(0, 2**16))  # fmt: skip
def test_schatten8_output_is_the_scalar_map_of_the_schatten8_normalized_spectrum(m, n, steps, gram, power,
                                                                                log_scale, seed):  # fmt: skip
    G = spectrum(m, n, power, seed) * 10.0**log_scale
    sched = SCHEDULES["polar_express"]
    s = torch.linalg.svdvals(G)
    x = s / (sched.normalization_safety * s.pow(8).sum().pow(1 / 8))
    expected = torch.as_tensor(sched.scalar(x.numpy(), steps)).sort(descending=True).values
    got = torch.linalg.svdvals(quintic_iteration(G, sched, steps, norm="schatten8", gram=gram))
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


def test_schatten8_starts_small_singular_values_larger_than_frobenius():
    G = spectrum(64, 256, 0.5, seed=1)
    sched = as_schedule("jordan")
    lo = {norm: float(torch.linalg.svdvals(quintic_iteration(G, sched, 1, norm=norm)).min())
          for norm in ("frobenius", "schatten8")}  # fmt: skip
    assert lo["schatten8"] > 1.5 * lo["frobenius"]


@pytest.mark.parametrize("power", [0.5, 1.0, None])
@pytest.mark.parametrize("shape", [(96, 384), (384, 96), (64, 64)])
def test_gram_form_in_bfloat16_is_as_orthogonal_as_the_matrix_form(power, shape):
    """The FAST schedule's margin keeps the Gram form stable in bfloat16 (a schedule without
    one diverges here). It is not free: its rounding accumulates over the m x m products,
    and the error measured here is 0.04-0.07 above the matrix form's (0.22-0.23); the
    bound guards that cost and divergence."""
    G = torch.stack([spectrum(*shape, power, seed=s, dtype=torch.float32) for s in range(3)])
    sched, steps = FAST["ns_coefficients"], FAST["ns_steps"]
    kw = dict(dtype=torch.bfloat16, norm="schatten8")
    s0 = torch.linalg.svdvals(G.double())
    keep = int((s0 > 1e-3 * s0[..., :1]).sum(-1).min())

    def err(O):
        assert torch.isfinite(O).all()
        return float((torch.linalg.svdvals(O.double())[..., :keep] - 1).abs().max())

    matrix = err(quintic_iteration(G, sched, steps, gram=False, **kw))
    gram = err(quintic_iteration(G, sched, steps, gram=True, **kw))
    assert gram <= matrix + 0.09


@pytest.mark.parametrize("gram", [False, True])
def test_zero_matrix_stays_zero_with_schatten8(gram):
    G = torch.stack([torch.zeros(4, 12), gaussian(4, 12, seed=0, dtype=torch.float32)])
    for dtype in (None, torch.bfloat16):
        O = quintic_iteration(G, as_schedule("jordan"), 5, norm="schatten8", gram=gram, dtype=dtype)
        assert torch.isfinite(O).all() and torch.equal(O[0], torch.zeros(4, 12))
        assert orthogonality_error(O[1]) < 0.4


def test_orthogonalize_passes_norm_and_gram_through():
    G = gaussian(8, 40, seed=3)
    ref = orthogonalize(G, "polar_express", 6, norm="schatten8")
    torch.testing.assert_close(orthogonalize(G, "polar_express", 6, norm="schatten8", gram="auto"), ref)
    with pytest.raises(ValueError, match="norm must be one of"):
        orthogonalize(G, norm="spectral")
    with pytest.raises(ValueError, match="gram must be"):
        orthogonalize(G, gram="yes")


@pytest.mark.parametrize("gram", [False, "auto"])
def test_workspace_reuses_its_buffers_and_changes_no_result(gram):
    mats = [gaussian(6, 20, seed=s, dtype=torch.float32) for s in range(3)]
    sched = FAST["ns_coefficients"]
    fresh = quintic_iteration_many(mats, sched, 4, dtype=torch.bfloat16, norm="schatten8", gram=gram)
    ws = Workspace()
    first = quintic_iteration_many(mats, sched, 4, dtype=torch.bfloat16, norm="schatten8", gram=gram, workspace=ws)
    assert torch.equal(first, fresh)
    sizes = len(ws)
    second = quintic_iteration_many(mats, sched, 4, dtype=torch.bfloat16, norm="schatten8", gram=gram, workspace=ws)
    assert len(ws) == sizes and second.data_ptr() == first.data_ptr()  # the same buffer, refilled
    assert torch.equal(second, fresh)


def test_polar_express_without_margin_diverges_in_gram_form():
    """Why Muon warns about ns_gram with the default Polar Express schedule (safety 1.01)."""
    G = torch.stack([spectrum(96, 384, None, seed=s, dtype=torch.float32) for s in range(3)])
    kw = dict(dtype=torch.bfloat16, norm="schatten8", gram=True)
    assert float(torch.linalg.svdvals(quintic_iteration(G, polar_express_schedule(5), 5, **kw).double()).max()) > 10
    fast = quintic_iteration(G, FAST["ns_coefficients"], FAST["ns_steps"], **kw)
    assert float(torch.linalg.svdvals(fast.double()).max()) < 1.5
