"""The small steps a matrix update travels through, one class each.

Every optimizer of :mod:`specgrad.optim` runs the same chain

    grad -> momentum -> matrix view -> spectral map -> shape scaling -> weight decay -> lr

with some links swapped. A transform works on a whole parameter group at once (so the
spectral map can batch same-shape matrices), reads its hyperparameters from the group at
call time (so LR schedulers and ``param_groups`` edits take effect), and keeps its state in
the optimizer's per-parameter ``state`` dicts (so ``state_dict`` sees everything).

Each transform owns its hyperparameters, as an optax transformation does its arguments: it
declares the group keys it reads in ``defaults`` and checks their values in ``validate``.
:class:`~specgrad.optim.ChainOptimizer` fills and checks a param group by asking the links
of the group's chain, so a preset only lists its chain and its constructor's defaults.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

import torch.distributed as dist

from ..linalg import (METHODS, NORMS, Workspace, as_schedule, check_positive_int, check_range, matrix_view,
                      orthogonalize_many, spectral_map)
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
    views: list = field(default_factory=list)  # each param's MatrixView, or None: (out, in * ...)

    def __post_init__(self):
        if not self.scales:
            self.scales = [1.0] * len(self.params)

    def subset(self, idx: list[int]) -> "Updates":
        """The updates of ``params[i]`` for ``i`` in ``idx``, as a new group-wide update (the
        lists are new; the tensors and state dicts are shared)."""
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return Updates(self.group, pick(self.params), pick(self.states), pick(self.updates), pick(self.scales),
                       distributed=self.distributed, views=pick(self.views) if self.views else [])  # fmt: skip

    def view(self, i: int):
        """``params[i]``'s :class:`~specgrad.views.MatrixView` when it is not the plain
        ``(out, in * ...)`` reading, else ``None``."""
        v = self.views[i] if self.views else None
        return None if v is None or v.is_plain or is_sharded(self.params[i]) else v


class Transform:
    """One link of the chain.

    ``defaults`` maps the group keys the link reads to the value a group that lacks one
    gets; ``validate(group)`` raises ``ValueError`` naming a key whose value it cannot use;
    ``init`` fills per-parameter state; ``__call__`` edits the updates.
    """

    defaults: dict[str, Any] = {}

    def validate(self, group: dict) -> None:
        pass

    def init(self, p: Tensor, state: dict, group: dict) -> None:
        pass

    def __call__(self, u: Updates) -> None:
        raise NotImplementedError


class Momentum(Transform):
    """EMA momentum ``buf <- mu buf + (1 - mu) g``; the update is ``buf``, or with Nesterov
    ``(1 - mu) g + mu buf``. ``momentum=0`` is a no-op.

    Reads ``momentum`` (in ``[0, 1)``, default 0) and ``nesterov`` (bool, default False).
    This is the form of ``torch.optim.Muon``; a spectral map is scale invariant, so it
    matches the heavy-ball form ``buf <- mu buf + g`` up to the constant ``1/(1 - mu)``.
    """

    defaults = {"momentum": 0.0, "nesterov": False}

    def __init__(self):
        # the Nesterov outputs, kept from step to step on CPU: there a fresh tensor is fresh
        # memory the operating system must map in on every step (see specgrad.linalg.Workspace)
        self._nesterov = WeakIdKeyDictionary()

    def validate(self, group):
        check_range("momentum", group["momentum"], 0.0, 1.0)
        if not isinstance(group["nesterov"], bool):
            raise ValueError(f"nesterov must be True or False, got {group['nesterov']!r}")

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
    """View every update as its matrix view (:mod:`specgrad.views`): conv ``(out, in, kh, kw)``
    becomes ``(out, in*kh*kw)``, a ``Conv1D`` weight its transpose, and a view of several
    matrices (fused q/k/v, an expert stack) a batch ``(B, m, n)``."""

    def __call__(self, u):
        out = []
        for i, g in enumerate(u.updates):
            view = u.view(i)
            if view is None:
                out.append(matrix_view(g))
            else:
                X = view.matrices(g)
                out.append(X[0] if view.batch == 1 else X)
        u.updates = out


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
        batches = [x.shape[0] if x.ndim == 3 else 0 for x in u.updates]
        mats = [m for x in u.updates for m in (x.unbind() if x.ndim == 3 else (x,))]  # each matrix on its own
        if mats and is_sharded(mats[0]):
            out = self._sharded(u)
        elif u.distributed and mats:
            owners = self._owners(mats, u.group)
            out = exchange_replicated(mats, owners, lambda idx: dict(zip(idx, self.compute([mats[i] for i in idx], u.group))))
        else:
            out = self.compute(mats, u.group)
        it = iter(out)
        u.before_map = u.updates
        u.updates = [torch.stack([next(it) for _ in range(b)]) if b else next(it) for b in batches]

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


NS_DTYPES = (None, torch.float32, torch.float64, torch.bfloat16, torch.float16)


class Orthogonalize(SpectralMap):
    """Replace each matrix update by its (approximate) polar factor, batching same shapes.

    Reads ``orthogonalizer`` (``"newton_schulz"`` (default), ``"polar_express"``,
    ``"svd"``), ``ns_steps`` (default 5), ``ns_coefficients`` (default ``"jordan"``),
    ``ns_dtype`` (precision of the iteration; default ``None`` keeps the update's),
    ``ns_norm`` (default ``"frobenius"``) and ``ns_gram`` (default False); see
    :func:`~specgrad.linalg.quintic_iteration`.
    """

    defaults = {"orthogonalizer": "newton_schulz", "ns_steps": 5, "ns_coefficients": "jordan", "ns_dtype": None,
                "ns_norm": "frobenius", "ns_gram": False}  # fmt: skip

    def __init__(self):
        self.workspace = Workspace()  # the batches' buffers, reused from step to step

    def validate(self, group):
        method, dtype, gram = group["orthogonalizer"], group["ns_dtype"], group["ns_gram"]
        if method not in METHODS:
            raise ValueError(f"orthogonalizer must be one of {METHODS}, got {method!r}")
        check_positive_int(group["ns_steps"], "ns_steps")
        try:
            as_schedule(group["ns_coefficients"])
        except ValueError as e:
            raise ValueError(f"ns_coefficients: {e}") from None
        if dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be None or a floating dtype, got {dtype!r}")
        if group["ns_norm"] not in NORMS:
            raise ValueError(f"ns_norm must be one of {NORMS}, got {group['ns_norm']!r}")
        if not (isinstance(gram, bool) or gram == "auto"):
            raise ValueError(f"ns_gram must be True, False or 'auto', got {gram!r}")
        if gram and method == "polar_express" and dtype in (torch.bfloat16, torch.float16):
            warnings.warn("ns_gram with orthogonalizer='polar_express' (safety 1.01) can diverge in half precision; "
                          "pass ns_coefficients=polar_express_schedule(steps, safety=1.03) as specgrad.optim.FAST does",
                          RuntimeWarning, stacklevel=2)  # fmt: skip

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


STEP_SIZES = ("fixed", "nuclear")


class NuclearStep(Transform):
    """Scale each step by ``||G||_* = <G, polar(G)>`` when ``step_size`` is ``"nuclear"``
    (the steepest descent step under the spectral norm; exact for the SVD polar factor);
    ``"fixed"`` (default) leaves it. Runs after :class:`Orthogonalize`: the inner product is
    free once ``polar(G)`` exists, on sharded matrices too (a local sum, then one reduction)."""

    defaults = {"step_size": "fixed"}

    def validate(self, group):
        if group["step_size"] not in STEP_SIZES:
            raise ValueError(f"step_size must be one of {STEP_SIZES}, got {group['step_size']!r}")

    def __call__(self, u):
        if u.group["step_size"] != "nuclear":
            return
        for i, (g, o) in enumerate(zip(u.before_map, u.updates)):
            # summed in float32 (float64 from float32 on): ||G||_* of a half-precision G can
            # pass 65504 although every entry of G * polar(G) is at most about |G_ij|
            acc = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else torch.float64
            if o.ndim == 3:  # a batch of matrices (experts, q/k/v blocks): each its own ||G_b||_*
                u.updates[i] = (o * torch.sum(g * o, dim=(1, 2), keepdim=True, dtype=acc)).to(o.dtype)
            else:
                u.scales[i] *= _scalar(torch.sum(g * o, dtype=acc))


def shape_scale(preset: str, out_features: int, in_features: int) -> float:
    """Learning-rate multiplier of a ``(out, in)`` matrix for a named preset.

    * ``"original"``: ``sqrt(max(1, out/in))`` (Keller Jordan's Muon);
    * ``"match_rms_adamw"``: ``0.2 * sqrt(max(out, in))`` (Moonlight, Liu et al. 2025: makes
      the update RMS match AdamW's typical 0.2-0.4 so AdamW's lr and weight decay carry over);
    * ``"spectral"``: ``sqrt(out/in)`` (the spectral-norm scaling of Bernstein et al.);
    * ``"none"``: 1.

    An empty matrix (a side of 0) gets 1 under every preset.
    """
    if preset in SHAPE_SCALINGS and (out_features == 0 or in_features == 0):
        return 1.0
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
    """Multiply each matrix's lr by :func:`shape_scale` of ``shape_scaling`` (one of
    :data:`SHAPE_SCALINGS`; default ``"none"``)."""

    defaults = {"shape_scaling": "none"}

    def validate(self, group):
        if group["shape_scaling"] not in SHAPE_SCALINGS:
            raise ValueError(f"shape_scaling must be one of {SHAPE_SCALINGS}, got {group['shape_scaling']!r}")

    def __call__(self, u):
        preset = u.group["shape_scaling"]
        for i, x in enumerate(u.updates):
            u.scales[i] *= shape_scale(preset, x.shape[-2], x.shape[-1])


def _norms(xs: list[Tensor]) -> list[Tensor]:
    """Frobenius norms of ``xs`` in float64: the norm of a float16 matrix passes 65504, and
    the sum of squares of a float32 one 3e38, long before their entries do."""
    return torch._foreach_norm(xs, 2, dtype=torch.float64)


class MatchPolarNorm(Transform):
    """Rescale each matrix update ``M`` (``m x n``) to ``sqrt(min(m, n))``, the Frobenius norm
    of its polar factor: a Euclidean direction with the size of a spectral step. A batch of
    matrices ``(B, m, n)`` (experts, q/k/v blocks) is rescaled matrix by matrix. Zero stays
    zero."""

    def __call__(self, u):
        for i, (x, norm) in enumerate(zip(u.updates, _norms(u.updates))):
            if x.ndim == 3:
                fro = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True, dtype=torch.float64)
                factor = torch.where(fro > 0, math.sqrt(min(x.shape[1:])) / fro, 0.0)
                u.updates[i] = (x * factor).to(x.dtype)
                continue
            fro = _scalar(norm)
            u.scales[i] *= math.sqrt(min(x.shape)) / fro if fro > 0 else 0.0


class Scale(Transform):
    """Multiply each lr by the group's ``key`` (a positive number, default 1)."""

    def __init__(self, key: str):
        self.key = key
        self.defaults = {key: 1.0}

    def validate(self, group):
        check_range(self.key, group[self.key], 0.0, lo_open=True)

    def __call__(self, u):
        s = u.group[self.key]
        u.scales = [x * s for x in u.scales]


class FrobeniusNormalize(Transform):
    """``G / ||G||_F`` per parameter (normalized gradient descent); zero stays zero."""

    def __call__(self, u):
        norms = _norms(u.updates)
        u.updates = [(x.double() / n.clamp_min(torch.finfo(n.dtype).tiny)).to(x.dtype) for x, n in zip(u.updates, norms)]


class Sign(Transform):
    """``sign(G)`` elementwise (sign descent; with momentum, Signum)."""

    def __call__(self, u):
        u.updates = [x.sign() for x in u.updates]


class RawGradient(Transform):
    """Start over from each parameter's gradient (in the parameter's shape): for a rule
    that ignores what the links before it did, like Adam inside :class:`~specgrad.optim.Hybrid`."""

    def __call__(self, u):
        u.updates = [p.grad for p in u.params]


class Adam(Transform):
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` with bias correction. Reads
    ``betas`` (a pair in ``[0, 1)``, default ``(0.9, 0.999)``) and ``eps`` (positive,
    default 1e-8); keeps ``exp_avg`` and ``exp_avg_sq``, shaped like the parameter."""

    defaults = {"betas": (0.9, 0.999), "eps": 1e-8}

    def validate(self, group):
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        check_range("betas[0]", betas[0], 0.0, 1.0)
        check_range("betas[1]", betas[1], 0.0, 1.0)
        check_range("eps", group["eps"], 0.0, lo_open=True)

    def init(self, p, state, group):
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def __call__(self, u):
        beta1, beta2 = u.group["betas"]
        eps = u.group["eps"]
        # a complex tensor as its real view (..., 2): its real and imaginary parts are two
        # real parameters, as torch.optim.AdamW treats them
        real = lambda xs: [torch.view_as_real(x) if x.is_complex() else x for x in xs]  # noqa: E731
        updates = real(u.updates)
        exp_avg = real([st["exp_avg"] for st in u.states])
        exp_avg_sq = real([st["exp_avg_sq"] for st in u.states])
        t = [float(st["step"]) for st in u.states]
        torch._foreach_lerp_(exp_avg, updates, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, updates, updates, value=1 - beta2)
        # a finite gradient whose square overflows (1e30 in float32) would leave inf in
        # exp_avg_sq for good, and every later update 0: keep it at the largest finite value
        torch._foreach_clamp_max_(exp_avg_sq, [torch.finfo(v.dtype).max for v in exp_avg_sq])
        # sqrt(v) / sqrt(1 - beta2^t), in torch.optim.AdamW's order: v / (1 - beta2^t) may overflow
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2**ti) for ti in t])
        torch._foreach_add_(denom, eps)
        half = [d for d in denom if d.dtype == torch.float16]
        if half:  # eps = 1e-8 rounds to 0 in float16: 0 / 0 where v and m underflowed
            torch._foreach_clamp_min_(half, torch.finfo(torch.float16).tiny)
        out = torch._foreach_div(exp_avg, denom)
        u.updates = [torch.view_as_complex(x) if g.is_complex() else x for x, g in zip(out, u.updates)]
        u.scales = [s / (1 - beta1**ti) for s, ti in zip(u.scales, t)]


class DecoupledWeightDecay(Transform):
    """``p <- (1 - lr * weight_decay) p`` with the group's unscaled ``lr`` (the AdamW and
    ``torch.optim.Muon`` convention). Applied to the parameters, not the update. Reads
    ``weight_decay`` (at least 0, default 0) and ``cautious_weight_decay`` (bool, default
    False).

    Cautious weight decay (Chen et al. 2025, "Cautious Weight Decay"; modded-nanogpt #154,
    microsoft/dion #14) decays only the coordinates that the update already moves toward
    zero: with the step ``p <- p - lr * (s * u + weight_decay * mask * p)``,
    ``mask = 1[u * p > 0]``, where ``u`` is the final update and ``s > 0`` its lr scale. It
    runs before :class:`ApplyLR`, so the mask reads the parameter the update is taken at.
    """

    defaults = {"weight_decay": 0.0, "cautious_weight_decay": False}

    def validate(self, group):
        check_range("weight_decay", group["weight_decay"], 0.0)
        if not isinstance(group["cautious_weight_decay"], bool):
            raise ValueError(f"cautious_weight_decay must be True or False, got {group['cautious_weight_decay']!r}")

    def __call__(self, u):
        wd = u.group["weight_decay"]
        if wd == 0:
            return
        if not u.group.get("cautious_weight_decay", False):
            torch._foreach_mul_(u.params, 1 - u.group["lr"] * wd)
            return
        for i, p in enumerate(u.params):
            x = self.in_param_shape(u, i)
            p.addcmul_(p, (x * p > 0).to(p.dtype), value=-u.group["lr"] * wd)

    @staticmethod
    def in_param_shape(u: Updates, i: int) -> Tensor:
        """``u.updates[i]`` in the shape of ``u.params[i]`` (undoing the matrix view)."""
        x, view = u.updates[i], u.view(i)
        if view is not None:
            return view.restore(x if x.ndim == 3 else x.unsqueeze(0))
        return x if x.shape == u.params[i].shape else x.reshape(u.params[i].shape)


class ApplyLR(Transform):
    """``p <- p - lr * scale_i * update_i``; the last link. Reads ``lr`` (at least 0), which
    has no default: every optimizer sets its own."""

    def validate(self, group):
        check_range("lr", group.get("lr"), 0.0)

    def __call__(self, u):
        lr = u.group["lr"]
        by_scale: dict[float, tuple[list, list]] = defaultdict(lambda: ([], []))
        for i, (p, x, s) in enumerate(zip(u.params, u.updates, u.scales)):
            params, updates = by_scale[s]  # one foreach call per distinct scale
            params.append(p)
            view = u.view(i)
            if view is not None:
                x = view.restore(x if x.ndim == 3 else x.unsqueeze(0))
            updates.append(x if x.shape == p.shape else x.reshape(p.shape))
        for s, (params, updates) in by_scale.items():
            torch._foreach_add_(params, updates, alpha=-lr * s)


def adamw_chain() -> list[Transform]:
    return [Adam(), DecoupledWeightDecay(), ApplyLR()]
