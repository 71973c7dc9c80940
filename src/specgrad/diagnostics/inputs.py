"""What each weight multiplies: the blocks of a model and the activation that feeds each.

A block is one matrix of a weight's matrix view (:mod:`specgrad.views`), measured against
the rows it multiplies. Which rows those are depends on the module that owns the weight:

=====================================  ======================================================
weight                                 activation ``A`` of each block (rows = tokens, samples)
=====================================  ======================================================
``nn.Linear``, transformers ``Conv1D``  the module's input (``Conv1D``'s gradient is read
                                       through its transposed view; GPT-2's ``c_attn`` is
                                       three blocks q/k/v fed by the same input)
``nn.Conv1d``, ``nn.Conv2d``           the unfolded input patches
``nn.Embedding``                       token ids (a one-hot, counted)
``nn.MultiheadAttention``              q/k/v blocks of ``in_proj_weight``: ``query``, ``key``,
                                       ``value``; ``out_proj``: the attention output before
                                       the projection, recomputed on sampled steps
transformers expert stacks             one block per expert with the tokens routed to it:
``(E, out, in)``                       ``gate_up_proj`` the routed hidden states,
                                       ``down_proj`` the expert's gated activation
=====================================  ======================================================

Anything else with a matrix parameter is listed as skipped, with the reason.
:func:`model_blocks` walks a model and returns both lists; the monitor hooks the first.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..views import TOKEN_NAMES, clean_name
from ..views import MatrixView, default_view, is_conv1d, view_of

# A user's activation getter: ``fn(module, args, output) -> (..., in_features)``.
ActivationFn = Callable[[nn.Module, tuple, Any], Tensor]
# The monitor's: also the forward's keyword arguments and a dict shared by the getters of
# one forward call (the blocks of an expert stack compute their inputs once).
Getter = Callable[[nn.Module, tuple, dict, Any, dict], Optional[Tensor]]
QKV = ("q", "k", "v")


def first_input(module: nn.Module, args: tuple, output: Any) -> Tensor:
    """The default activation getter: the module's first positional input."""
    return args[0]


def conv2d_patches(module: nn.Conv2d, args: tuple, output: Any) -> Tensor:
    """Unfolded input patches of a ``Conv2d``: ``(N * L, in * kh * kw)``, the activation the
    weight's matrix view ``(out, in * kh * kw)`` multiplies."""
    x = args[0]
    if x.ndim == 3:
        x = x.unsqueeze(0)
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def conv1d_patches(module: nn.Conv1d, args: tuple, output: Any) -> Tensor:
    """Unfolded input patches of a ``Conv1d``: ``(N * L, in * k)``, the activation its matrix
    view ``(out, in * k)`` multiplies.

    Example:
        >>> conv = torch.nn.Conv1d(3, 4, 5, padding=2)
        >>> conv1d_patches(conv, (torch.randn(2, 3, 10),), None).shape
        torch.Size([20, 15])
    """
    x = args[0]
    x = (x.unsqueeze(0) if x.ndim == 2 else x).unsqueeze(2)  # (N, C, 1, L)
    cols = F.unfold(x, (1, module.kernel_size[0]), (1, module.dilation[0]), (0, module.padding[0]), (1, module.stride[0]))
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def user_getter(fn: ActivationFn) -> Getter:
    """A user's ``fn(module, args, output)`` as the monitor calls it."""
    return lambda module, args, kwargs, output, cache: fn(module, args, output)


@dataclass(frozen=True)
class BlockSpec:
    """One block the monitor can measure: the matrix ``view.matrices(weight)[index]``, fed by
    ``activation`` in the forward hook of ``module``. Blocks with the same ``(module, key)``
    share one activation statistic."""

    name: str
    module: nn.Module
    key: Hashable
    activation: Getter
    dim: int
    kind: str
    owner: nn.Module  # holds the weight (MultiheadAttention's out_proj is hooked at its parent)
    attr: str
    owner_name: str  # the name a user passes in ``layers``
    parameter: str  # the parameter's name in named_parameters()
    view: MatrixView
    index: int = 0
    pre: Optional[Callable] = None  # a forward pre-hook the getter needs (an RNG state)

    @property
    def weight(self) -> Tensor:
        return getattr(self.owner, self.attr)


@dataclass(frozen=True)
class Skip:
    """A block the monitor cannot measure, and why."""

    name: str
    parameter: str
    owner_name: str
    view: str
    reason: str


