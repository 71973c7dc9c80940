"""``Switch``: a link that routes each matrix update to a spectral or a Euclidean sub-chain.

It sits where the spectral map sits in Muon's chain, so what surrounds it (momentum, the
matrix view, weight decay, the lr) and what the sub-chains inherit (the batched and
distributed spectral map, every parameter shape ``AsMatrix`` handles) is the chain's.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Protocol

from torch import Tensor

from .transforms import Transform, Updates


class Choice(NamedTuple):
    """One block's rule for this step; ``step``: an update the decision sized itself (it
    replaces the sub-chain's), its lr multiplied by ``scale``."""

    spectral: bool
    step: Optional[Tensor] = None
    scale: float = 1.0


class Decision(Protocol):
    """What a :class:`Switch` asks of its decision (e.g. :class:`~specgrad.optim.decision.LayerwiseDecision`)."""

    defaults: dict

    def validate(self, group: dict) -> None: ...

    def init(self, p: Tensor, state: dict, group: dict) -> None: ...

    def wants_spectral(self, u: Updates) -> list[bool]: ...

    def decide(self, u: Updates, polar: dict[int, Tensor]) -> list[Choice]: ...


class Switch(Transform):
    """Route each matrix update ``M`` to the ``spectral`` sub-chain or to the Euclidean one
    the group's ``euclidean`` key names, as ``decision`` chooses.

    One step:

    1. the Euclidean sub-chain runs on every block: it is elementwise, and its state (Adam's
       moments) follows every block, so a block that switches starts warm;
    2. the spectral sub-chain runs on the blocks the decision reads before deciding
       (``decision.wants_spectral``), batched as in Muon;
    3. the decision measures and chooses (``decision.decide``), given those outputs
       (``polar(M)`` for a chain that starts with :class:`~specgrad.optim.transforms.Orthogonalize`);
    4. blocks that turned spectral run the spectral sub-chain;
    5. each block's update becomes its sub-chain's output times that sub-chain's lr scale
       (a new tensor: a spectral map's outputs are views of buffers its next run reuses),
       or the step the decision sized.

    The link's ``defaults`` and ``validate`` are those of the sub-chains' links and the
    decision, plus ``euclidean`` (a key of the ``euclidean`` dict; default its first).
    """

    def __init__(self, decision: Decision, spectral: list[Transform], euclidean: dict[str, list[Transform]]):
        self.decision = decision
        self.spectral = spectral
        self.euclidean = euclidean
        self.defaults = {"euclidean": next(iter(euclidean))}
        for t in [*self._links(), decision]:
            for k, v in t.defaults.items():
                self.defaults.setdefault(k, v)

    def _links(self) -> list[Transform]:
        return self.spectral + [t for chain in self.euclidean.values() for t in chain]

    def validate(self, group):
        if group["euclidean"] not in self.euclidean:
            raise ValueError(f"euclidean must be one of {tuple(self.euclidean)}, got {group['euclidean']!r}")
        for t in self._links():
            t.validate(group)
        self.decision.validate(group)

    def init(self, p, state, group):
        for t in self._links():
            t.init(p, state, group)
        self.decision.init(p, state, group)

    @staticmethod
    def _run(chain: list[Transform], u: Updates, idx: list[int]) -> Updates:
        sub = u.subset(idx)
        if idx:
            for t in chain:
                t(sub)
        return sub

    def __call__(self, u):
        n = len(u.params)
        euclid = self._run(self.euclidean[u.group["euclidean"]], u, list(range(n)))
        first = [i for i, wanted in enumerate(self.decision.wants_spectral(u)) if wanted]
        spec = self._run(self.spectral, u, first)
        choices = self.decision.decide(u, dict(zip(first, spec.updates)))
        out: list[Optional[Tensor]] = [None] * n
        scales = [1.0] * n
        for k, i in enumerate(first):
            if choices[i].spectral and choices[i].step is None:
                out[i] = spec.updates[k] * spec.scales[k]
        late = [i for i, c in enumerate(choices) if c.spectral and c.step is None and out[i] is None]
        spec = self._run(self.spectral, u, late)
        for k, i in enumerate(late):
            out[i] = spec.updates[k] * spec.scales[k]
        for i, c in enumerate(choices):
            if c.step is not None:
                out[i], scales[i] = c.step, u.scales[i] * c.scale
            elif not c.spectral:
                out[i] = euclid.updates[i] * euclid.scales[i]
        u.updates, u.scales = out, scales  # type: ignore[assignment]
