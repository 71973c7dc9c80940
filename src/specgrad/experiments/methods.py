"""Method name -> optimizer: the one table every experiment builds its optimizers from, and
the learning-rate grids of a config.

``make(method, target, lr, **settings)`` calls :data:`METHODS`'s factory. ``target`` is an
``nn.Module`` or a list of parameters. A spectral method (``muon``, ``normuon``, ``adamuon``,
``specgd``, ``shampoo``, ``icm``) routes a module's parameters with :func:`~specgrad.optim.split_params` (``overrides``
as there) and trains what it leaves out with the AdamW rule ``adamw`` (a dict of AdamW
settings, ``lr`` included); a list of parameters is all spectral. A Euclidean method takes
every parameter with its own rule and ignores ``overrides`` and ``adamw``, so that one call
serves every method of a comparison. Each experiment states its methods' settings as data
next to its config (``SETTINGS`` tables); :func:`lm_optimizer` is the language-model one.

Learning-rate grids are config fields declared with :func:`lr_grid_field`, which names the
methods they serve (``fnmatch`` patterns); :func:`lr_grid` reads them. They stay ordinary
fields, so ``--set muon_lrs=0.01,0.02`` overrides a grid.

Example:
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
    ...                           torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> opt = make("muon", net, 0.02, momentum=0.95, adamw={"lr": 1e-3})
    >>> [len(g["params"]) for g in opt.param_groups]  # the hidden matrix; the rest on AdamW
    [1, 5]
    >>> type(make("sgd", net, 0.1, momentum=0.9, adamw={"lr": 1e-3})).__name__
    'SGD'
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..optim import (AdaMuon, Hybrid, Muon, NorMuon, NormalizedGD, Shampoo, SignDescent, SpecGD, SpectralDescent,
                     split_params)
from ..theory.curvature import Curvature, homogenization_ratio
from ..theory.icm_maps import icm_map

Target = Union[nn.Module, Sequence[Tensor]]


def parameters(target: Target) -> list[Tensor]:
    """Every parameter of a module, or the given list."""
    return list(target.parameters()) if isinstance(target, nn.Module) else list(target)


# -- Euclidean methods: every parameter takes the rule; ``overrides`` and ``adamw`` are accepted
# -- and unused, so that one call serves every method of a comparison ----------------------------


def sgd(target: Target, lr: float, *, momentum: float = 0.0, weight_decay: float = 0.0, overrides=None,
        adamw=None):  # fmt: skip
    """``torch.optim.SGD`` on every parameter (``momentum=0``: plain gradient descent)."""
    return torch.optim.SGD(parameters(target), lr=lr, momentum=momentum, weight_decay=weight_decay)


def adam(target: Target, lr: float, *, overrides=None, adamw=None):
    """``torch.optim.Adam`` with PyTorch's defaults on every parameter."""
    return torch.optim.Adam(parameters(target), lr=lr)


def adamw(target: Target, lr: float, *, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
          decay: str = "all", overrides=None, adamw=None):  # fmt: skip
    """``torch.optim.AdamW`` on every parameter; ``decay="matrices"`` puts the weight decay on
    parameters with at least 2 dims only (nanoGPT's recipe), ``"all"`` on every one."""
    if decay == "all":
        return torch.optim.AdamW(parameters(target), lr=lr, betas=betas, weight_decay=weight_decay)
    if decay != "matrices":
        raise ValueError(f"decay must be 'all' or 'matrices', got {decay!r}")
    params = parameters(target)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def normalized_gd(target: Target, lr: float, *, overrides=None, adamw=None):
    """:class:`~specgrad.optim.NormalizedGD`: ``W - lr G / ||G||_F`` per parameter."""
    return NormalizedGD(parameters(target), lr=lr)


def sign_descent(target: Target, lr: float, *, overrides=None, adamw=None):
    """:class:`~specgrad.optim.SignDescent`: ``W - lr sign(G)``."""
    return SignDescent(parameters(target), lr=lr)


# -- spectral methods -----------------------------------------------------------------------


def _spectral(cls, target: Target, lr: float, overrides: Optional[dict], adamw: Optional[dict],
              weight_decay: Optional[float], **kwargs):  # fmt: skip
    """``cls`` on ``target``: a module is routed (spectral group at ``lr``, with ``weight_decay``
    when given; the rest on the AdamW rule), a list of parameters is passed as it is."""
    if not isinstance(target, nn.Module):
        if weight_decay is not None:
            kwargs["weight_decay"] = weight_decay
        return cls(list(target), lr=lr, adamw=adamw, **kwargs)
    spectral = {"lr": lr} if weight_decay is None else {"lr": lr, "weight_decay": weight_decay}
    groups = split_params(target, overrides).param_groups(spectral=spectral, adamw=adamw)
    return cls(groups, adamw=adamw, **kwargs)


