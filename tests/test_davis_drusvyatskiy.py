"""Davis & Drusvyatskiy reproductions: smoke runs, claim logic on constructed series, the
update formulas against direct float64 computations, and the spike-bound formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from specgrad.experiments import run_experiment
from specgrad.experiments.registry import EXPERIMENTS
from specgrad.experiments.davis_drusvyatskiy import init_stable_rank as isr
from specgrad.experiments.davis_drusvyatskiy import lm_spectra as lms
from specgrad.experiments.davis_drusvyatskiy import nuclear_rank_growth as nrg
from specgrad.experiments.davis_drusvyatskiy import random_features as rfe
from specgrad.experiments.davis_drusvyatskiy import sparse_regression as sre
from specgrad.experiments.davis_drusvyatskiy import sparse_regression_swiglu as srs
from specgrad.experiments.davis_drusvyatskiy import sparse_training as spt
from specgrad.experiments.davis_drusvyatskiy import stable_rank_sweeps as srk
from specgrad.experiments.davis_drusvyatskiy.stable_ranks import fast_stable_rank
from specgrad.linalg import nuclear_rank, polar_svd, stable_rank
from specgrad.theory import random_features as rf
from specgrad.theory import sparse_regression as sparse

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("init-stable-rank", "random-features", "sparse-regression", "sparse-regression-swiglu", "nuclear-rank-growth",
         "stable-ranks", "lm-spectra")
CLAIMS = {
    "init-stable-rank": {"one-layer-below-spike-bound", "one-layer-bounded-in-width", "swiglu-grows-with-width",
                         "deep-net-below-spike-bound", "deep-plain-net-below-layer-bound",
                         "deep-plain-homogeneous-equals-rescaled", "gpt-init-low-stable-rank"},
    "random-features": {"relu-specgd-far-below-gd", "relu-nr-exceeds-st", "relu-restart-from-peak-beats-gd",
                        "swiglu-gd-wins"},
    "sparse-regression": {"specgd-ahead-early", "hidden-stable-rank-small", "nr-exceeds-st-at-init"},
    "sparse-regression-swiglu": {"swiglu-hidden-st-exceeds-relu2-bound", "swiglu-st-grows-with-batch",
                                 "swiglu-large-batch-gd-ahead-at-end", "layerwise-rule-predicts-early-winner"},
    "nuclear-rank-growth": {"nr-init-about-constant", "nr-one-step-linear", "ts-nr-init-about-constant",
                            "ts-nr-one-step-linear"},
    "stable-ranks": {"spike-st-closed-form", "one-step-rule-predicts-first-step", "gd-wins-at-identity",
                     "specgd-wins-at-low-st", "advantage-tracks-st", "advantage-tracks-st-final",
                     "relu2-net-st-bounded-in-batch", "swiglu-net-st-grows-with-batch"},
    "lm-spectra": {"mlp-post-activation-low-st", "normalized-inputs-low-st", "hidden-nr-above-st"},
}  # fmt: skip


# -- smoke runs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_writes_result_claims_and_figures(name, tmp_path):
    r = run_experiment(name, "smoke", tmp_path, progress=False)
    assert {c["id"] for c in r["claims"]} == CLAIMS[name]
    assert all(c["kind"] in ("study", "self-consistency", "sanity") for c in r["claims"]), r["claims"]
    # a value for every claim, unless the claim says why this size cannot decide it
    assert all(c["value"] is not None or (c["passed"] is None and c["reason"]) for c in r["claims"]), r["claims"]
    assert r["figures"]
    for fig in r["figures"]:
        assert (tmp_path / name / fig).stat().st_size > 0
    assert (tmp_path / name / "result.json").exists()


def test_smoke_series_have_the_recorded_quantities(tmp_path):
    r = run_experiment("random-features", "smoke", tmp_path, progress=False)
    gd = r["series"]["relu/gd/seed0"]
    assert gd["step"][0] == 0 and len(gd["step"]) == len(gd["objective_gap"]) == len(gd["nuclear_rank"])
    assert "relu/specgd_from_peak/seed0" in r["series"] and "relu/specgd_from_15/seed0" in r["series"]
    assert r["summary"]["relu/stable_rank_A"] < math.pi  # the ReLU spike bound
    s = run_experiment("sparse-regression", "smoke", tmp_path, progress=False)["series"]["gd/seed0"]
    assert len(s["diag_step"]) == len(s["st_A1"]) == len(s["nr_G3"]) and s["step"][-1] == 40


# -- update formulas against direct float64 computations --------------------------------------------


def _tiny_problem(seed=0, m=7, d=5, n=11):
    g = torch.Generator().manual_seed(seed)
    A = F.relu(torch.randn(m, d, generator=g, dtype=torch.float64) @ torch.randn(d, n, generator=g, dtype=torch.float64))
    Y = torch.randn(4, m, generator=g, dtype=torch.float64) @ A
    W = torch.randn(4, m, generator=g, dtype=torch.float64)
    return A, Y, W


def test_random_feature_gradient_matches_autograd():
    A, Y, W = _tiny_problem()
    n = A.shape[1]
    W_ = W.clone().requires_grad_(True)
    loss = 0.5 / n * (W_ @ A - Y).square().sum()
    loss.backward()
    value, G = rf.least_squares_problem(A, Y).loss_and_gradient(W)
    assert value == pytest.approx(loss.item(), rel=1e-14)
    torch.testing.assert_close(G, W_.grad, rtol=1e-13, atol=1e-15)


def test_gd_and_specgd_steps_match_the_formulas():
    A, Y, W = _tiny_problem(1)
    n = A.shape[1]
    prob = rf.least_squares_problem(A, Y)
    _, G = prob.loss_and_gradient(W)
    op_sq = float(torch.linalg.matrix_norm(A, ord=2)) ** 2
    fro_sq = float((A * A).sum())
    torch.testing.assert_close(prob.step(W, G, "frobenius"), W - n / op_sq * G, rtol=1e-14, atol=1e-15)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    expected = W - n / fro_sq * float(S.sum()) * (U @ Vh)
    torch.testing.assert_close(prob.step(W, G, "spectral"), expected, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(prob.step(W, G, "spectral", 0.5), W - 0.5 * n / fro_sq * float(S.sum()) * polar_svd(G),
                               rtol=1e-12, atol=1e-13)  # fmt: skip
    # the norms of A the steps use, and its stable rank
    assert prob.op_sq == pytest.approx(op_sq, rel=1e-12) and prob.fro_sq == pytest.approx(fro_sq, rel=1e-12)
    assert prob.stable_rank == pytest.approx(float(stable_rank(A)), rel=1e-12)


def test_one_step_decreases_match_the_one_step_bounds():
    """For the quadratic f(W) = (1/2n)||WA - Y||^2: the GD step decreases f by at least
    ||G||_F^2 / (2 L_F) with L_F = ||A||_op^2 / n, the spectral step by at least
    ||G||_*^2 / (2 L_op) with L_op = ||A||_F^2 / n (the comparison nr(G) vs st(A))."""
    A, Y, W = _tiny_problem(2)
    n = A.shape[1]
    prob = rf.least_squares_problem(A, Y)
    f0, G = prob.loss_and_gradient(W)
    op_sq, fro_sq = float(torch.linalg.matrix_norm(A, ord=2)) ** 2, float((A * A).sum())
    f_gd = prob.loss_and_gradient(prob.step(W, G, "frobenius"))[0]
    f_spec = prob.loss_and_gradient(prob.step(W, G, "spectral"))[0]
    S = torch.linalg.svdvals(G)
    assert f0 - f_gd >= float(S.square().sum()) * n / (2 * op_sq) * (1 - 1e-12)
    assert f0 - f_spec >= float(S.sum()) ** 2 * n / (2 * fro_sq) * (1 - 1e-12)


def test_closed_form_gd_gradients_match_the_iteration():
    g = torch.Generator().manual_seed(3)
    k, d, n = 12, 6, 24
    A = F.relu(torch.randn(k, d, generator=g, dtype=torch.float64) / math.sqrt(d) @ torch.randn(d, n, generator=g, dtype=torch.float64))
    W_sharp = torch.randn(k, k, generator=g, dtype=torch.float64) / math.sqrt(k)
    Y = W_sharp @ A
    steps = [0, 1, 2, 5, 9]
    closed = rf.rotated_gd_gradients(A, W_sharp, steps)
    prob = rf.least_squares_problem(A, Y)
    W = torch.zeros(k, k, dtype=torch.float64)
    for t in range(max(steps) + 1):
        _, G = prob.loss_and_gradient(W)
        if t in steps:
            torch.testing.assert_close(torch.linalg.svdvals(closed[steps.index(t)]), torch.linalg.svdvals(G),
                                       rtol=1e-8, atol=1e-12)  # fmt: skip
            assert float(nuclear_rank(closed[steps.index(t)])) == pytest.approx(float(nuclear_rank(G)), rel=1e-8)
        W = prob.step(W, G, "frobenius")


def test_sparse_regression_first_step_matches_a_direct_computation():
    cfg = sre.SparseRegressionConfig(input_dim=6, hidden=10, samples=20, steps=1, record_every=1)
    x, y, W0 = sre.problem(cfg, 0)
    for method in ("gd", "specgd"):
        out = sre.train(cfg, method, x, y, W0)
        Ws = [w.clone().requires_grad_(True) for w in W0]
        acts, h = [x], x
        for W in Ws[:3]:
            h = F.relu(h @ W.T) ** 2
            acts.append(h)
        loss = 0.5 * ((h @ Ws[3].T - y) ** 2).sum() / cfg.samples  # (1/2n) sum (f(x_i) - y_i)^2
        assert out["loss"][0] == pytest.approx(loss.item(), rel=1e-7)
        grads = torch.autograd.grad(loss, Ws)
        new, lr = [], cfg.specgd_lr if method == "specgd" else cfg.gd_lr  # one lr per method, all layers
        for l, (W, G, A) in enumerate(zip(Ws, grads, acts), start=1):
            W, A = W.detach(), A.detach()
            if method == "specgd" and l in (2, 3):
                # the polar factor without G's null directions (dead units make G rank-deficient)
                S = torch.linalg.svdvals(G)
                new.append(W - lr * cfg.samples / float((A * A).sum()) * float(S.sum()) * polar_svd(G))
            else:
                new.append(W - lr * cfg.samples / float(torch.linalg.matrix_norm(A, ord=2)) ** 2 * G)
        h = x
        for W in new[:3]:
            h = F.relu(h @ W.T) ** 2
        loss1 = 0.5 * float(((h @ new[3].T - y) ** 2).mean())
        assert out["loss"][1] == pytest.approx(loss1, rel=1e-7)
        assert out["st_A1"][0] == pytest.approx(float(stable_rank(acts[1].detach())), rel=1e-7)
        assert out["nr_G2"][0] == pytest.approx(float(nuclear_rank(grads[1])), rel=1e-7)


def test_fast_stable_rank_agrees_with_the_svd():
    g = torch.Generator().manual_seed(4)
    A = F.relu(torch.randn(300, 280, generator=g, dtype=torch.float64))  # > 256: the Lanczos path
    assert fast_stable_rank(A) == pytest.approx(float(stable_rank(A)), rel=1e-8)
    assert fast_stable_rank(A[:200]) == pytest.approx(float(stable_rank(A[:200])), rel=1e-12)  # the exact SVD
    assert fast_stable_rank(torch.zeros(3, 4)) == 0.0


# -- spike bounds -----------------------------------------------------------------------------------


def test_spike_bound_closed_forms_match_quadrature():
    assert rf.spike_bound("abs") == pytest.approx(math.pi / 2)
    assert rf.spike_bound("relu") == pytest.approx(math.pi)
    assert rf.spike_bound("relu2") == 6.0
    for q, p in ((1.0, 0.1), (1.0, 0.01), (2.0, -0.5), (0.3, 0.2)):
        assert rf.spike_bound("leaky_relu", (q, p)) == pytest.approx(math.pi * (q * q + p * p) / (q - p) ** 2)
    for name in ("abs", "relu", "relu2", "leaky_relu", "gelu"):
        mean, second = rf.gaussian_moments(rf.scalar_activation(name, rf.LEAKY_SLOPES))
        assert rf.spike_bound(name) == pytest.approx(second / mean**2, rel=1e-9), name
    mean, _ = rf.gaussian_moments(rf.scalar_activation("gelu", rf.LEAKY_SLOPES))
    assert mean == pytest.approx(1 / (2 * math.sqrt(math.pi)), rel=1e-10)  # E[g Phi(g)] = E[phi(g)]
    assert math.isinf(rf.spike_bound("tanh")) and math.isinf(rf.spike_bound("swiglu"))
    with pytest.raises(ValueError, match="unknown activation"):
        rf.spike_bound("softplus")


def test_stable_rank_of_a_wide_relu_layer_approaches_the_bound_from_below():
    g = torch.Generator().manual_seed(5)
    m = d = 256
    Z = torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d) @ torch.randn(d, 2 * m, generator=g, dtype=torch.float64)
    for name in ("abs", "relu", "relu2"):
        st = fast_stable_rank(rf.post_activation(name, Z))
        assert 0.85 * rf.spike_bound(name) < st < rf.spike_bound(name)


# -- claim logic on constructed series ---------------------------------------------------------------


def _claims(claims):
    return {c.id: c.passed for c in claims}


def _init_series(relu, swiglu, deep, mlp_post):
    widths = [64, 128, 256]
    s = {}
    for a, st in (("relu", relu), ("swiglu", swiglu)):
        for sweep in ("width", "samples"):
            s[f"{sweep}/{a}/seed0"] = {"width": widths, "samples": [2 * w for w in widths], "stable_rank": st,
                                       "empirical_bound": [10.0] * 3}  # fmt: skip
        s[f"deep/{a}/seed0"] = {"layer": [1, 2], "stable_rank": deep}
    s["gpt/gelu/seed0"] = {"layer": [0], "st_attn_input": [5.0], "st_mlp_input": [5.0], "st_mlp_post": [mlp_post],
                           "dim_attn_input": [64], "dim_mlp_post": [256], "token_indicator": [4.0]}  # fmt: skip
    return s


def test_init_stable_rank_claims():
    cfg = isr.InitStableRankConfig(activations=("relu", "swiglu"), widths=(64, 128, 256), gpt_mlps=("gelu",))
    summary, claims = isr.analyze(cfg, _init_series([3.0, 3.05, 3.1], [10.0, 20.0, 40.0], [2.5, 2.0], 8.0))
    assert all(_claims(claims).values()), claims
    assert summary["width/swiglu/loglog_slope"] == pytest.approx(1.0)
    assert summary["max_st_over_bound"] == pytest.approx(3.1 / math.pi)
    summary, claims = isr.analyze(cfg, _init_series([3.0, 4.0, 5.0], [10.0, 10.0, 10.0], [4.0, 2.0], 200.0))
    assert not any(_claims(claims).values()), claims


def _rf_series(relu_gd, relu_spec, swiglu_gd, swiglu_spec, relu_nr):
    s = {}
    for act, gd, spec, nr in (("relu", relu_gd, relu_spec, relu_nr), ("swiglu", swiglu_gd, swiglu_spec, [5, 5, 5])):
        s[f"{act}/gd/seed0"] = {"step": [0, 1, 2], "loss": gd, "objective_gap": gd, "nuclear_rank": nr}
        s[f"{act}/specgd/seed0"] = {"step": [0, 1, 2], "loss": spec, "objective_gap": spec, "nuclear_rank": [2, 2, 2]}
        s[f"{act}/specgd_from_peak/seed0"] = {"step": [1, 2], "objective_gap": spec[1:], "nuclear_rank": [2, 2],
                                              "start": [1]}  # fmt: skip
        s[f"{act}/data/seed0"] = {"stable_rank_A": [3.0], "f_star": [0.0], "op_norm_sq": [1.0], "fro_norm_sq": [3.0]}
    return s


def test_random_features_claims():
    cfg = rfe.RandomFeaturesConfig(relu_steps=3, swiglu_steps=3, restart_every=0, mid_step=1)
    summary, claims = rfe.analyze(cfg, _rf_series([1, 0.5, 0.1], [1, 0.01, 0.001], [1, 1e-3, 1e-6], [1, 0.1, 0.01],
                                                    [5, 6, 7]))  # fmt: skip
    assert all(_claims(claims).values()), claims
    assert summary["relu/gd_over_specgd_final"] == pytest.approx(100.0)
    assert summary["relu/gd_min_nr_over_st"] == pytest.approx(5 / 3)
    summary, claims = rfe.analyze(cfg, _rf_series([1, 0.01, 0.001], [1, 0.5, 0.1], [1, 0.1, 0.01], [1, 1e-3, 1e-6],
                                                    [5, 2, 7]))  # fmt: skip
    assert not any(_claims(claims).values()), claims


def _sparse_series(gd_loss, spec_loss, st, nr2):
    base = {"step": [0, 1, 2, 3, 4], "diag_step": [0, 2], "st_A1": st, "st_A2": [2.0, 2.0], "st_A3": [1.5, 1.5],
            "nr_G1": [9.0, 9.0], "nr_G2": nr2, "nr_G3": [8.0, 8.0]}  # fmt: skip
    return {"gd/seed0": {**base, "loss": gd_loss}, "specgd/seed0": {**base, "loss": spec_loss}}


def test_sparse_regression_claims():
    cfg = sre.SparseRegressionConfig(steps=4, early_step=2, record_every=2)
    summary, claims = sre.analyze(cfg, _sparse_series([1, 0.9, 0.8, 0.7, 0.6], [1, 0.5, 0.2, 0.1, 0.05],
                                                            [5.5, 5.9], [20.0, 3.0]))  # fmt: skip
    assert all(_claims(claims).values()), claims
    assert summary["early_loss_ratio_gd_over_specgd"] == pytest.approx(4.0)
    # SpecGD diverges (nan loss, stored as null), stable ranks above 6.6, nr below st at init
    summary, claims = sre.analyze(cfg, _sparse_series([1, 0.9, 0.8, 0.7, 0.6], [1, 2.0, None, None, None],
                                                            [5.5, 9.0], [2.0, 30.0]))  # fmt: skip
    assert not any(_claims(claims).values()), claims
    assert summary["specgd/diverged_runs"] == 1.0


def _nr_series(nr0, nr1):
    return {f"k{k}/seed0": {"step": [0, 1, 2], "nuclear_rank": [a, b, b], "k": [k], "stable_rank_A": [3.0]}
            for k, a, b in zip((64, 128, 256), nr0, nr1)}  # fmt: skip


def test_nuclear_rank_growth_claims():
    cfg = nrg.NuclearRankGrowthConfig(dims=(64, 128, 256))
    summary, claims = nrg.analyze(cfg, _nr_series([7.0, 7.5, 8.0], [21.0, 42.0, 84.0]))
    assert all(_claims(claims).values()), claims
    assert summary["loglog_slope_nr_one_step"] == pytest.approx(1.0)
    assert summary["linear_slope_nr_one_step"] == pytest.approx(21 / 64)
    summary, claims = nrg.analyze(cfg, _nr_series([7.0, 14.0, 28.0], [21.0, 23.0, 25.0]))
    assert not any(_claims(claims).values()), claims


def _lm_series(st_norm, st_post, nr):
    s = {"training/seed0": {"step": [0, 10], "val_loss": [4.0, 3.0], "train_loss": [None, 3.2], "seconds": [0, 1]}}
    for block, st, dim in (("h0.attn.q", st_norm, 64), ("h0.attn.o", st_norm, 64), ("h0.mlp.in", st_norm, 64),
                           ("h0.mlp.out", st_post, 256), ("lm_head", st_norm, 64), ("embedding", 4.0, 96)):  # fmt: skip
        s[f"block/{block}/seed0"] = {"step": [0, 10], "st_A": [st, st], "nr_G": [nr, nr], "in_dim": [dim]}
    return s


def test_lm_spectra_claims():
    cfg = lms.LMSpectraConfig()
    summary, claims = lms.analyze(cfg, _lm_series(6.0, 8.0, 20.0))
    assert all(_claims(claims).values()), claims
    assert summary["max_mlp_post_st_over_dim"] == pytest.approx(8 / 256)
    assert summary["hidden_median_nr_over_st"] == pytest.approx(20 / 6)
    summary, claims = lms.analyze(cfg, _lm_series(40.0, 100.0, 20.0))
    assert not any(_claims(claims).values()), claims


def test_lm_spectra_with_tied_embeddings_reports_one_shared_gradient(tmp_path):
    """Tied wte/lm_head: one Parameter, so both blocks see the same (summed) gradient; the
    embedding block views it transposed, which leaves the nuclear rank unchanged."""
    r = run_experiment("lm-spectra", "smoke", tmp_path, progress=False, overrides={"tied": "true"})
    emb, head = r["series"]["block/embedding/seed0"], r["series"]["block/lm_head/seed0"]
    assert emb["step"] == head["step"]
    assert emb["nr_G"] == pytest.approx(head["nr_G"], rel=1e-6)
    assert emb["st_A"] != pytest.approx(head["st_A"])  # token indicator vs ln_f output
    assert r["summary"]["tied"] == 1.0


def test_lm_spectra_analyzes_each_optimizer_and_claims_over_all():
    cfg = lms.LMSpectraConfig(optimizers=("muon", "adamw"))
    series = {f"muon/{k}": v for k, v in _lm_series(6.0, 8.0, 20.0).items()}
    series.update({f"adamw/{k}": v for k, v in _lm_series(6.0, 100.0, 20.0).items()})
    summary, claims = lms.analyze(cfg, series)
    assert summary["muon/max_st_A/mlp.out"] == 8.0 and summary["adamw/max_st_A/mlp.out"] == 100.0
    assert summary["max_mlp_post_st_over_dim"] == pytest.approx(100 / 256)  # the worse optimizer decides
    assert not _claims(claims)["mlp-post-activation-low-st"]
    assert lms.by_optimizer(lms.LMSpectraConfig(), {"training/seed0": 1}) == {"muon": {"training/seed0": 1}}


def test_lm_spectra_rms_norm_paper_shape_runs(tmp_path):
    r = run_experiment("lm-spectra", "smoke", tmp_path, progress=False,
                       overrides={"norm": "rms", "mlp": "relu2", "optimizers": "muon,adamw", "iters": "10"})
    assert {"muon/training/seed0", "adamw/block/h0.mlp.out/seed0"} <= set(r["series"])
    assert "adamw/max_nr_G/attn.v" in r["summary"]
    cfg = EXPERIMENTS["lm-spectra"].make_config("paper")
    assert (cfg.n_layer, cfg.n_embd, cfg.context, cfg.mlp, cfg.norm) == (6, 384, 256, "relu2", "rms")


# -- teacher-student model, scale-dependent spike bounds, SwiGLU net, stable-rank sweeps -------------


def test_closed_form_gradients_for_any_targets_match_the_iteration():
    """Model 2 (teacher-student) is not realizable: G_t = G_0 (I - eta S)^t still holds."""
    k, d, n = 10, 5, 20
    A, Y = rf.teacher_student_features(k, d, n, "relu", torch.Generator().manual_seed(6))
    steps = [0, 1, 3, 7]
    closed = rf.rotated_gd_gradients_for_targets(A, Y, steps)
    prob = rf.least_squares_problem(A, Y)
    assert prob.f_star > 1e-6  # the student cannot fit the teacher
    W = torch.zeros(k, k, dtype=torch.float64)
    for t in range(max(steps) + 1):
        _, G = prob.loss_and_gradient(W)
        if t in steps:
            torch.testing.assert_close(torch.linalg.svdvals(closed[steps.index(t)]), torch.linalg.svdvals(G),
                                       rtol=1e-8, atol=1e-12)  # fmt: skip
        W = prob.step(W, G, "frobenius")


def test_spike_bound_at_scale():
    for name in ("abs", "relu", "leaky_relu", "relu2"):  # homogeneous: no dependence on the scale
        assert rf.spike_bound_at_scale(name, 0.01) == rf.spike_bound(name)
    assert rf.spike_bound_at_scale("gelu", 1.0) == pytest.approx(rf.spike_bound("gelu"), rel=1e-9)
    v = 1e-3  # near zero gelu(z) ~ z/2 + z^2/(2 sqrt(2 pi)): B ~ pi / (2 v)
    assert rf.spike_bound_at_scale("gelu", v) == pytest.approx(math.pi / (2 * v), rel=0.01)
    assert math.isinf(rf.spike_bound_at_scale("swiglu", 1.0))
    with pytest.raises(ValueError, match="variance"):
        rf.spike_bound_at_scale("gelu", 0.0)


def test_swiglu_net_matches_the_authors_chunked_layer():
    x, y, Ws = sparse.sparse_regression_problem(5, 7, 9, seed=1, activation="swiglu")
    acts = sparse.sparse_net(x, Ws, "swiglu")
    z = x @ Ws[0].T  # nn.Linear(d, 2h): first half gate, second half up
    torch.testing.assert_close(acts[1], F.silu(z[:, :7]) * z[:, 7:])
    assert acts[-1].shape == (9, 1)
    # the ReLU^2 problem draws the same stream as before (x first, then the four weights)
    x2, _, W2 = sparse.sparse_regression_problem(5, 7, 9, seed=1)
    torch.testing.assert_close(x2, x)
    assert [tuple(W.shape) for W in W2] == [(7, 5), (7, 7), (7, 7), (1, 7)]


def test_spike_stable_rank_closed_form_and_critical_value():
    for d, lam in ((5, 0.0), (12, 0.3), (40, 0.12)):
        A = torch.eye(d, dtype=torch.float64) + lam * torch.ones(d, d, dtype=torch.float64)
        assert srk.spike_stable_rank(d, lam) == pytest.approx(float(stable_rank(A)), rel=1e-12)
    assert srk.spearman_critical(8) == pytest.approx(0.7067, abs=1e-3)  # t approximation at n = 8


def test_ratio_interval():
    mean, low, high = spt.ratio_interval([2.0, 4.0, 8.0])
    assert mean == pytest.approx(4.0) and low < 1.0 < 4.0 < high
    assert spt.ratio_interval([3.0]) == pytest.approx((3.0, 3.0, 3.0))
    assert spt.ratio_interval([5.0, 5.0, 5.0]) == pytest.approx((5.0, 5.0, 5.0))


def test_swiglu_sparse_regression_config_needs_one_lr_per_batch():
    from specgrad.experiments.registry import UsageError, get

    with pytest.raises(UsageError, match="one value each per batch size"):
        get("sparse-regression-swiglu").make_config("smoke", {"gd_lr_per_batch": "0.1"})
    cfg = srs.SwiGLUSparseRegressionConfig()
    assert cfg.variant(1).samples == 8196 and cfg.variant(1).gd_lr == 0.0035 and cfg.variant(0).specgd_lr == 0.025


def test_nuclear_rank_growth_init_claim_needs_the_authors_sizes():
    cfg = nrg.NuclearRankGrowthConfig(dims=(16, 32, 64), models=("realizable",))
    _, claims = nrg.analyze(cfg, {f"k{k}/seed0": {"step": [0, 1], "nuclear_rank": [a, b], "k": [k], "stable_rank_A": [3.0]}
                                  for k, a, b in ((16, 4.0, 5.0), (32, 6.0, 10.0), (64, 8.0, 20.0))})  # fmt: skip
    init = next(c for c in claims if c.id == "nr-init-about-constant")
    assert init.passed is None and "k >= 64" in init.reason