def block_names(base: str, view: MatrixView, parts: tuple = ()) -> list[str]:
    """The names of a view's blocks: ``base`` for one matrix; else suffixes for the batch
    index (experts), the row block (``q``/``k``/``v`` when ``parts`` names them, a head
    number after it) and the column block.

    Example:
        >>> block_names("attn", MatrixView((48, 16), row_blocks=3), QKV)
        ['attn.q', 'attn.k', 'attn.v']
        >>> block_names("experts.down_proj", MatrixView((2, 8, 4), batch_dims=1))
        ['experts.down_proj.0', 'experts.down_proj.1']
    """
    if view.batch == 1:
        return [base]
    r, c = view.row_blocks, view.col_blocks
    names = []
    for i in range(view.batch):
        b, rb, cb = i // (r * c), (i // c) % r, i % c
        s = [base]
        if view.batch_dims:
            s.append(str(b))
        if r > 1 and parts and r % len(parts) == 0:
            per = r // len(parts)
            s.append(parts[rb // per])
            if per > 1:
                s.append(str(rb % per))
        elif r > 1:
            s.append(f"rows{rb}")
        if c > 1:
            s.append(f"cols{cb}")
        names.append(".".join(s))
    return names


def _columns(getter: Getter, cols: slice) -> Getter:
    def get(module, args, kwargs, output, cache):
        x = getter(module, args, kwargs, output, cache)
        return None if x is None else x[..., cols]

    return get


def _bind(module: nn.Module, args: tuple, kwargs: dict, cache: dict) -> dict:
    """The forward's arguments by name, defaults included (computed once per call)."""
    if "bound" not in cache:
        sig = inspect.signature(type(module).forward)
        bound = sig.bind(module, *args, **kwargs)
        bound.apply_defaults()
        cache["bound"] = bound.arguments
    return cache["bound"]


class _Identity(nn.Module):
    """Stands in for ``MultiheadAttention.out_proj``: the projection's input comes out."""

    def __init__(self, like: Tensor):
        super().__init__()
        self.weight = torch.eye(like.shape[1], dtype=like.dtype, device=like.device)
        self.bias = None


class AttentionInputs:
    """Activation getters of an ``nn.MultiheadAttention``: ``query``/``key``/``value`` (its
    forward's arguments) and ``attention``, the output before ``out_proj``, which the module
    applies through ``F.multi_head_attention_forward`` and never calls as a module. It is
    recomputed in the forward hook (sampled steps only) by running the module's forward again
    without gradients, with the identity for ``out_proj``; a pre-hook keeps the random state,
    so attention dropout draws the masks of the real forward."""

    def __init__(self):
        self._rng: Optional[tuple] = None

    def argument(self, which: str) -> Getter:
        return lambda module, args, kwargs, output, cache: _bind(module, args, kwargs, cache)[which]

    def pre(self, module, args, kwargs):
        self._rng = None
        if module.training and module.dropout > 0 and torch.is_grad_enabled():
            q = _bind(module, args, kwargs, {})["query"]
            cuda = [q.device] if q.device.type == "cuda" else []
            self._rng = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda], cuda)

    def attention(self, module, args, kwargs, output, cache) -> Tensor:
        saved = module.out_proj
        rng = self._rng
        with torch.no_grad(), torch.random.fork_rng(devices=rng[2] if rng else [], enabled=rng is not None):
            if rng is not None:
                torch.set_rng_state(rng[0])
                for d, s in zip(rng[2], rng[1]):
                    torch.cuda.set_rng_state(s, d)
            module.out_proj = _Identity(saved.weight)
            try:
                out = type(module).forward(module, *args, **kwargs)[0]
            finally:
                module.out_proj = saved
        return out


EXPERT_FORWARDS = (("hidden_states", "top_k_index", "top_k_weights"),
                   ("hidden_states", "router_indices", "routing_weights"))  # fmt: skip


def expert_layout(module: nn.Module) -> Optional[str]:
    """``None`` when ``module`` is an expert stack the monitor can feed (transformers'
    conventions: ``forward(hidden_states, top_k_index, top_k_weights)`` or
    ``forward(hidden_states, router_indices, routing_weights)``, with ``gate_up_proj`` or
    ``up_proj`` and ``down_proj`` of shape ``(E, out, in)``, or ``(E, in, out)`` when the
    module says ``is_transposed``), else why not. Returns ``"not experts"`` for a module
    without a 3-D parameter."""
    params = dict(module.named_parameters(recurse=False))
    if not any(p.ndim == 3 for p in params.values()):
        return "not experts"
    first = "gate_up_proj" if getattr(module, "has_gate", "gate_up_proj" in params) else "up_proj"
    try:
        names = tuple(inspect.signature(module.forward).parameters)[:3]
    except (TypeError, ValueError):
        names = ()
    if names not in EXPERT_FORWARDS or first not in params or "down_proj" not in params:
        return (f"{type(module).__name__} holds a stack of matrices, but not as forward(hidden_states, top_k_index, "
                "top_k_weights) with gate_up_proj/up_proj and down_proj: the monitor cannot tell each matrix's input")  # fmt: skip
    if not hasattr(module, "act_fn") and not hasattr(module, "_apply_gate"):
        return f"{type(module).__name__} has no act_fn: down_proj's input cannot be recomputed"
    return None


