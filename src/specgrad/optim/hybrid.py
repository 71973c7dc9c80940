"""``Hybrid``: per block, the spectral step where the layerwise test says so, Euclidean elsewhere.

Every optimizer library hard-codes "hidden matrices get Muon". The one-step theory of
Davis & Drusvyatskiy makes the choice measurable: for a block ``W`` fed by activations
``A`` with (momentum) gradient ``M``, the guaranteed decrease of a spectral step over that of
a Euclidean step is ``nr(M) / st(A)``. ``Hybrid`` is Muon's chain with the spectral map
replaced by a :class:`~specgrad.optim.switch.Switch` between two sub-chains, fed by a
:class:`~specgrad.optim.decision.LayerwiseDecision` that measures both sides and switches
each block's rule with hysteresis.
"""

from __future__ import annotations

import warnings
from typing import Optional, Union

import pandas as pd
import torch
from torch import nn

from ..linalg import NonFiniteStatisticError
from ..views import clean_name, unwrap
from .chain import ChainOptimizer
from .decision import DECISIONS, LayerwiseDecision
from .routing import split_params
from .switch import Switch
from .transforms import (
    Adam,
    ApplyLR,
    AsMatrix,
    DecoupledWeightDecay,
    MatchPolarNorm,
    Momentum,
    Orthogonalize,
    RawGradient,
    Scale,
    ShapeScale,
)

EUCLIDEAN = ("adamw", "sgd")


