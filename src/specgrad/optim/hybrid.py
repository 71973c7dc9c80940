"""``Hybrid``: per block, the spectral step where the layerwise test says so, Euclidean elsewhere.

Every optimizer library hard-codes "hidden matrices get Muon". The one-step theory of
Davis & Drusvyatskiy makes the choice measurable: for a block ``W`` fed by activations
``A`` with (momentum) gradient ``M``, the guaranteed decrease of a spectral step over that of
a Euclidean step is ``nr(M) / st(A)``. ``Hybrid`` keeps running estimates of both and
switches each block's rule with hysteresis.
"""

from __future__ import annotations

import math
import fnmatch
from typing import Optional, Union

import pandas as pd
import torch
from torch import Tensor, nn

from ..linalg import Workspace, matrix_norms, orthogonalize_many
from ..linalg.checks import check_positive_int, check_range
from .chain import ChainOptimizer
from .muon import validate_orthogonalizer, validate_spectral
from .routing import split_params
from .transforms import (
    Adam,
    ApplyLR,
    AsMatrix,
    DecoupledWeightDecay,
    Momentum,
    Transform,
    shape_scale,
)

EUCLIDEAN = ("adamw", "sgd")
DECISIONS = ("ratio", "decrease")
RULES = ("spectral", "euclidean")


