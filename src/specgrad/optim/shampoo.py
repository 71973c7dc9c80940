"""Shampoo: Kronecker-factored preconditioning with grafted step sizes."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..linalg import check_positive_int, check_range
from .chain import ChainOptimizer
from .distributed import is_sharded
from .transforms import ApplyLR, AsMatrix, DecoupledWeightDecay, Momentum, Transform

GRAFTINGS = ("adam", "sgd", "none")


def inverse_root(stat: Tensor, root: int, eps: float) -> Tensor:
    """``(S + eps * lambda_max I)^(-1/root)`` of a symmetric PSD ``(d, d)`` matrix, by a
    float64 eigendecomposition; a 1-D ``stat`` is a diagonal and is rooted entrywise."""
    S = stat.to(torch.float64)
    if S.ndim == 1:
        floor = eps * S.max().clamp_min(torch.finfo(S.dtype).tiny)
        return (S + floor).pow(-1.0 / root).to(stat.dtype)
    lam, Q = torch.linalg.eigh(S)
    lam = lam.clamp_min(0)
    floor = eps * lam[-1].clamp_min(torch.finfo(S.dtype).tiny)
    return ((Q * (lam + floor).pow(-1.0 / root)) @ Q.mT).to(stat.dtype)


class ShampooPrecondition(Transform):
    """``P = L^{-1/4} M R^{-1/4}`` with ``L = sum G G^T`` and ``R = sum G^T G`` (or their EMA
    with ``stat_decay``), roots recomputed every ``precondition_frequency`` steps. A side
    longer than ``max_precond_dim`` keeps only the diagonal of its statistic. With
    ``grafting`` ``"adam"``/``"sgd"`` the step takes Shampoo's direction and the Frobenius
    norm of the Adam / SGD update of the same ``M`` (Agarwal et al., "Disentangling
    adaptive gradient methods from learning rates", 2020).

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

    def _sides(self, G: Tensor, group: dict):
        return [d > group["max_precond_dim"] for d in G.shape]

    def __call__(self, u):
        g = u.group
        decay = g["stat_decay"]
        if u.updates and is_sharded(u.updates[0]):
            raise NotImplementedError("Shampoo needs full gradient statistics; it supports DDP, not FSDP2 sharded parameters")
        for i, (M, st) in enumerate(zip(u.updates, u.states)):
            G = u.params[i].grad.reshape(M.shape)
            diag_l, diag_r = self._sides(G, g)
            if "L" not in st:
                st["L"] = G.new_zeros(G.shape[0]) if diag_l else G.new_zeros(G.shape[0], G.shape[0])
                st["R"] = G.new_zeros(G.shape[1]) if diag_r else G.new_zeros(G.shape[1], G.shape[1])
            lstat = G.square().sum(1) if diag_l else G @ G.mT
            rstat = G.square().sum(0) if diag_r else G.mT @ G
            for key, new in (("L", lstat), ("R", rstat)):
                if decay is None:
                    st[key].add_(new)
                else:
                    st[key].lerp_(new, 1 - decay)
            step = int(st["step"])
            if "L_root" not in st or (step - 1) % g["precondition_frequency"] == 0:
                st["L_root"] = inverse_root(st["L"], 4, g["eps"])
                st["R_root"] = inverse_root(st["R"], 4, g["eps"])
            Lr, Rr = st["L_root"], st["R_root"]
            P = (Lr.unsqueeze(1) * M) if Lr.ndim == 1 else Lr @ M
            P = (P * Rr) if Rr.ndim == 1 else P @ Rr
            u.updates[i] = P * self._graft_ratio(M, P, st, g)

    @staticmethod
    def _graft_ratio(M: Tensor, P: Tensor, st: dict, g: dict) -> Tensor:
        if g["grafting"] == "none":
            return torch.ones((), dtype=P.dtype, device=P.device)
        if g["grafting"] == "sgd":
            target = M.norm()
        else:
            beta2 = g["graft_beta2"]
            v = st.setdefault("graft_exp_avg_sq", torch.zeros_like(M))
            v.mul_(beta2).addcmul_(M, M, value=1 - beta2)
            v_hat = v / (1 - beta2 ** float(st["step"]))
            target = (M / (v_hat.sqrt() + g["graft_eps"])).norm()
        return target / P.norm().clamp_min(torch.finfo(P.dtype).tiny)


class Shampoo(ChainOptimizer):
    """Shampoo (Gupta, Koren & Singer, 2018) for matrices, AdamW for the rest.

    ``W <- (1 - lr wd) W - lr * graft(L^{-1/4} M R^{-1/4})`` where ``M`` is the EMA momentum
    of the gradient, ``L, R`` accumulate ``G G^T`` and ``G^T G`` (summed, or an EMA with
    ``stat_decay``), and inverse 4th roots come from float64 eigendecompositions with a
    relative floor ``eps * lambda_max``. Conv weights are preconditioned as
    ``(out, in*kh*kw)``.

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
    uses_views = False  # preconditions / decides on (out, in * ...) as before

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
