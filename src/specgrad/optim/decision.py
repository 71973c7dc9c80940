"""``LayerwiseDecision``: which rule each block of :class:`~specgrad.optim.Hybrid` takes.

For a block ``W`` fed by activations ``A`` with (momentum) update ``M``, the one-step theory
of Davis & Drusvyatskiy bounds the decrease of a spectral step over that of a Euclidean one
by ``nr(M) / st(A)`` (see :mod:`specgrad.linalg.majorization`). The decision measures both
sides while training and chooses, block by block, for the :class:`~specgrad.optim.switch.Switch`
link of the optimizer's chain.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Mapping, Optional, Union

import pandas as pd
import torch
from torch import Tensor, nn

from ..linalg import check_positive_int, check_range, least_squares_smoothness, majorization_step, matrix_norms
from ..views import MatrixView
from .distributed import is_sharded
from .switch import Choice

DECISIONS = ("ratio", "decrease")
RULES = ("spectral", "euclidean")
COLUMNS = ["step", "block", "nr", "st", "ratio", "smoothed_ratio", "choice"]


class LayerwiseDecision:
    """The rule of every block from the layerwise test ``nr(M) >= st(A)``, with its log.

    It owns the measurement: a :class:`~specgrad.diagnostics.SpectralMonitor` on the modules
    that hold the parameters, with the parameters' matrix views, gives ``st(A)``,
    ``||A||_F`` and ``||A||_op`` of every matrix on every ``every``-th step, and ``nr(M)``
    comes from ``M``'s singular values, or free as ``<M, polar(M)>`` when the polar factor
    is exact (``orthogonalizer="svd"``; a Newton-Schulz factor biases that inner product
    low). A block is one matrix of a view: ``nn.Linear``, convs (``(out, in*k...)``,
    patches unfolded), transformers' ``Conv1D`` (GPT-2's ``c_attn`` as q, k, v),
    ``nn.MultiheadAttention`` (q, k, v, ``out_proj``) and each expert of a stack, each with
    its own rule; the monitor's :attr:`~specgrad.diagnostics.SpectralMonitor.skipped` keep
    theirs (see :attr:`unmeasured`). The rule, read from the group:

    * ``decision="ratio"`` (default): an EMA (weight ``smoothing`` on the past) of
      ``log(nr / st)``; a Euclidean block turns spectral when the smoothed ratio exceeds
      ``1 + hysteresis``, a spectral one turns Euclidean below ``1 / (1 + hysteresis)``;
      the first measurement decides alone.
    * ``decision="decrease"``: on every measured step, the rule with the larger guaranteed
      decrease (``||M||_F^2 / (2 L_F)`` vs ``||M||_*^2 / (2 L_op)``), sized as its
      :func:`~specgrad.linalg.majorization_step` with the least-squares constants
      :func:`~specgrad.linalg.least_squares_smoothness` (output-space ``curvature``).

    ``force`` fixes rules (``"spectral"``, ``"euclidean"``, or ``{fnmatch pattern: rule}``
    over the blocks' names, the last match winning) while measuring and logging as usual.

    Per-block state lives in the optimizer's state dicts (``"spectral"``, ``"log_ratio"``:
    0-d, or ``(B,)`` for a parameter whose view holds ``B > 1`` matrices), so
    ``state_dict`` carries it; the log is :meth:`frame`, its ``block`` the parameter's name,
    or the monitor's block name for a matrix of several (``...c_attn.q``,
    ``...experts.down_proj.3``).

    Args:
        model: the model whose forward passes the monitor hooks.
        params: ``{name: parameter}`` of the blocks (names as in ``split_params``).
        every: measure on every ``every``-th step.
        force: see above.
        views: ``{name: MatrixView}`` of the parameters (``split_params(model).views()``);
            default: each module's own (:func:`~specgrad.views.view_of`).
    """

    defaults = {"decision": "ratio", "hysteresis": 0.25, "smoothing": 0.5, "curvature": 1.0}

    def __init__(self, model: nn.Module, params: dict[str, Tensor], every: int = 10,
                 force: Union[None, str, dict[str, str]] = None,
                 views: Optional[Mapping[str, MatrixView]] = None):  # fmt: skip
        # imported here: optim and diagnostics sit side by side and neither loads the other
        from ..diagnostics import SpectralMonitor

        check_positive_int(every, "every")
        self._force = _resolve_force(force, params)
        self.names = {p: n for n, p in params.items()}
        views = {n: v for n, v in (views or {}).items() if n in params and v is not None}
        # a parameter viewed as B > 1 matrices has B blocks, each its own rule
        self._batch = {p: views[n].batch if n in views and views[n].batch > 1 else 0 for n, p in params.items()}
        modules = {n.rsplit(".", 1)[0] if "." in n else "" for n in params}
        self.monitor = SpectralMonitor(model, every=every, layers=sorted(modules), gradients=False, views=views)
        self._where: dict[str, tuple[Tensor, int]] = {}  # monitor block -> (parameter, matrix index)
        self._label: dict[tuple[Tensor, int], str] = {}
        for name in self.monitor.blocks:
            b = self.monitor.block(name)
            p = params.get(b.parameter)
            if p is not None and b.rows is None:
                self._where[name] = (p, b.index)
                self._label[(p, b.index)] = name if self._batch[p] else b.parameter
        self._rows: dict[tuple[Tensor, int], dict] = {}  # this step's activation records, by (parameter, matrix)
        self._log: list[dict] = []
        self._step = -1

    # -- the link's protocol (see Switch) ----------------------------------------------------
    def validate(self, group: dict) -> None:
        if group["decision"] not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {group['decision']!r}")
        check_range("hysteresis", group["hysteresis"], 0.0)
        check_range("smoothing", group["smoothing"], 0.0, 1.0)
        check_range("curvature", group["curvature"], 0.0, lo_open=True)

    @property
    def unmeasured(self) -> dict[str, str]:
        """The matrices of the parameters the monitor cannot see (they keep their rule), by
        block name, with the reason."""
        cov = self.monitor.coverage()
        cov = cov[(cov["status"] == "skipped") & cov["parameter"].isin(list(self.names.values()))]
        return dict(zip(cov["block"], cov["reason"]))

    def init(self, p: Tensor, state: dict, group: dict) -> None:
        # spectral unless forced Euclidean; the first measurement decides
        shape = (self._batch[p],) if self._batch.get(p) else ()
        state["spectral"] = torch.full(shape, float(self._force.get(p) != "euclidean"))
        state["log_ratio"] = torch.full(shape, float("nan"))

    def wants_spectral(self, u) -> list[bool]:
        """The parameters whose spectral output is read before deciding: those with a
        spectral matrix, and every one under ``"decrease"`` (its step needs ``polar(M)``)."""
        decrease = u.group["decision"] == "decrease"
        return [decrease or bool(st["spectral"].any()) for st in u.states]

    def decide(self, u, polar: dict[int, Tensor]) -> list[Choice]:
        """Measure, choose and log every block of ``u`` (updates ``M``: a matrix, or a batch
        ``(B, m, n)`` of a view's matrices, each a block); ``polar[i]``: ``polar(M_i)`` where
        computed."""
        choices = []
        for i, (p, st, M) in enumerate(zip(u.params, u.states, u.updates)):
            O = polar.get(i)
            if M.ndim == 2:
                choices.append(self._decide_one(p, None, st, M, O, u.group))
                continue
            if st["spectral"].shape != (M.shape[0],):  # a view the state was not made for
                st["spectral"], st["log_ratio"] = st["spectral"].expand(M.shape[0]).clone(), st["log_ratio"].expand(M.shape[0]).clone()
            parts = [self._decide_one(p, j, st, M[j], None if O is None else O[j], u.group) for j in range(M.shape[0])]
            mask = tuple(c.spectral for c in parts)
            if all(c.step is None for c in parts):
                choices.append(Choice(mask))
                continue
            # decrease rule: each matrix's own majorization step, the Euclidean ones' scale folded in
            steps = [c.step * c.scale if c.step is not None else None for c in parts]
            if any(s is None for s in steps):  # a matrix the monitor did not measure: no sized step for it
                choices.append(Choice(mask))
                continue
            choices.append(Choice(mask, torch.stack(steps)))
        return choices

    def _decide_one(self, p: Tensor, j: Optional[int], st: dict, M: Tensor, O: Optional[Tensor], g: dict) -> Choice:
        """The choice for matrix ``j`` of ``p`` (``None``: ``p`` is one matrix)."""
        spectral = st["spectral"] if j is None else st["spectral"][j]
        row = self._rows.get((p, j or 0))  # measured this step
        if row is None:
            return Choice(bool(spectral))
        nr, nuc = self._nuclear_rank(M, O, g["orthogonalizer"] == "svd")
        if g["decision"] == "decrease" and row["rows"] > 0 and row["act_op"] ** 2 > 0:
            return self._majorization(p, st, M, O, nr, nuc, row, g, j)
        if row["st_A"] > 0 and nr > 0:
            self.ratio_rule(p, st, nr, row["st_A"], g, j)
        return Choice(bool(spectral))

    # -- measurement -------------------------------------------------------------------------
    def observe(self) -> None:
        """Start a step: read the monitor's records of the step's forward passes (none
        between sampled steps). Call once per optimizer step, before the chain runs."""
        self._step += 1
        rows = self.monitor.step()
        self._rows = {self._where[r["block"]]: r for r in rows if r["block"] in self._where}

    @staticmethod
    def _nuclear_rank(M: Tensor, O: Optional[Tensor], exact: bool) -> tuple[float, float]:
        """``(nr(M), ||M||_*)``; one host sync each."""
        if is_sharded(M):
            M, O = M.full_tensor(), (O.full_tensor() if O is not None else None)
        fro = float(torch.linalg.vector_norm(M, dtype=torch.float64))  # a float16 norm passes 65504
        nuc = float(torch.sum(M * O, dtype=torch.float64)) if exact and O is not None else float(matrix_norms(M).nuclear)
        return ((nuc / fro) ** 2 if fro > 0 else 0.0), nuc

    # -- the two rules -----------------------------------------------------------------------
    def ratio_rule(self, p: Tensor, state: dict, nr: float, st_a: float, group: dict, index: Optional[int] = None) -> bool:
        """One measurement of the ratio rule for block ``p`` (its matrix ``index`` when ``p``
        holds several): smooth ``log(nr / st_a)``, switch across the hysteresis band (or as
        forced), log; returns whether the block is spectral."""
        ratio_state = state["log_ratio"] if index is None else state["log_ratio"][index]
        spectral_state = state["spectral"] if index is None else state["spectral"][index]
        log_ratio = math.log(nr) - math.log(st_a)
        old = float(ratio_state)
        ema = log_ratio if math.isnan(old) else group["smoothing"] * old + (1 - group["smoothing"]) * log_ratio
        ratio_state.fill_(ema)
        h = math.log1p(group["hysteresis"])
        spectral = bool(spectral_state)
        forced = self._force.get(p)
        if forced is not None:
            spectral = forced == "spectral"
        elif math.isnan(old):
            spectral = ema >= 0
        elif spectral and ema < -h:
            spectral = False
        elif not spectral and ema > h:
            spectral = True
        spectral_state.fill_(float(spectral))
        self._append(p, index, nr, st_a, math.exp(log_ratio), math.exp(ema), spectral)
        return spectral

    def _majorization(self, p, state, M, O, nr, nuc, row, group, index=None) -> Choice:
        """The decrease rule: the majorization step of the rule with the larger guaranteed
        decrease; ``nr >= st(A)`` is ``||M||_*^2 / (2 L_op) >= ||M||_F^2 / (2 L_F)``."""
        L_F, L_op = least_squares_smoothness(row["act_fro"] ** 2, row["act_op"] ** 2, row["rows"], group["curvature"])
        st_a = row["st_A"]
        forced = self._force.get(p)
        spectral = nr >= st_a if forced is None else forced == "spectral"
        (state["spectral"] if index is None else state["spectral"][index]).fill_(float(spectral))
        self._append(p, index, nr, st_a, nr / st_a if st_a else math.nan, math.nan, spectral)
        if spectral:
            return Choice(True, majorization_step(M, L_op, "spectral", polar=O, nuclear=nuc))
        return Choice(False, majorization_step(M, L_F, "frobenius"), group["euclidean_scale"])

    # -- the log -----------------------------------------------------------------------------
    def _append(self, p: Tensor, index: Optional[int], nr: float, st_a: float, ratio: float, smoothed: float,
                spectral: bool) -> None:  # fmt: skip
        block = self._label.get((p, index or 0), self.names.get(p, "?"))
        self._log.append(dict(step=self._step, block=block, nr=nr, st=st_a, ratio=ratio,
                              smoothed_ratio=smoothed, choice="spectral" if spectral else "euclidean"))  # fmt: skip

    def frame(self) -> pd.DataFrame:
        """Every decision so far: ``step, block, nr, st, ratio, smoothed_ratio, choice``."""
        return pd.DataFrame(self._log, columns=COLUMNS)

    def close(self) -> None:
        """Remove the monitor's hooks."""
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
