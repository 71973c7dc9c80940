"""``SpectralMonitor``: the layerwise test ``nr(G_l) >= st(A_{l-1})`` measured during training.

For a block ``W`` (``out x in``) fed by activations ``A`` (rows = samples or tokens), the
one-step theory of Davis & Drusvyatskiy guarantees a decrease of ``||G||_F^2 / (2 L_F)``
for a Euclidean step and ``||G||_*^2 / (2 L_op)`` for a spectral one, with
``L_F ~ ||A||_op^2`` and ``L_op ~ ||A||_F^2``; the ratio of the two is ``nr(G) / st(A)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union

import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..linalg import Workspace, check_positive_int, frobenius_nuclear_norms, top_eigenpairs
from ..views import MatrixView
from .accumulators import ActivationGram, check_blocks, frobenius_sq_or_nan, make_accumulator
from .inputs import (ActivationFn, BlockSpec, Getter, Skip, clean, conv2d_patches, first_input, model_blocks, untie,
                     user_getter, whole_view)

# -- tuning ------------------------------------------------------------------------------
# Blocks with up to this many input features get an exact activation Gram (memory
# O(d_in^2)); wider ones a row sketch. The default of SpectralMonitor's max_dim.
MAX_DIM = 4096
# ||A||_op^2 of an exact Gram comes from Lanczos to this relative residual, started from
# the block's top eigenvector of its last sampled step: within 1e-4 relative whatever the
# spectral gap, about 1e-8 (residual^2 / gap) with the dominant top of activations.
LANCZOS_TOL = 1e-4
# Grams up to this size go to a dense eigh instead (Lanczos steps cost more than it).
DIRECT_BELOW = 32
# Rows of the Gaussian sketch of a block wider than max_dim: st(A) within a relative error
# of order sqrt(st(A) / SKETCH_ROWS), a few percent for the small stable ranks of activations.
SKETCH_ROWS = 256

@dataclass
class _Tap:
    """One activation the monitor measures (a module's input, a part of it, an expert's
    tokens), its getter and accumulated statistics."""

    module: nn.Module
    kind: str
    dim: int
    activation: Getter
    stats: Any = None
    top_vector: Optional[Tensor] = None  # of the last sampled step's Gram: the next Lanczos start


@dataclass
class _Hooked:
    """A module's forward hook (present on sampled steps) and the taps it feeds."""

    module: nn.Module
    taps: list = field(default_factory=list)
    pre: list = field(default_factory=list)  # forward pre-hooks the getters need
    handles: list = field(default_factory=list)


