"""Streaming statistics of incoming activations, one accumulator per monitored block."""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..linalg import (
    GramAccumulator,
    QuinticSchedule,
    Workspace,
    polar_express_schedule,
    quintic_iteration_many,
)
from ..linalg.ranks import gram_product
from ..linalg.checks import check_positive_int
from ..linalg.workspace import buffer


def top_eigenvalues(mats: Sequence[Operator], *, max_steps: int = 64, tol: float = 1e-10,
                    direct_below: int = 256, workspace: Optional[Workspace] = None) -> list[float]:  # fmt: skip
    """``lambda_max`` of each symmetric positive semi-definite ``(d, d)`` float64 matrix, or
    of the ``A^T A`` of an :class:`ActivationGram` (from the rows it keeps, never formed).

    Matrices with ``d <= direct_below`` go to ``eigvalsh``. Larger ones run Lanczos with full
    reorthogonalization, all those of one size and device in one Python loop, from a fixed
    random start (so results are reproducible); a matrix is done when its top Ritz pair's
    residual ``||S y - theta y||`` is at most ``tol * theta``: an eigenvalue then lies
    within ``tol`` relative of ``theta`` (within ``tol^2 theta / gap`` when the top is
    separated by ``gap``, i.e. to rounding). Activation Grams have a dominant top
    eigenvalue, so this takes a few dozen matrix-vector products instead of a full
    ``O(d^3)`` eigendecomposition each; a matrix not done after ``max_steps`` steps (a
    clustered top) goes to ``eigvalsh``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> mats = [X.T @ X for X in torch.randn(3, 400, 300, dtype=torch.float64, generator=g) + 1]
        >>> exact = [float(torch.linalg.eigvalsh(S)[-1]) for S in mats]
        >>> max(abs(t / e - 1) for t, e in zip(top_eigenvalues(mats), exact)) < 1e-12
        True
    """
    return [value for value, _ in _top_pairs(mats, None, max_steps, tol, direct_below, workspace, vectors=False)]


def top_eigenpairs(mats: Sequence[Operator], starts: Optional[Sequence[Optional[Tensor]]] = None, *,
                   max_steps: int = 64, tol: float = 1e-10, direct_below: int = 256,
                   workspace: Optional[Workspace] = None) -> list[tuple[float, Tensor]]:  # fmt: skip
    """``(lambda_max, unit top eigenvector)`` of each matrix, as :func:`top_eigenvalues`.

    ``starts[i]`` (a ``(d,)`` vector or ``None``) starts matrix ``i``'s Lanczos run instead of
    the fixed random vector: last step's top eigenvector of a slowly changing matrix (the
    activation Gram of a layer, one sampled step to the next) meets the residual test after
    two or three products instead of a few dozen. The accuracy guarantee is the same.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(500, 300, dtype=torch.float64, generator=g) + 1
        >>> (value, vector), = top_eigenpairs([X.T @ X])
        >>> (again, _), = top_eigenpairs([X.T @ X], [vector])
        >>> abs(again / value - 1) < 1e-12
        True
    """
    return _top_pairs(mats, starts, max_steps, tol, direct_below, workspace, vectors=True)


def _top_pairs(mats, starts, max_steps, tol, direct_below, workspace,
               vectors: bool) -> list[tuple[float, Optional[Tensor]]]:  # fmt: skip
    out: list[Optional[tuple[float, Optional[Tensor]]]] = [None] * len(mats)
    ops: list[Union[Tensor, "ActivationGram"]] = []
    groups: dict[tuple, list[int]] = {}
    for i, S in enumerate(mats):
        if isinstance(S, ActivationGram):
            # kept rows are multiplied as they are, unless eigh of the small Gram is cheaper
            S = S.gram if S.dim <= direct_below or S.kept is None else S
            d = S.shape[0] if isinstance(S, Tensor) else S.dim
        elif S.ndim != 2 or S.shape[0] != S.shape[1]:
            raise ValueError(f"matrix {i} must be square (d, d), got shape {tuple(S.shape)}")
        else:
            d = S.shape[0]
        ops.append(S)
        if d <= direct_below:
            out[i] = _eigh_top(S, vectors)
        else:  # dense matrices (stacked, multiplied as one batch) and kept rows apart
            groups.setdefault((d, S.device, isinstance(S, Tensor)), []).append(i)
    for (d, device, dense), idx in groups.items():
        q0 = [None if starts is None else starts[i] for i in idx]
        group = [ops[i] for i in idx]
        op = (torch.stack(group, out=buffer(workspace, "lanczos_mats", (len(idx), d, d), group[0])) if dense
              else [S.kept for S in group])  # fmt: skip
        for i, top in zip(idx, _lanczos_top(op, d, device, q0, max_steps, tol, workspace)):  # type: ignore[arg-type]
            out[i] = _eigh_top(ops[i], vectors) if top is None else top
    return out  # type: ignore[return-value]


