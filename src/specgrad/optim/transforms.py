"""The small steps a matrix update travels through, one class each.

Every optimizer of :mod:`specgrad.optim` runs the same chain

    grad -> momentum -> matrix view -> spectral map -> shape scaling -> weight decay -> lr

with some links swapped. A transform works on a whole parameter group at once (so the
spectral map can batch same-shape matrices), reads its hyperparameters from the group at
call time (so LR schedulers and ``param_groups`` edits take effect), and keeps its state in
the optimizer's per-parameter ``state`` dicts (so ``state_dict`` sees everything).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

import torch.distributed as dist

from ..linalg import Workspace, matrix_view, orthogonalize_many
from ..linalg.spectral import spectral_map
from .distributed import DTensor, assign_owners, exchange_replicated, exchange_sharded, is_sharded, orth_cost


@dataclass
class Updates:
    """The running update of one parameter group.

    ``updates[i]`` is the current update of ``params[i]`` (shape of the param until
    :class:`AsMatrix`, then its matrix view); ``scales[i]`` multiplies the group's ``lr``
    for that parameter when the update is applied.
    """

    group: dict
    params: list[Tensor]
    states: list[dict]
    updates: list[Tensor]
    scales: list[float] = field(default_factory=list)
    distributed: bool = False  # split spectral work across ranks (replicated parameters)
    before_map: list[Tensor] = field(default_factory=list)  # the updates a spectral map replaced

    def __post_init__(self):
        if not self.scales:
            self.scales = [1.0] * len(self.params)


class Transform:
    """One link of the chain: ``init`` fills per-parameter state, ``__call__`` edits updates."""

    def init(self, p: Tensor, state: dict, group: dict) -> None:
        pass

    def __call__(self, u: Updates) -> None:
        raise NotImplementedError


class Momentum(Transform):
    """EMA momentum ``buf <- mu buf + (1 - mu) g``; the update is ``buf``, or with Nesterov
    ``(1 - mu) g + mu buf``. Reads ``momentum`` and ``nesterov``; ``momentum=0`` is a no-op.

    This is the form of ``torch.optim.Muon``; a spectral map is scale invariant, so it
    matches the heavy-ball form ``buf <- mu buf + g`` up to the constant ``1/(1 - mu)``.
    """

    def __init__(self):
        # Nesterov outputs on CPU, reused from step to step: fresh ones are page-faulted in on
        # every step there (see specgrad.linalg.Workspace)
        self._nesterov = WeakIdKeyDictionary()

    def __call__(self, u):
        mu = u.group["momentum"]
        if mu == 0:
            return
        bufs = []
        for g, st in zip(u.updates, u.states):
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            bufs.append(buf)
        # one foreach call per stage instead of one launch per parameter
        torch._foreach_lerp_(bufs, u.updates, 1 - mu)
        if not u.group.get("nesterov", False):
            u.updates = bufs
            return
        if u.updates[0].device.type != "cpu":  # the caching allocator makes fresh outputs free
            u.updates = torch._foreach_lerp(u.updates, bufs, mu)
            return
        for i, (p, g, buf) in enumerate(zip(u.params, u.updates, bufs)):
            out = self._nesterov.get(p)
            if out is None or out.shape != g.shape or out.dtype != g.dtype or out.device != g.device:
                out = self._nesterov[p] = torch.empty_like(g)
            u.updates[i] = torch.lerp(g, buf, mu, out=out)


class AsMatrix(Transform):
    """View every update as a matrix: conv ``(out, in, kh, kw)`` becomes ``(out, in*kh*kw)``."""

    def __call__(self, u):
        u.updates = [matrix_view(g) for g in u.updates]


def _scalar(t: Tensor) -> float:
    """A 0-d tensor's value; a DTensor partial sum is reduced across ranks first."""
    return float(t.full_tensor() if is_sharded(t) else t)