def muon(target: Target, lr: float, *, momentum: float = 0.95, nesterov: bool = True,
         shape_scaling: str = "original", cautious_weight_decay: bool = False, overrides: Optional[dict] = None,
         adamw: Optional[dict] = None, weight_decay: Optional[float] = None, cls=Muon, **settings):  # fmt: skip
    """:class:`~specgrad.optim.Muon` (or ``cls``, a preset of its chain) with its default
    orthogonalizer; ``settings`` are the further keys of ``cls``'s chain."""
    return _spectral(cls, target, lr, overrides, adamw, weight_decay, momentum=momentum, nesterov=nesterov,
                     shape_scaling=shape_scaling, cautious_weight_decay=cautious_weight_decay, **settings)  # fmt: skip


def normuon(target: Target, lr: float, *, beta2: float = 0.95, **kwargs):
    """:class:`~specgrad.optim.NorMuon`: Muon with a per-row second moment of its update;
    the rest as :func:`muon`."""
    return muon(target, lr, cls=NorMuon, beta2=beta2, **kwargs)


def adamuon(target: Target, lr: float, *, beta2: float = 0.999, sign_momentum: bool = True, **kwargs):
    """:class:`~specgrad.optim.AdaMuon`: Muon on the sign of the momentum with an elementwise
    second moment of its update; the rest as :func:`muon`."""
    return muon(target, lr, cls=AdaMuon, beta2=beta2, sign_momentum=sign_momentum, **kwargs)


def specgd(target: Target, lr: float, *, momentum: float = 0.0, nesterov: bool = False, orthogonalizer: str = "svd",
           shape_scaling: str = "none", overrides: Optional[dict] = None, adamw: Optional[dict] = None,
           weight_decay: Optional[float] = None):  # fmt: skip
    """:class:`~specgrad.optim.SpecGD`: the exact polar factor at a fixed step (with momentum
    when given)."""
    return _spectral(SpecGD, target, lr, overrides, adamw, weight_decay, momentum=momentum, nesterov=nesterov,
                     orthogonalizer=orthogonalizer, shape_scaling=shape_scaling)  # fmt: skip


def shampoo(target: Target, lr: float, *, overrides: Optional[dict] = None, adamw: Optional[dict] = None,
            weight_decay: Optional[float] = None):  # fmt: skip
    """:class:`~specgrad.optim.Shampoo` with its defaults (momentum 0.9, summed statistics, Adam
    grafting, roots every 10 steps)."""
    return _spectral(Shampoo, target, lr, overrides, adamw, weight_decay)


def icm(target: Target, lr: float, *, H: Curvature, samples: int = 1024, momentum: float = 0.0,
        nesterov: bool = False, shape_scaling: str = "none", overrides: Optional[dict] = None,
        adamw: Optional[dict] = None, weight_decay: Optional[float] = None):  # fmt: skip
    """:class:`~specgrad.optim.SpectralDescent` with the isotropic-curvature optimal map of
    ``H`` (:func:`~specgrad.theory.icm_maps.icm_map`). The optimizer's ``icm_log`` records, per
    call of the map, the homogenization ratio of ``s -> s*`` and the model's own step size
    ``max s*`` before normalization."""
    f = icm_map(H, samples=samples)
    log: dict[str, list] = {"homogenization": [], "raw_step": []}

    def logged(s):
        out = f(s)
        s_np, out_np = (x.detach().cpu().double().numpy() for x in (s, out))
        log["homogenization"].append(homogenization_ratio(s_np, out_np))
        log["raw_step"].append(float(f.last_solution.q.max()))  # ||s*||_op before normalization
        return out

    opt = _spectral(SpectralDescent, target, lr, overrides, adamw, weight_decay, f=logged, momentum=momentum,
                    nesterov=nesterov, shape_scaling=shape_scaling)  # fmt: skip
    opt.icm_log = log
    return opt


def hybrid(target: nn.Module, lr: float, **settings):
    """:class:`~specgrad.optim.Hybrid` on a module, with its settings as given."""
    return Hybrid(target, lr=lr, **settings)


