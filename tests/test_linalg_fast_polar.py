"""The fast paths of the quintic iteration: Schatten-8 normalization, the Gram form, and
reused workspace buffers, checked against the matrix form and the scalar map in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrad.linalg import (
    Workspace,
    as_schedule,
    orthogonality_error,
    orthogonalize,
    polar_express_schedule,
    quintic_iteration,
    quintic_iteration_many,
)
from specgrad.optim import FAST

from conftest import gaussian, gen

SCHEDULES = {
    "jordan": as_schedule("jordan"),
    "polar_express": polar_express_schedule(5),
    "fast": FAST["ns_coefficients"],
}


def spectrum(m: int, n: int, power: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Random singular vectors, singular values ``i^-power`` (``power=None``: Gaussian)."""
    if power is None:
        return gaussian(m, n, seed=seed, dtype=dtype)
    k = min(m, n)
    g = gen(seed)
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    return ((U * torch.arange(1, k + 1, dtype=torch.float64).pow(-power)) @ V.T).to(dtype)


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
