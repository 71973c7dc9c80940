import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, recall_score

from specgrad.experiments.classification import (
    balanced_accuracy,
    group_accuracy,
    per_class_accuracy,
    per_class_loss,
    shot_groups,
    worst_class_accuracy,
)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true", "ignore:A single label was found")
@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(1, 200), st.integers(0, 2**31 - 1))
def test_balanced_accuracy_matches_sklearn(k, n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    ours = balanced_accuracy(torch.as_tensor(pred), torch.as_tensor(y), k)
    assert ours == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    recall = recall_score(y, pred, labels=np.unique(y), average=None, zero_division=0)
    assert worst_class_accuracy(torch.as_tensor(pred), torch.as_tensor(y), k) == pytest.approx(recall.min())


def test_logits_absent_classes_and_groups():
    y = torch.tensor([0, 0, 1, 1, 1, 3])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0, 3]), 4).double()
    acc = per_class_accuracy(logits, y)
    assert acc[0] == 0.5 and acc[1] == pytest.approx(2 / 3) and math.isnan(acc[2]) and acc[3] == 1
    assert group_accuracy(logits, y, [[0, 1], [2], [3]]) == pytest.approx([7 / 12, math.nan, 1.0], nan_ok=True)
    loss = per_class_loss(logits, y)
    ref = torch.nn.functional.cross_entropy(logits[y == 1], y[y == 1])
    assert loss[1] == pytest.approx(float(ref)) and math.isnan(loss[2])


def test_shot_groups_and_bad_input():
    assert shot_groups([500, 100, 50, 20, 19, 3]) == ([0], [1, 2, 3], [4, 5])
    with pytest.raises(ValueError, match="1-D integer"):
        balanced_accuracy(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        balanced_accuracy(torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="do not match"):
        balanced_accuracy(torch.zeros(2, dtype=torch.long), torch.tensor([0, 1, 1]))
