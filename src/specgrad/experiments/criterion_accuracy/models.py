"""The models of ``criterion-accuracy``: each a :class:`Task` (a model, its training batches,
a fixed probe batch and a loss) built from a name of :data:`TASKS`, and the block type of
every block :func:`~specgrad.diagnostics.diagnose` reports.

* ``rf-relu``, ``rf-swiglu``: random-feature least squares (the readout ``W`` on fixed
  features ``sigma(V x)``; :mod:`specgrad.theory.random_features`), the one model where the
  one-step model is exact;
* ``sr-relu2``, ``sr-swiglu``: the study's 4-layer sparse-regression MLPs on ``y = x1 x2 x3``;
* ``conv-digits``: a two-layer conv net on scikit-learn's 8 x 8 digits;
* ``gpt-gelu``, ``gpt-relu2``, ``gpt-swiglu``: :class:`~specgrad.models.GPT` on characters;
* ``hf-gpt2``, ``hf-llama``: transformers' GPT-2 and Llama from tiny configs (random init).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import CharCorpus
from ...models import GPT, GPTConfig
from ...theory.random_features import post_activation

TASKS = ("rf-relu", "rf-swiglu", "sr-relu2", "sr-swiglu", "conv-digits", "gpt-gelu", "gpt-relu2", "gpt-swiglu",
         "hf-gpt2", "hf-llama")  # fmt: skip
BLOCK_TYPES = ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o", "mlp.in", "mlp.out", "hidden", "input", "conv",
               "head", "embedding")  # fmt: skip


@dataclass
class Task:
    """A model to train and probe: ``loss(model, batch) -> scalar``; ``batches(step)`` the
    training batch of a step; ``probe`` the fixed batch :func:`diagnose` sees at every moment
    (in its ``batch`` form); ``spectral`` the parameters a spectral method may take (``None``:
    the optimizer's routing of the module)."""

    name: str
    model: nn.Module
    batches: Callable[[int], Any]
    probe: Any
    loss: Callable[[nn.Module, Any], Tensor]
    spectral: Optional[list] = None


def block_type(task: str, block: str) -> str:
    """The type of a block of ``task`` from its name in :func:`diagnose`'s report.

    Example:
        >>> block_type("hf-gpt2", "transformer.h.0.attn.c_attn.k"), block_type("gpt-gelu", "transformer.h.1.mlp.c_fc")
        ('attn.k', 'mlp.in')
        >>> block_type("sr-relu2", "layers.0"), block_type("sr-relu2", "layers.2"), block_type("rf-relu", "readout")
        ('input', 'hidden', 'head')
    """
    if block in ("readout", "lm_head", "head", "out") or block.endswith(".lm_head"):
        return "head"
    if task.startswith("sr-"):
        return "input" if block.startswith("layers.0") else "hidden"
    if task == "conv-digits":
        return "conv" if block.startswith("conv") else "head"
    rules = [(r"(wte|wpe|embed_tokens)$", "embedding"), (r"c_attn\.(q|k|v)$", None), (r"(q|k|v)_proj$", None),
             (r"attn\.c_attn$", "attn.qkv"), (r"(attn\.c_proj|o_proj)$", "attn.o"),
             (r"(mlp\.c_fc|w1|w2|gate_proj|up_proj)$", "mlp.in"), (r"(mlp\.c_proj|down_proj)$", "mlp.out")]  # fmt: skip
    for pattern, kind in rules:
        m = re.search(pattern, block)
        if m:
            return kind or f"attn.{m.group(1)}"
    return "other"


# -- least squares and MLPs -------------------------------------------------------------------


class RandomFeatures(nn.Module):
    """``x (n, d) -> readout(sigma(x V^T))``: fixed features, one trainable ``(k, k)`` readout."""

    def __init__(self, V: Tensor, V2: Optional[Tensor], activation: str):
        super().__init__()
        self.register_buffer("V", V)
        self.register_buffer("V2", V if V2 is None else V2)
        self.activation = activation
        self.readout = nn.Linear(V.shape[0], V.shape[0], bias=False)
        nn.init.zeros_(self.readout.weight)

    def forward(self, x: Tensor) -> Tensor:
        Z = x @ self.V.T
        return self.readout(post_activation(self.activation, Z, x @ self.V2.T if self.activation == "swiglu" else None))


class SparseMLP(nn.Module):
    """The study's 4-layer MLP without biases: ``relu(.)^2`` or SwiGLU hidden layers, a linear output."""

    def __init__(self, input_dim: int, hidden: int, mlp: str):
        super().__init__()
        dims = [input_dim, hidden, hidden, hidden]
        self.mlp = mlp
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))
        pairs = list(zip(dims[:-1], dims[1:]))
        self.gates = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in pairs) if mlp == "swiglu" else None
        self.head = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.silu(self.gates[i](x)) * layer(x) if self.mlp == "swiglu" else F.relu(layer(x)).square()
        return self.head(x)