class HybridStep(Transform):
    """Splits a group's matrices by their current choice and applies either rule.

    Spectral: ``shape_scale * polar(M)`` (Muon). Euclidean ``"adamw"``: Adam's direction of
    the raw gradient; ``"sgd"``: ``M`` rescaled to the Frobenius norm the spectral step
    would have (``sqrt(min(m, n)) * shape_scale``). With the default
    ``shape_scaling="match_rms_adamw"`` the spectral step has RMS ``0.2``, about that of an
    AdamW step, so one ``lr`` serves both regimes (the matched-RMS rule). Where the two
    regimes' tuned learning rates differ anyway, ``euclidean_scale`` multiplies the
    Euclidean step: with Muon's ``shape_scaling="original"``, ``lr`` = Muon's lr and
    ``euclidean_scale`` = AdamW's lr / Muon's lr, each regime runs at its own tuned lr. Decision
    ``"decrease"`` instead takes the majorization steps of least squares:
    ``M / L_F`` or ``(||M||_* / L_op) polar(M)`` with ``L_F = c ||A||_op^2 / n`` and
    ``L_op = c ||A||_F^2 / n``, ``lr`` multiplying both (``lr = 1`` is the study's step).
    """

    def __init__(self, owner: "Hybrid"):
        self.owner = owner
        self.adam = Adam()
        self.workspace = Workspace()  # the polar factors' buffers, reused from step to step

    def init(self, p, state, group):
        self.adam.init(p, state, group)
        # start spectral (unless forced Euclidean); the first sample decides
        state["spectral"] = torch.tensor(float(self.owner._force.get(p) != "euclidean"))
        state["log_ratio"] = torch.tensor(float("nan"))

    def __call__(self, u):
        g = u.group
        owner = self.owner
        sampled = owner._sampled_now
        decrease = g["decision"] == "decrease"
        # polar(M) where it is used: spectral blocks, and every block of the decrease rule
        need = [i for i, st in enumerate(u.states) if decrease or bool(st["spectral"])]
        polar = dict(zip(need, self._polar([u.updates[i] for i in need], g, self.workspace)))
        exact = g["orthogonalizer"] == "svd"
        acts = owner._activations
        new_updates = []
        adam_needed = list(range(len(u.states))) if g["euclidean"] == "adamw" else []
        if adam_needed:  # Adam moments follow the raw gradient whichever rule is active
            sub = type(u)(g, [u.params[i] for i in adam_needed], [u.states[i] for i in adam_needed],
                          [u.params[i].grad.reshape(u.updates[i].shape) for i in adam_needed])  # fmt: skip
            self.adam(sub)
            adam_dir = dict(zip(adam_needed, sub.updates))
            adam_scale = dict(zip(adam_needed, sub.scales))
        for i, (M, st, p) in enumerate(zip(u.updates, u.states, u.params)):
            m, n = M.shape
            O = polar.get(i)
            # norms (host syncs) only where read: measurements, the decrease rule, SGD's scale
            fro = float(M.norm()) if sampled or decrease or g["euclidean"] == "sgd" else math.nan
            if not (sampled or decrease):
                nuc = nr = math.nan
            else:
                if exact and O is not None:
                    nuc = float((M * O).sum())  # <M, polar(M)> = ||M||_*
                else:  # an approximate polar factor would bias <M, O> low: the singular values
                    nuc = float(matrix_norms(M).nuclear)
                nr = (nuc / fro) ** 2 if fro > 0 else 0.0
            a = acts.get(p)
            if decrease:
                step = self._majorization(p, M, O, nr, nuc, a, g, st)
                if step is not None:
                    new_updates.append(step)
                    owner._log(p, nr, a, bool(st["spectral"]))
                    continue
            if sampled and a is not None and a["st"] > 0 and nr > 0:
                owner._decide(p, st, nr, a["st"], g)
            if bool(st["spectral"]):
                if O is None:  # a block that turned spectral at this measurement
                    O = self._polar([M], g)[0]
                new_updates.append(O * shape_scale(g["shape_scaling"], m, n))
            elif g["euclidean"] == "adamw":
                new_updates.append(adam_dir[i] * (adam_scale[i] * g["euclidean_scale"]))
            else:
                target = math.sqrt(min(m, n)) * shape_scale(g["shape_scaling"], m, n) * g["euclidean_scale"]
                new_updates.append(M * (target / fro if fro > 0 else 0.0))
        u.updates = new_updates

    @staticmethod
    def _polar(mats: list[Tensor], g: dict, workspace: Optional[Workspace] = None) -> list[Tensor]:
        return orthogonalize_many(mats, g["orthogonalizer"], g["ns_steps"], coefficients=g["ns_coefficients"],
                                  dtype=g.get("ns_dtype"), norm=g.get("ns_norm", "frobenius"),
                                  gram=g.get("ns_gram", False), workspace=workspace)  # fmt: skip

    def _majorization(self, p, M, O, nr, nuc, a, g, st) -> Optional[Tensor]:
        if a is None or a["rows"] == 0 or a["op_sq"] <= 0:
            return None
        c = g["curvature"]
        L_F = c * a["op_sq"] / a["rows"]
        L_op = c * a["fro_sq"] / a["rows"]
        spectral = nr >= a["st"]  # ||M||_*^2 / (2 L_op) >= ||M||_F^2 / (2 L_F)
        forced = self.owner._force.get(p)
        if forced is not None:
            spectral = forced == "spectral"
        st["spectral"].fill_(float(spectral))
        return O * (nuc / L_op) if spectral else M * (g["euclidean_scale"] / L_F)


