"""Which parameters get the spectral rule, and as which matrices: an inspectable, overridable
routing."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Optional

import pandas as pd
from torch import nn

from ..linalg import check_positive_int

from ..views import (TOKEN_NAMES, MatrixView, attention_heads, clean_name, is_conv1d, parse_view, split_heads, unwrap,
                     view_of)

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
if hasattr(nn, "RMSNorm"):
    _NORMS = _NORMS + (nn.RMSNorm,)
RULES = ("spectral", "adamw")
ROUTER_NAMES = re.compile(r"(^|\.)(gate|router|gating)$")


@dataclass(frozen=True)
class Route:
    name: str
    shape: tuple
    rule: str  # "spectral" or "adamw"
    reason: str
    view: Optional[MatrixView] = None  # the matrices the spectral rule acts on


def is_layer(module: nn.Module) -> bool:
    """A module that multiplies its input by a weight matrix: ``nn.Linear``, ``ConvNd``,
    transformers' ``Conv1D``."""
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or is_conv1d(module)


class ParamRouting:
    """The routing decision of every parameter of a model (see :func:`split_params`)."""

    def __init__(self, model: nn.Module, routes: list[Route]):
        self._params = {clean_name(n): p for n, p in unwrap(model).named_parameters()}
        self.routes = routes

    def table(self) -> pd.DataFrame:
        """One row per parameter: ``name``, ``shape``, ``rule``, ``view`` (the matrices the
        spectral rule acts on: ``"3 x (64, 64)"`` for a fused q/k/v) and ``reason``."""
        rows = [dict(name=r.name, shape=r.shape, rule=r.rule, view=str(r.view) if r.view and r.rule == "spectral" else "",
                     reason=r.reason) for r in self.routes]  # fmt: skip
        return pd.DataFrame(rows, columns=["name", "shape", "rule", "view", "reason"])

    def names(self, rule: str) -> list[str]:
        return [r.name for r in self.routes if r.rule == rule]

    def views(self) -> dict[str, MatrixView]:
        """The matrix view of every spectral parameter, by name."""
        return {r.name: r.view for r in self.routes if r.rule == "spectral"}

    def param_groups(self, spectral: Optional[dict] = None, adamw: Optional[dict] = None,
                     spectral_algorithm: Optional[str] = None) -> list[dict]:  # fmt: skip
        """Param groups for a specgrad optimizer: hidden matrices in the first group (with
        ``spectral`` settings and their ``matrix_views``), the rest with
        ``algorithm="adamw"`` (and ``adamw`` settings). Parameters are passed with their
        names, so errors name them."""
        groups = []
        spec = [r for r in self.routes if r.rule == "spectral"]
        rest = [(n, self._params[n]) for n in self.names("adamw")]
        if spec:
            g = {"params": [(r.name, self._params[r.name]) for r in spec], "matrix_views": [r.view for r in spec],
                 **(spectral or {})}  # fmt: skip
            if spectral_algorithm:
                g["algorithm"] = spectral_algorithm
            groups.append(g)
        if rest:
            groups.append({"params": rest, "algorithm": "adamw", **(adamw or {})})
        return groups

    def __repr__(self) -> str:
        return self.table().to_string(index=False)