class Hybrid(ChainOptimizer):
    """Spectral (Muon) or Euclidean (AdamW / SGD-momentum) per block, chosen from measured
    ``nr(M)`` and ``st(A)`` with hysteresis.

    The chain of every hidden matrix (``split_params(model)``; embeddings, head, norms and
    biases take AdamW as usual), on its matrix view (:mod:`specgrad.views`: conv weights as
    ``(out, in*kh*kw)``, a ``Conv1D`` transposed, a fused q/k/v as three matrices, an expert
    stack as one per expert; each matrix of a view is a block with its own rule):

        momentum -> matrix view -> Switch(spectral | euclidean) -> weight decay -> lr

    * spectral: ``shape_scale * polar(M)`` (Muon);
    * ``euclidean="adamw"``: Adam's direction of the raw gradient, its moments kept for
      every block whichever rule is active, so a switch starts warm; ``"sgd"``: ``M``
      rescaled to the Frobenius norm the spectral step would have
      (``sqrt(min(m, n)) * shape_scale``).

    With the default ``shape_scaling="match_rms_adamw"`` the spectral step has RMS ``0.2``,
    about that of an AdamW step, so one ``lr`` serves both regimes (the matched-RMS rule).
    Where the two regimes' tuned learning rates differ anyway, ``euclidean_scale`` multiplies
    the Euclidean step: with Muon's ``shape_scaling="original"``, ``lr`` = Muon's lr and
    ``euclidean_scale`` = AdamW's lr / Muon's lr, each regime runs at its own tuned lr.

    The decision (see :class:`~specgrad.optim.decision.LayerwiseDecision`) keeps EMA
    estimates of ``log nr(M)`` of each block's momentum (from its singular values, or free
    as ``<M, polar(M)>`` with ``orthogonalizer="svd"``) and ``log st(A)`` of its incoming
    activation, measured every ``every`` steps by
    :class:`~specgrad.diagnostics.SpectralMonitor` hooks (``nn.Linear``, convs, ``Conv1D``,
    ``nn.MultiheadAttention``, transformers expert stacks; a matrix the monitor cannot see
    keeps its rule and is listed in ``opt.decider.unmeasured``). A Euclidean block turns spectral when
    ``nr / st > 1 + hysteresis``; a spectral block turns Euclidean when
    ``nr / st < 1 / (1 + hysteresis)``.

    ``decision="decrease"`` is the principled variant of the study's settings: at every
    measured step and for every block, the rule with the larger guaranteed decrease
    (``||M||_F^2 / (2 L_F)`` vs ``||M||_*^2 / (2 L_op)``) with its majorization step
    ``M / L_F`` or ``(||M||_* / L_op) polar(M)``, ``L_F = c ||A||_op^2 / n`` and
    ``L_op = c ||A||_F^2 / n`` (``lr`` multiplies both; ``lr = 1`` is the study's step); use
    it with ``every=1``, ``momentum=0``, ``orthogonalizer="svd"`` (the exact polar factor the
    guarantee is about) and ``curvature`` ``c`` the output-space curvature constant (1 for
    ``(1/2n) sum ||W a - y||^2``).

    ``force="spectral"`` or ``"euclidean"`` fixes every block's rule (a dict maps
    ``fnmatch`` patterns of parameter names to rules, the last match winning) while keeping
    the measurements, the logging and the step-size rules: the pure baselines of an
    ablation, with the same arithmetic as the hybrid.

    ``overrides``, ``views`` and ``per_head`` (one block per attention head) are
    :func:`~specgrad.optim.split_params`'s.

    Every decision is logged: :meth:`decisions` returns a DataFrame
    (``step, block, nr, st, ratio, smoothed_ratio, choice``). Under DDP, ``distribute=True``
    splits the orthogonalizations across ranks as in :class:`~specgrad.optim.Muon`, and the
    monitor measures the global batch.

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
        views: Optional[dict[str, str]] = None,
        per_head: bool = False,
        adamw: Optional[dict] = None,
        nonfinite: str = "raise",
        distribute: bool = False,
    ):
        routing = split_params(model, overrides, views=views, per_head=per_head)
        named = {clean_name(n): p for n, p in unwrap(model).named_parameters()}
        spectral = {n: named[n] for n in routing.names("spectral")}
        self.decider = LayerwiseDecision(model, spectral, every, force, views=routing.views())
        defaults = dict(lr=lr, euclidean=euclidean, euclidean_scale=euclidean_scale, decision=decision,
                        hysteresis=hysteresis, smoothing=smoothing, momentum=momentum, nesterov=nesterov, betas=betas,
                        eps=eps, weight_decay=weight_decay, shape_scaling=shape_scaling, orthogonalizer=orthogonalizer,
                        ns_steps=ns_steps, ns_coefficients=ns_coefficients, ns_dtype=ns_dtype,
                        curvature=curvature)  # fmt: skip
        try:
            super().__init__(routing.param_groups(adamw=adamw), defaults, adamw=adamw, nonfinite=nonfinite,
                             distribute=distribute)  # fmt: skip
        except Exception:
            self.decider.close()  # a bad setting leaves no hooks behind
            raise

    def chain(self):
        spectral = [Orthogonalize(), ShapeScale()]
        euclidean = {
            "adamw": [RawGradient(), Adam(), AsMatrix(), Scale("euclidean_scale")],
            "sgd": [MatchPolarNorm(), ShapeScale(), Scale("euclidean_scale")],
        }
        return [Momentum(), AsMatrix(), Switch(self.decider, spectral, euclidean), DecoupledWeightDecay(), ApplyLR()]

    @property
    def monitor(self):
        """The :class:`~specgrad.diagnostics.SpectralMonitor` of the decision."""
        return self.decider.monitor

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            self.decider.observe()
        except NonFiniteStatisticError as e:  # NaN activations: the same policy as NaN gradients
            if self.nonfinite == "raise":
                raise
            warnings.warn(f"{e}; step skipped", RuntimeWarning, stacklevel=2)
            return loss
        super().step()
        return loss

    def decisions(self) -> pd.DataFrame:
        """Every decision so far: ``step, block, nr, st, ratio, smoothed_ratio, choice``."""
        return self.decider.frame()

    def close(self) -> None:
        """Remove the activation hooks."""
        self.decider.close()
