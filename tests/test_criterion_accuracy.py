"""``criterion-accuracy``: the scoring on constructed tables (confusion, majority baseline,
margins, failures), block types of every model family, and a smoke run end to end."""

import pandas as pd
import pytest
import torch

from specgrad.experiments import run_experiment
from specgrad.experiments.criterion_accuracy import analysis
from specgrad.experiments.criterion_accuracy import criterion_accuracy as ca
from specgrad.experiments.criterion_accuracy.models import TASKS, block_type, build


def _table(gains, measured, dec_e=0.1, dec_s=None):
    dec_s = dec_s if dec_s is not None else [dec_e * g for g in gains]
    return pd.DataFrame(dict(predicted_gain=gains, measured=measured, loss_base=1.0,
                             loss_euclidean=[1.0 - dec_e] * len(gains), loss_spectral=[1.0 - d for d in dec_s]))


def test_confusion_accuracy_and_majority():
    t = analysis.scored(_table([3.0, 2.0, 0.5, 1.5, 0.8], ["spectral", "spectral", "euclidean", "euclidean", "n/a"]))
    assert len(t) == 4  # the unprobed row is left out
    assert analysis.confusion(t) == {"spectral->spectral": 2, "spectral->euclidean": 1, "euclidean->spectral": 0,
                                     "euclidean->euclidean": 1}  # fmt: skip
    assert analysis.accuracy(t) == 0.75
    assert analysis.majority(t) == 0.5


def test_margins_rule_and_decisive_rows():
    t = analysis.scored(_table([3.0, 1.5, 0.7, 0.3], ["spectral", "euclidean", "spectral", "euclidean"]))
    m = {r["c"]: r for r in analysis.margins(t)}
    assert m[1.0]["rule_accuracy"] == 0.5
    assert m[2.0]["rule_accuracy"] == 0.75  # spectral iff gain >= 2: only 0.7 is wrong
    assert m[2.0]["decisive_rows"] == 2 and m[2.0]["decisive_accuracy"] == 1.0
    assert m[0.5]["decisive_rows"] == m[2.0]["decisive_rows"]  # the band is symmetric in c and 1/c


def test_rank_correlation_and_bootstrap():
    gains = [0.5, 0.8, 2.0, 4.0, 8.0]
    t = analysis.scored(_table(gains, ["euclidean"] * 2 + ["spectral"] * 3))
    assert analysis.rank_correlation(t) == pytest.approx(1.0)
    lo, hi = analysis.bootstrap(t, analysis.accuracy, n=50)
    assert lo == hi == 1.0  # every row right: every resample right


def test_failure_reasons():
    t = analysis.scored(_table([3.0, 1.2, 5.0], ["euclidean"] * 3, dec_s=[-0.1, 0.05, 0.05]))
    reasons = [analysis.why(r) for _, r in t.iterrows()]
    assert reasons[0].startswith("spectral step raised the loss")
    assert reasons[1].startswith("within the factor 2")
    assert reasons[2].startswith("decisive prediction overturned")


def test_block_types_cover_every_family():
    cfg = ca.CriterionAccuracyConfig(samples=32, width=8, n_layer=1, n_embd=16, context=8, batch_size=4, probe_rows=8,
                                     probe_seqs=2)  # fmt: skip
    for name in TASKS:
        task = build(name, cfg, 0)
        kinds = {block_type(name, n.removesuffix(".weight")) for n, p in task.model.named_parameters() if p.ndim >= 2}
        assert "other" not in kinds, (name, kinds)
        assert torch.isfinite(task.loss(task.model, task.probe)), name


def test_least_squares_margin_two_holds_on_random_features():
    """The majorization bounds: with the exact curvature of least squares, a gain beyond 2
    (or below 1/2) fixes the winner."""
    cfg = ca.CriterionAccuracyConfig(models=("rf-relu", "rf-swiglu"), steps=10, samples=256, width=32)
    rows = []
    for name in cfg.models:
        task = build(name, cfg, 0)
        rows.append(pd.DataFrame(ca.probe(task, 0, "init")))
    t = analysis.scored(pd.concat(rows))
    decisive = t[(t["predicted_gain"] >= 2) | (t["predicted_gain"] <= 0.5)]
    assert len(t) == 2 and decisive["correct"].all()


def test_smoke_run(tmp_path):
    r = run_experiment("criterion-accuracy", "smoke", tmp_path, progress=False,
                       overrides={"models": "rf-relu,gpt-relu2", "steps": "10"})
    ids = {c["id"] for c in r["claims"]}
    assert ids == {"accuracy-above-majority", "gain-rank-correlation", "least-squares-margin-2"}
    s = r["summary"]
    assert s["rows"] == sum(s[f"confusion/{k}"] for k in ("spectral->spectral", "spectral->euclidean",
                                                          "euclidean->spectral", "euclidean->euclidean"))  # fmt: skip
    assert 0 <= s["accuracy"] <= 1 and s["majority"] >= 0.5
    run = r["series"]["gpt-relu2/muon/seed0"]
    assert sorted(set(run["moment"])) == sorted(ca.MOMENTS)
    assert len({len(v) for v in run.values()}) == 1
    assert r["figures"] == ["criterion_accuracy.png"]
