"""``Switch``: a link that routes each matrix update to a spectral or a Euclidean sub-chain.

It sits where the spectral map sits in Muon's chain, so what surrounds it (momentum, the
matrix view, weight decay, the lr) and what the sub-chains inherit (the batched and
distributed spectral map, every parameter shape ``AsMatrix`` handles) is the chain's.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Protocol, Union

import torch
from torch import Tensor

from .transforms import Transform, Updates


class Choice(NamedTuple):
    """One parameter's rule for this step: ``spectral`` a bool, or one bool per matrix of a
    batched update ``(B, m, n)`` (each matrix of a view is a block); ``step``: an update the
    decision sized itself (it replaces the sub-chains'), its lr multiplied by ``scale``."""

    spectral: Union[bool, tuple[bool, ...]]
    step: Optional[Tensor] = None
    scale: float = 1.0

    @property
    def rules(self) -> tuple[bool, bool]:
        """``(any spectral, all spectral)``."""
        s = self.spectral
        return (any(s), all(s)) if isinstance(s, tuple) else (bool(s), bool(s))


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
       or the step the decision sized; a batched update takes each matrix from its own
       rule's sub-chain.

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
        spectral: dict[int, Tensor] = {}
        for k, i in enumerate(first):
            if choices[i].rules[0] and choices[i].step is None:
                spectral[i] = spec.updates[k] * spec.scales[k]
        late = [i for i, c in enumerate(choices) if c.rules[0] and c.step is None and i not in spectral]
        spec = self._run(self.spectral, u, late)
        for k, i in enumerate(late):
            spectral[i] = spec.updates[k] * spec.scales[k]
        out: list[Optional[Tensor]] = [None] * n
        scales = [1.0] * n
        for i, c in enumerate(choices):
            some, every = c.rules
            if c.step is not None:
                out[i], scales[i] = c.step, u.scales[i] * c.scale
            elif every:
                out[i] = spectral[i]
            elif not some:
                out[i] = euclid.updates[i] * euclid.scales[i]
            else:
                mask = torch.tensor(c.spectral, device=spectral[i].device).view(-1, 1, 1)
                out[i] = torch.where(mask, spectral[i], euclid.updates[i] * euclid.scales[i])
        u.updates, u.scales = out, scales  # type: ignore[assignment]