@dataclass
class Block:
    """A weight matrix monitored against the activation that feeds it (read it with
    :meth:`SpectralMonitor.block`).

    ``name``: the block's name in the records; ``weight``: the parameter or its attribute
    name on :attr:`owner` (looked up at each step); ``view`` and ``index``: the block is
    matrix ``index`` of ``view.matrices(weight)`` (a :class:`~specgrad.views.MatrixView`:
    ``Conv1D`` transposed, fused q/k/v as three, an expert stack as one per expert);
    ``rows``: the part of that matrix this block is (a part of :meth:`SpectralMonitor.add_fused`),
    ``None`` for all. ``parameter``: the weight's name in ``named_parameters()``;
    ``uses``: every module that uses the weight when it is tied (an embedding and its
    output head), else ``()``. Blocks fed by one activation share its statistic.
    """

    name: str
    _tap: _Tap = field(repr=False)
    weight: Union[str, nn.Parameter]
    rows: Optional[slice] = None
    view: Optional[MatrixView] = None
    index: int = 0
    parameter: str = ""
    uses: tuple = ()
    _owner: Optional[nn.Module] = field(default=None, repr=False)

    @property
    def module(self) -> nn.Module:
        """The module whose forward feeds the activation."""
        return self._tap.module

    @property
    def owner(self) -> nn.Module:
        """The module that holds the weight (the :attr:`module`, except for
        ``MultiheadAttention.out_proj``, fed by its parent's forward)."""
        return self._owner if self._owner is not None else self._tap.module

    @property
    def kind(self) -> str:
        """``"linear"``, ``"conv2d"``, ``"conv1d"``, ``"embedding"``, ``"expert"`` or what
        :meth:`SpectralMonitor.add_block` was given."""
        return self._tap.kind

    @property
    def dim(self) -> int:
        """Width of the activation: the columns of the block's matrix (the vocabulary for
        an embedding)."""
        return self._tap.dim

    @property
    def statistic(self) -> Any:
        """The activation statistic of the current sampled step, ``None`` before any forward
        fed it: an :class:`~specgrad.diagnostics.accumulators.ActivationGram` (exact, up to
        ``max_dim`` features), a :class:`~specgrad.diagnostics.accumulators.SketchedActivation`
        or :class:`~specgrad.diagnostics.accumulators.TokenCounts` (embeddings), each with
        ``rows``, ``frobenius_sq()`` and ``operator_sq()``. Counted once backward reaches the
        module's output, and reset by :meth:`SpectralMonitor.step`."""
        return self._tap.stats

    def gram(self) -> Optional[Tensor]:
        """The exact activation Gram ``A^T A`` (float64 ``(dim, dim)``) of the current sampled
        step when the statistic has one, else ``None`` (reading it folds the rows the statistic
        keeps into the Gram). The monitor reuses the buffer after :meth:`SpectralMonitor.step`:
        clone it to keep it."""
        stats = self._tap.stats
        return stats.gram if isinstance(stats, ActivationGram) else None

    def param(self) -> Tensor:
        """The monitored weight (all of it, also when the block is a part of it)."""
        return getattr(self.owner, self.weight) if isinstance(self.weight, str) else self.weight

    def matrix(self, t: Tensor) -> Tensor:
        """This block's matrix ``(out, in)`` of ``t``, a tensor shaped like the weight."""
        M = self.view.matrices(t)[self.index]
        return M if self.rows is None else M[self.rows]

    def grad(self) -> Optional[Tensor]:
        """The gradient of this block, ``(out, in)`` (:meth:`matrix` of the weight's
        gradient: an embedding's and a ``Conv1D``'s transposed); ``None`` without one. A
        DTensor shard (FSDP2) is gathered whole."""
        g = self.param().grad
        if g is None:
            return None
        if hasattr(g, "full_tensor"):  # a DTensor shard (FSDP2): the block needs the whole matrix
            g = g.full_tensor()
        if g.is_sparse:
            g = g.to_dense()
        return self.matrix(g)