# A GPU eigh of a small matrix costs about a millisecond whatever its size (launches and
# syncs): up to this size it runs on the host instead.
_HOST_EIGH_MAX = 256


def _eigh_top(S: Union[Tensor, "ActivationGram"], vectors: bool) -> tuple[float, Optional[Tensor]]:
    S = S if isinstance(S, Tensor) else S.gram
    device = S.device
    S = S.cpu() if S.shape[0] <= _HOST_EIGH_MAX else S
    if not vectors:
        return float(torch.linalg.eigvalsh(S)[-1].clamp_min(0)), None
    values, basis = torch.linalg.eigh(S)
    return float(values[-1].clamp_min(0)), basis[:, -1].to(device)


def _lanczos_top(ops: Union[Tensor, list[Tensor]], d: int, device, starts: list[Optional[Tensor]], max_steps: int,
                 tol: float, workspace: Optional[Workspace] = None) -> list[Optional[tuple[float, Tensor]]]:  # fmt: skip
    """Top Ritz pair of each of ``B`` operators on ``R^d`` once its residual is below ``tol``
    relative, else ``None``. ``ops``: ``B`` symmetric float64 matrices ``(B, d, d)``, or a
    list of ``B`` row matrices ``A_i`` ``(n_i, d)`` standing for ``A_i^T A_i`` (multiplied in
    their dtype; stacked into one batch when they share a shape and dtype).

    An operator leaves the batch once done, so the tail of a batch with one slow operator
    (a flat top) costs the steps of that one alone. The tridiagonal ``T`` and its small
    ``eigh`` stay on the host whatever the operators' device. The residual test runs every
    ``_CHECK_EVERY`` steps (an operator may then run a few steps past the one that met it):
    on a GPU each test waits for the device, and on CPU a test's dozen small host ops cost
    more than a step on small operators (3 steps between tests take 20-30% less time than 1
    on a 4 x 128 GPT's Grams); on CPU a step that reads more than ``_CPU_CHEAP_STEP``
    matrix entries is tested every time."""
    B = len(ops)
    k = min(max_steps, d)
    grams = isinstance(ops, Tensor)
    if not grams and len({(A.shape, A.dtype) for A in ops}) == 1:  # one batch (B, n, d)
        ops = torch.stack(ops, out=buffer(workspace, "lanczos_rows", (B, *ops[0].shape), ops[0]))
    read = ops.numel() if isinstance(ops, Tensor) else sum(A.numel() for A in ops)
    kind = torch.device(device).type
    check_every = 1 if kind == "cpu" and read > _CPU_CHEAP_STEP else _CHECK_EVERY.get(kind, _CHECK_EVERY["cuda"])
    f64 = dict(dtype=torch.float64, device=device)
    fixed = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    q = torch.stack([fixed if v is None or v.shape != (d,) else v.to(**f64) for v in starts])
    bad = ~torch.isfinite(q).all(-1) | (q.norm(dim=-1) == 0)
    q = torch.where(bad.unsqueeze(-1), fixed, q)
    q = q / q.norm(dim=-1, keepdim=True)
    Q = buffer(workspace, "lanczos_basis", (B, k + 1, d), q)  # row j is written before it is read
    Q[:, 0] = q
    coef = buffer(workspace, "lanczos_coefficients", (B, k, 2), q)  # (alpha_j, b_j) until the next test
    T = buffer(workspace, "lanczos_tridiagonal", (B, k, k), torch.empty(0, dtype=torch.float64))
    tiny = torch.finfo(torch.float64).tiny
    result: list[Optional[tuple[float, Tensor]]] = [None] * B
    live = list(range(B))  # the operators not done, in the order of the batch's rows
    filled = 0  # steps whose coefficients are in T
    for j in range(k):
        w = _apply(ops, Q[:, j : j + 1], grams)
        basis = Q[:, : j + 1]
        # full reorthogonalization by classical Gram-Schmidt, twice (enough), as row-vector
        # products: two launches a pass; the first projection on q_j is alpha_j
        h = torch.bmm(w, basis.mT)
        coef[:, j, 0] = h[:, 0, j]
        w.baddbmm_(h, basis, alpha=-1)
        w.baddbmm_(torch.bmm(w, basis.mT), basis, alpha=-1)
        w = w.squeeze(1)
        b = torch.linalg.vector_norm(w, dim=-1, out=coef[:, j, 1])
        # an exhausted Krylov space (b = 0, so w = 0) continues from q = 0, which adds nothing
        torch.div(w, b.clamp_min(tiny).unsqueeze(-1), out=Q[:, j + 1])
        if (j + 1) % check_every and j + 1 < k:
            continue
        # rows filled..j of T's lower half (what eigh reads): alpha on the diagonal, the
        # previous step's b left of it
        lo = max(filled - 1, 0)
        new = coef[:, lo : j + 1].cpu()
        T[:, filled : j + 1, : j + 1].zero_()
        T.diagonal(dim1=1, dim2=2)[:, filled : j + 1] = new[:, filled - lo :, 0]
        T.diagonal(-1, dim1=1, dim2=2)[:, lo:j] = new[:, : j - lo, 1]
        filled = j + 1
        theta, vecs = torch.linalg.eigh(T[:, : j + 1, : j + 1])
        top = theta[:, -1]
        done = ((top > 0) & (new[:, -1, 1] * vecs[:, -1, -1].abs() <= tol * top)).tolist()
        if any(done):
            rows = [r for r, x in enumerate(done) if x]
            # the Ritz vectors of the operators done, in one product
            Y = torch.bmm(vecs[rows, :, -1].unsqueeze(1).to(device), basis[rows]).squeeze(1)
            Y /= torch.linalg.vector_norm(Y, dim=-1, keepdim=True)
            for r, y in zip(rows, Y):
                result[live[r]] = (float(top[r]), y)
            keep = [r for r, x in enumerate(done) if not x]
            if not keep:
                break
            live = [live[r] for r in keep]
            ops = _front(ops, keep) if isinstance(ops, Tensor) else [ops[r] for r in keep]
            Q, T, coef = _front(Q, keep), _front(T, keep), _front(coef, keep)
    return result


