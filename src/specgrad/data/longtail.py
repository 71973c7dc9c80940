"""Long-tailed classification data: class-count profiles, subsampling, two small data sets.

* :func:`long_tail_counts`: training count of every class under the exponential profile
  ``n_c = floor(n_max * r^(-c/(C-1)))`` (Cui et al. 2019; Cao et al. 2019) or the step
  profile (the first ``C // 2`` classes ``n_max``, the rest ``floor(n_max / r)``).
* :func:`balanced_split`, :func:`long_tail_subset`: index selections per class.
* :func:`make_long_tail`: a balanced test split and a balanced validation split carved from
  the data first, then a long-tailed training set subsampled from what is left.
* :func:`digits`, :func:`mnist1d`: scikit-learn's 8x8 digits (shipped with scikit-learn)
  and MNIST-1D (Greydanus 2020, generated procedurally); neither downloads anything.
* :func:`cifar`: CIFAR-10/100 read from a local copy in the python-pickle layout, and
  :func:`long_tail_from_splits`, the CIFAR-LT protocol (long-tailed training split, balanced
  validation and test splits from the test files).

Class 0 is the head (most frequent) class and class ``C - 1`` the tail, so a class index is
also its frequency rank.
"""

from __future__ import annotations

import functools
import math
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

PROFILES = ("exp", "step")


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def long_tail_counts(n_max: int, n_classes: int, profile: str = "exp", ratio: float = 10.0) -> list[int]:
    """Training count of every class, head class first: a list of ``n_classes`` ints.

    * ``"exp"``: ``n_c = floor(n_max * ratio^(-c / (C - 1)))`` for ``c = 0..C-1`` (the
      CIFAR-LT profile): ``n_0 = n_max``, ``n_{C-1} = floor(n_max / ratio)``.
    * ``"step"``: classes ``c < C // 2`` get ``n_max``, the others ``floor(n_max / ratio)``
      (Buda et al. 2018, Cao et al. 2019 with ``mu = 0.5``).

    A count never drops below 1. The floor is taken with a ``1e-9`` tolerance so that exact
    products such as ``100 * 100^(-1)`` are not rounded down by float error.

    Example:
        >>> long_tail_counts(100, 5, "exp", 16.0)
        [100, 50, 25, 12, 6]
        >>> long_tail_counts(100, 4, "step", 20.0)
        [100, 100, 5, 5]
    """
    n_max = _check_int(n_max, "n_max")
    n_classes = _check_int(n_classes, "n_classes", 2)
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"ratio must be a finite number >= 1, got {ratio!r}")
    if profile == "exp":
        raw = [n_max * ratio ** (-c / (n_classes - 1)) for c in range(n_classes)]
    else:
        raw = [n_max if c < n_classes // 2 else n_max / ratio for c in range(n_classes)]
    return [max(1, math.floor(x + 1e-9)) for x in raw]


def _per_class(y: Tensor, n_classes: Optional[int]) -> list[Tensor]:
    if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point() or y.numel() == 0:
        raise ValueError(f"y must be a non-empty 1-D integer tensor, got {y!r:.80}")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    k = int(y.max()) + 1 if n_classes is None else n_classes
    return [(y == c).nonzero().squeeze(1) for c in range(k)]


def long_tail_subset(y: Tensor, counts: Sequence[int], generator: Optional[torch.Generator] = None,
                     pool: Optional[Tensor] = None) -> Tensor:  # fmt: skip
    """Indices into ``y`` holding exactly ``counts[c]`` samples of class ``c``, drawn
    uniformly without replacement (from ``pool`` only, if given); sorted int64 ``(sum(counts),)``.

    Raises ValueError if a class has fewer than ``counts[c]`` candidates.

    Example:
        >>> y = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> idx = long_tail_subset(y, [3, 1], torch.Generator().manual_seed(0))
        >>> y[idx].bincount().tolist()
        [3, 1]
    """
    allowed = torch.zeros(len(y), dtype=torch.bool)
    allowed[torch.arange(len(y)) if pool is None else pool] = True
    chosen = []
    for c, (idx, n) in enumerate(zip(_per_class(y, len(counts)), counts)):
        _check_int(n, f"counts[{c}]", 0)
        idx = idx[allowed[idx]]
        if len(idx) < n:
            raise ValueError(f"class {c} has {len(idx)} samples available, fewer than the {n} asked for")
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:n]])
    return torch.cat(chosen).sort().values


