"""QK-clip (MuonClip, Kimi K2): cap each attention head's largest logit by rescaling its
query and key weights after the optimizer step."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..linalg import check_positive_int, check_range


def max_logits(qkv: Tensor, n_head: int, scale: Optional[float] = None, causal: bool = True) -> Tensor:
    """The largest attention logit of each head, ``max_{b, i, j} scale * <q_bi, k_bj>``.

    Args:
        qkv: ``(B, T, 3C)`` output of a fused projection whose last dim splits into
            ``q|k|v``, each ``C = n_head * head_dim`` wide with the heads contiguous.
        n_head: number of heads.
        scale: the logit scale; default ``1 / sqrt(head_dim)`` (``scaled_dot_product_attention``).
        causal: take the maximum over ``j <= i`` only (the logits a causal softmax reads).

    Returns:
        ``(n_head,)`` tensor, float32 (float64 for a float64 ``qkv``).

    Example:
        >>> q = torch.zeros(1, 2, 4); q[0, 1, :2] = 1.0  # head 0 of token 1: (1, 1)
        >>> k = torch.ones(1, 2, 4)
        >>> max_logits(torch.cat([q, k, k], -1), n_head=2)  # <(1, 1), (1, 1)> / sqrt(2)
        tensor([1.4142, 0.0000])
    """
    check_positive_int(n_head, "n_head")
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head):
        raise ValueError(f"qkv must be (B, T, 3C) with C divisible by n_head ({n_head}), got {tuple(qkv.shape)}")
    B, T, width = qkv.shape
    C = width // 3
    hd = C // n_head
    dtype = torch.promote_types(qkv.dtype, torch.float32)
    q, k = (t.reshape(B, T, n_head, hd).transpose(1, 2).to(dtype) for t in (qkv[..., :C], qkv[..., C : 2 * C]))
    logits = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(hd))
    if causal:
        logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=qkv.device).tril(), -math.inf)
    return logits.amax(dim=(0, 2, 3))


class QKClip:
    """MuonClip's QK-clip (Kimi Team, "Kimi K2: Open Agentic Intelligence", arXiv
    2507.20534, Section 2.1): after each optimizer step, every attention head ``h`` whose
    largest logit ``S_h = max_ij q_i . k_j / sqrt(d)`` exceeds ``tau`` gets its query and
    key weights (and biases) multiplied by ``sqrt(tau / S_h)``, so its logits shrink by
    ``tau / S_h``; heads at or under ``tau`` are untouched. Kimi K2 trains with
    ``tau = 100``, the default here.

    It attaches to the fused ``q|k|v`` projections of a model's attention modules: each
    module with a ``c_attn`` ``nn.Linear`` (rows ``q|k|v``, heads contiguous, as in
    :class:`specgrad.models.gpt.CausalSelfAttention` and nanoGPT) and a head count
    ``n_head`` (or the ``n_head`` given here). A forward hook on ``c_attn`` reads the
    logits of every forward in training mode.

    ``recompute`` picks which logits ``S_h`` are:

    * ``True`` (default): the logits of the *updated* weights on the last training batch,
      recomputed in :meth:`step` from that batch's input to ``c_attn`` (kept by reference;
      one extra ``c_attn`` product and ``q k^T`` per layer and step). After the clip those
      logits are ``<= tau`` exactly; the next forward's can sit a little above ``tau``,
      since the step also moved what feeds each ``c_attn`` (embeddings, earlier layers).
    * ``False``: the largest logits the forwards since the last :meth:`step` saw (Kimi K2's
      form, nothing recomputed); the step that follows may still raise them by its own
      change of ``W_q`` and ``W_k``.

    Args:
        model: a module holding the attention modules, or an iterable of them.
        tau: the logit cap (positive, default 100).
        n_head: head count, for modules that do not carry ``n_head``.
        optimizer: when given, :meth:`step` runs after each of its ``step()`` calls (a
            ``register_step_post_hook``); otherwise call :meth:`step` yourself after it.
        recompute: see above.

    Example:
        >>> from specgrad.models import GPT, GPTConfig
        >>> _ = torch.manual_seed(0)
        >>> model = GPT(GPTConfig(vocab_size=11, context=8, n_layer=2, n_head=2, n_embd=8))
        >>> clip = QKClip(model, tau=1e-6)  # pass optimizer=opt to run after each opt.step()
        >>> idx = torch.randint(11, (2, 8))
        >>> _ = model(idx)  # a training-mode forward: the hooks keep c_attn's inputs
        >>> [bool((s > 1e-6).all()) for s in clip.step()]  # every head was over tau: clipped
        [True, True]
        >>> _ = model(idx)
        >>> [bool((s <= 1e-6 * (1 + 1e-4)).all()) for s in clip.step()]  # now at tau
        [True, True]
    """

    def __init__(self, model: Union[nn.Module, Iterable[nn.Module]], tau: float = 100.0, *,
                 n_head: Optional[int] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 recompute: bool = True):  # fmt: skip
        self.tau = check_range("tau", tau, 0.0, lo_open=True)
        if n_head is not None:
            check_positive_int(n_head, "n_head")
        if not isinstance(recompute, bool):
            raise ValueError(f"recompute must be True or False, got {recompute!r}")
        self.recompute = recompute
        modules = model.modules() if isinstance(model, nn.Module) else model
        self.layers: list[tuple[nn.Linear, int, Optional[float]]] = []
        for m in modules:
            proj = getattr(m, "c_attn", None)
            if not isinstance(proj, nn.Linear):
                continue
            heads = n_head if n_head is not None else getattr(m, "n_head", None)
            if heads is None:
                raise ValueError(f"{type(m).__name__} has no n_head; pass n_head")
            if proj.out_features % 3 or (proj.out_features // 3) % heads:
                raise ValueError(f"c_attn has {proj.out_features} rows: not q|k|v of {heads} heads")
            self.layers.append((proj, heads, getattr(m, "scale", None)))
        if not self.layers:
            raise ValueError("found no attention module with a c_attn nn.Linear (fused q|k|v)")
        self._inputs: list[Optional[Tensor]] = [None] * len(self.layers)
        self._seen: list[Optional[Tensor]] = [None] * len(self.layers)
        self._handles = [proj.register_forward_hook(self._hook(i)) for i, (proj, _, _) in enumerate(self.layers)]
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.step()))

    def _hook(self, i: int):
        def hook(module, args, out):
            if not module.training:
                return
            if self.recompute:
                self._inputs[i] = args[0]
                return
            with torch.no_grad():
                s = max_logits(out, self.layers[i][1], self.layers[i][2])
            self._seen[i] = s if self._seen[i] is None else torch.maximum(self._seen[i], s)

        return hook

    @torch.no_grad()
    def step(self) -> list[Tensor]:
        """Clip every head over ``tau``; returns each layer's ``(n_head,)`` largest logits
        *before* the clip (empty where no training forward was seen since the last step)."""
        out = []
        for i, (proj, heads, scale) in enumerate(self.layers):
            if self.recompute and self._inputs[i] is not None:
                # F.linear, not proj(...): the module's forward hooks must not see this product
                s = max_logits(F.linear(self._inputs[i].detach(), proj.weight, proj.bias), heads, scale)
            else:
                s = self._seen[i]
            self._inputs[i] = self._seen[i] = None
            if s is None:
                out.append(torch.empty(0))
                continue
            out.append(s)
            gamma = (self.tau / s.clamp_min(self.tau)).sqrt()  # 1 for heads at or under tau
            if bool((gamma < 1).any()):
                C = proj.out_features // 3
                rows = torch.cat([gamma, gamma]).repeat_interleave(C // heads).to(proj.weight.dtype)
                proj.weight[: 2 * C].mul_(rows[:, None])
                if proj.bias is not None:
                    proj.bias[: 2 * C].mul_(rows)
        return out

    def remove(self) -> None:
        """Detach the hooks (forward and optimizer)."""
        for h in self._handles:
            h.remove()
        self._handles = []