_CHECK_EVERY = {"cpu": 3, "cuda": 4}  # steps between residual tests, per device type
_CPU_CHEAP_STEP = 2**20  # matrix entries read by a Lanczos step below which CPU tests every few


def _apply(ops: Union[Tensor, list[Tensor]], x: Tensor, grams: bool) -> Tensor:
    """``x S_i`` for each operator: ``x`` ``(B, 1, d)`` float64 rows; ``ops`` symmetric
    ``(B, d, d)`` (``grams``: a row vector times the matrix, on CPU several times faster than
    the matrix times a column) or row matrices ``A_i``, stacked ``(B, n, d)`` or a list, for
    ``S_i = A_i^T A_i`` (multiplied in their dtype)."""
    if grams:
        return torch.bmm(x, ops)  # type: ignore[arg-type]
    if isinstance(ops, Tensor):
        return torch.bmm(torch.bmm(x.to(ops.dtype), ops.mT), ops).to(x.dtype)
    return torch.stack([(x_i.to(A.dtype) @ A.mT @ A).to(x.dtype) for A, x_i in zip(ops, x)])


def _front(x: Tensor, keep: list[int]) -> Tensor:
    """The rows ``keep`` (ascending) of ``x``, moved to its front in place: no new buffer."""
    for new, old in enumerate(keep):
        if new != old:
            x[new].copy_(x[old])
    return x[: len(keep)]


def gradient_norms(G: Tensor) -> tuple[float, float]:
    """``(||G||_F, ||G||_*)`` of a matrix in float64, as :func:`gradient_norms_many`.

    Example:
        >>> gradient_norms(torch.eye(3))
        (1.7320508075688772, 3.0)
    """
    return gradient_norms_many([G])[0]


