"""Long-tailed data (specgrad.data.longtail) and the ``long-tail-classification`` /
``long-tail-tokens`` experiments: subsampling counts, split disjointness, loaders, the Bayes
loss of the Zipf chain, metrics against scikit-learn, smoke runs through the runner."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

import specgrad.experiments.imbalanced.long_tail_classification as lt
import specgrad.experiments.imbalanced.long_tail_tokens as ltt
from specgrad.data import token_frequency_buckets, zipf_conditional_nll, zipf_corpus, zipf_entropy_rate
from specgrad.data.longtail import (
    balanced_split,
    digits,
    long_tail_counts,
    long_tail_subset,
    make_long_tail,
    mnist1d,
)
from specgrad.experiments import run_experiment
from specgrad.experiments.classification import balanced_accuracy, group_accuracy, shot_groups
from specgrad.models import GPT, GPTConfig


@pytest.mark.parametrize("n_max,n_classes,ratio", [(500, 10, 10.0), (500, 10, 100.0), (100, 10, 100.0),
                                                   (1000, 7, 50.0), (64, 5, 16.0)])  # fmt: skip
def test_exponential_counts_exact(n_max, n_classes, ratio):
    """n_c = floor(n_max r^(-c/(C-1))) computed independently in float64 numpy; head n_max,
    tail floor(n_max / r), non-increasing, and the head/tail ratio within floor rounding."""
    counts = long_tail_counts(n_max, n_classes, "exp", ratio)
    c = np.arange(n_classes)
    expected = np.maximum(1, np.floor(n_max * ratio ** (-c / (n_classes - 1)) + 1e-9)).astype(int)
    assert counts == expected.tolist()
    assert counts[0] == n_max and counts[-1] == max(1, math.floor(n_max / ratio + 1e-9))
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    # floor only rounds the tail down: n_max / n_min >= r > n_max / (n_min + 1)
    assert n_max / counts[-1] >= ratio * (1 - 1e-12) and n_max / (counts[-1] + 1) < ratio
    # consecutive classes shrink by the constant factor r^(1/(C-1)), up to the floor
    for k in range(1, n_classes):
        assert counts[k] <= n_max * ratio ** (-k / (n_classes - 1)) + 1e-9 < counts[k] + 1


def test_exponential_counts_hand_values():
    assert long_tail_counts(100, 10, "exp", 100.0) == [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]
    assert long_tail_counts(500, 10, "exp", 10.0) == [500, 387, 299, 232, 179, 139, 107, 83, 64, 50]


@pytest.mark.parametrize("n_classes", [2, 5, 10])
def test_step_counts_exact(n_classes):
    counts = long_tail_counts(400, n_classes, "step", 20.0)
    head = n_classes // 2
    assert counts == [400] * head + [20] * (n_classes - head)
    assert counts[0] / counts[-1] == 20.0


def test_counts_reject_bad_arguments():
    for kwargs in (dict(profile="linear"), dict(ratio=0.5), dict(ratio=float("inf"))):
        with pytest.raises(ValueError):
            long_tail_counts(100, 10, **kwargs)
    with pytest.raises(ValueError, match="n_classes"):
        long_tail_counts(100, 1)


def test_subset_counts_unique_and_seeded():
    y = torch.arange(2000) % 10
    counts = long_tail_counts(150, 10, "exp", 100.0)
    idx = long_tail_subset(y, counts, torch.Generator().manual_seed(3))
    assert idx.unique().numel() == idx.numel() == sum(counts)
    assert torch.bincount(y[idx], minlength=10).tolist() == counts
    again = long_tail_subset(y, counts, torch.Generator().manual_seed(3))
    other = long_tail_subset(y, counts, torch.Generator().manual_seed(4))
    assert torch.equal(idx, again) and not torch.equal(idx, other)
    with pytest.raises(ValueError, match="class 0 has 200"):
        long_tail_subset(y, [201] + [1] * 9)


def test_make_long_tail_splits_disjoint_and_balanced():
    """Test and validation are balanced, disjoint from each other and from train; train has
    the exact profile counts; the test split is the same for every imbalance profile."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 6, (3000,), generator=gen)
    x = torch.randn(3000, 5, generator=gen)
    splits = {}
    for profile, ratio in (("exp", 10.0), ("exp", 100.0), ("step", 20.0)):
        d = make_long_tail(x, y, profile=profile, ratio=ratio, n_max=300, n_test=40, n_val=15,
                           generator=torch.Generator().manual_seed(7))  # fmt: skip
        assert torch.bincount(d.y_test, minlength=6).tolist() == [40] * 6
        assert torch.bincount(d.y_val, minlength=6).tolist() == [15] * 6
        assert torch.bincount(d.y_train, minlength=6).tolist() == long_tail_counts(300, 6, profile, ratio)
        parts = [set(d.train_index.tolist()), set(d.val_index.tolist()), set(d.test_index.tolist())]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert torch.equal(d.x_train, x[d.train_index]) and torch.equal(d.y_test, y[d.test_index])
        splits[(profile, ratio)] = d
    tests = [d.test_index for d in splits.values()]
    vals = [d.val_index for d in splits.values()]
    assert all(torch.equal(tests[0], t) for t in tests) and all(torch.equal(vals[0], v) for v in vals)