def balanced_split(y: Tensor, per_class: int, generator: Optional[torch.Generator] = None,
                   pool: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(chosen, rest)``: ``per_class`` random indices of every class present in ``y`` (within
    ``pool``, if given), and the remaining indices of the pool; both sorted int64.

    Example:
        >>> y = torch.tensor([0, 1, 0, 1, 0, 1])
        >>> chosen, rest = balanced_split(y, 1, torch.Generator().manual_seed(0))
        >>> sorted(y[chosen].tolist()), len(rest)
        ([0, 1], 4)
    """
    per_class = _check_int(per_class, "per_class", 0)
    k = int(y.max()) + 1
    chosen = long_tail_subset(y, [per_class] * k, generator, pool)
    pool = torch.arange(len(y)) if pool is None else pool
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[chosen] = False
    rest = pool[keep[pool]].sort().values
    return chosen, rest


@dataclass
class LongTailData:
    """A long-tailed training set with balanced validation and test sets.

    ``x_*`` float32 ``(N_*, d)`` (images: ``(N_*, C, H, W)``), ``y_*`` int64 ``(N_*,)``; ``counts[c]`` is the training
    count of class ``c``; ``*_index`` are the rows of the source arrays each split took.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    counts: list[int]
    train_index: Tensor
    val_index: Tensor
    test_index: Tensor

    @property
    def n_classes(self) -> int:
        return len(self.counts)


def make_long_tail(x: Tensor, y: Tensor, *, profile: str, ratio: float, n_max: int, n_test: int, n_val: int,
                   generator: Optional[torch.Generator] = None, name: str = "") -> LongTailData:  # fmt: skip
    """Carve a balanced test split (``n_test`` per class), then a balanced validation split
    (``n_val`` per class) from the rest, then subsample the training set from what remains
    with :func:`long_tail_counts` ``(n_max, C, profile, ratio)``. The three splits are
    disjoint; the test and validation splits do not depend on ``profile``/``ratio`` (for a
    given generator state), so every imbalance profile is scored on the same test set.

    Example:
        >>> x, y = torch.randn(300, 4), torch.arange(300) % 3
        >>> d = make_long_tail(x, y, profile="exp", ratio=10.0, n_max=50, n_test=20, n_val=10,
        ...                    generator=torch.Generator().manual_seed(0))
        >>> d.counts, len(d.y_test), len(d.y_val), len(d.y_train)
        ([50, 15, 5], 60, 30, 70)
    """
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x must be (N, d) with N = len(y) = {len(y)}, got {tuple(x.shape)}")
    test, rest = balanced_split(y, n_test, generator)
    val, rest = balanced_split(y, n_val, generator, rest)
    counts = long_tail_counts(n_max, int(y.max()) + 1, profile, ratio)
    train = long_tail_subset(y, counts, generator, rest)
    x, y = x.float(), y.long()
    return LongTailData(name, x[train], y[train], x[val], y[val], x[test], y[test], counts, train, val, test)


def digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 samples, 10 classes, shipped with
    scikit-learn): ``x`` float32 ``(1797, 64)``, each pixel standardized over the whole set
    (a fixed, label-free transform; constant pixels become 0), ``y`` int64 ``(1797,)``.

    Example:
        >>> x, y = digits()
        >>> x.shape, int(y.max()) + 1
        (torch.Size([1797, 64]), 10)
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float64)
    std = x.std(0)
    x = (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    return x.float(), torch.as_tensor(data.target, dtype=torch.long)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, 1.0
    np_state, py_state = np.random.get_state(), random.getstate()
    try:  # make_dataset seeds numpy's and Python's global generators; leave them as they were
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)


def mnist1d(num_samples: int = 10_000, seed: int = 42) -> tuple[Tensor, Tensor]:
    """MNIST-1D (Greydanus 2020), generated procedurally by ``mnist1d.data.make_dataset`` (no
    download): ``num_samples // 10`` sequences per class, ``x`` float32 ``(N, 40)``
    standardized by the generator (global mean 0, std 1), ``y`` int64 ``(N,)``. The same
    ``(num_samples, seed)`` gives the same arrays; the global RNG state is left unchanged.

    Example:
        >>> x, y = mnist1d(200, seed=0)
        >>> x.shape, y.bincount().tolist()[:3]
        (torch.Size([200, 40]), [20, 20, 20])
    """
    num_samples = _check_int(num_samples, "num_samples", 10)
    x, y = _mnist1d_arrays(num_samples, int(seed))
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