def gradient_norms_many(mats: Sequence[Tensor], workspace: Optional[Workspace] = None,
                        method: str = "auto") -> list[tuple[float, float]]:  # fmt: skip
    """``(||G||_F, ||G||_*)`` of each matrix, in float64.

    ``method="eigvalsh"`` (the default on CPU): from the eigenvalues of the smaller Gram
    formed in float64 (a float32 Gram's rounding, ``~1e-7 ||G||^2``, would show up as
    singular values of up to ``~3e-4 ||G||`` in the null space and bias ``||G||_*``
    upward). The Grams of one size are stacked for one batched ``eigvalsh``.

    ``method="iteration"`` (the default on CUDA, where ``eigvalsh`` of a few hundred small
    matrices costs tens of milliseconds): ``||G||_* = tr(polar(G)^T G)`` with ``polar(G)``
    from :data:`NUCLEAR_STEPS` float64 Polar Express steps fitted for singular values down
    to ``NUCLEAR_LOWER ||G||_F``, batched by shape (a few small matrices zero-padded into
    a batch of larger ones). The composed map ``p`` sends ``[NUCLEAR_LOWER, 1]`` to ``1``
    within ``1e-15`` and rises monotonically (up to rounding) from 0 to at most 1 below it
    (``p(0) = 0``: padding adds nothing), so ``sum_i sigma_i p(sigma_i / ||G||_F)`` is
    within ``min(m, n) * NUCLEAR_LOWER`` relative of ``||G||_*``: the size of the float64
    rounding floor that both methods share (null-space singular values of ``~1e-8
    ||G||_F``). On an H100, 10 ms for a 6 x 384 GPT's 36 gradients against 120 ms by
    ``eigvalsh``.

    With ``workspace`` (a :class:`~specgrad.linalg.Workspace`) the float64 copies and Grams
    reuse buffers from call to call.

    Example:
        >>> [(round(f, 6), round(n, 6)) for f, n in gradient_norms_many([torch.ones(2, 3), torch.eye(4)])]
        [(2.44949, 2.44949), (2.0, 4.0)]
        >>> [(round(f, 6), round(n, 6)) for f, n in gradient_norms_many([torch.eye(4)], method="iteration")]
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
        per_batch = max(1, _BATCH_BYTES // (8 * k * l))
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


NUCLEAR_STEPS = 16
NUCLEAR_LOWER = 1e-8


@functools.lru_cache(maxsize=1)
def _nuclear_schedule() -> QuinticSchedule:
    return polar_express_schedule(NUCLEAR_STEPS, NUCLEAR_LOWER, safety=1.0)


def _pad_small_groups(groups: dict[tuple, list[int]]) -> dict[tuple, list[int]]:
    """Fold each iteration group ``(True, device, k, l)`` into a larger one ``(K, L)`` whose
    matrices are at least as big, when its matrices, zero-padded to ``K x L``, add at most a
    quarter to that group's work: one batch fewer (``5 * NUCLEAR_STEPS`` launches, what a
    GPU spends its time on for small layers) for a bounded cost. Zero padding leaves the
    singular values, and so both norms, as they are."""
    iteration = sorted((key for key in groups if key[0]), key=lambda key: key[2] * key[3])
    for s, small in enumerate(iteration):
        _, device, k, l = small
        for big in iteration[s + 1 :]:  # the least padding first
            if (big in groups and big[1] == device and big[2] >= k and big[3] >= l
                    and 4 * len(groups[small]) <= len(groups[big])):  # fmt: skip
                groups[big] += groups.pop(small)
                break
    return groups


def _norms_by_iteration(mats: list[Tensor], k: int, l: int, workspace: Optional[Workspace]) -> tuple[Tensor, Tensor]:
    """``(||G||_F, ||G||_*)`` of matrices of at most ``k x l`` (tall ones transposed, smaller
    ones, which come last, zero-padded) as ``(B,)`` float64 tensors: see
    ``method="iteration"`` of :func:`gradient_norms_many`."""
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


_BATCH_BYTES = 64 * 2**20  # float64 Grams (or, for the iteration, matrices) stacked at a time
_CHUNK_BYTES = 4 * 2**20  # float64 rows of a gradient converted at a time


def _grams64(mats: list[Tensor], out: Tensor, workspace: Optional[Workspace]) -> None:
    """``out[j]`` = the smaller float64 Gram of ``mats[j]``. Neighbours of one shape that
    fit in ``_CHUNK_BYTES`` as float64 are converted into one stack for one ``bmm`` (the
    same-shape blocks of a model's layers); bigger ones go to :func:`_gram64`."""
    j = 0
    while j < len(mats):
        n, m = mats[j].shape
        per = _CHUNK_BYTES // (8 * n * m)
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
    non-float64 ``G`` a few MiB at a time (a whole float64 copy of a large gradient would
    be as big as eight float32 copies of its Gram)."""
    T = G if G.shape[0] >= G.shape[1] else G.mT
    if T.dtype == torch.float64:
        gram_product(T, out)
        return
    n, k = T.shape
    step = max(1, _CHUNK_BYTES // (8 * k))
    buf = buffer(workspace, "gradient_rows", (min(step, n), k), T, torch.float64)
    out.zero_()
    for s in range(0, n, step):
        gram_product(buf[: min(step, n - s)].copy_(T[s : s + step]), out, accumulate=True)


class ActivationGram:
    """``||A||_F^2`` and ``||A||_op^2`` of the rows streamed in (``A``: ``n x d``), exactly,
    in memory ``O(d^2)``: the monitor's statistic for blocks up to ``max_dim`` wide.

    While the rows fit in the bytes of the float64 Gram (``2 d`` rows of float32, ``d`` of
    float64) they are kept as they are: Lanczos on ``v -> A^T (A v)`` costs ``4 n d`` flops
    a step instead of the ``2 n d^2`` of forming ``A^T A`` (the wide MLP-output layer on a
    small batch). Past that they fold into a :class:`~specgrad.linalg.GramAccumulator`
    (float64 sums of float32 products).

    ``update(chunk, borrow=True)`` keeps a reference instead of a copy: for the monitor's
    forward hooks, whose chunk is alive and unchanged until backward anyway, where
    :meth:`merge` copies it into the accumulator that outlives the step. Buffers survive
    :meth:`reset`, so a monitor's sampled steps reuse them instead of allocating (on CPU,
    each fresh page costs a fault). Products go through ``workspace`` (a
    :class:`~specgrad.linalg.Workspace`, shared by accumulators) when given.

    Example:
        >>> acc = ActivationGram(4)
        >>> _ = acc.update(torch.ones(3, 4))  # 3 <= 8 float32 rows: kept, not multiplied
        >>> acc.kept.shape, round(acc.frobenius_sq(), 5), round(acc.operator_sq(), 5)
        (torch.Size([3, 4]), 12.0, 12.0)
        >>> _ = acc.update(torch.ones(6, 4))  # 9 rows: folded into the Gram
        >>> acc.kept is None, acc.stable_rank()
        (True, 1.0)
    """

    def __init__(self, dim: int, *, device=None, workspace: Optional[Workspace] = None):
        self.dim = check_positive_int(dim, "dim")
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.workspace = workspace
        self.rows = 0
        self._borrowed: list[Tensor] = []
        self._rows_buf: Optional[Tensor] = None  # (capacity, dim): kept rows, a prefix of it
        self._n_kept = 0
        self._acc: Optional[GramAccumulator] = None
        self._folded = False  # whether _acc holds this step's rows (else it is stale)

    # -- streaming ---------------------------------------------------------------------------
    def update(self, chunk: Tensor, *, borrow: bool = False) -> "ActivationGram":
        """Add rows ``chunk`` ``(rows, dim)`` (or ``(..., dim)``, flattened)."""
        if chunk.ndim < 1 or chunk.shape[-1] != self.dim:
            raise ValueError(f"chunk must have last dim {self.dim}, got shape {tuple(chunk.shape)}")
        X = chunk.detach().reshape(-1, self.dim).to(self.device)
        X = X if X.dtype == torch.float64 else X.to(torch.float32)
        if borrow:
            self._borrowed.append(X)
        elif (not self._folded and self._n_kept + X.shape[0] <= self.capacity(X.dtype)
              and (self._n_kept == 0 or self._rows_buf.dtype == X.dtype)):  # type: ignore[union-attr]  # fmt: skip
            if self._rows_buf is None or self._rows_buf.dtype != X.dtype:
                self._rows_buf = torch.empty(self.capacity(X.dtype), self.dim, dtype=X.dtype, device=self.device)
            self._rows_buf[self._n_kept : self._n_kept + X.shape[0]].copy_(X)
            self._n_kept += X.shape[0]
        else:
            self._fold()
            self._acc.update(X)  # type: ignore[union-attr]
        self.rows += X.shape[0]
        return self

    def capacity(self, dtype: torch.dtype) -> int:
        """How many rows of ``dtype`` are kept: as many as fill the bytes of the float64 Gram."""
        return 8 * self.dim // dtype.itemsize

    def _fold(self) -> None:
        if not self._folded:
            if self._acc is None:
                self._acc = GramAccumulator(self.dim, device=self.device, workspace=self.workspace)
            else:
                self._acc.reset()
            self._folded = True
        kept = [self._rows_buf[: self._n_kept]] if self._n_kept else []  # type: ignore[index]
        self._n_kept = 0
        borrowed, self._borrowed = self._borrowed, []
        for X in kept + borrowed:
            self._acc.update(X)  # type: ignore[union-attr]

    def merge(self, other: "ActivationGram") -> "ActivationGram":
        """Add another accumulator's rows (another micro-batch's or rank's), copying what it
        borrowed."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dim {other.dim} into dim {self.dim}")
        pieces = ([other._rows_buf[: other._n_kept]] if other._n_kept else []) + other._borrowed  # type: ignore[index]
        if other._folded:
            self._fold()
            self._acc.merge(other._acc)  # type: ignore[union-attr, arg-type]
            self.rows += other.rows - sum(X.shape[0] for X in pieces)
        for X in pieces:
            self.update(X)
        return self

    def _settle(self) -> None:
        """Take borrowed rows in (copied or folded)."""
        borrowed, self._borrowed = self._borrowed, []
        self.rows -= sum(X.shape[0] for X in borrowed)
        for X in borrowed:
            self.update(X)

    def reset(self) -> None:
        """Forget all rows; buffers are kept for the next ones."""
        self.rows, self._n_kept, self._borrowed, self._folded = 0, 0, [], False

    # -- results -----------------------------------------------------------------------------
    @property
    def kept(self) -> Optional[Tensor]:
        """The rows themselves ``(rows, dim)`` while they are kept, else ``None``."""
        self._settle()
        return None if self._folded or not self._n_kept else self._rows_buf[: self._n_kept]  # type: ignore[index]

    @property
    def gram(self) -> Tensor:
        """``A^T A`` in float64 ``(dim, dim)`` (kept rows are folded in for good)."""
        self._settle()
        self._fold()
        return self._acc.gram  # type: ignore[union-attr]

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.gram]

    def frobenius_sq(self) -> float:
        """``||A||_F^2``: the Gram's trace plus the kept rows' squares."""
        A = self.kept
        kept = float(torch.linalg.vector_norm(A)) ** 2 if A is not None else 0.0  # no temporary
        return kept + (self._acc.frobenius_sq() if self._folded else 0.0)  # type: ignore[union-attr]

    def operator_sq(self) -> float:
        """``||A||_op^2 = lambda_max(A^T A)`` (see :func:`top_eigenvalues`)."""
        return top_eigenvalues([self])[0] if self.rows else 0.0

    def stable_rank(self) -> float:
        """``||A||_F^2 / ||A||_op^2`` (0 when nothing nonzero was fed)."""
        op = self.operator_sq()
        return self.frobenius_sq() / op if op > 0 else 0.0


