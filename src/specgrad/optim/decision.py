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
from typing import Optional, Union

import pandas as pd
import torch
from torch import Tensor, nn

from ..linalg import check_positive_int, check_range, least_squares_smoothness, majorization_step, matrix_norms
from .distributed import is_sharded
from .switch import Choice

DECISIONS = ("ratio", "decrease")
RULES = ("spectral", "euclidean")
COLUMNS = ["step", "block", "nr", "st", "ratio", "smoothed_ratio", "choice"]


class LayerwiseDecision:
    """The rule of every block from the layerwise test ``nr(M) >= st(A)``, with its log.

    It owns the measurement: a :class:`~specgrad.diagnostics.SpectralMonitor` on the layers
    of the blocks (``nn.Linear``; ``nn.Conv2d``, its weight viewed as ``(out, in*kh*kw)``)
    gives ``st(A)``, ``||A||_F`` and ``||A||_op`` on every ``every``-th step, and ``nr(M)``
    comes from ``M``'s singular values, or free as ``<M, polar(M)>`` when the polar factor
    is exact (``orthogonalizer="svd"``; a Newton-Schulz factor biases that inner product
    low). Blocks the monitor cannot see keep their rule. The rule, read from the group:

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

    Per-block state lives in the optimizer's state dicts (``"spectral"``, ``"log_ratio"``),
    so ``state_dict`` carries it; the log is :meth:`frame`.

    Args:
        model: the model whose forward passes the monitor hooks.
        params: ``{name: parameter}`` of the blocks.
        every: measure on every ``every``-th step.
        force: see above.
    """

    defaults = {"decision": "ratio", "hysteresis": 0.25, "smoothing": 0.5, "curvature": 1.0}

    def __init__(self, model: nn.Module, params: dict[str, Tensor], every: int = 10,
                 force: Union[None, str, dict[str, str]] = None):  # fmt: skip
        # imported here: optim and diagnostics sit side by side and neither loads the other
        from ..diagnostics import SpectralMonitor

        check_positive_int(every, "every")
        self._force = _resolve_force(force, params)
        self.names = {p: n for n, p in params.items()}
        modules = dict(model.named_modules())
        layers = sorted({n.rsplit(".", 1)[0] for n in params if n.endswith(".weight")})
        tapped = [name for name in layers if isinstance(modules.get(name), (nn.Linear, nn.Conv2d))]
        self._param_of = {name: params[f"{name}.weight"] for name in tapped}
        self.monitor = SpectralMonitor(model, every=every, layers=tapped, gradients=False)
        self._rows: dict[Tensor, dict] = {}  # this step's activation records, by parameter
        self._log: list[dict] = []
        self._step = -1

    # -- the link's protocol (see Switch) ----------------------------------------------------
    def validate(self, group: dict) -> None:
        if group["decision"] not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {group['decision']!r}")
        check_range("hysteresis", group["hysteresis"], 0.0)
        check_range("smoothing", group["smoothing"], 0.0, 1.0)
        check_range("curvature", group["curvature"], 0.0, lo_open=True)

    def init(self, p: Tensor, state: dict, group: dict) -> None:
        # spectral unless forced Euclidean; the first measurement decides
        state["spectral"] = torch.tensor(float(self._force.get(p) != "euclidean"))
        state["log_ratio"] = torch.tensor(float("nan"))

    def wants_spectral(self, u) -> list[bool]:
        """The blocks whose spectral output is read before deciding: the spectral ones, and
        every block under ``"decrease"`` (its step needs ``polar(M)``)."""
        decrease = u.group["decision"] == "decrease"
        return [decrease or bool(st["spectral"]) for st in u.states]

    def decide(self, u, polar: dict[int, Tensor]) -> list[Choice]:
        """Measure, choose and log every block of ``u`` (updates ``M``, matrix views);
        ``polar[i]``: ``polar(M_i)`` where computed."""
        g = u.group
        decrease = g["decision"] == "decrease"
        exact = g["orthogonalizer"] == "svd"
        choices = []
        for i, (p, st, M) in enumerate(zip(u.params, u.states, u.updates)):
            row = self._rows.get(p)  # measured this step
            if row is None:
                choices.append(Choice(bool(st["spectral"])))
                continue
            nr, nuc = self._nuclear_rank(M, polar.get(i), exact)
            if decrease and row["rows"] > 0 and row["act_op"] ** 2 > 0:
                choices.append(self._majorization(p, st, M, polar[i], nr, nuc, row, g))
                continue
            if row["st_A"] > 0 and nr > 0:
                self.ratio_rule(p, st, nr, row["st_A"], g)
            choices.append(Choice(bool(st["spectral"])))
        return choices

    # -- measurement -------------------------------------------------------------------------
    def observe(self) -> None:
        """Start a step: read the monitor's records of the step's forward passes (none
        between sampled steps). Call once per optimizer step, before the chain runs."""
        self._step += 1
        rows = self.monitor.step()
        self._rows = {self._param_of[r["block"]]: r for r in rows if r["block"] in self._param_of}

    @staticmethod
    def _nuclear_rank(M: Tensor, O: Optional[Tensor], exact: bool) -> tuple[float, float]:
        """``(nr(M), ||M||_*)``; one host sync each."""
        if is_sharded(M):
            M, O = M.full_tensor(), (O.full_tensor() if O is not None else None)
        fro = float(M.norm())
        nuc = float((M * O).sum()) if exact and O is not None else float(matrix_norms(M).nuclear)
        return ((nuc / fro) ** 2 if fro > 0 else 0.0), nuc

    # -- the two rules -----------------------------------------------------------------------
    def ratio_rule(self, p: Tensor, state: dict, nr: float, st_a: float, group: dict) -> bool:
        """One measurement of the ratio rule for block ``p``: smooth ``log(nr / st_a)``, switch
        across the hysteresis band (or as forced), log; returns whether ``p`` is spectral."""
        log_ratio = math.log(nr) - math.log(st_a)
        old = float(state["log_ratio"])
        ema = log_ratio if math.isnan(old) else group["smoothing"] * old + (1 - group["smoothing"]) * log_ratio
        state["log_ratio"].fill_(ema)
        h = math.log1p(group["hysteresis"])
        spectral = bool(state["spectral"])
        forced = self._force.get(p)
        if forced is not None:
            spectral = forced == "spectral"
        elif math.isnan(old):
            spectral = ema >= 0
        elif spectral and ema < -h:
            spectral = False
        elif not spectral and ema > h:
            spectral = True
        state["spectral"].fill_(float(spectral))
        self._append(p, nr, st_a, math.exp(log_ratio), math.exp(ema), spectral)
        return spectral

    def _majorization(self, p, state, M, O, nr, nuc, row, group) -> Choice:
        """The decrease rule: the majorization step of the rule with the larger guaranteed
        decrease; ``nr >= st(A)`` is ``||M||_*^2 / (2 L_op) >= ||M||_F^2 / (2 L_F)``."""
        L_F, L_op = least_squares_smoothness(row["act_fro"] ** 2, row["act_op"] ** 2, row["rows"], group["curvature"])
        st_a = row["st_A"]
        forced = self._force.get(p)
        spectral = nr >= st_a if forced is None else forced == "spectral"
        state["spectral"].fill_(float(spectral))
        self._append(p, nr, st_a, nr / st_a if st_a else math.nan, math.nan, spectral)
        if spectral:
            return Choice(True, majorization_step(M, L_op, "spectral", polar=O, nuclear=nuc))
        return Choice(False, majorization_step(M, L_F, "frobenius"), group["euclidean_scale"])

    # -- the log -----------------------------------------------------------------------------
    def _append(self, p: Tensor, nr: float, st_a: float, ratio: float, smoothed: float, spectral: bool) -> None:
        self._log.append(dict(step=self._step, block=self.names.get(p, "?"), nr=nr, st=st_a, ratio=ratio,
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
