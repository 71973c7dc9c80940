"""The char-lm experiment: a smoke run learns, and its claim logic on constructed series."""

import math

import pytest

from specgrad.experiments import run_experiment
from specgrad.experiments.catalog import load_all
from specgrad.experiments.char_lm.char_lm import CharLMConfig, analyze
from specgrad.experiments.series import first_reach
from specgrad.experiments.training import warmup_cosine

load_all()


def test_smoke_run_learns_and_writes_everything(tmp_path):
    r = run_experiment("char-lm", "smoke", tmp_path, progress=False)
    for method in ("adamw", "muon", "specgd"):
        val = r["series"][f"{method}/seed0"]["val_loss"]
        assert val[-1] < val[0] - 0.3, method  # ~4.6 (uniform over ~96 chars) falls
    assert set(r["tuning"]["best_lr"]) == {"adamw", "muon", "specgd"}
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