METHODS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "gd": sgd,  # SGD without momentum
    "sgd": sgd,
    "adam": adam,
    "adamw": adamw,
    "ngd": normalized_gd,
    "sign": sign_descent,
    "muon": muon,
    "muon-cautious": muon,  # the same factory; its settings turn cautious weight decay on
    "normuon": normuon,
    "adamuon": adamuon,
    "specgd": specgd,
    "shampoo": shampoo,
    "icm": icm,
    "hybrid": hybrid,
}


def make(method: str, target: Target, lr: float, **settings: Any) -> torch.optim.Optimizer:
    """The optimizer of ``method`` (a key of :data:`METHODS`) on ``target`` at ``lr``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method](target, lr, **settings)


# -- the language-model recipe ----------------------------------------------------------------

LM_METHODS = ("adamw", "muon", "specgd", "normuon", "adamuon", "muon-cautious")
LM_SETTINGS = {
    # AdamW on everything, betas (0.9, 0.99), decay on matrices (nanoGPT's shakespeare_char)
    "adamw": dict(betas=(0.9, 0.99), weight_decay=0.1, decay="matrices"),
    # hidden matrices spectral, Nesterov 0.95, Muon's default orthogonalizer, "original" shape scaling
    "muon": dict(momentum=0.95, nesterov=True),
    # the same with the exact SVD polar factor (SpecGD with momentum)
    "specgd": dict(momentum=0.95, nesterov=True, orthogonalizer="svd", shape_scaling="original"),
    # Muon's settings (and "original" scaling, so one lr grid serves the Muon family) with
    # NorMuon's row normalization / AdaMuon's sign and elementwise second moment at their
    # papers' constants
    "normuon": dict(momentum=0.95, nesterov=True, beta2=0.95),
    "adamuon": dict(momentum=0.95, nesterov=True, beta2=0.999, sign_momentum=True),
    # Muon with cautious decay: lr * weight_decay = 5e-4 at lr 0.02, the order of AdamW's
    # 3e-3 * 0.1 (Muon's lr is ~10x AdamW's, so AdamW's 0.1 would decay ~10x harder)
    "muon-cautious": dict(momentum=0.95, nesterov=True, weight_decay=0.025, cautious_weight_decay=True),
}


def lm_adamw_rule(adamw_lr: float) -> dict:
    """The AdamW rule of the spectral methods on embeddings, head and norms."""
    return {"lr": adamw_lr, "betas": (0.9, 0.99), "weight_decay": 0.0}


def lm_optimizer(method: str, model: nn.Module, lr: float, adamw_lr: float, weight_decay: float = 0.1):
    """The optimizers of the char-LM comparisons (:data:`LM_SETTINGS`): ``adamw`` (with
    ``weight_decay`` on matrices), or a spectral method (``muon``, ``specgd``, ``normuon``,
    ``adamuon``, ``muon-cautious``) on the hidden matrices with the AdamW rule at
    ``adamw_lr`` on the rest."""
    if method not in LM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {LM_METHODS}")
    settings = dict(LM_SETTINGS[method], **({"weight_decay": weight_decay} if method == "adamw" else {}))
    return make(method, model, lr, adamw=lm_adamw_rule(adamw_lr), **settings)


# -- learning-rate grids ------------------------------------------------------------------------


def lr_grid_field(*methods: str, default: Sequence[float]) -> Any:
    """A config field holding the learning-rate grid of ``methods`` (``fnmatch`` patterns of
    the names :func:`lr_grid` is asked for). An ordinary tuple field otherwise: its name and
    ``--set`` stay as they are."""
    if not methods:
        raise ValueError("name at least one method the grid serves")
    return dataclasses.field(default=tuple(default), metadata={"lr_grid": methods})


def lr_grid(config: Any, method: str) -> tuple[float, ...]:
    """The grid of ``method`` in ``config``: the first field declared with
    :func:`lr_grid_field` whose patterns match ``method``.

    Example:
        >>> @dataclasses.dataclass
        ... class Config:
        ...     muon_lrs: tuple[float, ...] = lr_grid_field("muon", "muon-*", default=(0.01, 0.03))
        >>> lr_grid(Config(), "muon-head")
        (0.01, 0.03)
    """
    for f in dataclasses.fields(config):
        patterns = f.metadata.get("lr_grid", ())
        if any(fnmatch.fnmatchcase(method, p) for p in patterns):
            return tuple(getattr(config, f.name))
    raise ValueError(f"{type(config).__name__} has no learning-rate grid for {method!r}")