class ExpertInputs:
    """Per-expert activations of a transformers expert stack, computed once per forward
    (without gradients): ``first`` (``gate_up_proj`` or ``up_proj``) multiplies the hidden
    states of the tokens routed to the expert; ``down_proj`` the expert's activation
    ``act_fn(gate) * up`` (or ``act_fn(up)``, or the module's own ``_apply_gate``) of those
    tokens, recomputed with the module's weights."""

    def __init__(self, module: nn.Module):
        self.first = "gate_up_proj" if getattr(module, "has_gate", hasattr(module, "gate_up_proj")) else "up_proj"
        self.index = tuple(inspect.signature(module.forward).parameters)[1]
        self.transposed = bool(getattr(module, "is_transposed", False))  # weights (E, in, out)

    def getter(self, which: str, e: int) -> Getter:
        return lambda module, args, kwargs, output, cache: self._inputs(module, args, kwargs, cache, which)[e]

    def _inputs(self, module, args, kwargs, cache, which: str) -> list[Tensor]:
        key = ("experts", which)
        if key in cache:
            return cache[key]
        a = _bind(module, args, kwargs, cache)
        x = a["hidden_states"].reshape(-1, a["hidden_states"].shape[-1])
        idx = a[self.index].reshape(x.shape[0], -1)
        W = getattr(module, self.first)
        if ("experts", "tokens") not in cache:
            cache[("experts", "tokens")] = [x[(idx == e).any(-1)] for e in range(W.shape[0])]
        tokens = cache[("experts", "tokens")]
        if which != "down_proj":
            return tokens
        bias = getattr(module, f"{self.first}_bias", None)
        with torch.no_grad():
            mids = []
            for e, xe in enumerate(tokens):
                h = F.linear(xe, W[e].T if self.transposed else W[e], None if bias is None else bias[e])
                if self.first == "up_proj":
                    h = module.act_fn(h)
                elif hasattr(module, "_apply_gate"):
                    h = module._apply_gate(h)
                else:
                    gate, up = h.chunk(2, dim=-1)
                    h = module.act_fn(gate) * up
                mids.append(h)
        cache[key] = mids
        return mids


def conv_unsupported(m: nn.Module) -> Optional[str]:
    """Why the monitor cannot unfold the patches of convolution ``m``, or ``None``."""
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return f"{type(m).__name__}: no patch unfolding for it"
    if m.groups != 1:
        return "grouped convolution"
    if isinstance(m.padding, str):
        return f"string padding {m.padding!r}"
    if m.padding_mode != "zeros":
        return f"padding_mode {m.padding_mode!r}"
    return None