def test_balanced_split_rest_is_complement():
    y = torch.arange(100) % 4
    chosen, rest = balanced_split(y, 5, torch.Generator().manual_seed(0))
    assert torch.bincount(y[chosen]).tolist() == [5] * 4
    assert sorted(chosen.tolist() + rest.tolist()) == list(range(100))


def test_digits_loader():
    x, y = digits()
    assert x.shape == (1797, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).min() >= 174
    varying = x.std(0) > 0
    torch.testing.assert_close(x.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-3, rtol=0)
    x2, y2 = digits()
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_mnist1d_loader_reproducible_and_leaves_global_rng():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    x, y = mnist1d(300, seed=5)
    assert np.array_equal(np.random.get_state()[1], before)
    assert x.shape == (300, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [30] * 10
    x2, y2 = mnist1d(300, seed=5)
    x3, _ = mnist1d(300, seed=6)
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    x2[0, 0] = 99.0  # callers get copies: the cache is not mutated
    assert not torch.equal(x2, mnist1d(300, seed=5)[0])


def test_balanced_accuracy_matches_sklearn_on_long_tail():
    """The classification metrics the experiment reports, on a long-tailed label vector,
    against scikit-learn; many/medium/few groups from the count profile."""
    counts = long_tail_counts(200, 10, "exp", 100.0)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(len(y), 10, generator=gen) + 2.0 * torch.nn.functional.one_hot(y, 10)
    pred = logits.argmax(1)
    expected = balanced_accuracy_score(y.numpy(), pred.numpy())
    assert balanced_accuracy(logits, y, 10) == pytest.approx(expected, abs=1e-12)
    many, few = lt.shot_group_thresholds(counts, 100.0)
    groups = shot_groups(counts, many=many, few=few)
    assert groups == ([0, 1, 2], [3, 4, 5, 6], [7, 8, 9])
    step = long_tail_counts(200, 10, "step", 20.0)
    assert shot_groups(step, *lt.shot_group_thresholds(step, 20.0)) == ([0, 1, 2, 3, 4], [], [5, 6, 7, 8, 9])
    few_acc = group_accuracy(logits, y, groups, 10)[2]
    mask = y >= 7
    with warnings.catch_warnings():  # predictions outside the few-shot classes: sklearn warns, then drops them
        warnings.simplefilter("ignore", UserWarning)
        assert few_acc == pytest.approx(balanced_accuracy_score(y[mask].numpy(), pred[mask].numpy()), abs=1e-12)
    per = [float((pred[y == c] == c).double().mean()) for c in (7, 8, 9)]
    assert few_acc == pytest.approx(np.mean(per), abs=1e-12)


def test_mlp_depth_and_routing():
    net = lt.mlp(8, 16, 2, 3)
    assert [m.weight.shape for m in net if isinstance(m, torch.nn.Linear)] == [(16, 8), (3, 16)]
    opt = lt.make_optimizer("muon", net, 0.02, 1e-3, routing="all")
    spectral = [g for g in opt.param_groups if g["algorithm"] == "muon"]
    assert sum(len(g["params"]) for g in spectral) == 2  # both weight matrices
    opt = lt.make_optimizer("muon", lt.mlp(8, 16, 4, 3), 0.02, 1e-3, routing="hidden")
    assert sum(len(g["params"]) for g in opt.param_groups if g["algorithm"] == "muon") == 2  # the two hidden ones


def test_epochs_to_target():
    assert lt.epochs_to_target([0.1, 0.5, 0.8, 0.9], 0.8) == 2.0
    assert lt.epochs_to_target([0.1, float("nan"), 0.3], 0.5) == 3.0  # censored at len(curve)


def test_zipf_bayes_loss_is_a_distribution_and_matches_entropy_rate():
    """Rows of exp(-nll) sum to 1 (float64, 1e-12); the mean Bayes loss over a long stream
    matches zipf_entropy_rate within 5 standard errors."""
    V = 40
    prev = torch.arange(V).repeat_interleave(V)
    nxt = torch.arange(V).repeat(V)
    q = torch.exp(-zipf_conditional_nll(prev, nxt, V, 1.1, n_clusters=4, coherence=0.8)).view(V, V)
    torch.testing.assert_close(q.sum(1), torch.ones(V, dtype=torch.float64), atol=1e-12, rtol=0)
    tokens = zipf_corpus(V, 200_000, 1.1, torch.Generator().manual_seed(0), n_clusters=4, coherence=0.8)
    nll = zipf_conditional_nll(tokens[:-1], tokens[1:], V, 1.1, n_clusters=4, coherence=0.8)
    means = nll[: len(nll) // 100 * 100].view(100, -1).mean(1)  # batch means: successive tokens are correlated
    se = float(means.std()) / math.sqrt(len(means))
    assert abs(float(nll.mean()) - zipf_entropy_rate(V, 1.1, n_clusters=4, coherence=0.8)) < 5 * se


def test_bucket_losses_match_direct_computation():
    cfg = ltt.LongTailTokensConfig(vocab_size=32, train_tokens=3000, val_tokens=800, n_layer=1, n_head=1,
                                  n_embd=8, context=8, batch_size=4, eval_batches=3, n_buckets=4)  # fmt: skip
    stream, buckets = ltt._token_setup(cfg)
    assert torch.equal(buckets, token_frequency_buckets(stream.train, 32, 4))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, context=8, n_layer=1, n_head=1, n_embd=8))
    out = ltt.bucket_losses(model, stream, buckets, 4, cfg)
    g = torch.Generator().manual_seed(1234)
    ce, b = [], []
    for _ in range(3):
        x, y = stream.get_batch("val", 4, 8, g)
        with torch.no_grad():
            logits, _ = model(x)
        ce.append(torch.nn.functional.cross_entropy(logits.reshape(-1, 32).double(), y.reshape(-1), reduction="none"))
        b.append(buckets[y.reshape(-1)])
    ce, b = torch.cat(ce), torch.cat(b)
    for k in range(4):
        if (b == k).any():
            assert float(out["loss"][k]) == pytest.approx(float(ce[b == k].mean()), rel=1e-12)
        else:
            assert math.isnan(float(out["loss"][k]))
    assert ltt.spread([1.0, 3.0, float("nan")]) == (2.0, 1.0)


