"""Batched Frobenius and nuclear norms ``(||G||_F, ||G||_*)`` of many matrices, in float64.

Two methods, both exact to the float64 rounding floor of a Gram (null-space singular
values of ``~1e-8 ||G||_F``): ``eigvalsh`` of the smaller Gram of each matrix formed in
float64, batched by size, and ``tr(polar(G)^T G)`` with ``polar(G)`` from a fixed number of
float64 Polar Express steps, batched by shape. The first is the default on CPU; the second
on CUDA, where ``eigvalsh`` solves small matrices one by one (a launch-bound cost that grows
with their number) and the iteration is a few batched matmuls.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import QuinticSchedule, polar_express_schedule, quintic_iteration_many
from .gram import gram_product
from .workspace import Workspace, buffer

# -- tuning ------------------------------------------------------------------------------
# The iteration: NUCLEAR_STEPS float64 Polar Express steps fitted for singular values down
# to NUCLEAR_LOWER ||G||_F. Their composed map sends [NUCLEAR_LOWER, 1] to 1 within 1e-15
# and rises monotonically from p(0) = 0, so ||G||_* is within min(m, n) * NUCLEAR_LOWER
# relative: the rounding floor that eigvalsh of a float64 Gram has too.
NUCLEAR_STEPS = 16
NUCLEAR_LOWER = 1e-8
# A group of small matrices joins a batch of larger ones, zero-padded, when it has at most
# 1 / PAD_SHARE as many matrices: one batch fewer (5 * NUCLEAR_STEPS launches, what a GPU
# spends its time on for small layers) for at most that share of the batch's work.
PAD_SHARE = 4
# Float64 Grams (or, for the iteration, matrices) stacked into one batch.
BATCH_BYTES = 64 * 2**20
# Float64 rows of a gradient converted at a time (a whole float64 copy of a large gradient
# would be as big as eight float32 copies of its Gram).
CHUNK_BYTES = 4 * 2**20


def frobenius_nuclear_norms(mats: Sequence[Tensor], *, method: str = "auto",
                            workspace: Optional[Workspace] = None) -> list[tuple[float, float]]:  # fmt: skip
    """``(||G||_F, ||G||_*)`` of each ``(m, n)`` matrix (any shapes, dtypes and devices), in float64.

    ``method="eigvalsh"`` (the default on CPU): from the eigenvalues of the smaller Gram
    formed in float64 (a float32 Gram's rounding, ``~1e-7 ||G||^2``, would show up as
    singular values of up to ``~3e-4 ||G||`` in the null space and bias ``||G||_*``
    upward). The Grams of one size are stacked for one batched ``eigvalsh``.

    ``method="iteration"`` (the default on CUDA): ``||G||_* = tr(polar(G)^T G)`` with
    ``polar(G)`` from ``NUCLEAR_STEPS`` float64 Polar Express steps, batched by shape (tall
    matrices transposed, a few small ones zero-padded into a batch of larger ones: zero
    padding leaves the singular values as they are). The composed map ``p`` is ``1`` within
    ``1e-15`` on ``[NUCLEAR_LOWER, 1]`` and rises from ``p(0) = 0`` below it, so
    ``sum_i sigma_i p(sigma_i / ||G||_F)`` is within ``min(m, n) * NUCLEAR_LOWER`` relative
    of ``||G||_*``.

    With ``workspace`` (a :class:`~specgrad.linalg.Workspace`) the float64 copies and Grams
    reuse buffers from call to call.

    Example:
        >>> [(round(f, 6), round(n, 6)) for f, n in frobenius_nuclear_norms([torch.ones(2, 3), torch.eye(4)])]
        [(2.44949, 2.44949), (2.0, 4.0)]
        >>> [(round(f, 6), round(n, 6)) for f, n in frobenius_nuclear_norms([torch.eye(4)], method="iteration")]
        [(2.0, 4.0)]
    """
    if method not in ("auto", "eigvalsh", "iteration"):
        raise ValueError(f"method must be 'auto', 'eigvalsh' or 'iteration', got {method!r}")
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(mats)
    groups: dict[tuple, list[int]] = {}
    for i, G in enumerate(mats):
        if G.ndim != 2:
            raise ValueError(f"matrix {i} must be 2-D, got shape {tuple(G.shape)}")
        iterate = method == "iteration" or (method == "auto" and G.device.type == "cuda")
        # the iteration batches one shape (tall ones transposed), eigvalsh one Gram size k x k
        k = min(G.shape)
        groups.setdefault((iterate, G.device, k, max(G.shape) if iterate else k), []).append(i)
    for (iterate, _, k, l), idx in _pad_small_groups(groups).items():
        # equal shapes side by side, for _grams64; for the iteration, padded ones last
        idx.sort(key=lambda i: (sorted(mats[i].shape) != [k, l], tuple(mats[i].shape)))
        per_batch = max(1, BATCH_BYTES // (8 * k * l))
        for start in range(0, len(idx), per_batch):
            part = idx[start : start + per_batch]
            if iterate:
                fro, nuc = _norms_by_iteration([mats[i].detach() for i in part], k, l, workspace)
            else:
                grams = buffer(workspace, "gradient_grams", (len(part), k, k), mats[part[0]], torch.float64)
                _grams64([mats[i].detach() for i in part], grams, workspace)
                nuc = torch.linalg.eigvalsh(grams).clamp_min(0).sqrt().sum(-1)
                fro = grams.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt()
            for i, f, n in zip(part, fro.tolist(), nuc.tolist()):
                out[i] = (f, n)
    return out


@functools.lru_cache(maxsize=1)
def _nuclear_schedule() -> QuinticSchedule:
    return polar_express_schedule(NUCLEAR_STEPS, NUCLEAR_LOWER, safety=1.0)


def _pad_small_groups(groups: dict[tuple, list[int]]) -> dict[tuple, list[int]]:
    """Fold each iteration group ``(True, device, k, l)`` into a larger one ``(K, L)`` of
    the same device whose matrices are at least as big, when it has at most
    ``1 / PAD_SHARE`` as many matrices."""
    iteration = sorted((key for key in groups if key[0]), key=lambda key: key[2] * key[3])
    for s, small in enumerate(iteration):
        _, device, k, l = small
        for big in iteration[s + 1 :]:  # the least padding first
            if (big in groups and big[1] == device and big[2] >= k and big[3] >= l
                    and PAD_SHARE * len(groups[small]) <= len(groups[big])):  # fmt: skip
                groups[big] += groups.pop(small)
                break
    return groups


def _norms_by_iteration(mats: list[Tensor], k: int, l: int, workspace: Optional[Workspace]) -> tuple[Tensor, Tensor]:
    """``(||G||_F, ||G||_*)`` of matrices of at most ``k x l`` (tall ones transposed, smaller
    ones, which come last, zero-padded) as ``(B,)`` float64 tensors."""
    X = buffer(workspace, "gradient_wide", (len(mats), k, l), mats[0], torch.float64)
    wide = [G.mT if G.shape[0] > G.shape[1] else G for G in mats]
    full = next((j for j, G in enumerate(wide) if G.shape != (k, l)), len(wide))
    if full:
        torch.stack(wide[:full], out=X[:full])
    if full < len(wide):
        X[full:].zero_()
        for x, G in zip(X[full:], wide[full:]):
            x[: G.shape[0], : G.shape[1]].copy_(G)
    O = quintic_iteration_many(X, _nuclear_schedule(), NUCLEAR_STEPS, dtype=torch.float64,
                               workspace=workspace)  # fmt: skip
    return torch.linalg.vector_norm(X, dim=(-2, -1)), torch.linalg.vecdot(O.flatten(1), X.flatten(1))


def _grams64(mats: list[Tensor], out: Tensor, workspace: Optional[Workspace]) -> None:
    """``out[j]`` = the smaller float64 Gram of ``mats[j]``. Neighbours of one shape that
    fit in ``CHUNK_BYTES`` as float64 are converted into one stack for one ``bmm`` (the
    same-shape blocks of a model's layers); bigger ones go to :func:`_gram64`."""
    j = 0
    while j < len(mats):
        n, m = mats[j].shape
        per = CHUNK_BYTES // (8 * n * m)
        end = j + 1
        while end < len(mats) and end - j < per and mats[end].shape == (n, m):
            end += 1
        if per < 1 or (end == j + 1 and mats[j].dtype == torch.float64):
            _gram64(mats[j], out[j], workspace)
        else:
            X = buffer(workspace, "gradient_stack", (end - j, n, m), mats[j], torch.float64)
            torch.stack(mats[j:end], out=X)
            if n >= m:
                torch.bmm(X.mT, X, out=out[j:end])
            else:
                torch.bmm(X, X.mT, out=out[j:end])
        j = end


def _gram64(G: Tensor, out: Tensor, workspace: Optional[Workspace]) -> None:
    """``out = T^T T`` in float64 for ``T`` the taller of ``G`` and ``G^T``, converting a
    non-float64 ``G`` ``CHUNK_BYTES`` at a time."""
    T = G if G.shape[0] >= G.shape[1] else G.mT
    if T.dtype == torch.float64:
        gram_product(T, out)
        return
    n, k = T.shape
    step = max(1, CHUNK_BYTES // (8 * k))
    buf = buffer(workspace, "gradient_rows", (min(step, n), k), T, torch.float64)
    out.zero_()
    for s in range(0, n, step):
        gram_product(buf[: min(step, n - s)].copy_(T[s : s + step]), out, accumulate=True)
