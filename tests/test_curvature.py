"""The isotropic curvature model (specgrad.theory.curvature): reduction to the spectrum, exact
sphere moments, closed forms, order and homogenization, the spectral map and its polynomial
approximation; smoke runs of ``isotropic-curvature`` and ``curvature-profile``."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import specgrad.experiments.isotropic_curvature.curvature_profile as cp
import specgrad.experiments.isotropic_curvature.isotropic_curvature as ic
from specgrad.experiments import run_experiment
from specgrad.linalg import spectral_map
from specgrad.optim import SpectralDescent
from specgrad.theory import curvature as cv
from specgrad.theory import icm_maps, sphere

F64 = torch.float64


# --- sphere moments ------------------------------------------------------------------


def test_exact_moments_closed_forms():
    """(4) of the module docstring: E r^2 = sum a / n, E r^4 = ((sum a)^2 + 2 sum a^2) / (n(n+2))."""
    a = np.array([0.3, 1.7, 0.0, 2.2])
    n = 7
    m = cv.sphere_moments(a, n, 2)
    assert m[0] == pytest.approx(a.sum() / n, rel=1e-14)
    assert m[1] == pytest.approx((a.sum() ** 2 + 2 * (a**2).sum()) / (n * (n + 2)), rel=1e-14)


def test_exact_moments_match_monte_carlo():
    """Moments 1..4 against 400k Dirichlet samples: within 5 standard errors."""
    a = np.array([1.0, 0.6, 0.25, 0.1, 0.0])
    n = 6
    w = cv.dirichlet_sample(n, 400_000, seed=3)[:, : a.size]
    x = w @ a
    exact = cv.sphere_moments(a, n, 4)
    for j in range(4):
        v = x ** (j + 1)
        assert abs(v.mean() - exact[j]) <= 5 * v.std() / math.sqrt(v.size), j


def test_moment_gradient_matches_finite_differences():
    a = np.array([0.7, 0.2, 1.3])
    _, d = sphere.moments_with_gradient(a, 5, 3)
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1e-6
        fd = (cv.sphere_moments(a + e, 5, 3) - cv.sphere_moments(a - e, 5, 3)) / 2e-6
        np.testing.assert_allclose(d[:, i], fd, rtol=1e-7)


# --- the four known cases ---------------------------------------------------------------


def test_quadratic_gives_scaled_gradient():
    s = np.array([2.0, 1.1, 0.4, 0.05])
    for n in (4, 9):
        q = cv.solve(s, cv.quadratic(0.7), n).q
        np.testing.assert_allclose(q, n * s / (2 * 0.7), rtol=1e-10)


@pytest.mark.parametrize("n", [5, 12])
def test_quartic_solves_its_cubic_equation(n):
    """H = c r^4: s*^3 + D s* = n(n+2) s / (8c), D = sum s*^2 / 2, against the scalar-root solution."""
    c = 0.3
    s = np.sort(np.random.default_rng(0).uniform(0.01, 2.0, size=5))[::-1]
    q = cv.solve(s, cv.power(4.0, c), n).q
    D = 0.5 * np.sum(q**2)
    np.testing.assert_allclose(q**3 + D * q, n * (n + 2) * s / (8 * c), rtol=1e-10)
    np.testing.assert_allclose(q, cv.quartic_fixed_point(s, c, n), rtol=1e-10)


def test_kink_gives_equal_singular_values():
    """Left slope 0, right slope large at r0 = 1, m >= n: s* -> r0 (1, ..., 1) as the kink sharpens."""
    s = np.array([3.0, 2.0, 1.0, 0.5, 0.1])
    spread = []
    for width in (1e-3, 1e-4, 1e-5):
        sol = cv.solve(s, cv.smoothed_kink(1.0, 0.0, 1000.0, width), 5, expectation="monte-carlo")
        spread.append(1 - sol.q.min() / sol.q.max())
        assert abs(sol.q.max() - 1.0) < 20 * width
    assert spread[-1] < 1e-3 and spread[0] > spread[1] > spread[2]


spectra = st.lists(st.floats(0.01, 10.0), min_size=2, max_size=7).map(lambda v: np.sort(np.array(v))[::-1])


@settings(max_examples=25, deadline=None)
@given(s=spectra, extra=st.integers(0, 4), family=st.sampled_from(["quartic", "p6", "quad_quartic"]),
       scale=st.floats(0.05, 20.0))  # fmt: skip
def test_super_quadratic_keeps_order_and_homogenizes(s, extra, family, scale):
    H = {"quartic": cv.power(4.0), "p6": cv.power(6.0), "quad_quartic": cv.quadratic_quartic(1.0, 2.0)}[family]
    q = cv.solve(s * scale, H, s.size + extra).q
    assert np.all(q > 0)
    assert cv.order_violations(s, q, rtol=1e-9) == 0
    assert cv.max_pair_ratio(s, q) <= 1 + 1e-9


def test_aligned_q_is_optimal_for_general_q():
    """The unreduced program (1) over general Q (autograd + LBFGS from a random start) lands on
    U diag(s*) V^T with s* from the reduced solver."""
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(5, 3, dtype=F64, generator=gen)
    Q = (0.1 * torch.randn(5, 3, dtype=F64, generator=gen)).requires_grad_()
    opt = torch.optim.LBFGS([Q], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = cv.general_objective(Q, G, 0.5, 1.0)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    q = cv.solve(S.numpy(), cv.quadratic_quartic(0.5, 1.0), 3).q
    torch.testing.assert_close(Q.detach(), U @ torch.diag(torch.from_numpy(q)) @ Vh, rtol=1e-7, atol=1e-8)


def test_wide_gradient_uses_n_beyond_k():
    """m < n: the k = m singular values see a sphere of dimension n (quadratic: q = n s / 2c)."""
    q = cv.solve(np.array([1.0, 0.5]), cv.quadratic(1.0), n=6).q
    np.testing.assert_allclose(q, [3.0, 1.5], rtol=1e-10)
    with pytest.raises(ValueError, match="n must be"):
        cv.solve(np.array([1.0, 0.5, 0.2]), cv.quadratic(1.0), n=2)


def test_monte_carlo_solver_agrees_with_exact_within_its_error():
    """A sampled H that is secretly polynomial (r^2 + r^4 as a custom callable) is recovered
    exactly (the control variate absorbs it); for H = r^3 the population stationarity,
    measured on an independent sample 10x larger, holds within 5 reported standard errors."""
    s = np.array([2.0, 1.0, 0.6, 0.3, 0.1])
    exact = cv.solve(s, cv.quadratic_quartic(1.0, 1.0), 8)
    H = cv.custom(lambda r: r**2 + r**4, lambda r: 2 * r + 4 * r**3, "r^2 + r^4 sampled")
    mc = cv.solve(s, H, 8, samples=4096, seed=1, expectation="monte-carlo")
    assert exact.method == "exact" and mc.method.startswith("monte-carlo")
    np.testing.assert_allclose(mc.q, exact.q, rtol=1e-9)

    sol = cv.solve(s, cv.power(3.0), 8, samples=20_000, seed=1, expectation="monte-carlo")
    assert 0 < sol.grad_se < 0.01
    check = cv.ReducedProgram(s, cv.power(3.0), 8, samples=200_000, seed=9, expectation="monte-carlo")
    check.fit_control_variate(sol.q)
    _, grad = check.value_grad(sol.q)
    assert np.abs(grad).max() / s.max() <= 5 * sol.grad_se


def test_sampled_power_homogenizes_in_population():
    """H = r^3 (sampled): order kept, and homogenization within the sampling error."""
    s = np.array([4.0, 2.0, 1.0, 0.5])
    sol = cv.solve(s, cv.power(3.0), 4, samples=20_000, expectation="monte-carlo")
    assert cv.order_violations(s, sol.q) == 0
    assert cv.homogenization_ratio(s, sol.q) < 0.9


# --- deterministic expectations ---------------------------------------------------------


@pytest.mark.parametrize("H", [cv.power(3.0), cv.quadratic_power(0.5, 1.0, 2.4), cv.kink(1.0, 0.1, 5.0),
                               cv.smoothed_kink(1.0, 0.1, 5.0, 0.05)], ids=lambda H: H.name)  # fmt: skip
def test_quadrature_matches_monte_carlo(H):
    """Objective and gradient of the deterministic program against 10^6 Dirichlet samples
    (float64): within 5 standard errors of the sampled mean."""
    s = np.array([2.0, 1.0, 0.6, 0.3])
    q = np.array([1.4, 1.1, 0.7, 0.2])
    n = 6
    val, grad = cv.ReducedProgram(s, H, n).value_grad(q)
    w = cv.dirichlet_sample(n, 1_000_000, seed=11)[:, :4]
    r = np.sqrt(w @ (q * q))
    f = H(r) - H.poly[0] * r**2 if H.poly else H(r)
    exact_part = -s @ q + (H.poly[0] * np.sum(q * q) / n if H.poly else 0.0)
    assert abs(val - exact_part - f.mean()) <= 5 * f.std() / 1000
    terms = (H.derivative(r) / r)[:, None] * w * q  # dE H / dq_i = q_i E[H'(r)/r w_i]
    g_mc = -s + terms.mean(0)
    assert np.all(np.abs(grad - g_mc) <= 5 * terms.std(0) / 1000 + 1e-12)


def test_power_and_radial_quadratures_agree():
    """The one-dimensional Laplace form of E R^beta and the two-dimensional Imhof form agree
    to 1e-9, gradients included."""
    a = np.array([1.0, 0.5, 0.2, 0.05])
    ref, ref_g = sphere.power_expectation(a, 6, 1.5)
    v, g = sphere.radial_expectation(a, 6, lambda t: 1.5 * np.sqrt(t), 0.0)
    assert abs(v - ref) < 1e-9 and np.abs(g - ref_g).max() < 1e-9


def test_finite_kink_descent_decides_orthogonalization():
    """At q = (1, ..., 1) the finite-slope kink's objective has no descent direction once the right
    slope is large enough, and does before (k = n); Proposition 6: a differentiable H (softplus
    kink) never gives equal singular values for unequal s; m < n with a hard kink: equal."""
    s = np.array([1.0, 0.7, 0.4, 0.2])
    dirs = [s - s.mean(), np.eye(4)[0]]
    assert cv.kink_descent(s, dirs, 0.01, 50.0)[0] > 0
    assert cv.kink_descent(s, dirs, 0.01, 2.0)[0] < 0
    sol = cv.solve(s, cv.kink(1.0, 0.01, 2.0), 4)  # shallow: not orthogonal, and the solver agrees
    assert sol.q.min() / sol.q.max() < 0.9 and sol.q.max() > 1.0
    smooth = cv.solve(s, cv.smoothed_kink(1.0, 0.01, 50.0, 0.05), 4)
    assert smooth.residual < 1e-6 and smooth.q.min() / smooth.q.max() < 0.999
    wide = cv.solve(s[:2], cv.hard_kink(1.0, 0.01), 4)  # k = 2 < n = 4
    np.testing.assert_allclose(wide.q, [1.0, 1.0])


# --- the spectral map ------------------------------------------------------------------


def test_icm_map_is_monotone_and_normalized():
    f = icm_maps.icm_map(cv.quadratic_power(1.0, 1.0, 2.5), samples=512)
    s = torch.linalg.svdvals(torch.randn(40, 20, dtype=F64, generator=torch.Generator().manual_seed(1)))
    out = f(s)
    assert out.dtype == s.dtype and out.shape == s.shape
    assert out.max().item() == pytest.approx(1.0)
    assert torch.all(out[1:] <= out[:-1])
    # unordered input: each value keeps its own image
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(f(s[perm]), out[perm], rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="normalize"):
        icm_maps.icm_map(cv.quadratic(1.0), normalize="sum")


def test_spectral_descent_step_is_u_f_s_vt():
    gen = torch.Generator().manual_seed(4)
    G = torch.randn(6, 4, dtype=F64, generator=gen)
    f = icm_maps.icm_map(cv.quadratic_quartic(0.5, 1.0), input_scale=1.0)
    W = torch.nn.Parameter(torch.zeros(6, 4, dtype=F64))
    opt = SpectralDescent([W], f=f, lr=0.3)
    W.grad = G.clone()
    opt.step()
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    q = cv.solve(S.numpy() / S.max().item(), cv.quadratic_quartic(0.5, 1.0), 4).q
    expected = -0.3 * U @ torch.diag(torch.from_numpy(q / q.max())) @ Vh
    torch.testing.assert_close(W.detach(), expected, rtol=1e-9, atol=1e-12)


def test_icm_map_scale_options():
    """Pure power H: the normalized map does not depend on the gradient's scale;
    normalize='none' returns the model's step itself."""
    s = torch.tensor([3.0, 1.0, 0.2], dtype=F64)
    f = icm_maps.icm_map(cv.power(4.0))
    torch.testing.assert_close(f(s), f(100 * s), rtol=1e-8, atol=1e-10)
    raw = icm_maps.icm_map(cv.power(4.0), normalize="none")(s)
    torch.testing.assert_close(raw, torch.from_numpy(cv.quartic_fixed_point(s.numpy(), 1.0)), rtol=1e-9, atol=0)