CIFAR_LAYOUTS = {
    # variant: (training files, test files, label key)
    "cifar10": (tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels"),
    "cifar100": (("train",), ("test",), b"fine_labels"),
}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _cifar_folder(path) -> tuple[str, Path]:
    """``(variant, folder)`` of a CIFAR copy at ``path`` (the folder itself, or one holding the
    archive's own ``cifar-10-batches-py`` / ``cifar-100-python``)."""
    root = Path(path).expanduser()
    if not str(path) or not root.is_dir():
        raise FileNotFoundError(f"CIFAR folder {str(path)!r} does not exist; give the folder of the python "
                                "version (data_batch_1..5 and test_batch, or train and test)")  # fmt: skip
    for folder in [root] + [root / name for name in CIFAR_FOLDERS.values()]:
        for variant, (train, test, _) in CIFAR_LAYOUTS.items():
            if all((folder / f).is_file() for f in train + test):
                return variant, folder
    raise FileNotFoundError(f"{root} holds neither CIFAR-10's data_batch_1..5 and test_batch nor CIFAR-100's "
                            "train and test (the python-pickle layout)")  # fmt: skip


def _cifar_file(file: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    with open(file, "rb") as f:
        try:
            batch = pickle.load(f, encoding="bytes")
        except Exception as e:  # a truncated or foreign file: say which
            raise ValueError(f"{file} is not a CIFAR pickle file ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{file} must hold a dict with b'data' and {label_key!r}, got {keys}")
    x = np.asarray(batch[b"data"])
    y = np.asarray(batch[label_key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (x.shape[0],):
        raise ValueError(f"{file}: b'data' must be uint8 (N, 3072) and the labels (N,), got {x.dtype} "
                         f"{x.shape} and {y.shape}")  # fmt: skip
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError(f"{file}: labels must be integers >= 0")
    return x, y.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _cifar_arrays(path: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    variant, folder = _cifar_folder(path)
    train, test, key = CIFAR_LAYOUTS[variant]
    parts = [[_cifar_file(folder / f, key) for f in files] for files in (train, test)]
    (x_tr, y_tr), (x_te, y_te) = [(np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]))
                                  for ps in parts]  # fmt: skip
    return variant, x_tr, y_tr, x_te, y_te


def cifar(path) -> tuple[str, Tensor, Tensor, Tensor, Tensor]:
    """CIFAR-10 or CIFAR-100 read from a local copy in the python-pickle layout (nothing is
    downloaded): ``(variant, x_train, y_train, x_test, y_test)``, images float32
    ``(N, 3, 32, 32)`` standardized per channel with the training set's mean and standard
    deviation, labels int64 (CIFAR-100: the fine labels). ``variant`` is ``"cifar10"``
    (``data_batch_1..5``, ``test_batch``, key ``b'labels'``) or ``"cifar100"`` (``train``,
    ``test``, key ``b'fine_labels'``). A missing folder or file raises ``FileNotFoundError``,
    a malformed file ``ValueError``, each naming the path. The files are pickles: read only
    copies you trust.
    """
    variant, x_tr, y_tr, x_te, y_te = _cifar_arrays(str(path))
    images = [torch.from_numpy(x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0) for x in (x_tr, x_te)]
    mean = images[0].mean((0, 2, 3), keepdim=True)
    std = images[0].std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    (x_tr, x_te) = [(x - mean) / std for x in images]
    return variant, x_tr, torch.from_numpy(y_tr.copy()), x_te, torch.from_numpy(y_te.copy())


def long_tail_from_splits(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, profile: str,
                          ratio: float, n_max: int = 0, n_val: int = 0, generator: Optional[torch.Generator] = None,
                          name: str = "") -> LongTailData:  # fmt: skip
    """A long-tailed training set subsampled from a given training split (:func:`long_tail_counts`
    with ``n_max``, 0: the smallest class's count), a balanced validation split of ``n_val``
    per class carved from the given test split (0: a fifth of its smallest class), and the
    rest of the test split as the test set (the CIFAR-LT protocol). Inputs may be any shape
    ``(N, ...)``; ``*_index`` refer to the training split for ``train_index`` and to the test
    split for the others.

    Example:
        >>> x, y = torch.randn(60, 2), torch.arange(60) % 3
        >>> d = long_tail_from_splits(x, y, x[:30], y[:30], profile="exp", ratio=4.0,
        ...                           generator=torch.Generator().manual_seed(0))
        >>> d.counts, len(d.y_val), len(d.y_test)
        ([20, 10, 5], 6, 24)
    """
    for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
        if len(x) != len(y) or y.ndim != 1:
            raise ValueError(f"{split}: x must have one row per label, got {tuple(x.shape)} and {tuple(y.shape)}")
    k = int(y_train.max()) + 1
    n_max = _check_int(n_max, "n_max", 0) or int(torch.bincount(y_train, minlength=k).min())
    n_val = _check_int(n_val, "n_val", 0) or max(1, int(torch.bincount(y_test, minlength=k).min()) // 5)
    val, test = balanced_split(y_test, n_val, generator)
    counts = long_tail_counts(n_max, k, profile, ratio)
    train = long_tail_subset(y_train, counts, generator)
    return LongTailData(name, x_train[train].float(), y_train[train].long(), x_test[val].float(), y_test[val].long(),
                        x_test[test].float(), y_test[test].long(), counts, train, val, test)  # fmt: skip
