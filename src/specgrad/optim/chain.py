"""``ChainOptimizer``: a ``torch.optim.Optimizer`` whose param groups each run a chain of
transforms, chosen by the group's ``algorithm``.

Subclasses (:class:`~specgrad.optim.Muon`, :class:`~specgrad.optim.SpecGD`, ...) declare
their matrix rule; every one of them also carries the ``"adamw"`` rule, which parameters
with fewer than 2 dims get automatically.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from ..linalg import QuinticSchedule, as_schedule
from ..views import MatrixView
from .distributed import check_grads_agree, is_sharded
from .routing import routed_params
from .transforms import Transform, Updates, adamw_chain

SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)
ADAMW_DEFAULTS = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0, "cautious_weight_decay": False}


class NonFiniteGradError(FloatingPointError):
    """A gradient holds NaN or Inf; raised before any parameter or state is written."""


class ChainOptimizer(Optimizer):
    """Base of specgrad's optimizers.

    Subclasses set ``rule`` (the algorithm name of matrix parameters) and ``chain()`` (the
    transforms of that rule), and pass their constructor's hyperparameters as ``defaults``.
    A param group gets those, then the ``defaults`` of its chain's links for any key still
    missing, and is checked by each link's ``validate``. Parameters passed straight from
    ``model.parameters()`` are split: those with fewer than 2 dims go to an ``"adamw"``
    group with the ``adamw_*`` hyperparameters. A group may also name its rule explicitly:
    ``{"params": [...], "algorithm": "adamw", "lr": 3e-4}``.

    ``nonfinite``: ``"raise"`` (default) raises :class:`NonFiniteGradError` naming the
    parameter before anything is written; ``"skip"`` warns and skips the whole step,
    parameters and state untouched. Parameters whose ``grad`` is None are skipped entirely.
    A step that raises part way leaves the step counters of the group it failed in as they
    were (and forgets state the step created), so a retried step counts once.

    Parameters are real floating tensors; complex ones only in the AdamW rule (as
    ``torch.optim.AdamW`` takes them: real and imaginary parts as two real parameters).
    Sparse gradients are refused, as by ``torch.optim.AdamW``. ``state_dict`` keeps plain
    types only (``torch.load(weights_only=True)`` reads it) and records each group's chain,
    so a state dict of another optimizer type is refused by :meth:`load_state_dict`.

    Distributed (``torch.distributed`` initialized with more than one rank): parameters that
    are FSDP2 DTensors are handled shard-wise, each spectral map computed by one owner rank;
    with ``distribute=True`` replicated (DDP) parameters also split the spectral work
    across ranks. In both cases the checks above run collectively (one ``all_reduce`` of
    flags): a NaN on any rank stops every rank, and ranks that disagree about which
    parameters have gradients all raise the same error instead of hanging.
    """

    rule: str = ""
    matrix_only: bool = True  # route parameters with < 2 dims to the AdamW rule
    # whether the chain acts on a parameter's matrix view (a group's "matrix_views", as
    # split_params gives them: Conv1D transposed, fused q/k/v and expert stacks as batches);
    # a chain that does not reads every weight as (out, in * ...)
    uses_views: bool = True

    def __init__(self, params, defaults: dict, *, adamw: Optional[dict] = None, nonfinite: str = "raise",
                 distribute: bool = False):  # fmt: skip
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        if distribute and not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distribute=True needs an initialized torch.distributed process group")
        self.nonfinite = nonfinite
        self.distribute = bool(distribute)
        self._adamw_defaults = {**ADAMW_DEFAULTS, **(adamw or {})}
        unknown = set(self._adamw_defaults) - set(ADAMW_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown AdamW settings {sorted(unknown)}; allowed: {sorted(ADAMW_DEFAULTS)}")
        self._chains: dict[str, list[Transform]] = {self.rule: self.chain(), "adamw": adamw_chain()}
        self.matrix_views: dict[Tensor, MatrixView] = {}  # by parameter: kept out of state_dict
        self._complete(dict(self._adamw_defaults), "adamw")  # checked even if no parameter takes them
        if isinstance(params, nn.Module):  # routed as split_params does, not by the < 2 dims rule alone
            params = routed_params(params)
        super().__init__(params, {**defaults, "algorithm": self.rule})

    # -- what subclasses provide -------------------------------------------------------
    def chain(self) -> list[Transform]:
        raise NotImplementedError

    def _complete(self, group: dict, algorithm: str) -> dict:
        """Fill ``group``'s missing keys from the ``defaults`` of its chain's links, then let
        each link check the values it reads."""
        chain = self._chains[algorithm]
        for t in chain:
            for k, v in t.defaults.items():
                group.setdefault(k, v)
        for t in chain:
            t.validate(group)
        return group

    # -- param groups --------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        param_group = dict(param_group)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for k, p in enumerate(params):
            t = p[1] if isinstance(p, tuple) and len(p) == 2 else p
            if not isinstance(t, Tensor):
                raise TypeError(f"{type(self).__name__} can only optimize Tensors, but params[{k}] is "
                                f"{type(t).__name__}")  # fmt: skip
            if not (t.is_floating_point() or t.is_complex()):
                name = f"{p[0]!r}" if isinstance(p, tuple) else f"params[{k}]"
                raise ValueError(f"{name} has dtype {t.dtype}: only floating point parameters can be optimized")
        views = param_group.pop("matrix_views", None) or []
        if views and len(views) != len(params):
            raise ValueError(f"matrix_views has {len(views)} entries for {len(params)} parameters")
        for p, view in zip(params, views):
            if view is not None and self.uses_views:
                self.matrix_views[p[1] if isinstance(p, tuple) else p] = view
        algorithm = param_group.get("algorithm", self.rule)
        if algorithm not in self._chains:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(self._chains)}")

        def tensor(p):
            return p[1] if isinstance(p, tuple) else p

        if algorithm == self.rule and not self.matrix_only:
            self._add({**param_group, "params": params, "algorithm": self.rule})
        elif algorithm == self.rule:
            vectors = [p for p in params if tensor(p).ndim < 2]
            matrices = [p for p in params if tensor(p).ndim >= 2]
            if vectors and "algorithm" in param_group:
                shapes = [tuple(tensor(p).shape) for p in vectors]
                raise ValueError(f"algorithm {self.rule!r} needs parameters with >= 2 dims, got shapes {shapes}")
            if vectors:
                self._add(self._adamw_group(param_group, vectors))
            if matrices or not vectors:
                self._add({**param_group, "params": matrices, "algorithm": self.rule})
        else:
            self._add(self._adamw_group(param_group, params, explicit=True))

    def _adamw_group(self, group: dict, params: list, explicit: bool = False) -> dict:
        g = dict(self._adamw_defaults)
        if explicit:
            g.update({k: v for k, v in group.items() if k != "params"})
        g.update(params=params, algorithm="adamw")
        return g

    def _add(self, group: dict) -> None:
        if group["algorithm"] == self.rule:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
        if group["algorithm"] != "adamw":
            for k, p in enumerate(group["params"]):
                t = p[1] if isinstance(p, tuple) else p
                if t.is_complex():
                    name = f"{p[0]!r}" if isinstance(p, tuple) else f"parameter {k} of the group"
                    raise ValueError(f"{name} is complex ({t.dtype}); the {group['algorithm']!r} rule takes real "
                                     "parameters only: put it in a group with algorithm='adamw'")  # fmt: skip
        super().add_param_group(self._complete(group, group["algorithm"]))

    # -- checkpoints ------------------------------------------------------------------------
    def chain_names(self, algorithm: str) -> list[str]:
        """The transforms ``algorithm``'s groups run, by class name (kept in ``state_dict``)."""
        return [type(t).__name__ for t in self._chains[algorithm]]

    def state_dict(self) -> dict:
        """``torch.optim.Optimizer.state_dict`` in plain types (a coefficient schedule as its
        :meth:`~specgrad.linalg.QuinticSchedule.as_dict`), each group with its ``"chain"``."""
        sd = super().state_dict()
        for group in sd["param_groups"]:
            for k, v in group.items():
                if isinstance(v, QuinticSchedule):
                    group[k] = v.as_dict()
            group["chain"] = self.chain_names(group["algorithm"])
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict`; ``ValueError`` if it comes from another optimizer type
        (a group whose algorithm or chain this one does not run).

        Example:
            >>> from specgrad.optim import Muon, SpecGD
            >>> W = torch.nn.Parameter(torch.zeros(2, 2))
            >>> saved = Muon([W]).state_dict()
            >>> saved["param_groups"][0]["chain"][:3]
            ['Momentum', 'AsMatrix', 'Orthogonalize']
            >>> SpecGD([W]).load_state_dict(saved)
            Traceback (most recent call last):
            ...
            ValueError: cannot load this state_dict into SpecGD: its param_groups[0] runs algorithm 'muon', this optimizer runs ['adamw', 'specgd']; was it saved by another optimizer type?
        """
        groups = []
        for i, group in enumerate(state_dict["param_groups"]):
            algorithm = group.get("algorithm")
            if algorithm not in self._chains:
                raise ValueError(f"cannot load this state_dict into {type(self).__name__}: its param_groups[{i}] "
                                 f"runs algorithm {algorithm!r}, this optimizer runs {sorted(self._chains)}; "
                                 "was it saved by another optimizer type?")  # fmt: skip
            saved, ours = group.get("chain"), self.chain_names(algorithm)
            if saved is not None and list(saved) != ours:
                raise ValueError(f"cannot load this state_dict into {type(self).__name__}: its param_groups[{i}] "
                                 f"({algorithm!r}) ran the chain {' -> '.join(saved)}, this one runs "
                                 f"{' -> '.join(ours)}")  # fmt: skip
            group = {k: v for k, v in group.items() if k != "chain"}
            if isinstance(group.get("ns_coefficients"), dict):
                group["ns_coefficients"] = as_schedule(group["ns_coefficients"])
            groups.append(group)
        super().load_state_dict({**state_dict, "param_groups": groups})

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "_chains" in self.__dict__:  # load_state_dict: groups saved before a link gained a key
            for group in self.param_groups:
                for t in self._chains[group["algorithm"]]:
                    for k, v in t.defaults.items():
                        group.setdefault(k, v)

    # -- the step --------------------------------------------------------------------------
    def _describe(self, gi: int, pi: int, p: Tensor) -> str:
        names = self.param_groups[gi].get("param_names")
        where = names[pi] if names else f"param_groups[{gi}]['params'][{pi}]"
        return f"{where} (shape {tuple(p.shape)})"

    def _collective(self) -> bool:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return False
        return self.distribute or any(is_sharded(p) for g in self.param_groups for p in g["params"])

    def _nonfinite_grads(self) -> list[str]:
        """Names of parameters whose gradient holds NaN or Inf (on any rank, when
        distributed); one host sync, or one ``all_reduce``. A sparse gradient raises."""
        params = [(gi, pi, p) for gi, group in enumerate(self.param_groups) for pi, p in enumerate(group["params"])]
        for gi, pi, p in params:  # as torch.optim.AdamW, which names no parameter
            if p.grad is not None and p.grad.layout in SPARSE_LAYOUTS:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                                   f"({self._describe(gi, pi, p)}); nothing was updated")  # fmt: skip
        local = [p.grad.to_local() if p.grad is not None and is_sharded(p.grad) else p.grad for _, _, p in params]
        with_grad = [k for k, g in enumerate(local) if g is not None]
        bad = set()
        if with_grad:
            grads = [local[k] for k in with_grad]
            norms = torch.stack([n.float().to(grads[0].device) for n in torch._foreach_norm(grads)])
            # a finite gradient can have an overflowing norm: confirm flagged ones entry by entry
            bad = {with_grad[j] for j in (~torch.isfinite(norms)).nonzero().flatten().tolist()
                   if not bool(torch.isfinite(grads[j]).all())}  # fmt: skip
        if self._collective():
            split, bad = check_grads_agree([g is not None for g in local], [k in bad for k in range(len(local))],
                                            device=params[0][2].device if params else None)  # fmt: skip
            if split:
                names = [self._describe(*params[k]) for k in split]
                raise RuntimeError(
                    f"ranks disagree about which parameters have a gradient ({len(split)}: {', '.join(names[:5])}); "
                    "every rank must produce gradients for the same parameters (pass find_unused_parameters or zero grads)"
                )
        return [self._describe(*params[k]) for k in sorted(bad)]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        bad = self._nonfinite_grads()
        if bad:
            msg = f"non-finite gradient in {len(bad)} parameter(s): {', '.join(bad[:5])}"
            if self.nonfinite == "raise":
                raise NonFiniteGradError(msg + "; nothing was updated")
            warnings.warn(msg + "; step skipped", RuntimeWarning, stacklevel=2)
            return loss
        distributed = self.distribute and self._collective()
        for group in self.param_groups:
            chain = self._chains[group["algorithm"]]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states, fresh = [], []
            for p in params:
                state = self.state[p]
                if "step" not in state:
                    fresh.append(p)
                    state["step"] = torch.tensor(0.0)
                    for t in chain:
                        t.init(p, state, group)
                states.append(state)
            counters = [st["step"] for st in states]
            torch._foreach_add_(counters, 1)
            u = Updates(group, params, states, [p.grad for p in params], distributed=distributed,
                        views=[self.matrix_views.get(p) for p in params])
            try:
                for t in chain:
                    t(u)
            except BaseException:
                torch._foreach_sub_(counters, 1)
                for p in fresh:
                    del self.state[p]
                raise
        return loss
