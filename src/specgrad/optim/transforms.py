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

from ..linalg import as_schedule, matrix_view, polar_express_schedule, polar_svd, quintic_iteration
from ..linalg.spectral import spectral_map


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

    def __call__(self, u):
        mu = u.group["momentum"]
        if mu == 0:
            return
        nesterov = u.group.get("nesterov", False)
        for i, (g, st) in enumerate(zip(u.updates, u.states)):
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            buf.lerp_(g, 1 - mu)
            u.updates[i] = g.lerp(buf, mu) if nesterov else buf


class AsMatrix(Transform):
    """View every update as a matrix: conv ``(out, in, kh, kw)`` becomes ``(out, in*kh*kw)``."""

    def __call__(self, u):
        u.updates = [matrix_view(g) for g in u.updates]


class Orthogonalize(Transform):
    """Replace each matrix update by its (approximate) polar factor, batching same shapes.

    Reads ``orthogonalizer`` (``"newton_schulz"``, ``"polar_express"``, ``"svd"``),
    ``ns_steps``, ``ns_coefficients`` and ``ns_dtype`` (precision of the iteration; ``None``
    keeps the update's). Tall matrices are transposed so they batch with the wide ones of
    the same shape. With ``record_nuclear=True`` it also stores ``||G||_* = <G, polar(G)>``
    in ``state["nuclear_norm"]`` (free once the polar factor exists).
    """

    def __init__(self, record_nuclear: bool = False):
        self.record_nuclear = record_nuclear

    def __call__(self, u):
        g = u.group
        method = g["orthogonalizer"]
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, x in enumerate(u.updates):
            m, n = x.shape
            by_shape[(min(m, n), max(m, n), x.dtype, x.device)].append(i)
        out = list(u.updates)
        for idx in by_shape.values():
            wide = [u.updates[i] if u.updates[i].shape[0] <= u.updates[i].shape[1] else u.updates[i].mT for i in idx]
            G = wide[0].unsqueeze(0) if len(wide) == 1 else torch.stack(wide)
            if method == "svd":
                O = polar_svd(G)
            else:
                sched = (
                    polar_express_schedule(g["ns_steps"])
                    if method == "polar_express"
                    else as_schedule(g["ns_coefficients"])
                )
                O = quintic_iteration(G, sched, g["ns_steps"], dtype=g.get("ns_dtype"))
            for k, i in enumerate(idx):
                o = O[k] if u.updates[i].shape[0] <= u.updates[i].shape[1] else O[k].mT
                if self.record_nuclear:
                    u.states[i]["nuclear_norm"] = (u.updates[i] * o).sum().float()
                out[i] = o
        u.updates = out


class SpectralFunction(Transform):
    """Replace each matrix update ``G = U S V^T`` by ``U f(S) V^T`` with ``f = fn()``."""

    def __init__(self, fn: Callable[[], Callable[[Tensor], Tensor]]):
        self.fn = fn

    def __call__(self, u):
        f = self.fn()
        u.updates = [spectral_map(x, f) for x in u.updates]


class NuclearStep(Transform):
    """Scale each step by ``||G||_*`` when ``group["step_size"] == "nuclear"`` (the steepest
    descent step under the spectral norm). Must run before :class:`Orthogonalize` so it sees
    ``G``; it records the norm and multiplies the lr scale."""

    def __call__(self, u):
        if u.group["step_size"] != "nuclear":
            return
        for i, x in enumerate(u.updates):
            u.scales[i] *= float(torch.linalg.matrix_norm(x.double(), ord="nuc"))


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
        for i, (g, st) in enumerate(zip(u.updates, u.states)):
            t = float(st["step"])
            st["exp_avg"].lerp_(g, 1 - beta1)
            st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (st["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(eps)
            u.updates[i] = st["exp_avg"] / denom
            u.scales[i] /= 1 - beta1**t


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
        for p, x, s in zip(u.params, u.updates, u.scales):
            p.add_(x if x.shape == p.shape else x.reshape(p.shape), alpha=-lr * s)


def adamw_chain() -> list[Transform]:
    return [Adam(), DecoupledWeightDecay(), ApplyLR()]