class DigitsNet(nn.Module):
    """``(n, 1, 8, 8) -> (n, 10)``: two 3x3 convs with ReLU, then a linear head."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.head = nn.Linear(2 * channels * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.head(x.flatten(1))


def _minibatches(x: Tensor, y: Tensor, batch: int, seed: int) -> Callable[[int], tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed + 1)
    return lambda step: (lambda i: (x[i], y[i]))(torch.randint(len(x), (batch,), generator=g))


def _mse(model, batch):
    x, y = batch
    return 0.5 * (model(x) - y).square().sum(1).mean()


def _ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _regression(name: str, cfg, seed: int) -> Task:
    g = torch.Generator().manual_seed(seed)
    n, d = cfg.samples, cfg.input_dim
    if name.startswith("rf-"):
        act = name[3:]
        k = cfg.width
        V = torch.randn(k, d, generator=g) / math.sqrt(d)
        V2 = torch.randn(k, d, generator=g) / math.sqrt(d) if act == "swiglu" else None
        x = torch.randn(n, d, generator=g)
        model = RandomFeatures(V, V2, act)
        W_sharp = torch.randn(k, k, generator=g) / math.sqrt(k)
        y = post_activation(act, x @ V.T, None if V2 is None else x @ V2.T) @ W_sharp.T
        spectral = [model.readout.weight]
    else:
        x = torch.randn(n, d, generator=g)
        y = (x[:, 0] * x[:, 1] * x[:, 2]).unsqueeze(1)
        torch.manual_seed(seed)
        model = SparseMLP(d, cfg.width, name[3:])
        spectral = None
    probe = (x[: cfg.probe_rows], y[: cfg.probe_rows])
    return Task(name, model, _minibatches(x, y, cfg.batch_size, seed), probe, _mse, spectral)


def _digits(cfg, seed: int) -> Task:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    torch.manual_seed(seed)
    model = DigitsNet(cfg.channels)
    return Task("conv-digits", model, _minibatches(x, y, cfg.batch_size, seed), (x[: cfg.probe_rows], y[: cfg.probe_rows]),
                _ce)


def _lm(name: str, cfg, seed: int, corpus: CharCorpus) -> Task:
    torch.manual_seed(seed)
    if name.startswith("gpt-"):
        model = GPT(GPTConfig(vocab_size=corpus.vocab_size, context=cfg.context, n_layer=cfg.n_layer, n_head=2,
                              n_embd=cfg.n_embd, mlp=name[4:], tied=False))  # fmt: skip

        def loss(m, batch):
            return m(*batch)[1]
    else:
        import transformers

        transformers.logging.set_verbosity_error()
        common = dict(vocab_size=corpus.vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        if name == "hf-gpt2":
            conf = transformers.GPT2Config(n_positions=cfg.context, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=2,
                                           **common)  # fmt: skip
            model = transformers.GPT2LMHeadModel(conf)
        else:
            conf = transformers.LlamaConfig(hidden_size=cfg.n_embd, intermediate_size=2 * cfg.n_embd,
                                            num_hidden_layers=cfg.n_layer, num_attention_heads=2, num_key_value_heads=2,
                                            max_position_embeddings=cfg.context, tie_word_embeddings=False, **common)  # fmt: skip
            model = transformers.LlamaForCausalLM(conf)

        def loss(m, batch):
            return m(input_ids=batch[0], labels=batch[0]).loss
    g = torch.Generator().manual_seed(seed + 1)
    probe = corpus.get_batch("val", cfg.probe_seqs, cfg.context, torch.Generator().manual_seed(1234))
    return Task(name, model, lambda step: corpus.get_batch("train", cfg.batch_size, cfg.context, g), probe, loss)


def build(name: str, cfg, seed: int, corpus: Optional[CharCorpus] = None) -> Task:
    """The :class:`Task` ``name`` (one of :data:`TASKS`) at the sizes of ``cfg``, seeded."""
    if name not in TASKS:
        raise ValueError(f"unknown model {name!r}; choose from {TASKS}")
    if name.startswith(("rf-", "sr-")):
        return _regression(name, cfg, seed)
    if name == "conv-digits":
        return _digits(cfg, seed)
    return _lm(name, cfg, seed, corpus if corpus is not None else CharCorpus.default())