Operator = Union[Tensor, ActivationGram]


class SketchedActivation:
    """``||A||_F^2`` exactly and ``||A||_op^2`` from a Gaussian row sketch, for layers too
    wide for a ``d x d`` Gram.

    Rows ``x`` of ``A`` (``n x d``) are folded into ``S = Phi A`` with ``Phi`` a ``k x n``
    matrix of independent ``N(0, 1/k)`` entries drawn chunk by chunk, so memory is ``O(k d)``.
    ``E[S^T S] = A^T A``, and ``st(S)`` estimates ``st(A)`` with relative error of order
    ``sqrt(st(A) / k)`` (a subspace embedding of the dominant directions; exact for rank
    one); with the default ``k = 256`` and the small stable ranks of post-activations that
    is a few percent. ``||A||_F^2`` is exact; ``||A||_op^2`` is reported as ``||A||_F^2 / st(S)``.

    Example:
        >>> acc = SketchedActivation(8, sketch_rows=64, generator=torch.Generator().manual_seed(0))
        >>> _ = acc.update(torch.ones(100, 8))
        >>> round(acc.stable_rank(), 6)  # rank one: the sketch keeps it rank one
        1.0
    """

    def __init__(self, dim: int, sketch_rows: int = 256, *, device=None,
                 generator: Optional[torch.Generator] = None):  # fmt: skip
        self.dim = dim
        self.sketch = torch.zeros(sketch_rows, dim, dtype=torch.float64, device=device)
        self.device = self.sketch.device
        self.generator = generator
        self._fro_sq = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = 0

    def update(self, chunk: Tensor) -> "SketchedActivation":
        X = chunk.detach().reshape(-1, self.dim).to(self.sketch.device, torch.float64)
        k = self.sketch.shape[0]
        phi = torch.randn(k, X.shape[0], dtype=torch.float64, device="cpu", generator=self.generator)
        self.sketch.addmm_(phi.to(X.device), X, alpha=k**-0.5)
        self._fro_sq += X.square().sum()
        self.rows += X.shape[0]
        return self

    def merge(self, other: "SketchedActivation") -> "SketchedActivation":
        self.sketch += other.sketch
        self._fro_sq += other._fro_sq
        self.rows += other.rows
        return self

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.sketch, self._fro_sq]

    def reset(self) -> None:
        self.sketch.zero_()
        self._fro_sq.zero_()
        self.rows = 0

    def frobenius_sq(self) -> float:
        return float(self._fro_sq)

    def operator_sq(self) -> float:
        """``||A||_F^2 / st(S)``: the exact Frobenius norm over the sketch's stable rank,
        whose numerator and denominator share the sketch's scale error."""
        s_op_sq = float(torch.linalg.matrix_norm(self.sketch, ord=2)) ** 2
        s_fro_sq = float(self.sketch.square().sum())
        return self.frobenius_sq() * s_op_sq / s_fro_sq if s_fro_sq > 0 else 0.0

    def stable_rank(self) -> float:
        op = self.operator_sq()
        return self.frobenius_sq() / op if op > 0 else 0.0