class SpectralMap(Transform):
    """Base of the links that replace each matrix update by a spectral map of it.

    ``compute(mats, group)`` maps a list of full matrices; this class decides where: here,
    or, under ``torch.distributed``, on one owner rank per matrix
    (:mod:`specgrad.optim.distributed`): sharded DTensor updates always, replicated ones
    when the optimizer was built with ``distribute=True``. The replaced updates stay in
    ``u.before_map``.
    """

    def compute(self, mats: list[Tensor], group: dict) -> list[Tensor]:
        raise NotImplementedError

    def cost(self, m: int, n: int, group: dict) -> float:
        return orth_cost("svd", m, n, 1)

    def __call__(self, u):
        if u.updates and is_sharded(u.updates[0]):
            out = self._sharded(u)
        elif u.distributed and u.updates:
            owners = self._owners(u.updates, u.group)
            out = exchange_replicated(
                u.updates, owners, lambda idx: dict(zip(idx, self.compute([u.updates[i] for i in idx], u.group)))
            )
        else:
            out = self.compute(u.updates, u.group)
        u.before_map = u.updates
        u.updates = out

    def _owners(self, mats: list[Tensor], group: dict) -> list[int]:
        return assign_owners([self.cost(*x.shape, group) for x in mats], dist.get_world_size())

    def _sharded(self, u) -> list[Tensor]:
        shapes = [tuple(x.shape) for x in u.updates]
        owners = self._owners(u.updates, u.group)

        def compute(full: dict[int, Tensor]) -> dict[int, Tensor]:
            keys = sorted(full)
            return dict(zip(keys, self.compute([full[i] for i in keys], u.group)))

        group = u.updates[0].device_mesh.get_group()
        local = exchange_sharded([x.to_local() for x in u.updates], shapes, owners, compute, group)
        return [DTensor.from_local(b, x.device_mesh, x.placements, shape=x.shape, stride=x.stride())
                for b, x in zip(local, u.updates)]  # fmt: skip


class Orthogonalize(SpectralMap):
    """Replace each matrix update by its (approximate) polar factor, batching same shapes.

    Reads ``orthogonalizer`` (``"newton_schulz"``, ``"polar_express"``, ``"svd"``),
    ``ns_steps``, ``ns_coefficients``, ``ns_dtype`` (precision of the iteration; ``None``
    keeps the update's) and, when present, ``ns_norm`` and ``ns_gram`` (see
    :func:`~specgrad.linalg.quintic_iteration`).
    """

    def __init__(self):
        self.workspace = Workspace()  # the batches' buffers, reused from step to step

    def compute(self, mats, group):
        return orthogonalize_many(mats, group["orthogonalizer"], group["ns_steps"], coefficients=group["ns_coefficients"],
                                  dtype=group.get("ns_dtype"), norm=group.get("ns_norm", "frobenius"),
                                  gram=group.get("ns_gram", False), workspace=self.workspace)  # fmt: skip

    def cost(self, m, n, group):
        return orth_cost(group["orthogonalizer"], m, n, group["ns_steps"])


class SpectralFunction(SpectralMap):
    """Replace each matrix update ``G = U S V^T`` by ``U f(S) V^T`` with ``f = fn()``."""

    def __init__(self, fn: Callable[[], Callable[[Tensor], Tensor]]):
        self.fn = fn

    def compute(self, mats, group):
        f = self.fn()
        return [spectral_map(x, f) for x in mats]


class NuclearStep(Transform):
    """Scale each step by ``||G||_* = <G, polar(G)>`` when ``group["step_size"] ==
    "nuclear"`` (the steepest descent step under the spectral norm; exact for the SVD polar
    factor). Runs after :class:`Orthogonalize`: the inner product is free once ``polar(G)``
    exists, on sharded matrices too (a local sum, then one reduction)."""

    def __call__(self, u):
        if u.group["step_size"] != "nuclear":
            return
        for i, (g, o) in enumerate(zip(u.before_map, u.updates)):
            u.scales[i] *= _scalar((g * o).sum())


