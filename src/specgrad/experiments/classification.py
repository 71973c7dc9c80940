"""Per-class metrics for imbalanced classification.

The metrics take integer labels ``y`` of shape ``(N,)`` and either predictions of the same
shape or logits of shape ``(N, k)``; classes that do not occur in ``y`` are ``nan`` in the
per-class results and left out of the averages (as in scikit-learn's
``balanced_accuracy_score``).

Example:
    >>> y = torch.tensor([0, 0, 0, 1])
    >>> pred = torch.tensor([0, 0, 0, 0])
    >>> balanced_accuracy(pred, y)
    0.5
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(y: Tensor, n_classes: int | None) -> int:
    if y.ndim != 1 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(y.shape)} and {y.dtype}")
    if y.numel() == 0:
        raise ValueError("labels are empty")
    k = int(y.max()) + 1 if n_classes is None else n_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ValueError(f"labels must lie in [0, {k}), got [{int(y.min())}, {int(y.max())}]")
    return k


def per_class_accuracy(pred: Tensor, y: Tensor, n_classes: int | None = None) -> Tensor:
    """Recall of each class, shape ``(k,)``, float64; ``nan`` for classes absent from ``y``.
    ``pred`` may be labels ``(N,)`` or logits ``(N, k)``."""
    k = _check(y, n_classes)
    if pred.ndim == 2:
        pred = pred.argmax(dim=1)
    if pred.shape != y.shape:
        raise ValueError(f"predictions of shape {tuple(pred.shape)} do not match labels {tuple(y.shape)}")
    support = torch.bincount(y.long(), minlength=k).double()
    correct = torch.bincount(y.long(), weights=(pred == y).double(), minlength=k)
    return torch.where(support > 0, correct / support.clamp_min(1), torch.full_like(support, math.nan))


def per_class_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of each class, shape ``(k,)``, ``nan`` for absent classes."""
    k = _check(y, logits.shape[1])
    losses = F.cross_entropy(logits.double(), y.long(), reduction="none")
    support = torch.bincount(y.long(), minlength=k).double()
    total = torch.bincount(y.long(), weights=losses, minlength=k)
    return torch.where(support > 0, total / support.clamp_min(1), torch.full_like(support, math.nan))


def balanced_accuracy(pred: Tensor, y: Tensor, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y``."""
    return float(per_class_accuracy(pred, y, n_classes).nanmean())


def worst_class_accuracy(pred: Tensor, y: Tensor, n_classes: int | None = None) -> float:
    """Lowest recall over the classes present in ``y``."""
    acc = per_class_accuracy(pred, y, n_classes)
    return float(acc[~acc.isnan()].min())


def group_accuracy(pred: Tensor, y: Tensor, groups: Sequence[Sequence[int]],
                   n_classes: int | None = None) -> list[float]:  # fmt: skip
    """Balanced accuracy within each group of classes (e.g. many/medium/few-shot)."""
    return group_means(per_class_accuracy(pred, y, n_classes), groups)


def group_means(acc: Tensor, groups: Sequence[Sequence[int]]) -> list[float]:
    """Mean of per-class values ``acc`` (e.g. :func:`per_class_accuracy`) within each group of
    classes, leaving out ``nan`` (absent classes); ``nan`` for an empty group."""
    return [float(acc[list(g)].nanmean()) if len(g) else math.nan for g in groups]


def shot_groups(train_counts: Sequence[int], many: int = 100, few: int = 20) -> tuple[list[int], ...]:
    """Split classes by training count into many-shot (``> many``), medium and few-shot
    (``< few``), the convention of long-tail benchmarks (Liu et al., 2019), with thresholds
    scaled to the data set at hand by the caller."""
    many_g = [c for c, n in enumerate(train_counts) if n > many]
    few_g = [c for c, n in enumerate(train_counts) if n < few]
    medium_g = [c for c, n in enumerate(train_counts) if few <= n <= many]
    return many_g, medium_g, few_g


def balanced_scores(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Balanced accuracy and class-balanced cross-entropy of ``logits`` ``(N, k)`` on labels
    ``y`` ``(N,)``, each with its standard error over the test points (classes held fixed):
    ``bal_acc_se^2 = sum_c a_c (1 - a_c) / n_c / K^2`` (binomial) and ``bal_loss_se^2 =
    sum_c var_c / n_c / K^2`` (``var_c`` the sample variance of class ``c``'s losses), over
    the ``K`` classes present.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
        >>> s = balanced_scores(logits, torch.tensor([0, 0, 1, 1]))
        >>> s["bal_acc"], round(s["bal_acc_se"], 4)
        (0.5, 0.25)
    """
    k = _check(y, logits.shape[1])
    acc = per_class_accuracy(logits, y, k)
    present = ~acc.isnan()
    support = torch.bincount(y.long(), minlength=k).double()
    losses = F.cross_entropy(logits.double(), y.long(), reduction="none")
    mean = torch.bincount(y.long(), weights=losses, minlength=k) / support.clamp_min(1)
    sq = torch.bincount(y.long(), weights=(losses - mean[y]).square(), minlength=k)
    var = sq / (support - 1).clamp_min(1)
    K = int(present.sum())
    a, n, m, v = acc[present], support[present], mean[present], var[present]
    return {"bal_acc": float(a.mean()), "bal_acc_se": float((a * (1 - a) / n).sum().sqrt() / K),
            "bal_loss": float(m.mean()), "bal_loss_se": float((v / n).sum().sqrt() / K)}  # fmt: skip