class TokenCounts:
    """Statistics of the token-indicator matrix of an embedding (one row per token, a one
    in the column of its id): ``A^T A = diag(counts)``, so ``||A||_F^2 = n``,
    ``||A||_op^2 = max count`` and ``st = 1 / p_max``, without a dense one-hot.

    Example:
        >>> tc = TokenCounts(5)
        >>> _ = tc.update(torch.tensor([0, 1, 1, 1, 4]))
        >>> tc.stable_rank()  # 5 tokens, the most frequent appears 3 times
        1.6666666666666667
    """

    def __init__(self, num_embeddings: int, *, device=None):
        self.counts = torch.zeros(num_embeddings, dtype=torch.float64, device=device)
        self.device = self.counts.device
        self.rows = 0

    def update(self, ids: Tensor) -> "TokenCounts":
        flat = ids.detach().reshape(-1).to(self.counts.device)
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).to(torch.float64)
        self.rows += flat.numel()
        return self

    def state(self) -> list[Tensor]:
        """The tensors that add up under :meth:`merge` (what a sum over ranks reduces)."""
        return [self.counts]

    def merge(self, other: "TokenCounts") -> "TokenCounts":
        self.counts += other.counts
        self.rows += other.rows
        return self

    def reset(self) -> None:
        self.counts.zero_()
        self.rows = 0

    def frobenius_sq(self) -> float:
        return float(self.rows)

    def operator_sq(self) -> float:
        return float(self.counts.max()) if self.rows else 0.0

    def stable_rank(self) -> float:
        op = self.operator_sq()
        return self.rows / op if op > 0 else 0.0


def make_accumulator(kind: str, dim: int, max_dim: int, device=None, seed: int = 0,
                     workspace: Optional[Workspace] = None):  # fmt: skip
    """The right streaming statistic for a block: exact Gram up to ``max_dim`` features,
    a sketch above it, token counts for embeddings."""
    if kind == "embedding":
        return TokenCounts(dim, device=device)
    if dim <= max_dim:
        return ActivationGram(dim, device=device, workspace=workspace)
    return SketchedActivation(dim, device=device, generator=torch.Generator().manual_seed(seed))