def routed_params(model: nn.Module, **kwargs) -> list[dict]:
    """The param groups of ``model`` as :func:`split_params` routes them (``kwargs`` are its
    options): what a specgrad optimizer given a model instead of parameters uses, so
    ``Muon(model)`` is ``Muon(split_params(model).param_groups())``, the optimizer's own
    settings for the spectral group and its ``adamw`` settings for the rest.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> [(g.get("algorithm", "spectral"), len(g["params"])) for g in routed_params(net)]
        [('spectral', 1), ('adamw', 5)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"routed_params needs an nn.Module, got {type(model).__name__}")
    return split_params(model, **kwargs).param_groups()


def _check_patterns(patterns: dict, allowed: Optional[tuple], what: str) -> dict:
    patterns = dict(patterns or {})
    for pattern, value in patterns.items():
        if allowed is not None and value not in allowed:
            raise ValueError(f"{what} {pattern!r} -> {value!r}: must be one of {allowed}")
    return patterns


def split_params(model: nn.Module, overrides: Optional[dict[str, str]] = None, *,
                 views: Optional[dict[str, str]] = None, per_head: bool = False,
                 head_dim: Optional[int] = None) -> ParamRouting:  # fmt: skip
    """Decide, for every parameter of ``model``, the spectral rule or AdamW, and the matrix
    view (:class:`~specgrad.views.MatrixView`) the spectral rule acts on.

    Rules, in order:

    1. fewer than 2 dims (biases, norm gains, scalars) -> AdamW;
    2. parameters of normalization layers -> AdamW;
    3. ``nn.Embedding`` weights, and any head tied to them (the same tensor) -> AdamW;
    4. learned position embeddings and class/register/mask tokens (``pos_embed``,
       ``position_embeddings``, ``cls_token``, ...; or a non-layer parameter of shape
       ``(1, ...)``) -> AdamW;
    5. routers of mixture-of-experts layers (a module named ``gate``/``router`` or whose
       class is a router) -> AdamW: their few rows are expert scores;
    6. the output head (the last Linear/Conv/Conv1D in registration order) -> AdamW;
    7. the first layer, when the model has no embedding (it reads raw inputs) -> AdamW;
    8. every other parameter with >= 2 dims -> spectral, viewed by its module
       (:func:`~specgrad.views.view_of`): ``Conv1D`` transposed, fused q/k/v as three
       matrices, expert stacks ``(E, out, in)`` as E matrices, convs flattened.

    ``overrides`` maps ``fnmatch`` patterns of parameter names to ``"spectral"`` or
    ``"adamw"``; ``views`` maps patterns to a view spec (see
    :func:`~specgrad.views.parse_view`, e.g. ``"transposed,rows=3"``); both win over the
    rules. ``per_head``: attention weights as one matrix per head: the rows of query, key,
    value projections (``q_proj``, ``k_proj``, ``v_proj``, GPT-2's fused ``c_attn``,
    ``nn.MultiheadAttention``'s ``in_proj_weight``, ...) and the columns of the output
    projection (``o_proj``, ``out_proj``, GPT-2's ``attn.c_proj``, ...) of every module with
    a head size (:func:`~specgrad.views.attention_heads`); ``head_dim`` sets the head size
    (and implies ``per_head``) where the modules do not say it. Names lose the prefixes of
    ``torch.compile`` and wrappers (:data:`WRAPPER_PREFIXES`).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> r = split_params(net)
        >>> r.table()[["name", "rule", "view"]].values.tolist()[:3]
        [['0.weight', 'adamw', ''], ['0.bias', 'adamw', ''], ['2.weight', 'spectral', '(8, 8)']]
        >>> opt = specgrad.optim.Muon(r.param_groups(spectral={"lr": 0.02}, adamw={"lr": 1e-3}))
    """
    overrides = _check_patterns(overrides, RULES, "override")
    view_specs = _check_patterns(views, None, "view")
    if head_dim is not None:
        check_positive_int(head_dim, "head_dim")
        per_head = True
    model = unwrap(model)
    heads = attention_heads(model, head_dim) if per_head else {}
    owner: dict[int, tuple[nn.Module, str]] = {}
    uses: dict[int, dict[str, nn.Module]] = {}  # every name a (tied) parameter goes by
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), (module, pname))
            uses.setdefault(id(p), {})[clean_name(f"{mname}.{pname}" if mname else pname)] = module
    layers = [m for m in model.modules() if is_layer(m)]
    has_embedding = any(isinstance(m, nn.Embedding) for m in model.modules())
    head = layers[-1] if layers else None
    first = layers[0] if layers and not has_embedding and len(layers) > 1 else None

    routes = []
    used = set()
    for raw, p in model.named_parameters():
        name = clean_name(raw)
        module, attr = owner[id(p)]
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        view = view_of(module, attr, p, name=name, per_head=per_head)
        unsplit = ""
        if id(module) in heads and view is not None and "bias" not in attr:
            try:
                view = split_heads(view, *heads[id(module)])
            except ValueError as e:  # a child named like a projection that is not one: kept whole, and said
                unsplit = f" (not per head: {e})"
        tied = {u: m for u, m in uses[id(p)].items() if u != name}
        if p.ndim < 2:
            rule, reason = "adamw", "fewer than 2 dims (bias, gain or scalar)"
        elif "bias" in attr:  # MultiheadAttention's bias_k / bias_v, an expert stack's (E, out) biases
            rule, reason = "adamw", "bias"
        elif isinstance(module, _NORMS):
            rule, reason = "adamw", "normalization layer"
        elif any(isinstance(m, nn.Embedding) for m in (module, *tied.values())):
            rule, reason = "adamw", "embedding" + (f" (tied to {', '.join(tied)})" if tied else "")
        elif TOKEN_NAMES.search(name) or (not is_layer(module) and not isinstance(module, nn.MultiheadAttention)
                                          and p.shape[0] == 1):  # fmt: skip
            rule, reason = "adamw", "position embedding or learned token (looked up, not multiplied)"
        elif ROUTER_NAMES.search(module_name) or "router" in type(module).__name__.lower():
            rule, reason = "adamw", "router (expert scores)"
        elif module is head:
            rule, reason = "adamw", "output head (last layer)"
        elif module is first:
            rule, reason = "adamw", "first layer (reads the raw input)"
        else:
            rule, reason = "spectral", "hidden matrix" if view.batch == 1 else f"hidden matrices ({view.kind})"
        for pattern, forced in overrides.items():
            if fnmatch.fnmatch(name, pattern):
                used.add(pattern)
                if forced == "spectral" and p.ndim < 2:
                    raise ValueError(f"override {pattern!r} sends {name} (shape {tuple(p.shape)}) to the spectral rule, which needs >= 2 dims")
                rule, reason = forced, f"override {pattern!r}"
        for pattern, spec in view_specs.items():
            if fnmatch.fnmatch(name, pattern):
                used.add(pattern)
                view = parse_view(spec, p.shape)
        routes.append(Route(name, tuple(p.shape), rule, reason + unsplit, view))
    unused = (set(overrides) | set(view_specs)) - used
    if unused:
        raise ValueError(f"patterns matched no parameter: {sorted(unused)}")
    return ParamRouting(model, routes)