def test_classification_smoke_through_runner(tmp_path):
    result = run_experiment("long-tail-classification", "smoke", tmp_path, progress=False)
    folder = tmp_path / "long-tail-classification"
    saved = json.loads((folder / "result.json").read_text())
    assert saved["tuning"]["best_lr"] and {c["id"] for c in result["claims"]} == {
        "muon-earlier-than-sgd", "muon-minority-early"}  # fmt: skip
    for c in result["claims"]:  # one seed: no spread over seeds to decide against
        assert c["passed"] is None and "two seeds" in c["reason"] and c["kind"] == "study", c
    assert math.isfinite(result["summary"]["muon/geomean_speedup_vs_sgd"])
    run = result["series"]["sgd/digits-exp10-d2/seed0"]
    assert len(run["test_bal_acc"]) == 5 and all(0.0 <= v <= 1.0 for v in run["test_bal_acc"])
    assert result["summary"]["digits-exp10-d2/target"] > 0.1  # SGD learned something above chance
    for name in result["figures"]:
        assert (folder / name).stat().st_size > 1000


def test_tokens_smoke_through_runner(tmp_path):
    result = run_experiment("long-tail-tokens", "smoke", tmp_path, progress=False)
    folder = tmp_path / "long-tail-tokens"
    assert {c["id"] for c in result["claims"]} == {
        "muon-evener-early", "muon-evener-at-matched-loss", "muon-evener-than-sgd-early",
        "muon-head-evener-early", "muon-head-evener-at-matched-loss", "muon-head-evener-than-sgd-early"}  # fmt: skip
    for c in result["claims"]:  # one seed: measured, but not decided
        assert c["passed"] is None and "two seeds" in c["reason"] and "(measured " in c["statement"], c
    assert math.isfinite(result["summary"]["muon/early_excess_spread_over_adamw"])
    run = result["series"]["muon/seed0"]
    assert len(run["bucket0_loss"]) == len(run["step"]) == len(run["excess_spread"])
    assert run["val_loss"][-1] < run["val_loss"][0]
    for name in result["figures"]:
        assert (folder / name).stat().st_size > 1000


