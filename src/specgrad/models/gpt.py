"""A tiny GPT decoder, read top to bottom like nanoGPT's ``model.py``.

Module tree (nanoGPT's names, so hooks and optimizer routing can find the layers)::

    GPT
    ├── transformer.wte      nn.Embedding(vocab_size, n_embd)      token embedding
    ├── transformer.wpe      nn.Embedding(context, n_embd)         learned positions
    ├── transformer.drop     nn.Dropout
    ├── transformer.h[i]     Block
    │   ├── ln_1             nn.LayerNorm(n_embd, bias=bias)       pre-norm of attn
    │   ├── attn.c_attn      nn.Linear(n_embd, 3 n_embd)           fused QKV, rows q|k|v
    │   ├── attn.c_proj      nn.Linear(n_embd, n_embd)
    │   ├── ln_2             nn.LayerNorm(n_embd, bias=bias)       pre-norm of mlp
    │   └── mlp              c_fc, c_proj (gelu, relu2) | w1, w2, c_proj (swiglu)
    ├── transformer.ln_f     nn.LayerNorm(n_embd, bias=bias)
    └── lm_head              nn.Linear(n_embd, vocab_size, bias=False)

With ``tied=True`` ``lm_head.weight`` *is* ``transformer.wte.weight`` (one Parameter,
listed once by ``parameters()``). Norms are ``nn.LayerNorm`` with a learned gain and, as
in nanoGPT, a bias only when ``bias=True`` (default no bias); not RMSNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MLP_KINDS = ("gelu", "relu2", "swiglu")


@dataclass
class GPTConfig:
    """Sizes of a :class:`GPT`; every field is checked on construction.

    ``context`` is the longest sequence (and the size of ``wpe``); ``mlp`` picks the
    feed-forward block: ``"gelu"`` (nanoGPT), ``"relu2"`` (``relu(x)^2``, modded-nanogpt)
    or ``"swiglu"`` (LLaMA). ``tied`` shares ``lm_head.weight`` with ``wte.weight``.

    Example:
        >>> GPTConfig(vocab_size=65, context=32, n_layer=2, n_head=4, n_embd=64).mlp
        'gelu'
        >>> GPTConfig(vocab_size=65, context=32, n_layer=2, n_head=3, n_embd=64)
        Traceback (most recent call last):
        ...
        ValueError: n_embd (64) must be divisible by n_head (3)
    """

    vocab_size: int
    context: int
    n_layer: int
    n_head: int
    n_embd: int
    mlp: str = "gelu"
    tied: bool = True
    bias: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "context", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        for name in ("tied", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU hidden width: ``round(8 n_embd / 3)`` rounded *up* to a multiple of 8.

    ``8d/3`` keeps the parameter count of a ``4d`` GELU MLP (three matrices instead of
    two); the multiple of 8 is LLaMA's ``multiple_of`` for tensor-core friendly shapes.

    Example:
        >>> swiglu_hidden(64), swiglu_hidden(768)
        (176, 2048)
    """
    return 8 * math.ceil(round(8 * n_embd / 3) / 8)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: ``(B, T, C) -> (B, T, C)``.

    ``c_attn`` is the fused ``(3C, C)`` projection whose output splits into Q, K, V
    (in that order); ``c_proj`` mixes the heads back.

    Example:
        >>> attn = CausalSelfAttention(GPTConfig(10, 8, 1, 2, 16))
        >>> attn(torch.randn(3, 5, 16)).shape
        torch.Size([3, 5, 16])
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward block: ``(B, T, C) -> (B, T, C)``.

    * ``gelu``:   ``c_proj(gelu(c_fc x))``, hidden ``4C`` (GPT-2, nanoGPT);
    * ``relu2``:  ``c_proj(relu(c_fc x)^2)``, hidden ``4C`` (So et al. 2021, modded-nanogpt);
    * ``swiglu``: ``c_proj(silu(w1 x) * w2 x)``, hidden :func:`swiglu_hidden` (Shazeer 2020).

    Example:
        >>> mlp = MLP(GPTConfig(10, 8, 1, 2, 16, mlp="swiglu"))
        >>> mlp.w1.weight.shape, mlp(torch.randn(2, 3, 16)).shape
        (torch.Size([48, 16]), torch.Size([2, 3, 16]))
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        d, self.kind = config.n_embd, config.mlp
        if self.kind == "swiglu":
            hidden = swiglu_hidden(d)
            self.w1 = nn.Linear(d, hidden, bias=config.bias)  # gate
            self.w2 = nn.Linear(d, hidden, bias=config.bias)  # up
        else:
            hidden = 4 * d
            self.c_fc = nn.Linear(d, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, d, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.w1(x)) * self.w2(x)
        elif self.kind == "relu2":
            h = F.relu(self.c_fc(x)).square()
        else:
            h = F.gelu(self.c_fc(x))
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    ``(B, T, C) -> (B, T, C)``; forward hooks on ``ln_1`` / ``ln_2`` see exactly what
    ``attn`` / ``mlp`` read.

    Example:
        >>> Block(GPTConfig(10, 8, 1, 2, 16))(torch.randn(2, 4, 16)).shape
        torch.Size([2, 4, 16])
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """Decoder-only language model: ``idx (B, T) long -> logits (B, T, vocab_size)``.

    Initialization follows nanoGPT: every Linear and Embedding weight ``N(0, 0.02^2)``,
    biases zero, and every ``c_proj.weight`` (the matrices that write into the residual
    stream) ``N(0, (0.02 / sqrt(2 n_layer))^2)`` (GPT-2's residual scaling). Seed it with
    ``torch.manual_seed`` before construction for a reproducible model.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = GPT(GPTConfig(vocab_size=11, context=8, n_layer=2, n_head=2, n_embd=16))
        >>> idx = torch.randint(11, (3, 8))
        >>> logits, loss = model(idx, targets=idx)
        >>> logits.shape, loss.shape, model.lm_head.weight is model.transformer.wte.weight
        (torch.Size([3, 8, 11]), torch.Size([]), True)
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.context, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tied:
            self.lm_head.weight = self.transformer.wte.weight  # one Parameter, two uses
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of distinct parameters (a tied head counts once).

        ``non_embedding=True`` leaves out the position embedding ``wpe`` (nanoGPT's
        convention; ``wte`` stays in because, tied, it is also the output layer).

        Example:
            >>> model = GPT(GPTConfig(vocab_size=10, context=4, n_layer=1, n_head=1, n_embd=8))
            >>> model.num_params(), model.num_params(non_embedding=True)  # wte 80, wpe 32
            (904, 872)
        """
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(
        self, idx: Tensor, targets: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``idx`` (B, T) long, ``T <= context``; ``targets`` (B, T) long or None.

        Returns ``(logits (B, T, vocab_size), loss)``: ``loss`` is the mean token
        cross-entropy (targets equal to -1 are ignored) as a 0-dim tensor, or None.
        """
        if not isinstance(idx, Tensor) or idx.ndim != 2 or idx.dtype != torch.long:
            got = type(idx).__name__
            if isinstance(idx, Tensor):
                got = f"{tuple(idx.shape)} {idx.dtype}"
            raise ValueError(f"idx must be a (B, T) long tensor, got {got}")
        B, T = idx.shape
        if T > self.config.context:
            raise ValueError(f"sequence length {T} exceeds context {self.config.context}")
        if targets is not None and (not isinstance(targets, Tensor) or targets.shape != idx.shape):
            raise ValueError(
                f"targets must have the shape of idx {tuple(idx.shape)}, got "
                f"{tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__}"
            )
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss
