"""Shampoo: Kronecker-factored preconditioning with grafted step sizes."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..linalg import check_positive_int, check_range, matrix_view, working_dtype
from .chain import ChainOptimizer
from .distributed import is_sharded
from .transforms import ApplyLR, AsMatrix, DecoupledWeightDecay, Momentum, Transform

GRAFTINGS = ("adam", "sgd", "none")


def inverse_root(stat: Tensor, root: int, eps: float, *, diagonal: Optional[bool] = None) -> Tensor:
    """``(S + eps * lambda_max I)^(-1/root)`` of symmetric PSD matrices ``S`` (``(..., d, d)``),
    by a float64 eigendecomposition; with ``diagonal`` (default: ``stat`` is 1-D) ``stat`` holds
    diagonals ``(..., d)``, rooted entrywise.

    A statistic that is all zero (no gradient seen yet) has no preconditioner: its root is zero,
    as the pseudo-inverse's, not ``(eps * tiny)^(-1/root)``, which overflows every dtype but
    float64 and turns a zero update into ``inf * 0``. An empty statistic gives an empty root.

    Example:
        >>> S = torch.diag(torch.tensor([16.0, 1.0]))
        >>> inverse_root(S, 4, 1e-12).diagonal().tolist()
        [0.5, 1.0]
        >>> inverse_root(torch.zeros(2, 2), 4, 1e-6).abs().max().item()
        0.0
    """
    S = stat.to(torch.float64)
    diagonal = stat.ndim == 1 if diagonal is None else diagonal
    if S.numel() == 0:
        return stat.clone()
    if diagonal:
        top = S.amax(-1, keepdim=True).clamp_min(0)
        out = torch.where(top > 0, (S.clamp_min(0) + eps * top).pow(-1.0 / root), 0.0)
        return out.to(stat.dtype)
    lam, Q = torch.linalg.eigh(S)
    lam = lam.clamp_min(0)
    top = lam[..., -1:]
    scaled = torch.where(top > 0, (lam + eps * top).pow(-1.0 / root), 0.0)
    return ((Q * scaled.unsqueeze(-2)) @ Q.mT).to(stat.dtype)


def frobenius(X: Tensor) -> Tensor:
    """``||X_b||_F`` of each matrix of ``X`` (``(B, m, n)``) as ``(B,)``, without the overflow
    of ``X.norm()`` (entries of 1e20 square to inf in float32): each matrix is divided by
    its largest entry first."""
    top = X.abs().amax(dim=(-2, -1))
    safe = torch.where(top > 0, top, 1.0)
    return top * torch.linalg.vector_norm(X / safe[:, None, None], dim=(-2, -1))


EMPTY = -(2**40)  # the exponent of a statistic that has seen no gradient


def _pow2(e: Tensor, dtype: torch.dtype) -> Tensor:
    """``2^e`` (float64) for integer exponents ``e``, cast to ``dtype``."""
    return torch.exp2(e.to(torch.float64)).to(dtype)


def _accumulate(stat: Tensor, exp: Tensor, G: Tensor, side: str, diagonal: bool, decay: Optional[float]) -> None:
    """Add ``G G^T`` (``side="L"``) or ``G^T G`` (``"R"``) of each matrix of ``G``
    (``(B, m, n)``) to the statistic ``2^exp * stat`` in place (summed, or an EMA with
    ``decay``), keeping ``stat`` (``(B, d, d)``, or diagonals ``(B, d)``) at largest diagonal
    entry in ``[1/2, 1)`` and its size in the integer exponent ``exp`` (``(B,)``, int64;
    :data:`EMPTY` before any gradient).

    Shampoo's direction ``L^{-1/4} G R^{-1/4}`` does not change when every gradient is
    scaled, but ``G G^T`` of a 1e20 gradient overflows float32 and that of a 1e-30 one
    underflows to 0 (then the eps floor is all that is left, and a zero statistic a division
    by zero). So ``G`` is divided by the power of two of its largest entry before the
    product, and statistics of any size are added at their relative weights. Powers of two
    scale exactly, and an integer exponent survives ``load_state_dict`` (which casts
    floating state to the parameter's dtype) bit for bit.
    """
    g = G.abs().amax(dim=(1, 2))
    e = torch.frexp(g.to(torch.float64)).exponent.to(torch.int64)  # g <= 2^e
    e = torch.where(g > 0, e, 0)
    new_exp = torch.where(g > 0, torch.maximum(exp, 2 * e), exp)
    half = e // 2  # two factors: 2^(-e) alone can overflow float32 for a gradient below 2^-127
    Gn = G * _pow2(-half, G.dtype)[:, None, None] * _pow2(half - e, G.dtype)[:, None, None]
    if diagonal:
        new = Gn.square().sum(2 if side == "L" else 1)
    else:
        new = Gn @ Gn.mT if side == "L" else Gn.mT @ Gn
    keep = torch.where(exp > EMPTY, torch.exp2((exp - new_exp).to(torch.float64)), 0.0)
    add = torch.where(g > 0, torch.exp2((2 * e - new_exp).to(torch.float64)), 0.0)
    if decay is not None:
        keep, add = keep * decay, add * (1 - decay)
    shape = (-1,) + (1,) * (stat.ndim - 1)
    stat.mul_(keep.to(stat.dtype).view(shape)).add_(new * add.to(stat.dtype).view(shape))
    top = (stat if diagonal else stat.diagonal(dim1=1, dim2=2)).amax(1)
    t = torch.where(top > 0, torch.frexp(top.to(torch.float64)).exponent.to(torch.int64), 0)
    stat.mul_(_pow2(-t, stat.dtype).view(shape))
    exp.copy_(torch.where(new_exp > EMPTY, new_exp + t, EMPTY))


class ShampooPrecondition(Transform):
    """``P = L^{-1/4} M R^{-1/4}`` with ``L = sum G G^T`` and ``R = sum G^T G`` (or their EMA
    with ``stat_decay``), roots recomputed every ``precondition_frequency`` steps, for each
    matrix of a parameter's matrix view (one ``(L, R)`` pair per expert of a stack, per
    q/k/v block of a fused weight; a ``Conv1D`` weight as ``(out, in)``). A side longer than
    ``max_precond_dim`` keeps only the diagonal of its statistic. With ``grafting``
    ``"adam"``/``"sgd"`` each matrix's step takes Shampoo's direction and the Frobenius norm
    of the Adam / SGD update of the same ``M`` (Agarwal et al., "Disentangling adaptive
    gradient methods from learning rates", 2020).

    State per parameter: ``L`` and ``R`` (``(d, d)``, ``(B, d, d)`` for a view of ``B > 1``
    matrices, or diagonals), each kept at largest diagonal entry about 1 with its size in
    the integer exponents ``L_exp``/``R_exp`` (the statistic is ``2^L_exp * L``), so no
    finite gradient, however small or large, overflows or vanishes in them (see
    :func:`_accumulate`); ``L_root``/``R_root``; ``graft_rms``, the root of Adam's second
    moment (updated with ``hypot``, which squares nothing). Half-precision parameters keep
    this state in float32. An empty matrix (a side of 0) has no step.

    Reads ``stat_decay`` (``None`` or in ``(0, 1)``), ``precondition_frequency`` and
    ``max_precond_dim`` (positive integers), ``eps`` (the relative eigenvalue floor,
    positive), ``grafting`` (one of :data:`GRAFTINGS`), ``graft_beta2`` (in ``[0, 1)``) and
    ``graft_eps`` (positive); defaults as :class:`Shampoo`'s."""

    defaults = {"stat_decay": None, "precondition_frequency": 10, "max_precond_dim": 1024, "eps": 1e-6,
                "grafting": "adam", "graft_beta2": 0.999, "graft_eps": 1e-8}  # fmt: skip

    def validate(self, group):
        if group["stat_decay"] is not None:
            check_range("stat_decay", group["stat_decay"], 0.0, 1.0, lo_open=True)
        check_positive_int(group["precondition_frequency"], "precondition_frequency")
        check_positive_int(group["max_precond_dim"], "max_precond_dim")
        check_range("eps", group["eps"], 0.0, lo_open=True)
        if group["grafting"] not in GRAFTINGS:
            raise ValueError(f"grafting must be one of {GRAFTINGS}, got {group['grafting']!r}")
        check_range("graft_beta2", group["graft_beta2"], 0.0, 1.0)
        check_range("graft_eps", group["graft_eps"], 0.0, lo_open=True)

    @staticmethod
    def _gradient(u, i: int) -> Tensor:
        """``params[i]``'s gradient in the matrix view its update has (see :class:`AsMatrix`)."""
        grad, view = u.params[i].grad, u.view(i)
        if view is None:
            return matrix_view(grad)
        X = view.matrices(grad)
        return X[0] if view.batch == 1 else X

    @staticmethod
    def _init(st: dict, G: Tensor, diag: tuple, batched: bool) -> None:
        B, m, n = G.shape
        for key, d, is_diag in (("L", m, diag[0]), ("R", n, diag[1])):
            shape = (B, d) if is_diag else (B, d, d)
            st[key] = G.new_zeros(shape if batched else shape[1:])
            st[f"{key}_exp"] = torch.full((B,) if batched else (), EMPTY, dtype=torch.int64, device=G.device)

    def __call__(self, u):
        g = u.group
        if u.updates and is_sharded(u.updates[0]):
            raise NotImplementedError("Shampoo needs full gradient statistics; it supports DDP, not FSDP2 sharded parameters")
        for i, (M, st) in enumerate(zip(u.updates, u.states)):
            if M.numel() == 0:
                continue  # a side of 0: nothing to precondition, nothing to step
            batched = M.ndim == 3
            dtype = working_dtype(M.dtype)
            G = self._gradient(u, i).to(dtype)
            G, M3 = (G, M.to(dtype)) if batched else (G.unsqueeze(0), M.to(dtype).unsqueeze(0))
            diag = (G.shape[1] > g["max_precond_dim"], G.shape[2] > g["max_precond_dim"])
            if "L" not in st:
                self._init(st, G, diag, batched)
            stats = {}
            for key, is_diag in zip(("L", "R"), diag):
                stat, exp = st[key], st[f"{key}_exp"]
                stat, exp = (stat, exp) if batched else (stat.unsqueeze(0), exp.unsqueeze(0))
                _accumulate(stat, exp, G, key, is_diag, g["stat_decay"])
                stats[key] = (stat, exp, is_diag)
            if "L_root" not in st or (int(st["step"]) - 1) % g["precondition_frequency"] == 0 or self._stale(st, batched):
                for key, (stat, exp, is_diag) in stats.items():
                    # (2^exp S)^(-1/4) = 2^(-exp/4) S^(-1/4); an empty statistic has a zero root
                    factor = torch.where(exp > EMPTY, torch.exp2(-exp.to(torch.float64) / 4), 0.0)
                    root = inverse_root(stat, 4, g["eps"], diagonal=is_diag)
                    root = root * factor.to(dtype).view((-1,) + (1,) * (root.ndim - 1))
                    st[f"{key}_root"] = root if batched else root[0]
            Lr, Rr = (st["L_root"], st["R_root"]) if batched else (st["L_root"].unsqueeze(0), st["R_root"].unsqueeze(0))
            P = (Lr.unsqueeze(2) * M3) if diag[0] else Lr @ M3
            P = (P * Rr.unsqueeze(1)) if diag[1] else P @ Rr
            P = P * self._graft_ratio(M3, P, st, g, batched)[:, None, None]
            u.updates[i] = (P if batched else P[0]).to(M.dtype)

    @staticmethod
    def _stale(st: dict, batched: bool) -> bool:
        """Whether a matrix's root came from an empty statistic (a first gradient of zero, an
        expert that got no tokens) that is no longer empty: it is recomputed at once instead of
        holding the matrix still until the next ``precondition_frequency`` step."""
        root, exp = st["L_root"], st["L_exp"]
        root, exp = (root, exp) if batched else (root.unsqueeze(0), exp.unsqueeze(0))
        empty = root.reshape(root.shape[0], -1).abs().amax(1) == 0
        return bool((empty & (exp > EMPTY)).any())

    @staticmethod
    def _graft_ratio(M: Tensor, P: Tensor, st: dict, g: dict, batched: bool) -> Tensor:
        """Per matrix: the graft's Frobenius norm over ``||P||_F`` (``(B,)``)."""
        if g["grafting"] == "none":
            return torch.ones(P.shape[0], dtype=P.dtype, device=P.device)
        if g["grafting"] == "sgd":
            target = frobenius(M)
        else:
            beta2 = g["graft_beta2"]
            rms = st.get("graft_rms")
            if rms is None:
                rms = st["graft_rms"] = torch.zeros(M.shape if batched else M.shape[1:], dtype=M.dtype, device=M.device)
            r = rms if batched else rms.unsqueeze(0)
            torch.hypot(r * math.sqrt(beta2), M * math.sqrt(1 - beta2), out=r)
            target = frobenius(M / (r / math.sqrt(1 - beta2 ** float(st["step"])) + g["graft_eps"]))
        return target / frobenius(P).clamp_min(torch.finfo(P.dtype).tiny)


class Shampoo(ChainOptimizer):
    """Shampoo (Gupta, Koren & Singer, 2018) for matrices, AdamW for the rest.

    ``W <- (1 - lr wd) W - lr * graft(L^{-1/4} M R^{-1/4})`` where ``M`` is the EMA momentum
    of the gradient, ``L, R`` accumulate ``G G^T`` and ``G^T G`` (summed, or an EMA with
    ``stat_decay``), and inverse 4th roots come from float64 eigendecompositions with a
    relative floor ``eps * lambda_max``. Each matrix of a parameter's matrix view
    (:mod:`specgrad.views`; the group's ``matrix_views`` from
    :func:`~specgrad.optim.split_params`) has its own ``(L, R)``: conv weights as
    ``(out, in*kh*kw)``, a ``Conv1D`` weight as ``(out, in)``, an expert stack
    ``(E, out, in)`` as ``E`` matrices, a fused q/k/v as three. Zero, tiny and huge (finite)
    gradients and half-precision weights give finite steps (see :class:`ShampooPrecondition`).

    Args:
        lr: learning rate (default 1e-3; with Adam grafting, Adam-like values work).
        momentum: EMA coefficient of ``M`` (default 0.9).
        stat_decay: ``None`` sums the statistics (original Shampoo); a float in ``(0, 1)``
            keeps an EMA instead (default ``None``).
        precondition_frequency: recompute the roots every this many steps (default 10).
        max_precond_dim: sides longer than this use a diagonal statistic (default 1024).
        eps: relative floor of the eigenvalues (default 1e-6).
        grafting: ``"adam"`` (default), ``"sgd"`` or ``"none"``.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = Shampoo(model.parameters(), lr=1e-2)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()
        >>> opt.state[model.weight]["L"].shape, opt.state[model.weight]["R"].shape
        (torch.Size([3, 3]), torch.Size([4, 4]))
    """

    rule = "shampoo"

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.9,
        nesterov: bool = False,
        stat_decay: Optional[float] = None,
        precondition_frequency: int = 10,
        max_precond_dim: int = 1024,
        eps: float = 1e-6,
        grafting: str = "adam",
        graft_beta2: float = 0.999,
        graft_eps: float = 1e-8,
        weight_decay: float = 0.0,
        adamw: Optional[dict] = None,
        nonfinite: str = "raise",
    ):
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, stat_decay=stat_decay,
            precondition_frequency=precondition_frequency, max_precond_dim=max_precond_dim,
            eps=eps, grafting=grafting, graft_beta2=graft_beta2, graft_eps=graft_eps,
            weight_decay=weight_decay,
        )  # fmt: skip
        super().__init__(params, defaults, adamw=adamw, nonfinite=nonfinite)

    def chain(self):
        return [Momentum(), AsMatrix(), ShampooPrecondition(), DecoupledWeightDecay(), ApplyLR()]