def test_polynomial_approximation_error_bound_holds():
    """The fitted SVD-free polynomial stays within its stated operator-norm error on fresh
    random matrices of its fitting distribution."""
    H = cv.quadratic_power(1.0, 1.0, 4.0)
    P = icm_maps.fit_icm_polynomial(H, (24, 12), degree=3, fit=20, validation=20)
    assert P.error < 0.2 and P.monotone
    f = icm_maps.icm_map(H, input_scale=1.0)
    for G in icm_maps.random_matrices((24, 12), 15, seed=99):
        err = torch.linalg.matrix_norm(P(G) - spectral_map(G, f), ord=2).item()
        assert err <= P.error
    G = icm_maps.random_matrices((12, 24), 1, seed=5)[0]  # wide input: the same map on G^T
    torch.testing.assert_close(P(G), P(G.mT).mT)


# --- experiments -----------------------------------------------------------------------


def test_largest_reversal_and_ns5_is_not_monotone():
    assert ic.largest_reversal(np.array([0.0, 1.0, 2.0]), np.array([0.0, 2.0, 1.5])) == pytest.approx(0.5)
    x = np.geomspace(1e-3, 1, 500)
    assert ic.largest_reversal(x, ic.scalar_curve("ns5", x)) > 0.1


def test_fit_quadratic_power_recovers_parameters():
    r = np.geomspace(1e-3, 2.0, 15)
    fit = cp.fit_quadratic_power(r, 0.3 * r**2 + 0.05 * r**2.4)
    assert fit["c2"] == pytest.approx(0.3, rel=1e-4) and fit["p"] == pytest.approx(2.4, rel=1e-4)
    assert cp.local_exponent(r, r**2.5, [0, 1, 2]) == pytest.approx(2.5)