class Hybrid(ChainOptimizer):
    """Spectral (Muon) or Euclidean (AdamW / SGD-momentum) per block, chosen from measured
    ``nr(M)`` and ``st(A)`` with hysteresis.

    For every hidden matrix (``split_params(model)``; embeddings, head, norms and biases
    take AdamW as usual) it keeps EMA estimates of ``log nr(M)`` of its momentum ``M`` (from
    its singular values; free as ``<M, polar(M)>`` with ``orthogonalizer="svd"``, whereas a
    Newton-Schulz factor would bias that inner product low) and ``log st(A)`` of its
    incoming activation, measured every ``every`` steps by :class:`~specgrad.diagnostics.SpectralMonitor` hooks. A Euclidean block
    turns spectral when ``nr / st > 1 + hysteresis``; a spectral block turns Euclidean when
    ``nr / st < 1 / (1 + hysteresis)``. Both rules' states (momentum, Adam moments) are kept
    up to date, so a switch starts warm. Step sizes: see :class:`HybridStep`.

    ``decision="decrease"`` is the principled variant of the study's settings: at every
    step and for every block the rule with the larger guaranteed decrease
    (``||M||_F^2 / (2 L_F)`` vs ``||M||_*^2 / (2 L_op)``) with its majorization step; use it
    with ``every=1``, ``momentum=0``, ``orthogonalizer="svd"`` (the exact polar factor the
    guarantee is about) and ``curvature`` the output-space curvature constant (1 for
    ``(1/2n) sum ||W a - y||^2``).

    ``force="spectral"`` or ``"euclidean"`` fixes every block's rule (a dict maps
    ``fnmatch`` patterns of parameter names to rules, the last match winning) while keeping
    the measurements, the logging and the step-size rules: the pure baselines of an
    ablation, with the same arithmetic as the hybrid.

    Every decision is logged: :meth:`decisions` returns a DataFrame
    (``step, block, nr, st, ratio, choice``).

    Call ``opt.step()`` after ``backward`` as usual; the hooks are removed by :meth:`close`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
        ...                           torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        >>> opt = Hybrid(net, lr=0.01, every=1)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     net(torch.relu(torch.randn(64, 8))).pow(2).mean().backward()
        ...     opt.step()
        >>> log = opt.decisions()
        >>> log["block"].unique().tolist(), len(log)  # the hidden 32x32 block, every step
        (['2.weight'], 3)
        >>> first = log.iloc[0]  # the first measurement decides alone; later ones need the band
        >>> first["choice"] == ("spectral" if first["ratio"] >= 1 else "euclidean")
        True
        >>> opt.close()
    """

    rule = "hybrid"

    def __init__(
        self,
        model: nn.Module,
        lr: float = 3e-3,
        *,
        every: int = 10,
        euclidean: str = "adamw",
        decision: str = "ratio",
        force: Union[None, str, dict[str, str]] = None,
        euclidean_scale: float = 1.0,
        hysteresis: float = 0.25,
        smoothing: float = 0.5,
        momentum: float = 0.95,
        nesterov: bool = True,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        shape_scaling: str = "match_rms_adamw",
        orthogonalizer: str = "newton_schulz",
        ns_steps: int = 5,
        ns_coefficients="jordan",
        ns_dtype: Optional[torch.dtype] = None,
        curvature: float = 1.0,
        overrides: Optional[dict[str, str]] = None,
        adamw: Optional[dict] = None,
        nonfinite: str = "raise",
    ):
        from ..diagnostics import SpectralMonitor

        check_positive_int(every, "every")
        routing = split_params(model, overrides)
        named = dict(model.named_parameters())
        self._names = {named[n]: n for n in routing.names("spectral")}
        layers = sorted({n.rsplit(".", 1)[0] for n in routing.names("spectral")})
        modules = dict(model.named_modules())
        tappable = [l for l in layers if isinstance(modules.get(l), (nn.Linear, nn.Conv2d))]
        self.monitor = SpectralMonitor(model, every=every, layers=tappable, gradients=False)
        self._block_param = {name: named[f"{name}.weight"] for name in tappable}
        self._activations: dict[Tensor, dict] = {}
        self._log_rows: list[dict] = []
        self._t = 0
        self._force = _resolve_force(force, {n: named[n] for n in routing.names("spectral")})
        defaults = dict(lr=lr, euclidean=euclidean, euclidean_scale=euclidean_scale, decision=decision,
                        hysteresis=hysteresis, smoothing=smoothing, momentum=momentum, nesterov=nesterov, betas=betas, eps=eps,
                        weight_decay=weight_decay, shape_scaling=shape_scaling, orthogonalizer=orthogonalizer,
                        ns_steps=ns_steps, ns_coefficients=ns_coefficients, ns_dtype=ns_dtype,
                        curvature=curvature)  # fmt: skip
        groups = routing.param_groups(adamw=adamw)
        super().__init__(groups, defaults, adamw=adamw, nonfinite=nonfinite)

    def chain(self):
        return [Momentum(), AsMatrix(), HybridStep(self), DecoupledWeightDecay(), ApplyLR()]

    def validate(self, group):
        validate_spectral(group)
        validate_orthogonalizer(group)
        if group["euclidean"] not in EUCLIDEAN:
            raise ValueError(f"euclidean must be one of {EUCLIDEAN}, got {group['euclidean']!r}")
        if group["decision"] not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {group['decision']!r}")
        check_range("hysteresis", group["hysteresis"], 0.0)
        check_range("smoothing", group["smoothing"], 0.0, 1.0)
        check_range("curvature", group["curvature"], 0.0, lo_open=True)
        check_range("euclidean_scale", group["euclidean_scale"], 0.0, lo_open=True)

    # -- measurement -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sampled = self.monitor.sampling
        rows = self.monitor.step()
        self._activations = {
            self._block_param[r["block"]]: {"st": r["st_A"], "fro_sq": r["act_fro"] ** 2,
                                            "op_sq": r["act_op"] ** 2, "rows": r["rows"]}
            for r in rows if r["block"] in self._block_param
        }  # fmt: skip
        self._sampled_now = sampled
        super().step()
        self._t += 1
        return loss

    def _decide(self, p: Tensor, st: dict, nr: float, st_a: float, g: dict) -> None:
        log_ratio = math.log(nr) - math.log(st_a)
        old = float(st["log_ratio"])
        ema = log_ratio if math.isnan(old) else g["smoothing"] * old + (1 - g["smoothing"]) * log_ratio
        st["log_ratio"].fill_(ema)
        h = math.log1p(g["hysteresis"])
        spectral = bool(st["spectral"])
        forced = self._force.get(p)
        if forced is not None:
            spectral = forced == "spectral"
        elif math.isnan(old):
            spectral = ema >= 0
        elif spectral and ema < -h:
            spectral = False
        elif not spectral and ema > h:
            spectral = True
        st["spectral"].fill_(float(spectral))
        self._append_row(p, nr, st_a, math.exp(log_ratio), math.exp(ema), spectral)

    def _log(self, p: Tensor, nr: float, a: Optional[dict], spectral: bool) -> None:
        st_a = a["st"] if a else math.nan
        self._append_row(p, nr, st_a, nr / st_a if st_a else math.nan, math.nan, spectral)

    def _append_row(self, p: Tensor, nr: float, st_a: float, ratio: float, smoothed: float, spectral: bool) -> None:
        self._log_rows.append(dict(step=self._t, block=self._names.get(p, "?"), nr=nr, st=st_a, ratio=ratio,
                                   smoothed_ratio=smoothed, choice="spectral" if spectral else "euclidean"))  # fmt: skip

    def decisions(self) -> pd.DataFrame:
        """Every decision so far: ``step, block, nr, st, ratio, smoothed_ratio, choice``."""
        return pd.DataFrame(self._log_rows, columns=["step", "block", "nr", "st", "ratio", "smoothed_ratio", "choice"])

    def close(self) -> None:
        """Remove the activation hooks."""
        self.monitor.close()


def _resolve_force(force, params: dict[str, Tensor]) -> dict[Tensor, str]:
    """``{param: rule}`` from ``None``, one rule, or ``{pattern: rule}`` (last match wins)."""
    patterns = {} if force is None else {"*": force} if isinstance(force, str) else dict(force)
    for pattern, rule in patterns.items():
        if rule not in RULES:
            raise ValueError(f"force {pattern!r} -> {rule!r}: rule must be one of {RULES}")
    out, used = {}, set()
    for name, p in params.items():
        for pattern, rule in patterns.items():
            if fnmatch.fnmatch(name, pattern):
                out[p] = rule
                used.add(pattern)
    if set(patterns) - used:
        raise ValueError(f"force patterns matched no spectral-rule parameter: {sorted(set(patterns) - used)}")
    return out
