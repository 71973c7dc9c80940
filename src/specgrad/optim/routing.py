"""Which parameters get the spectral rule: an inspectable, overridable routing."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Optional

import pandas as pd
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
if hasattr(nn, "RMSNorm"):
    _NORMS = _NORMS + (nn.RMSNorm,)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Route:
    name: str
    shape: tuple
    rule: str  # "spectral" or "adamw"
    reason: str


class ParamRouting:
    """The routing decision of every parameter of a model (see :func:`split_params`)."""

    def __init__(self, model: nn.Module, routes: list[Route]):
        self._params = dict(model.named_parameters())
        self.routes = routes

    def table(self) -> pd.DataFrame:
        """One row per parameter: ``name``, ``shape``, ``rule``, ``reason``."""
        return pd.DataFrame([r.__dict__ for r in self.routes], columns=["name", "shape", "rule", "reason"])

    def names(self, rule: str) -> list[str]:
        return [r.name for r in self.routes if r.rule == rule]

    def param_groups(self, spectral: Optional[dict] = None, adamw: Optional[dict] = None,
                     spectral_algorithm: Optional[str] = None) -> list[dict]:  # fmt: skip
        """Param groups for a specgrad optimizer: hidden matrices in the first group (with
        ``spectral`` settings), the rest with ``algorithm="adamw"`` (and ``adamw`` settings).
        Parameters are passed with their names, so errors name them."""
        groups = []
        spec = [(n, self._params[n]) for n in self.names("spectral")]
        rest = [(n, self._params[n]) for n in self.names("adamw")]
        if spec:
            g = {"params": spec, **(spectral or {})}
            if spectral_algorithm:
                g["algorithm"] = spectral_algorithm
            groups.append(g)
        if rest:
            groups.append({"params": rest, "algorithm": "adamw", **(adamw or {})})
        return groups

    def __repr__(self) -> str:
        return self.table().to_string(index=False)


def split_params(model: nn.Module, overrides: Optional[dict[str, str]] = None) -> ParamRouting:
    """Decide, for every parameter of ``model``, the spectral rule or AdamW.

    Rules, in order: parameters with fewer than 2 dims (biases, norm gains, scalars) ->
    AdamW; parameters of normalization layers -> AdamW; ``nn.Embedding`` weights (and any
    head tied to them, which is the same tensor) -> AdamW; the output head (the last
    Linear/Conv layer in registration order) -> AdamW; the network's first layer (the first
    Linear/Conv, when the model has no embedding: it reads raw inputs) -> AdamW; every other
    weight with >= 2 dims -> spectral. ``overrides`` maps ``fnmatch`` patterns of parameter
    names to ``"spectral"`` or ``"adamw"`` and wins over the rules.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> r = split_params(net)
        >>> r.table()[["name", "rule"]].values.tolist()[:3]
        [['0.weight', 'adamw'], ['0.bias', 'adamw'], ['2.weight', 'spectral']]
        >>> opt = specgrad.optim.Muon(r.param_groups(spectral={"lr": 0.02}, adamw={"lr": 1e-3}))
    """
    overrides = dict(overrides or {})
    for pattern, rule in overrides.items():
        if rule not in ("spectral", "adamw"):
            raise ValueError(f"override {pattern!r} -> {rule!r}: rule must be 'spectral' or 'adamw'")
    owner: dict[int, tuple[str, nn.Module]] = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), (f"{mname}.{pname}" if mname else pname, module))
    layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
    has_embedding = any(isinstance(m, nn.Embedding) for m in model.modules())
    head = layers[-1] if layers else None
    first = layers[0] if layers and not has_embedding and len(layers) > 1 else None

    routes = []
    used = set()
    for name, p in model.named_parameters():
        _, module = owner[id(p)]
        if p.ndim < 2:
            rule, reason = "adamw", "fewer than 2 dims (bias, gain or scalar)"
        elif isinstance(module, _NORMS):
            rule, reason = "adamw", "normalization layer"
        elif isinstance(module, nn.Embedding):
            rule, reason = "adamw", "embedding (and any head tied to it)"
        elif module is head:
            rule, reason = "adamw", "output head (last layer)"
        elif module is first:
            rule, reason = "adamw", "first layer (reads the raw input)"
        else:
            rule, reason = "spectral", "hidden matrix"
        for pattern, forced in overrides.items():
            if fnmatch.fnmatch(name, pattern):
                used.add(pattern)
                if forced == "spectral" and p.ndim < 2:
                    raise ValueError(f"override {pattern!r} sends {name} (shape {tuple(p.shape)}) to the spectral rule, which needs >= 2 dims")
                rule, reason = forced, f"override {pattern!r}"
        routes.append(Route(name, tuple(p.shape), rule, reason))
    unused = set(overrides) - used
    if unused:
        raise ValueError(f"overrides matched no parameter: {sorted(unused)}")
    return ParamRouting(model, routes)