def test_claims_with_two_seeds_are_decided_against_their_spread():
    """Two seeds of constructed curves: a method that reaches the target at epoch 2 in both
    seeds, where SGD needs 4, is decided faster; one whose seeds disagree (2 and 8) is within
    its noise and not resolved."""
    cfg = lt.LongTailConfig(datasets=("digits",), imbalances=("exp10",), depths=(2,), epochs=10,
                            methods=("sgd", "adamw", "muon", "specgd"))  # fmt: skip
    def run(hit, few):
        acc = [0.1] * 11
        for e in range(hit, 11):
            acc[e] = 0.9
        return {"epoch": list(range(11)), "test_bal_acc": acc, "test_worst_acc": acc, "test_many_acc": acc,
                "test_medium_acc": acc, "test_few_acc": [few] * 11, "lr": [0.1]}  # fmt: skip
    series = {}
    for s, (muon_hit, spec_hit) in enumerate(((2, 2), (2, 8))):
        series[f"sgd/digits-exp10-d2/seed{s}"] = run(4, 0.1)
        series[f"adamw/digits-exp10-d2/seed{s}"] = run(4, 0.2)
        series[f"muon/digits-exp10-d2/seed{s}"] = run(muon_hit, 0.3 + 0.01 * s)
        series[f"specgd/digits-exp10-d2/seed{s}"] = run(spec_hit, 0.1 + 0.2 * s)
    claims = {c.id: c for c in lt.analyze(cfg, series)[1]}
    assert claims["muon-earlier-than-sgd"].passed and claims["muon-minority-early"].passed
    assert claims["specgd-earlier-than-sgd"].passed is None
    assert claims["specgd-earlier-than-sgd"].reason.startswith("not resolved")
    # against AdamW (as fast as SGD here, 0.1 better on the few-shot classes early)
    assert claims["muon-earlier-than-adamw"].value == pytest.approx(2.0) and claims["muon-earlier-than-adamw"].passed
    assert claims["muon-minority-early-vs-adamw"].value == pytest.approx(0.105)


def test_cifar_through_the_runner_with_a_conv_net(tmp_path):
    """A tiny CIFAR-10 copy made here: the experiment reads it, trains the conv net, and a
    missing path is refused before anything runs."""
    from test_data import write_cifar

    from specgrad.experiments.registry import UsageError, get

    folder = write_cifar(tmp_path / "cifar", per_class_train=12, per_class_test=10)
    sets = {"datasets": "cifar10", "cifar_path": str(folder), "epochs": "1", "conv_width": "4",
            "batch_size": "16"}  # fmt: skip
    result = run_experiment("long-tail-classification", "smoke", tmp_path / "out", overrides=sets, progress=False)
    run = result["series"]["sgd/cifar10-exp10-d2/seed0"]
    assert len(run["test_bal_acc"]) == 2 and all(0.0 <= v <= 1.0 for v in run["test_bal_acc"])
    data = lt.load_cell_data(get("long-tail-classification").make_config("smoke", sets), "cifar10", "exp", 10.0)
    assert data.counts == [12, 5, 2, 1] and isinstance(lt.make_model(lt.LongTailConfig(conv_width=4), data, 2)[0],
                                                       torch.nn.Conv2d)  # fmt: skip
    with pytest.raises(UsageError, match="cifar_path"):
        get("long-tail-classification").make_config("smoke", {"datasets": "cifar10"})
    with pytest.raises(ValueError, match="holds cifar10"):
        lt.load_cell_data(lt.LongTailConfig(cifar_path=str(folder)), "cifar100", "exp", 10.0)