def shape_scale(preset: str, out_features: int, in_features: int) -> float:
    """Learning-rate multiplier of a ``(out, in)`` matrix for a named preset.

    * ``"original"``: ``sqrt(max(1, out/in))`` (Keller Jordan's Muon);
    * ``"match_rms_adamw"``: ``0.2 * sqrt(max(out, in))`` (Moonlight, Liu et al. 2025: makes
      the update RMS match AdamW's typical 0.2-0.4 so AdamW's lr and weight decay carry over);
    * ``"spectral"``: ``sqrt(out/in)`` (the spectral-norm scaling of Bernstein et al.);
    * ``"none"``: 1.
    """
    if preset == "original":
        return math.sqrt(max(1.0, out_features / in_features))
    if preset == "match_rms_adamw":
        return 0.2 * math.sqrt(max(out_features, in_features))
    if preset == "spectral":
        return math.sqrt(out_features / in_features)
    if preset == "none":
        return 1.0
    raise ValueError(f"unknown shape scaling {preset!r}; choose one of {SHAPE_SCALINGS}")


SHAPE_SCALINGS = ("original", "match_rms_adamw", "spectral", "none")


class ShapeScale(Transform):
    """Multiply each matrix's lr by :func:`shape_scale` of group ``shape_scaling``."""

    def __call__(self, u):
        preset = u.group["shape_scaling"]
        for i, x in enumerate(u.updates):
            u.scales[i] *= shape_scale(preset, x.shape[0], x.shape[1])


class FrobeniusNormalize(Transform):
    """``G / ||G||_F`` per parameter (normalized gradient descent); zero stays zero."""

    def __call__(self, u):
        norms = torch._foreach_norm(u.updates)
        u.updates = [x / n.clamp_min(torch.finfo(x.dtype).tiny) for x, n in zip(u.updates, norms)]


class Sign(Transform):
    """``sign(G)`` elementwise (sign descent; with momentum, Signum)."""

    def __call__(self, u):
        u.updates = [x.sign() for x in u.updates]


class Adam(Transform):
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` with bias correction. Reads
    ``betas`` and ``eps``; keeps ``exp_avg``, ``exp_avg_sq`` and ``step``."""

    def init(self, p, state, group):
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def __call__(self, u):
        beta1, beta2 = u.group["betas"]
        eps = u.group["eps"]
        exp_avg = [st["exp_avg"] for st in u.states]
        exp_avg_sq = [st["exp_avg_sq"] for st in u.states]
        t = [float(st["step"]) for st in u.states]
        torch._foreach_lerp_(exp_avg, u.updates, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, u.updates, u.updates, value=1 - beta2)
        denom = torch._foreach_div(exp_avg_sq, [1 - beta2**ti for ti in t])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        u.updates = torch._foreach_div(exp_avg, denom)
        u.scales = [s / (1 - beta1**ti) for s, ti in zip(u.scales, t)]


class DecoupledWeightDecay(Transform):
    """``p <- (1 - lr * weight_decay) p`` with the group's unscaled ``lr`` (the AdamW and
    ``torch.optim.Muon`` convention). Applied to the parameters, not the update."""

    def __call__(self, u):
        wd = u.group["weight_decay"]
        if wd != 0:
            torch._foreach_mul_(u.params, 1 - u.group["lr"] * wd)


class ApplyLR(Transform):
    """``p <- p - lr * scale_i * update_i``; the last link."""

    def __call__(self, u):
        lr = u.group["lr"]
        by_scale: dict[float, tuple[list, list]] = defaultdict(lambda: ([], []))
        for p, x, s in zip(u.params, u.updates, u.scales):
            params, updates = by_scale[s]  # one foreach call per distinct scale
            params.append(p)
            updates.append(x if x.shape == p.shape else x.reshape(p.shape))
        for s, (params, updates) in by_scale.items():
            torch._foreach_add_(params, updates, alpha=-lr * s)


def adamw_chain() -> list[Transform]:
    return [Adam(), DecoupledWeightDecay(), ApplyLR()]
