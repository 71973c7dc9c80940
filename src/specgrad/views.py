"""Matrix views of parameters: which dims of a weight are rows (outputs), which are columns
(inputs), and which a batch of independent matrices.

The spectral rule acts on matrices, but weights come in many layouts. The view depends on
the module that owns the weight, not on its shape alone:

============================================  ==================  =========================
weight                                        stored              viewed as
============================================  ==================  =========================
``nn.Linear``                                 ``(out, in)``       ``(out, in)``
``nn.ConvNd``                                 ``(out, in, *k)``   ``(out, in * prod(k))``
transformers ``Conv1D`` (GPT-2)               ``(in, out)``       ``(out, in)``, transposed
fused q/k/v (``MultiheadAttention``,          ``(3d, d)``         3 matrices ``(d, d)``
GPT-2 ``c_attn``)
expert stack (MoE)                            ``(E, out, in)``    E matrices ``(out, in)``
expert stack, ``is_transposed`` (gpt-oss)     ``(E, in, out)``    E matrices ``(out, in)``
per-head attention                            ``(H dh, d)``       H matrices ``(dh, d)``
============================================  ==================  =========================

A :class:`MatrixView` maps a tensor of the parameter's shape to a batch ``(B, m, n)`` of
matrices (:meth:`MatrixView.matrices`) and back (:meth:`MatrixView.restore`); the
optimizers orthogonalize, scale and precondition each of the ``B`` matrices, and the
diagnostics measure each. :func:`view_of` infers the view from the owning module.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

FUSED_QKV = ("c_attn",)  # names of fused q/k/v Conv1D weights (GPT-2 and its descendants)
# Children of an attention module (one with a head size, see head_dim_of) whose rows are heads
# (query, key, value projections, fused or not) or whose columns are (the output projection).
HEAD_ROWS = ("q_proj", "k_proj", "v_proj", "query", "key", "value", "q", "k", "v", "wq", "wk", "wv", "c_attn", "qkv",
             "qkv_proj", "Wqkv", "query_key_value")  # fmt: skip
HEAD_COLS = ("o_proj", "out_proj", "c_proj", "proj", "wo", "o", "out", "dense")
# Prefixes that wrappers add to parameter names: torch.compile, FSDP1, activation checkpointing.
WRAPPER_PREFIXES = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
# Learned position embeddings and class/register/mask tokens are looked up, not multiplied:
# their "rows" are positions, not outputs, so the spectral rule has no matrix to act on.
TOKEN_NAMES = re.compile(r"(^|[._])(pos(ition)?_?emb\w*|cls_token|class_token|reg(ister)?_tokens?|dist_token|mask_token)$")


@dataclass(frozen=True)
class MatrixView:
    """How a parameter of ``shape`` is read as ``batch`` matrices of ``(rows, cols)``.

    Fields:
        shape: the parameter's shape.
        transposed: stored ``(in, out)`` (transformers' ``Conv1D``); the matrix is its
            transpose.
        batch_dims: leading dims that index independent matrices (an expert stack has 1).
        row_blocks: the (transposed) matrix's rows split into this many equal blocks,
            each its own matrix (fused q/k/v: 3; per-head q/k/v: the number of heads).
        col_blocks: likewise for columns (per-head output projection).
        kind: what the view was inferred from, for tables and messages.

    Example:
        >>> v = MatrixView((64, 192), transposed=True, row_blocks=3, kind="fused q/k/v")
        >>> v.batch, v.rows, v.cols, str(v)
        (3, 64, 64, '3 x (64, 64)')
        >>> W = torch.randn(64, 192)
        >>> torch.equal(v.restore(v.matrices(W)), W)
        True
    """

    shape: tuple[int, ...]
    transposed: bool = False
    batch_dims: int = 0
    row_blocks: int = 1
    col_blocks: int = 1
    kind: str = "matrix"

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        object.__setattr__(self, "shape", shape)
        if len(shape) - self.batch_dims < 2:
            raise ValueError(f"a matrix view needs 2 dims after {self.batch_dims} batch dims, got shape {shape}")
        if self.transposed and len(shape) - self.batch_dims != 2:
            raise ValueError(f"a transposed view needs exactly 2 matrix dims, got shape {shape}")
        m, n = self._matrix_shape()
        for name, blocks, size in (("row_blocks", self.row_blocks, m), ("col_blocks", self.col_blocks, n)):
            if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1 or size % blocks:
                raise ValueError(f"{name}={blocks!r} must be a positive integer dividing {size} (shape {shape})")

    def _matrix_shape(self) -> tuple[int, int]:
        """``(out, in)`` of one whole matrix, before blocks."""
        dims = self.shape[self.batch_dims :]
        if self.transposed:
            return dims[1], dims[0]
        return dims[0], math.prod(dims[1:])

    @property
    def batch(self) -> int:
        """How many matrices the parameter holds."""
        return math.prod(self.shape[: self.batch_dims]) * self.row_blocks * self.col_blocks

    @property
    def rows(self) -> int:
        return self._matrix_shape()[0] // self.row_blocks

    @property
    def cols(self) -> int:
        return self._matrix_shape()[1] // self.col_blocks

    @property
    def is_plain(self) -> bool:
        """One matrix read straight off the weight (``nn.Linear``, conv)."""
        return self.batch == 1 and not self.transposed

    def matrices(self, t: Tensor) -> Tensor:
        """``t`` (the parameter's shape) as ``(batch, rows, cols)``; a view where the layout
        allows, else a copy."""
        if tuple(t.shape) != self.shape:
            raise ValueError(f"expected a tensor of shape {self.shape}, got {tuple(t.shape)}")
        m, n = self._matrix_shape()
        M = t.reshape(-1, *self.shape[self.batch_dims :])
        M = M.mT if self.transposed else M.reshape(M.shape[0], m, n)
        if self.row_blocks > 1 or self.col_blocks > 1:
            r, c = self.row_blocks, self.col_blocks
            M = M.reshape(-1, r, m // r, c, n // c).permute(0, 1, 3, 2, 4)
        return M.reshape(self.batch, self.rows, self.cols)

    def restore(self, X: Tensor) -> Tensor:
        """The inverse of :meth:`matrices`: ``(batch, rows, cols)`` back to the parameter's
        shape."""
        if tuple(X.shape) != (self.batch, self.rows, self.cols):
            raise ValueError(f"expected ({self.batch}, {self.rows}, {self.cols}), got {tuple(X.shape)}")
        m, n = self._matrix_shape()
        r, c = self.row_blocks, self.col_blocks
        if r > 1 or c > 1:
            X = X.reshape(-1, r, c, m // r, n // c).permute(0, 1, 3, 2, 4)
        X = X.reshape(-1, m, n)
        if self.transposed:
            X = X.mT
        return X.reshape(self.shape)

    def __str__(self) -> str:
        core = f"({self.rows}, {self.cols})"
        return core if self.batch == 1 else f"{self.batch} x {core}"


def default_view(shape) -> MatrixView:
    """The view from the shape alone: ``(out, in, *k)`` flattened to ``(out, in * prod(k))``
    (what an optimizer given bare tensors uses).

    Example:
        >>> str(default_view((8, 3, 5, 5)))
        '(8, 75)'
    """
    shape = tuple(shape)
    return MatrixView(shape, kind="conv" if len(shape) > 2 else "matrix")


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 and kin): a linear layer whose weight is ``(in, out)``.
    Recognized without importing transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def view_of(module: nn.Module, attr: str, p: Tensor, *, name: str = "", per_head: bool = False) -> Optional[MatrixView]:
    """The matrix view of parameter ``attr`` of ``module`` (``name`` its full name, used to
    recognize fused weights), or ``None`` for a parameter with fewer than 2 dims.

    ``per_head``: ``nn.MultiheadAttention``'s q/k/v blocks as one matrix per head.

    Example:
        >>> mha = torch.nn.MultiheadAttention(16, 4)
        >>> str(view_of(mha, "in_proj_weight", mha.in_proj_weight))
        '3 x (16, 16)'
        >>> str(view_of(mha, "in_proj_weight", mha.in_proj_weight, per_head=True))
        '12 x (4, 16)'
    """
    shape = tuple(p.shape)
    if len(shape) < 2:
        return None
    leaf = name.rsplit(".", 1)[0].rsplit(".", 1)[-1] if name else ""
    if is_conv1d(module) and attr == "weight":
        fused = leaf in FUSED_QKV and shape[1] == 3 * shape[0]
        return MatrixView(shape, transposed=True, row_blocks=3 if fused else 1,
                          kind="fused q/k/v, Conv1D (in, out)" if fused else "Conv1D (in, out)")  # fmt: skip
    if isinstance(module, nn.MultiheadAttention) and attr == "in_proj_weight":
        heads = module.num_heads if per_head else 1
        return MatrixView(shape, row_blocks=3 * heads, kind="fused q/k/v" + (", per head" if per_head else ""))
    if isinstance(module, nn.Linear):
        return MatrixView(shape, kind="linear")
    if isinstance(module, nn.modules.conv._ConvNd):
        return MatrixView(shape, kind="conv")
    if isinstance(module, nn.Embedding):
        return MatrixView(shape, kind="embedding")
    if len(shape) == 3 and getattr(module, "is_transposed", False):  # transformers experts stored (E, in, out)
        return MatrixView(shape, transposed=True, batch_dims=1, kind="expert stack (E, in, out)")
    if len(shape) == 3:
        return MatrixView(shape, batch_dims=1, kind="expert stack")
    return default_view(shape)


def head_dim_of(module: nn.Module) -> Optional[int]:
    """The head size of an attention module: its ``head_dim`` (transformers' Llama and GPT-2
    attention, ``nn.MultiheadAttention``, timm's ``Attention``), ``attention_head_size``
    (transformers' BERT and ViT self-attention) or ``head_size``, else ``embed_dim`` or
    ``hidden_size`` over ``num_heads`` or ``num_attention_heads``; ``None`` for a module
    without heads.

    Example:
        >>> head_dim_of(torch.nn.MultiheadAttention(16, 4)), head_dim_of(torch.nn.Linear(4, 4))
        (4, None)
    """
    for attr in ("head_dim", "attention_head_size", "head_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    heads = next((v for v in (getattr(module, a, None) for a in ("num_heads", "num_attention_heads")) if isinstance(v, int)), None)
    width = next((v for v in (getattr(module, a, None) for a in ("embed_dim", "hidden_size")) if isinstance(v, int)), None)
    if heads and width and heads > 0 and width % heads == 0:
        return width // heads
    return None


def attention_heads(model: nn.Module, head_dim: Optional[int] = None) -> dict[int, tuple[str, int]]:
    """``{id(module): (side, head_dim)}`` for the projections of every attention module of
    ``model`` (a module :func:`head_dim_of` finds a head size in, or any with ``head_dim``
    given): ``side="rows"`` for its children named in :data:`HEAD_ROWS` (query, key, value,
    a fused q/k/v), ``"cols"`` for those in :data:`HEAD_COLS` (the output projection).

    Example:
        >>> mha = torch.nn.MultiheadAttention(16, 4)
        >>> attention_heads(mha)[id(mha.out_proj)]
        ('cols', 4)
    """
    out = {}
    for module in model.modules():
        found = head_dim_of(module)
        if found is None:
            continue
        for child_name, child in module.named_children():
            side = "rows" if child_name in HEAD_ROWS else "cols" if child_name in HEAD_COLS else None
            if side is not None:
                out[id(child)] = (side, head_dim or found)
    return out


def split_heads(view: MatrixView, side: str, head_dim: int) -> MatrixView:
    """``view`` with its rows (``side="rows"``) or columns (``"cols"``) split into heads of
    ``head_dim``: one matrix per head (and per part of a fused q/k/v, whose parts are
    head-major).

    Example:
        >>> str(split_heads(MatrixView((64, 192), transposed=True, row_blocks=3), "rows", 16))
        '12 x (16, 64)'
        >>> str(split_heads(MatrixView((32, 32)), "cols", 8))
        '4 x (32, 8)'
    """
    m, n = view._matrix_shape()
    size = m if side == "rows" else n
    if side not in ("rows", "cols") or head_dim < 1 or size % head_dim:
        raise ValueError(f"cannot split the {size} {side} of the view {view} (shape {view.shape}) into heads of {head_dim}")
    blocks = {"row_blocks": size // head_dim} if side == "rows" else {"col_blocks": size // head_dim}
    return replace(view, **blocks, kind=f"{view.kind}, per head")


def parse_view(spec: str, shape) -> MatrixView:
    """A view from a user's override string: ``"matrix"``, ``"transposed"``,
    ``"experts"`` (leading dim a batch), ``"rows=K"`` / ``"cols=K"`` (K equal blocks), or
    several joined by ``","`` (``"transposed,rows=3"``).

    Example:
        >>> str(parse_view("transposed,rows=3", (8, 24)))
        '3 x (8, 8)'
    """
    kwargs: dict = {}
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        key, _, value = part.partition("=")
        if key == "matrix" and not value:
            continue
        if key == "transposed" and not value:
            kwargs["transposed"] = True
        elif key == "experts" and not value:
            kwargs["batch_dims"] = 1
        elif key in ("rows", "cols") and value.isdigit():
            kwargs[f"{key[:3]}_blocks"] = int(value)
        else:
            raise ValueError(f"unknown matrix view {part!r} in {spec!r}; use matrix, transposed, experts, rows=K, cols=K")
    return MatrixView(tuple(shape), kind=f"override {spec!r}", **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under ``torch.compile``'s ``OptimizedModule`` (its ``_orig_mod``)."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def clean_name(name: str) -> str:
    """``name`` without the prefixes of :data:`WRAPPER_PREFIXES`.

    Example:
        >>> clean_name("_orig_mod.blocks.0._checkpoint_wrapped_module.mlp.weight")
        'blocks.0.mlp.weight'
    """
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name
