"""Models and batches the way users have them, for ``specgrad diagnose``.

A model comes from

- a transformers config (``config.json``) or a local checkpoint folder (``config.json``
  with weights, and a tokenizer when one is saved there): a causal language model,
  randomly initialized from the config when there are no weights; nothing is downloaded;
- a factory ``package.module:make_model`` or ``path/to/file.py:make_model``, called with
  no arguments, returning an ``nn.Module``.

Batches come from

- a text file, tokenized by the model's tokenizer when there is one, else as UTF-8 bytes
  (or characters, when the vocabulary is smaller than 256);
- a tensor file: token ids (``.pt``, ``.npy``; 1-D a stream, 2-D sequences), or inputs and
  targets (a ``.pt`` holding ``(inputs, targets)`` or ``{"inputs", "targets"}``, a ``.npz``
  with arrays ``inputs`` and ``targets``);
- a factory ``module:make_batches``, called with no arguments, returning one batch or an
  iterable of them in any form :func:`~specgrad.diagnostics.diagnose` takes;
- nothing: a synthetic Zipfian token stream for a language model
  (:func:`~specgrad.data.zipf_corpus`), Gaussian inputs against fixed random targets for a
  model that starts with a ``Linear`` or a ``Conv2d``.

Every batch becomes a function ``batch(model) -> loss`` (a form
:func:`~specgrad.diagnostics.diagnose` takes), so one training loop serves them all.
Anything that cannot be loaded raises :class:`LoadError` with a one-line message.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import random_windows, zipf_corpus
from .diagnose import batch_loss

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy", ".npz")
SYNTHETIC_TOKENS = 1 << 16  # length of the synthetic token stream
SYNTHETIC_SIZE = 32  # height and width of synthetic images



class LoadError(ValueError):
    """A model or data source that cannot be loaded (a one-line message)."""


@dataclass
class LoadedModel:
    """A model, where it came from, and what tokenizes text for it."""

    model: nn.Module
    source: str
    tokenizer: Any = None  # a transformers tokenizer saved beside the weights
    vocab_size: Optional[int] = None  # of the input embedding, for token data
    max_length: Optional[int] = None  # positions the model can take
    transformers: bool = False  # takes ``input_ids`` and ``labels`` and returns ``.loss``


@dataclass
class Batches:
    """``batches[i](model) -> loss`` for step ``i``, and what they are (for the page)."""

    batches: list["Batch"]
    source: str
    notes: list[str] = field(default_factory=list)


# -- models --------------------------------------------------------------------------------


def load_model(spec: str, seed: int = 0) -> LoadedModel:
    """The model named by ``spec`` (see the module docstring), its random initialization
    seeded by ``seed``.

    Example:
        >>> m = load_model("torch.nn:Identity")
        >>> type(m.model).__name__, m.transformers
        ('Identity', False)
    """
    path = Path(spec)
    torch.manual_seed(seed)
    if path.is_dir() or path.suffix == ".json":
        if not path.exists():
            raise LoadError(f"no model config at {spec}")
        return _transformers_model(path)
    if _is_factory(spec):
        model = _call_factory(spec, "model")
        if not isinstance(model, nn.Module):
            raise LoadError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        return LoadedModel(model, spec, vocab_size=None if emb is None else emb.num_embeddings)
    if path.exists():
        raise LoadError(f"{spec} is neither a config.json, a checkpoint folder nor module:factory")
    raise LoadError(f"no model at {spec} (give a config.json, a checkpoint folder or module:factory)")


def _transformers_model(path: Path) -> LoadedModel:
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - depends on the environment
        raise LoadError("a transformers config needs the transformers package: pip install transformers") from None
    transformers_logging.set_verbosity_error()  # its warnings would crowd the table and one-line errors
    folder = path if path.is_dir() else path.parent
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise LoadError(f"no config.json in {path}")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoadError(f"cannot read {config_file}: {e}") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise LoadError(f"{config_file} has no model_type: not a transformers config")
    try:
        config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    except Exception as e:  # transformers raises ValueError, KeyError, TypeError for bad configs
        raise LoadError(f"cannot build a config from {config_file}: {_first_line(e)}") from None
    weights = path.is_dir() and any((folder / f).exists() for f in WEIGHT_FILES)
    try:
        if weights:
            model = AutoModelForCausalLM.from_pretrained(str(folder), config=config, local_files_only=True)
        else:
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as e:
        kind = type(config).__name__
        raise LoadError(f"cannot build a causal language model from {config_file} ({kind}): {_first_line(e)}") from None
    except Exception as e:  # a config whose sizes do not fit together, unreadable weights
        raise LoadError(f"cannot build the model of {config_file}: {_first_line(e)}") from None
    tokenizer = _tokenizer(folder) if path.is_dir() else None
    positions = [getattr(config, k, None) for k in ("n_positions", "max_position_embeddings", "n_ctx")]
    return LoadedModel(
        model, str(path), tokenizer=tokenizer, vocab_size=model.get_input_embeddings().num_embeddings,
        max_length=next((int(p) for p in positions if isinstance(p, int) and p > 0), None), transformers=True,
    )  # fmt: skip


def _tokenizer(folder: Path):
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise LoadError(f"cannot load the tokenizer saved in {folder}: {_first_line(e)}") from None


def _is_factory(spec: str) -> bool:
    module, _, name = spec.rpartition(":")
    return bool(module) and name.isidentifier() and not Path(spec).exists()


def _call_factory(spec: str, what: str) -> Any:
    """Import ``module:name`` (``module`` a dotted name or a ``.py`` file) and call it."""
    module_name, _, name = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise LoadError(f"no file {module_name} for the {what} factory {spec}")
            loader = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            if "" not in sys.path:  # a module in the working directory, as ``python -m`` finds it
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except LoadError:
        raise
    except Exception as e:
        raise LoadError(f"cannot import {module_name} for the {what} factory {spec}: {_first_line(e)}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise LoadError(f"{module_name} has no function {name!r} (the {what} factory {spec})")
    try:
        return fn()
    except Exception as e:
        raise LoadError(f"the {what} factory {spec} failed: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# -- batches -------------------------------------------------------------------------------


def load_batches(spec: Optional[str], loaded: LoadedModel, *, steps: int, batch_size: int = 8, seq_len: int = 128,
                 seed: int = 0) -> Batches:  # fmt: skip
    """``steps`` batches of ``spec`` (see the module docstring) for the model ``loaded``:
    windows of ``seq_len`` tokens (at most the model's positions), ``batch_size`` of them,
    at random offsets seeded by ``seed``.

    Example:
        >>> m = load_model("torch.nn:Identity")
        >>> m.vocab_size = 50
        >>> b = load_batches(None, m, steps=2, batch_size=4, seq_len=16)
        >>> len(b.batches), b.source
        (2, 'synthetic Zipfian tokens (vocabulary 50)')
    """
    g = torch.Generator().manual_seed(seed)
    if spec is None:
        return _synthetic(loaded, steps, batch_size, seq_len, g)
    path = Path(spec)
    if path.exists() and path.is_dir():
        raise LoadError(f"--data {spec} is a folder: give a text file, a tensor file or module:factory")
    if path.is_file():
        if path.suffix in TENSOR_SUFFIXES:
            return _tensor_file(path, loaded, steps, batch_size, seq_len, g)
        return _text_file(path, loaded, steps, batch_size, seq_len, g)
    if _is_factory(spec):
        made = _call_factory(spec, "data")
        items = [made] if _is_batch(made) else list(itertools.islice(made, steps)) if _iterable(made) else None
        if not items:
            raise LoadError(f"the data factory {spec} returned {type(made).__name__}: give a batch or batches")
        closures = [Batch(b, _targets_loss) for b in items]
        return Batches(list(itertools.islice(itertools.cycle(closures), steps)), spec)
    raise LoadError(f"no data at {spec} (give a text file, a .pt/.npy/.npz file or module:factory)")


def _is_batch(x: Any) -> bool:
    return isinstance(x, (Tensor, Mapping)) or callable(x) or (
        isinstance(x, tuple) and len(x) == 2 and all(isinstance(t, Tensor) for t in x))  # fmt: skip


def _iterable(x: Any) -> bool:
    try:
        iter(x)
    except TypeError:
        return False
    return not isinstance(x, (str, bytes))


def _text_file(path, loaded, steps, batch_size, seq_len, g) -> Batches:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise LoadError(f"cannot read {path}: {e.strerror or e}") from None
    if loaded.tokenizer is not None:
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        how = f"{type(loaded.tokenizer).__name__} tokens"
    else:
        vocab = _vocab(loaded, f"text ({path})")
        if vocab >= 256:
            ids, how = list(text.encode("utf-8")), "UTF-8 bytes"
        else:
            chars = sorted(set(text))
            if len(chars) > vocab:
                raise LoadError(f"{path} has {len(chars)} distinct characters, more than the model's vocabulary of {vocab}")
            index = {c: i for i, c in enumerate(chars)}
            ids, how = [index[c] for c in text], "characters"
    tokens = torch.tensor(ids, dtype=torch.long)
    return _token_batches(tokens, loaded, steps, batch_size, seq_len, g, f"{path.name}: {len(tokens):,} {how}")


def _tensor_file(path, loaded, steps, batch_size, seq_len, g) -> Batches:
    try:
        if path.suffix in (".npy", ".npz"):
            obj = np.load(path, allow_pickle=False)
            if isinstance(obj, np.lib.npyio.NpzFile):
                if not {"inputs", "targets"} <= set(obj.files):
                    raise LoadError(f"{path} holds {obj.files}: a .npz needs arrays 'inputs' and 'targets'")
                obj = (torch.from_numpy(obj["inputs"]), torch.from_numpy(obj["targets"]))
            else:
                obj = torch.from_numpy(obj)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except LoadError:
        raise
    except Exception as e:
        raise LoadError(f"cannot read tensors from {path}: {_first_line(e)}") from None
    if isinstance(obj, Mapping) and {"inputs", "targets"} <= set(obj):
        obj = (obj["inputs"], obj["targets"])
    if isinstance(obj, Tensor) and not obj.is_floating_point() and not obj.is_complex():
        if obj.ndim == 1:
            return _token_batches(obj.long(), loaded, steps, batch_size, seq_len, g, f"{path.name}: {obj.numel():,} tokens")
        if obj.ndim == 2:
            return _sequence_batches(obj.long(), loaded, steps, batch_size, g, f"{path.name}: {obj.shape[0]:,} sequences")
        raise LoadError(f"{path} holds token ids of shape {tuple(obj.shape)}: give 1-D (a stream) or 2-D (sequences)")
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj):
        x, y = obj
        if len(x) != len(y):
            raise LoadError(f"{path}: {len(x)} inputs but {len(y)} targets")
        batches = [Batch((x[i], y[i]), _targets_loss) for i in _sample_rows(len(x), steps, batch_size, g)]
        return Batches(batches, f"{path.name}: {len(x):,} inputs and targets")
    what = f"a float tensor {tuple(obj.shape)}" if isinstance(obj, Tensor) else type(obj).__name__
    raise LoadError(f"{path} holds {what}: give token ids, or (inputs, targets) saved with torch.save")


def _sample_rows(n: int, steps: int, batch_size: int, g) -> list[Tensor]:
    return [torch.randint(n, (min(batch_size, n),), generator=g) for _ in range(steps)]


def _vocab(loaded: LoadedModel, what: str) -> int:
    if loaded.vocab_size is None:
        raise LoadError(f"{what} needs a model with a token embedding (nn.Embedding); this one has none")
    return loaded.vocab_size


def _check_ids(tokens: Tensor, loaded: LoadedModel, source: str) -> None:
    vocab = _vocab(loaded, f"token data ({source})")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise LoadError(f"{source}: token ids span {int(tokens.min())}..{int(tokens.max())}, "
                        f"outside the model's vocabulary 0..{vocab - 1}")  # fmt: skip


def _token_batches(tokens, loaded, steps, batch_size, seq_len, g, source) -> Batches:
    _check_ids(tokens, loaded, source)
    notes = []
    context = min(seq_len, loaded.max_length or seq_len, len(tokens) - 1)
    if context < 1:
        raise LoadError(f"{source}: too few tokens for one sequence")
    if context < seq_len:
        notes.append(f"sequences of {context} tokens (the model's positions or the data's length)")
    batches = []
    for _ in range(steps):
        x, y = random_windows(tokens, batch_size, context, g)
        if loaded.transformers:  # shifts the labels itself
            batches.append(Batch({"input_ids": x, "labels": x}, None))
        else:
            batches.append(Batch((x, y), _targets_loss))
    return Batches(batches, source, notes)


def _sequence_batches(seqs, loaded, steps, batch_size, g, source) -> Batches:
    _check_ids(seqs, loaded, source)
    if seqs.shape[1] < 2:
        raise LoadError(f"{source}: sequences of {seqs.shape[1]} token, need at least 2")
    if loaded.max_length and seqs.shape[1] > loaded.max_length:
        raise LoadError(f"{source}: sequences of {seqs.shape[1]} tokens, longer than the model's {loaded.max_length} positions")
    batches = []
    for rows in _sample_rows(len(seqs), steps, batch_size, g):
        s = seqs[rows]
        batch = {"input_ids": s, "labels": s} if loaded.transformers else (s[:, :-1], s[:, 1:])
        batches.append(Batch(batch, None if loaded.transformers else _targets_loss))
    return Batches(batches, source)


def _synthetic(loaded, steps, batch_size, seq_len, g) -> Batches:
    if loaded.vocab_size is not None:
        tokens = zipf_corpus(loaded.vocab_size, SYNTHETIC_TOKENS, generator=g)
        out = _token_batches(tokens, loaded, steps, batch_size, seq_len, g, "")
        out.source = f"synthetic Zipfian tokens (vocabulary {loaded.vocab_size})"
        return out
    first = next((m for m in loaded.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if isinstance(first, nn.Linear):
        shape = (batch_size, first.in_features)
    elif isinstance(first, nn.Conv2d):
        shape = (batch_size, first.in_channels, SYNTHETIC_SIZE, SYNTHETIC_SIZE)
    else:
        raise LoadError("no synthetic data for a model without an embedding, Linear or Conv2d first: pass --data")
    x = torch.randn(steps * shape[0], *shape[1:], generator=g)
    try:
        with torch.no_grad():
            y = torch.randn(loaded.model(x[: shape[0]]).shape, generator=g)
    except Exception as e:
        raise LoadError(f"synthetic inputs {tuple(shape)} do not fit the model ({_first_line(e)}): pass --data") from None
    batches = [Batch((x[i * shape[0] : (i + 1) * shape[0]], y), _targets_loss) for i in range(steps)]
    return Batches(batches, f"synthetic Gaussian inputs {tuple(shape)} against fixed random targets")


# -- losses --------------------------------------------------------------------------------


def _logits(out: Any) -> Tensor:
    """The tensor a model returned: itself, the first tensor of a tuple, or ``.logits``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        t = next((o for o in out if isinstance(o, Tensor)), None)
        if t is not None:
            return t
    t = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(t, Tensor):
        return t
    raise LoadError(f"the model returned {type(out).__name__}, with no tensor to compare with the targets")


def _targets_loss(out: Any, y: Tensor) -> Tensor:
    """Cross-entropy for integer targets (next tokens, classes), else mean squared error."""
    out = _logits(out)
    if not y.is_floating_point():
        if out.shape[:-1] != y.shape:
            raise LoadError(f"outputs {tuple(out.shape)} do not fit integer targets {tuple(y.shape)}")
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if out.shape != y.shape:
        raise LoadError(f"outputs {tuple(out.shape)} do not fit targets {tuple(y.shape)}")
    return F.mse_loss(out, y.to(out.dtype))


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class Batch:
    """A batch as a function of the model that returns the loss (its tensors moved to the
    model's device): a form :func:`~specgrad.diagnostics.diagnose` takes.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> b = Batch((torch.randn(8, 3), torch.randn(8, 2)), torch.nn.functional.mse_loss)
        >>> b(net).shape, b.head(2).data[0].shape
        (torch.Size([]), torch.Size([2, 3]))
    """

    def __init__(self, data: Any, loss_fn: Optional[Callable] = None):
        self.data = data
        self.loss_fn = loss_fn

    def __call__(self, model: nn.Module) -> Tensor:
        data = self.data
        if not (callable(data) and not isinstance(data, (Tensor, nn.Module))):
            data = _to(data, _device(model))
        try:
            pair = isinstance(data, tuple) and len(data) == 2  # loss_fn(outputs, targets) takes the targets
            return batch_loss(model, data, self.loss_fn if pair else None)
        except ValueError as e:  # a model without a loss: the data does not fit it
            raise LoadError(f"{e}: give (inputs, targets)") from None

    def head(self, rows: int) -> "Batch":
        """The batch cut to its first ``rows`` samples (a function batch stays whole)."""
        return Batch(_head(self.data, rows), self.loss_fn)


def _head(x: Any, rows: int) -> Any:
    if isinstance(x, Tensor):
        return x[:rows] if x.ndim else x
    if isinstance(x, (tuple, list)):
        return type(x)(_head(v, rows) for v in x)
    if isinstance(x, Mapping):
        return {k: _head(v, rows) for k, v in x.items()}
    return x