class SpectralMonitor:
    """Record, per block and on every ``every``-th step, ``st(A)`` of the incoming
    activation and ``nr(G)`` of the weight's gradient.

    Blocks: every matrix of ``model`` whose input the monitor can see, one per matrix of the
    weight's matrix view (:mod:`specgrad.views`; see :mod:`specgrad.diagnostics.inputs`):
    ``nn.Linear`` (any leading dims; tokens are rows), ``nn.Conv1d``/``nn.Conv2d`` (input
    patches unfolded; weight viewed as ``(out, in*k)``), ``nn.Embedding`` (the
    token-indicator matrix: ``st = 1/p_max`` from token counts), transformers' ``Conv1D``
    (read transposed; GPT-2's ``c_attn`` as blocks ``q``, ``k``, ``v``),
    ``nn.MultiheadAttention`` (``q``, ``k``, ``v`` fed by query, key and value;
    ``out_proj`` by the attention output, recomputed on sampled steps) and transformers
    expert stacks (one block per expert, fed by the tokens routed to it) — or those of the
    modules named in ``layers``; more with :meth:`add_block` and :meth:`add_fused`.
    ``views`` (by parameter name, e.g. ``split_params(model, per_head=True).views()``)
    replaces the view a parameter gets from its module. A weight tied to several modules
    (an embedding and its output head) is one block, its combined gradient measured
    against the input of its multiplying use; :attr:`Block.uses` names every use.
    Matrices the monitor cannot see (frozen, grouped convolutions, parameters of modules
    it does not know) are in :attr:`skipped` (block name -> reason); :meth:`coverage`
    lists both.

    A compiled model (``torch.compile(model)``, or compiled submodules) is hooked on its
    original modules, under names without ``_orig_mod.``; on sampled steps it runs eagerly
    (``torch.compiler.set_stance("force_eager")`` during its forward), since a compiled
    graph does not call hooks added after it was traced; the other steps run compiled.

    Activation statistics are exact for blocks up to ``max_dim`` wide, in memory
    ``O(d_in^2)`` whatever the batch: the rows themselves while they fit in the bytes of a
    float64 Gram, then the Gram (see :class:`~specgrad.diagnostics.accumulators.ActivationGram`);
    wider blocks stream into a row sketch (see
    :class:`~specgrad.diagnostics.accumulators.SketchedActivation`). ``||G||_*`` is exact on CPU
    and within ``min(m, n) * 1e-8`` relative on CUDA (see
    :func:`~specgrad.linalg.frobenius_nuclear_norms`). These buffers are kept from one
    sampled step to the next, so a sampled step allocates little. Only forward passes in training
    mode with gradients enabled whose output reaches ``backward`` count, so eval and
    ``no_grad`` passes are ignored, and the micro-batches of gradient accumulation add up.
    The hooks are attached for sampled steps only: the steps between run the model as if it
    were not monitored.

    Under ``torch.distributed`` (``distributed="auto"`` and an initialized process group,
    or ``True``) every sampled step sums the activation statistics of all ranks in one
    ``all_reduce``, and gradients sharded as DTensors (FSDP2) are gathered, so the records
    are those of the global batch, identical on every rank; loggers write on rank 0 only.
    Plain gradients are taken as they are: DDP has averaged them already. Build the monitor
    after wrapping the model (``fully_shard`` replaces the parameters).

    Call :meth:`step` once per optimizer step, after ``backward`` and before ``zero_grad``.
    With ``gradients=False`` only the activation statistics are computed (``nr_G`` and the
    gradient norms are NaN): for a caller that has the gradient's norms already, like
    :class:`~specgrad.optim.Hybrid`, which gets ``||M||_*`` free from ``polar(M)``.
    Records are in :attr:`records` (a list of dicts) and :meth:`frame` (a DataFrame); the
    verdict is ``"spectral"`` (``nr >= st``), ``"euclidean"`` or ``"no gradient"`` (an
    all-zero gradient). ``loggers`` receive each sampled step's rows. :attr:`blocks` names
    the blocks and :meth:`block` gives one (its weight, gradient and activation statistic),
    e.g. to read a sampled step's statistics between ``backward`` and :meth:`step`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        >>> with SpectralMonitor(net, every=1) as mon:
        ...     net(torch.randn(64, 8)).pow(2).mean().backward()
        ...     rows = mon.step()
        >>> mon.frame()[["block", "shape", "verdict"]].values.tolist()[1]
        ['2', '1x32', 'euclidean']
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 10,
        *,
        layers: Optional[Iterable[str]] = None,
        max_dim: int = MAX_DIM,
        loggers: Iterable = (),
        gradients: bool = True,
        distributed: Union[bool, str] = "auto",
        group: Optional[Any] = None,
        views: Optional[Mapping[str, MatrixView]] = None,
    ):
        check_positive_int(every, "every")
        check_positive_int(max_dim, "max_dim")
        if distributed not in (True, False, "auto"):
            raise ValueError(f"distributed must be True, False or 'auto', got {distributed!r}")
        initialized = dist.is_available() and dist.is_initialized()
        if distributed is True and not initialized:
            raise ValueError("distributed=True needs an initialized torch.distributed process group")
        self.group = group
        self.world = dist.get_world_size(group) if initialized and distributed else 1
        self.rank = dist.get_rank(group) if self.world > 1 else 0
        self.every = every
        self.gradients = gradients
        self.max_dim = max_dim
        self.loggers = list(loggers) if self.rank == 0 else []
        self.records: list[dict] = []
        self.skipped: dict[str, str] = {}
        self._skips: list[Skip] = []
        self._taps: dict[tuple, _Tap] = {}
        self._hooked: dict[int, _Hooked] = {}
        self._blocks: list[Block] = []
        self._step = 0
        self._sketch_seed = 0
        self._workspace = Workspace()  # scratch shared by the blocks' products and norms
        self._open = True
        self._compiled = [m for m in model.modules() if isinstance(getattr(m, "_orig_mod", None), nn.Module)]
        if self._compiled and not hasattr(torch.compiler, "set_stance"):
            raise ValueError("a compiled model needs torch >= 2.6 (torch.compiler.set_stance) to be monitored; "
                             "pass model._orig_mod and run the monitored steps uncompiled")  # fmt: skip
        self._stance_handles: list = []
        self._stances: list = []
        self._pnames = {id(p): clean(n) for n, p in model.named_parameters()}
        modules = {clean(n): m for n, m in model.named_modules()}
        specs, skips = model_blocks(model, views)
        if layers is not None:
            names = [clean(n) for n in layers]
            missing = [n for n in names if n not in modules]
            if missing:
                raise ValueError(f"no modules named {missing}; some that exist: {list(modules)[1:8]}")
            specs = [s for s in specs if s.owner_name in names]
            skips = [s for s in skips if s.owner_name in names]
            seen = {s.owner_name for s in specs} | {s.owner_name for s in skips}
            for n in names:
                if n not in seen:
                    raise ValueError(f"module {n!r} ({type(modules[n]).__name__}) needs add_block with an activation getter")
        uses: dict[int, list[str]] = {}
        for n, m in modules.items():
            for p in m.parameters(recurse=False):
                if n not in uses.setdefault(id(p), []):
                    uses[id(p)].append(n)
        for spec in untie(specs):
            tied = tuple(uses.get(id(spec.weight), ())) if len(uses.get(id(spec.weight), ())) > 1 else ()
            self._register(spec, tied)
        for skip in skips:
            self._skips.append(skip)
            self.skipped[skip.name] = skip.reason
        self._arm()

    # -- registration ------------------------------------------------------------------------
    def _tap(self, module: nn.Module, key, kind: str, activation: Getter, dim: int, pre=None) -> _Tap:
        tap = self._taps.get((id(module), key))
        if tap is None:
            tap = self._taps[(id(module), key)] = _Tap(module, kind, dim, activation)
            hooked = self._hooked.setdefault(id(module), _Hooked(module))
            hooked.taps.append(tap)
            if pre is not None and pre not in hooked.pre:
                hooked.pre.append(pre)
                self._disarm(hooked)
            self._arm([hooked])
        elif (tap.kind, tap.dim) != (kind, dim):
            raise ValueError(f"module {type(module).__name__} is already tapped as kind {tap.kind!r} of width {tap.dim}, "
                             f"not {kind!r} of width {dim}")  # fmt: skip
        return tap

    def _register(self, spec: BlockSpec, uses: tuple = ()) -> None:
        tap = self._tap(spec.module, spec.key, spec.kind, spec.activation, spec.dim, spec.pre)
        owner = spec.owner if spec.owner is not spec.module else None
        self._blocks.append(Block(spec.name, tap, spec.attr, None, spec.view, spec.index, spec.parameter, uses, owner))

    def add_block(
        self,
        name: str,
        module: nn.Module,
        *,
        weight: Union[str, nn.Parameter] = "weight",
        activation: ActivationFn = first_input,
        kind: str = "linear",
        rows: Optional[slice] = None,
        in_features: Optional[int] = None,
        view: Optional[MatrixView] = None,
        index: int = 0,
    ) -> "SpectralMonitor":
        """Monitor ``weight`` of ``module`` against ``activation(module, args, output)``,
        a tensor ``(..., in_features)`` (or token ids for ``kind="embedding"``).

        The block is matrix ``index`` of ``view`` (default: the whole weight as its module
        reads it, e.g. transposed for transformers' ``Conv1D`` and an embedding, one matrix
        per expert of an expert stack), rows ``rows`` of it.

        Example:
            >>> experts = torch.nn.Module()
            >>> experts.w = torch.nn.Parameter(torch.randn(4, 6, 3))  # 4 experts, (out, in) = (6, 3)
            >>> mon = SpectralMonitor(torch.nn.Sequential(), every=1)
            >>> mon = mon.add_block("expert2", experts, weight="w", index=2, activation=lambda m, a, o: a[0])
            >>> str(mon.block("expert2").view), mon.block("expert2").dim
            ('4 x (6, 3)', 3)
        """
        W = getattr(module, weight) if isinstance(weight, str) else weight
        if not isinstance(W, Tensor) or W.ndim < 2:
            raise ValueError(f"block {name!r}: weight must be a tensor with >= 2 dims, got {type(W).__name__}")
        view = view if view is not None else whole_view(module, weight, W, kind)
        dim = in_features if in_features is not None else view.cols
        tap = self._tap(module, activation, kind, user_getter(activation), dim)
        name = name or type(module).__name__
        self._blocks.append(Block(name, tap, weight, rows, view, index, self._pnames.get(id(W), "")))
        return self

    def add_fused(self, name: str, module: nn.Module, parts: Iterable[str] = ("q", "k", "v"),
                  weight: Union[str, nn.Parameter] = "weight", **kwargs) -> "SpectralMonitor":  # fmt: skip
        """Monitor a fused weight (e.g. QKV ``(3d, d)``, or GPT-2's ``c_attn`` stored
        ``(d, 3d)``) as equal row blocks of its matrix view, one per part, all fed by the
        same activation; blocks are named ``f"{name}.{part}"``.

        Example:
            >>> qkv = torch.nn.Linear(4, 12)
            >>> SpectralMonitor(torch.nn.Sequential(), every=1).add_fused("attn", qkv).blocks
            ['attn.q', 'attn.k', 'attn.v']
        """
        parts = list(parts)
        W = getattr(module, weight) if isinstance(weight, str) else weight
        view = kwargs.pop("view", None) or whole_view(module, weight, W, kwargs.get("kind", "linear"))
        out = view.rows
        if out % len(parts):
            raise ValueError(f"{out} rows do not split into {len(parts)} equal parts")
        size = out // len(parts)
        for k, part in enumerate(parts):
            rows = slice(k * size, (k + 1) * size)
            self.add_block(f"{name}.{part}", module, weight=weight, rows=rows, view=view, **kwargs)
        return self

    @property
    def blocks(self) -> list[str]:
        """The names of the monitored blocks, in the order of the records."""
        return [b.name for b in self._blocks]

    def block(self, name: str) -> Block:
        """The monitored block named ``name`` (the first, if several share it).

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
            >>> with SpectralMonitor(net, every=1) as mon:
            ...     net(torch.randn(5, 4)).sum().backward()
            ...     b = mon.block("0")
            ...     b.kind, tuple(b.grad().shape), b.statistic.rows, tuple(b.gram().shape)
            ('linear', (3, 4), 5, (4, 4))
        """
        for b in self._blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block named {name!r}; the blocks are {self.blocks}")

    def coverage(self) -> pd.DataFrame:
        """Every matrix of the model, monitored or not: one row per block with ``block``,
        ``parameter``, ``view`` (of the whole parameter), ``status`` (``"monitored"`` or
        ``"skipped"``) and ``reason``.

        Example:
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Conv2d(4, 4, 3, groups=2))
            >>> SpectralMonitor(net).coverage()[["block", "status", "reason"]].values.tolist()
            [['0', 'monitored', ''], ['1', 'skipped', 'grouped convolution']]
        """
        rows = [dict(block=b.name, parameter=b.parameter, view=str(b.view), status="monitored", reason="")
                for b in self._blocks]  # fmt: skip
        rows += [dict(block=s.name, parameter=s.parameter, view=s.view, status="skipped", reason=s.reason)
                 for s in self._skips]  # fmt: skip
        return pd.DataFrame(rows, columns=["block", "parameter", "view", "status", "reason"])

    # -- hooks -------------------------------------------------------------------------------
    @property
    def sampling(self) -> bool:
        """Whether the current step is recorded."""
        return self._open and self._step % self.every == 0

    def _arm(self, hooked: Optional[Iterable[_Hooked]] = None) -> None:
        """Hook the modules (default: all) for a sampled step and unhook them for the others,
        which then run the model exactly as if it were not monitored."""
        on = self.sampling
        for h in self._hooked.values() if hooked is None else hooked:
            if on and not h.handles:
                h.handles = [h.module.register_forward_pre_hook(p, with_kwargs=True) for p in h.pre]
                h.handles.append(h.module.register_forward_hook(self._make_hook(h), with_kwargs=True))
            elif not on:
                self._disarm(h)
        if hooked is None:
            if on and not self._stance_handles:
                for m in self._compiled:
                    self._stance_handles += [m.register_forward_pre_hook(self._eager),
                                             m.register_forward_hook(self._compiled_again, always_call=True)]  # fmt: skip
            elif not on:
                for handle in self._stance_handles:
                    handle.remove()
                self._stance_handles = []

    @staticmethod
    def _disarm(h: _Hooked) -> None:
        for handle in h.handles:
            handle.remove()
        h.handles = []

    def _eager(self, module, args) -> None:
        stance = torch.compiler.set_stance("force_eager")
        stance.__enter__()
        self._stances.append(stance)

    def _compiled_again(self, module, args, output) -> None:
        if self._stances:
            self._stances.pop().__exit__(None, None, None)

    def _make_hook(self, hooked: _Hooked):
        def hook(module, args, kwargs, output):
            # attached on sampled steps only (see _arm), so sampling needs no test here
            if not (module.training and torch.is_grad_enabled()):
                return
            out = output if isinstance(output, Tensor) else next(
                (o for o in (output if isinstance(output, (tuple, list)) else ()) if isinstance(o, Tensor) and o.requires_grad), None
            )  # fmt: skip
            if out is None or not out.requires_grad:
                return
            inputs = (*args, *kwargs.values())
            cache: dict = {}  # shared by the getters of this call
            pending = []
            for tap in hooked.taps:
                act = tap.activation(module, args, kwargs, output, cache)
                if act is None:
                    continue
                # a fresh seed per accumulator: micro-batches (and repeated calls of one module)
                # must be sketched independently, or their sketches add up to Phi (A_1 + A_2)
                # and across ranks, whose sketches are summed too
                self._sketch_seed += 1
                seed = self._sketch_seed * self.world + self.rank
                acc = make_accumulator(tap.kind, tap.dim, self.max_dim, device=act.device, seed=seed,
                                       workspace=self._workspace, sketch_rows=SKETCH_ROWS)  # fmt: skip
                if isinstance(acc, ActivationGram):
                    # multiplied (or copied) only once backward reaches the output: a module's
                    # input is kept alive until then anyway, and rows no bigger than a float64
                    # Gram bound the memory; other activations (unfolded patches) are multiplied now
                    small = act.numel() * act.element_size() <= 8 * tap.dim**2
                    acc.update(act, borrow=small or any(act is a for a in inputs))
                else:
                    acc.update(act)
                pending.append((tap, acc))
            done = []

            def commit(grad):
                if not done and self._open:
                    done.append(True)
                    for tap, acc in pending:
                        self._stats(tap, acc.device).merge(acc)

            out.register_hook(commit)

        return hook

    def _stats(self, tap: _Tap, device) -> Any:
        """The tap's accumulator, kept (and reset) from one sampled step to the next."""
        if tap.stats is None or tap.stats.device != torch.device(device):
            tap.stats = make_accumulator(tap.kind, tap.dim, self.max_dim, device=device, workspace=self._workspace,
                                         sketch_rows=SKETCH_ROWS)  # fmt: skip
        return tap.stats

    # -- steps -------------------------------------------------------------------------------
    def step(self) -> list[dict]:
        """Close the current step: on a sampled step, compute and return its records.

        Raises :class:`~specgrad.linalg.NonFiniteStatisticError` naming the blocks whose
        activation or gradient holds NaN or Inf; the step is closed all the same (nothing
        recorded, statistics reset), so the monitor goes on with the next one."""
        if not self._open:
            raise RuntimeError("the monitor is closed")
        try:
            rows = self._collect() if self.sampling else []
        finally:  # a step that raised (non-finite statistics) is closed all the same
            for tap in self._taps.values():
                if tap.stats is not None:
                    tap.stats.reset()
            self._step += 1
            self._arm()
        if rows:
            self.records.extend(rows)
            for logger in self.loggers:
                logger.log(rows)
        return rows

    def _sum_across_ranks(self) -> None:
        """Sum every tap's statistics over the ranks (one ``all_reduce``); a tap that saw no
        rows on some rank joins with zeros, so the ranks agree on what is reduced (one that
        no rank saw ends with no rows and records nothing)."""
        taps = list(self._taps.values())
        fed = next((t.stats for t in taps if t.stats is not None), None)
        device = fed.device if fed is not None else self._blocks[0].param().device
        for t in taps:
            self._stats(t, device)
        parts = [x for t in taps for x in t.stats.state()]
        rows = torch.tensor([float(t.stats.rows) for t in taps], dtype=torch.float64, device=device)
        flat = torch.cat([x.reshape(-1).to(device) for x in parts] + [rows])
        dist.all_reduce(flat, group=self.group)
        offset = 0
        for x in parts:
            x.copy_(flat[offset : offset + x.numel()].view_as(x))
            offset += x.numel()
        for t, n in zip(taps, flat[offset:].tolist()):
            t.stats.rows = int(n)

    def _collect(self) -> list[dict]:
        if self.world > 1:
            self._sum_across_ranks()
        todo = []
        for b in self._blocks:
            stats = b.statistic
            if stats is not None and stats.rows > 0:
                G = b.grad()
                if G is not None:
                    todo.append((b, stats, G))
        # ||A||_op^2 of every exact Gram of this step in one batched call; a tap is computed
        # once however many blocks (parts of a fused weight) it feeds
        taps = list({id(b._tap): b._tap for b, _, _ in todo}.values())
        fro_sq = {id(t): frobenius_sq_or_nan(t.stats) for t in taps}
        # a NaN or Inf activation entry reaches ||A||_F^2: refuse it before an eigensolver does
        check_blocks([b.name for b, _, _ in todo if not math.isfinite(fro_sq[id(b._tap)])], "activation", self._step)
        grams = [t for t in taps if isinstance(t.stats, ActivationGram)]
        pairs = top_eigenpairs([t.stats.operator(DIRECT_BELOW) for t in grams], [t.top_vector for t in grams],
                               tol=LANCZOS_TOL, direct_below=DIRECT_BELOW, workspace=self._workspace)  # fmt: skip
        op_sq = {}
        for t, (value, vector) in zip(grams, pairs):
            op_sq[id(t)], t.top_vector = value, vector
        norms = {id(t): (fro_sq[id(t)], op_sq[id(t)] if id(t) in op_sq else t.stats.operator_sq()) for t in taps}
        nan = (math.nan, math.nan)
        g_norms = self._gradient_norms(todo) if self.gradients else [nan] * len(todo)
        rows = []
        for (b, stats, G), (g_fro, g_nuc) in zip(todo, g_norms):
            a_fro_sq, a_op_sq = norms[id(b._tap)]
            st = a_fro_sq / a_op_sq if a_op_sq > 0 else 0.0
            nr = (g_nuc / g_fro) ** 2 if g_fro > 0 else (math.nan if math.isnan(g_fro) else 0.0)
            ratio = nr / st if st > 0 else math.nan
            verdict = "no gradient" if g_fro == 0 else "spectral" if ratio >= 1 else "euclidean"
            rows.append(dict(
                step=self._step, block=b.name, kind=b.kind, shape=f"{G.shape[0]}x{G.shape[1]}",
                rows=stats.rows, st_A=st, nr_G=nr, ratio=ratio, verdict=verdict,
                grad_fro=g_fro, grad_nuc=g_nuc, act_fro=math.sqrt(a_fro_sq), act_op=math.sqrt(a_op_sq),
            ))  # fmt: skip
        return rows

    def _gradient_norms(self, todo: list) -> list[tuple[float, float]]:
        """``(||G||_F, ||G||_*)`` of each block's gradient; NaN or Inf raises naming the block
        (looked for only when the norms fail or come out non-finite)."""
        try:
            out = frobenius_nuclear_norms([G for _, _, G in todo], workspace=self._workspace)
        except torch.linalg.LinAlgError as e:
            check_blocks([b.name for b, _, G in todo if not bool(torch.isfinite(G).all())], "gradient", self._step, e)
            raise
        check_blocks([b.name for (b, _, _), norms in zip(todo, out) if not all(map(math.isfinite, norms))],
                     "gradient", self._step)  # fmt: skip
        return out

    def frame(self) -> pd.DataFrame:
        """All records so far, one row per (step, block)."""
        return pd.DataFrame(self.records, columns=COLUMNS)

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Remove every hook and drop every reference to the model."""
        self._open = False
        self._arm()
        while self._stances:
            self._stances.pop().__exit__(None, None, None)
        self._taps.clear()
        self._hooked.clear()
        self._blocks.clear()
        self._compiled = []
        for logger in self.loggers:
            logger.close()

    def __enter__(self) -> "SpectralMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


COLUMNS = ["step", "block", "kind", "shape", "rows", "st_A", "nr_G", "ratio", "verdict",
           "grad_fro", "grad_nuc", "act_fro", "act_op"]  # fmt: skip