class _Walk:
    """Collects the blocks and skips of one model."""

    def __init__(self, model: nn.Module, views: Optional[Mapping[str, MatrixView]]):
        self.views = dict(views or {})
        # a tied weight goes by its first name, as in named_parameters() and split_params
        self.pnames = {id(p): clean(n) for n, p in model.named_parameters()}
        self.specs: list[BlockSpec] = []
        self.skips: list[Skip] = []
        self.placed: set[int] = set()  # parameters with blocks or skips

    def view(self, module, attr, p) -> MatrixView:
        pname = self.pnames.get(id(p), attr)
        return self.views.get(pname) or view_of(module, attr, p, name=pname)

    def skip(self, base: str, owner_name: str, p: Tensor, view: Optional[MatrixView], reason: str) -> None:
        pname = self.pnames.get(id(p), base)
        self.placed.add(id(p))
        names = block_names(base, view) if view is not None else [base]
        self.skips += [Skip(n, pname, owner_name, str(view) if view else "", reason) for n in names]

    def add(self, base, module, owner, attr, owner_name, kind, width, inputs, parts=(), pre=None, view=None) -> None:
        """The blocks of weight ``attr`` of ``owner``: ``inputs(b, section)`` gives the key and
        getter of the whole input (``width`` features) of batch ``b`` and row section."""
        p = getattr(owner, attr)
        view = view or self.view(owner, attr, p)
        pname = self.pnames.get(id(p), attr)
        if not p.requires_grad:
            return self.skip(base, owner_name, p, view, "frozen (requires_grad=False)")
        if view.cols * view.col_blocks != width:
            return self.skip(base, owner_name, p, view, f"the view {view} does not match the {width} input features")
        sections = len(parts) if parts else 1
        if view.row_blocks % sections:
            reason = f"the view {view} splits the {'/'.join(parts)} rows, fed by different inputs"
            return self.skip(base, owner_name, p, view, reason)
        self.placed.add(id(p))
        r, c = view.row_blocks, view.col_blocks
        for i, name in enumerate(block_names(base, view, parts)):
            b, rb, cb = i // (r * c), (i // c) % r, i % c
            key, getter = inputs(b, rb * sections // r)
            if c > 1:
                key, getter = (key, "cols", cb, c), _columns(getter, slice(cb * view.cols, (cb + 1) * view.cols))
            self.specs.append(BlockSpec(name, module, key, getter, view.cols, kind, owner, attr, owner_name, pname,
                                        view, i, pre))  # fmt: skip

    def plain(self, base, module, owner_name, kind, width, fn, attr="weight", view=None) -> None:
        p = getattr(module, attr)
        view = view or self.view(module, attr, p)
        if view.batch_dims:
            return self.skip(base, owner_name, p, view, f"a batch of matrices {view} fed by one input")
        self.add(base, module, module, attr, owner_name, kind, width, lambda b, s: (fn, user_getter(fn)), view=view)


def model_blocks(model: nn.Module, views: Optional[Mapping[str, MatrixView]] = None) -> tuple[list[BlockSpec], list[Skip]]:
    """Every block of ``model`` the monitor can measure, and every matrix it cannot (with
    the reason), in module order. ``views`` (by parameter name, e.g.
    ``split_params(model).views()``) replaces :func:`~specgrad.views.view_of` for the
    parameters it names. Module names lose ``torch.compile``'s and wrappers' prefixes.

    Example:
        >>> mha = torch.nn.MultiheadAttention(8, 2)
        >>> specs, skips = model_blocks(torch.nn.Sequential(mha))
        >>> [s.name for s in specs], skips
        (['0.q', '0.k', '0.v', '0.out_proj'], [])
    """
    walk = _Walk(model, views)
    modules = [(clean(raw), module) for raw, module in model.named_modules()]
    out_proj = {id(m.out_proj) for _, m in modules if isinstance(m, nn.MultiheadAttention)}  # fed by their parent
    for mname, module in modules:
        base = mname or type(module).__name__
        if isinstance(module, nn.MultiheadAttention):
            _attention(walk, module, mname, base)
        elif is_conv1d(module):
            p = module.weight
            fused = "fused" in walk.view(module, "weight", p).kind
            walk.add(base, module, module, "weight", mname, "linear", p.shape[0],
                     lambda b, s: (first_input, user_getter(first_input)), parts=QKV if fused else ())  # fmt: skip
        elif isinstance(module, nn.Linear):
            if id(module) not in out_proj:
                walk.plain(base, module, mname, "linear", module.in_features, first_input)
        elif isinstance(module, nn.modules.conv._ConvNd):
            reason = conv_unsupported(module)
            if reason:
                walk.skip(base, mname, module.weight, walk.view(module, "weight", module.weight), reason)
            else:
                fn, kind = (conv2d_patches, "conv2d") if isinstance(module, nn.Conv2d) else (conv1d_patches, "conv1d")
                walk.plain(base, module, mname, kind, math.prod(module.weight.shape[1:]), fn)
        elif isinstance(module, nn.Embedding):
            view = MatrixView(tuple(module.weight.shape), transposed=True, kind="embedding")
            walk.plain(base, module, mname, "embedding", module.num_embeddings, first_input, view=view)
        elif expert_layout(module) is None:
            _experts(walk, module, mname, base)
    for mname, module in modules:  # every other matrix, of any module
        for attr, p in module.named_parameters(recurse=False):
            if p.ndim >= 2 and id(p) not in walk.placed and "bias" not in attr:  # biases go to AdamW (routing)
                name = f"{mname}.{attr}" if mname else attr
                layout = expert_layout(module)
                if TOKEN_NAMES.search(name) or p.shape[0] == 1:
                    reason = "a learned token or position embedding (added to activations, not multiplied)"
                elif p.ndim > 2 and layout not in (None, "not experts"):
                    reason = layout
                else:
                    reason = (f"{type(module).__name__}.{attr}: the monitor does not know which input it multiplies "
                              "(add_block with an activation getter)")  # fmt: skip
                walk.skip(name, mname, p, None, reason)
    return walk.specs, walk.skips


def _attention(walk: _Walk, m: nn.MultiheadAttention, mname: str, base: str) -> None:
    inputs = AttentionInputs()
    names = ("query", "key", "value")
    if m.in_proj_weight is not None:
        walk.add(base, m, m, "in_proj_weight", mname, "linear", m.embed_dim,
                 lambda b, s: (names[s], inputs.argument(names[s])), parts=QKV)  # fmt: skip
    else:  # kdim or vdim differ from embed_dim: three weights
        for part, which, attr in zip(QKV, names, ("q_proj_weight", "k_proj_weight", "v_proj_weight")):
            W = getattr(m, attr)
            walk.add(f"{base}.{part}", m, m, attr, mname, "linear", W.shape[1],
                     lambda b, s, which=which: (which, inputs.argument(which)))  # fmt: skip
    for attr in ("bias_k", "bias_v"):
        if getattr(m, attr, None) is not None:
            walk.skip(f"{base}.{attr}", mname, getattr(m, attr), None, "a learned key/value row (appended, not multiplied)")
    out_name = f"{mname}.out_proj" if mname else "out_proj"
    view = walk.view(m.out_proj, "weight", m.out_proj.weight)
    if view.batch_dims:
        return walk.skip(out_name, out_name, m.out_proj.weight, view, f"a batch of matrices {view} fed by one input")
    walk.add(out_name, m, m.out_proj, "weight", out_name, "linear", m.embed_dim,
             lambda b, s: ("attention", inputs.attention), pre=inputs.pre, view=view)  # fmt: skip


def _experts(walk: _Walk, m: nn.Module, mname: str, base: str) -> None:
    feeds = ExpertInputs(m)
    for attr, p in m.named_parameters(recurse=False):
        if p.ndim < 3:  # per-expert biases (E, out): AdamW's, not matrices
            continue
        name = f"{base}.{attr}"
        view = walk.view(m, attr, p)
        if attr not in (feeds.first, "down_proj"):
            walk.skip(name, mname, p, view, f"{attr}: not an expert projection the monitor knows")
        elif not view.batch_dims:
            walk.skip(name, mname, p, view, f"the view {view} is not one matrix per expert")
        else:
            walk.add(name, m, m, attr, mname, "expert", view.cols,
                     lambda b, s, attr=attr: ((attr, b), feeds.getter(attr, b)), view=view)  # fmt: skip


def clean(name: str) -> str:
    """A module or parameter name without the prefixes of ``torch.compile`` and wrappers.

    Example:
        >>> clean("_orig_mod.0._checkpoint_wrapped_module"), clean("_orig_mod")
        ('0', '')
    """
    return clean_name(name + ".").rstrip(".")


def whole_view(module: nn.Module, weight: Union[str, Tensor], W: Tensor, kind: str) -> MatrixView:
    """The view of the whole weight as ``module`` reads it, blocks of a fused weight merged
    (what :meth:`~specgrad.diagnostics.SpectralMonitor.add_block` measures by default).

    Example:
        >>> str(whole_view(torch.nn.MultiheadAttention(8, 2), "in_proj_weight", torch.zeros(24, 8), "linear"))
        '(24, 8)'
    """
    if kind == "embedding":
        return MatrixView(tuple(W.shape), transposed=True, kind="embedding")
    attr = weight if isinstance(weight, str) else next((n for n, p in module.named_parameters(recurse=False) if p is W), "")
    view = view_of(module, attr, W) if attr else default_view(W.shape)
    return replace(view, row_blocks=1, col_blocks=1)


def untie(specs: list[BlockSpec]) -> list[BlockSpec]:
    """One use of each tied weight: its first multiplying use (the output head, not the
    embedding), else its first."""
    owners: dict[int, list[BlockSpec]] = {}
    for s in specs:
        owners.setdefault(id(s.weight), []).append(s)
    keep = {}
    for key, group in owners.items():
        names = list(dict.fromkeys(s.owner_name for s in group))
        keep[key] = next((s.owner_name for s in group if s.kind != "embedding"), names[0])
    return [s for s in specs if s.owner_name == keep[id(s.weight)]]