def test_isotropic_curvature_smoke(tmp_path):
    res = run_experiment("isotropic-curvature", "smoke", tmp_path, progress=False)
    kinds = {c["id"]: c["kind"] for c in res["claims"]}
    assert set(kinds) >= {"quadratic-scaled-gradient", "quartic-closed-form", "kink-orthogonalizes",
                          "finite-slope-kink-orthogonalizes", "kink-necessary", "wide-finite-kink-orthogonalizes"}
    assert kinds["quartic-closed-form"] == "self-consistency" and kinds["kink-orthogonalizes"] == "sanity"
    failed = {c["id"] for c in res["claims"] if not c["passed"]}
    assert failed <= {"finite-slope-kink-orthogonalizes"}, failed  # fails at n = 64: a finding, see the docs
    saved = json.loads((tmp_path / "isotropic-curvature" / "result.json").read_text())
    assert saved["figures"] == ["maps.png", "scalar_maps.png"]


def test_curvature_profile_smoke(tmp_path):
    res = run_experiment("curvature-profile", "smoke", tmp_path, progress=False)
    assert set(res["tuning"]["best_lr"]) == {"adamw", "muon", "icm"}
    assert res["tuning"]["H"]["c2"] > 0
    profiles = [k for k in res["series"] if k.startswith("profile-adamw/")]
    assert profiles and all(len(res["series"][k]["H"]) == 5 for k in profiles)
    assert math.isfinite(res["summary"]["icm/final_val_loss"])
    assert (tmp_path / "curvature-profile" / "profile.png").exists()
