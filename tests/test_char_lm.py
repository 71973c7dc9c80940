"""The char-lm experiment: a smoke run learns, and its claim logic on constructed series."""

import math

import pytest

from specgrad.experiments import run_experiment
from specgrad.experiments.catalog import load_all
from specgrad.experiments.char_lm.char_lm import CharLMConfig, analyze, table
from specgrad.experiments.series import first_reach
from specgrad.experiments.training import warmup_cosine

load_all()


METHODS = {"adamw", "muon", "specgd", "normuon", "adamuon", "muon-cautious"}


def test_smoke_run_learns_and_writes_everything(tmp_path):
    r = run_experiment("char-lm", "smoke", tmp_path, progress=False)
    for method in METHODS:
        val = r["series"][f"{method}/seed0"]["val_loss"]
        assert val[-1] < val[0] - 0.3, method  # ~4.6 (uniform over ~96 chars) falls
    assert set(r["tuning"]["best_lr"]) == METHODS
    for method in METHODS:  # steps and seconds to AdamW's final loss, over seeds
        for key in ("steps_to_target", "seconds_to_target"):
            assert {f"{method}_{key}_{s}" for s in ("mean", "min", "max")} <= set(r["summary"])
    assert {c["id"] for c in r["claims"]} == {"muon-fewer-steps", "muon-0.7x-steps"}
    assert (tmp_path / "char-lm" / "val_loss.png").stat().st_size > 0


def _series(curves):
    return {f"{m}/seed0": {"step": [0, 100, 200, 300], "val_loss": v, "seconds": [0, 1, 2, 3]}
            for m, v in curves.items()}  # fmt: skip


def test_claim_logic_on_constructed_series():
    cfg = CharLMConfig()
    summary, claims = analyze(cfg, _series({"adamw": [4, 3, 2.5, 2.0], "muon": [4, 2.5, 2.0, 1.8]}))
    assert summary["adamw_final_val_loss"] == 2.0
    assert summary["muon_steps_to_adamw_final"] == 200.0
    assert summary["muon_step_ratio"] == pytest.approx(200 / 300)
    assert [c.passed for c in claims] == [True, True]
    summary, claims = analyze(cfg, _series({"adamw": [4, 3, 2.5, 2.0], "muon": [4, 3.5, 3.0, 2.2]}))
    assert math.isinf(summary["muon_step_ratio"]) and not any(c.passed for c in claims)
    assert math.isnan(summary["muon_steps_to_target_mean"])


def test_steps_and_seconds_to_target_per_seed():
    """Each seed's run is measured against AdamW's final loss on the same seed; seconds are
    read off that seed's clock at that step; the summary keeps mean, min and max."""
    series = {
        "adamw/seed0": {"step": [0, 100, 200], "val_loss": [4, 3, 2.0], "seconds": [0, 1, 2]},
        "adamw/seed1": {"step": [0, 100, 200], "val_loss": [4, 3, 2.2], "seconds": [0, 1, 2]},
        "normuon/seed0": {"step": [0, 100, 200], "val_loss": [4, 2.1, 1.9], "seconds": [0, 3, 6]},
        "normuon/seed1": {"step": [0, 100, 200], "val_loss": [4, 3.1, 2.0], "seconds": [0, 4, 8]},
    }
    summary, _ = analyze(CharLMConfig(), series)
    assert summary["adamw_final_val_loss"] == pytest.approx(2.1)
    assert summary["adamw_steps_to_target_mean"] == pytest.approx(200)  # AdamW meets itself at the end
    k0 = 100 + 100 * (2.1 - 2.0) / (2.1 - 1.9)  # seed 0 reaches 2.0
    k1 = 100 + 100 * (3.1 - 2.2) / (3.1 - 2.0)  # seed 1 reaches 2.2
    assert summary["normuon_steps_to_target_min"] == pytest.approx(k0)
    assert summary["normuon_steps_to_target_max"] == pytest.approx(k1)
    assert summary["normuon_steps_to_target_mean"] == pytest.approx((k0 + k1) / 2)
    assert summary["normuon_seconds_to_target_mean"] == pytest.approx((3 * k0 / 100 + 4 * k1 / 100) / 2)
    assert summary["normuon_seconds_per_step"] == pytest.approx(0.035)
    assert "| normuon | 1.950 |" in table(summary, ["adamw", "normuon"])


def test_first_reach_interpolates_and_schedule_shape():
    assert first_reach([0, 10, 20], [3.0, 2.0, 1.0], 1.5) == 15.0
    assert math.isnan(first_reach([0, 10], [3.0, 2.0], 1.0))
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.1)


def test_diverged_run_stops_before_stepping_on_nan_gradients():
    """A loss that turns non-finite ends the series with nan instead of raising from the
    optimizer's non-finite gradient check (a tuning sweep scores it as lost)."""
    import torch

    from specgrad.data import CharCorpus
    from specgrad.experiments.methods import lm_optimizer
    from specgrad.experiments.training import train_lm
    from specgrad.models import GPT, GPTConfig

    corpus = CharCorpus("abcdefgh" * 200)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, context=8, n_layer=1, n_head=1, n_embd=8))
    opt = lm_optimizer("muon", model, lr=0.05, adamw_lr=1e-3)

    def poison(step):  # the weights turn to inf after the second step's backward
        if step == 1:
            with torch.no_grad():
                model.lm_head.weight.fill_(float("inf"))

    out = train_lm(model, corpus, opt, iters=10, batch_size=2, context=8, warmup=1, eval_every=5,
                   eval_batches=1, seed=0, on_step=poison)  # fmt: skip
    assert math.isnan(out["val_loss"][-1]) and math.isnan(out["train_loss"][-1])
    assert out["step"] == sorted(set(out["step"])) and out["step"][-1] <= 3
