"""Character/byte corpora (nanoGPT's ``shakespeare_char`` recipe) and Zipfian token streams.

* :class:`CharCorpus`: any text file, or an embedded corpus (the running Python's own
  standard-library sources, no download), as ``train`` / ``val`` LongTensors with
  nanoGPT's ``get_batch``.
* :func:`zipf_corpus`: a learnable token stream whose token frequencies follow
  ``p_k ∝ k^(-exponent)`` exactly, and :func:`zipf_entropy_rate`, the best loss a model can
  reach on it; :func:`zipf_conditional_nll`, the loss of the best predictor per token;
  :class:`TokenStream`, such a stream with ``get_batch``.
* :func:`token_frequency_buckets`: token id -> frequency bucket, for per-bucket losses.
"""

from __future__ import annotations

import math
import os
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor

LEVELS = ("char", "byte")
SPLITS = ("train", "val")


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")


def _stdlib_text(max_chars: int) -> tuple[str, str]:
    """The first ``max_chars`` characters of the stdlib's top-level ``*.py`` files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = sorted(n for n in os.listdir(stdlib) if n.endswith(".py")) if stdlib.is_dir() else []
    pieces, total = [], 0
    for name in names:
        if total >= max_chars:
            break
        path = stdlib / name
        if not path.is_file():
            continue
        piece = f"# ---- {name} ----\n" + path.read_text(encoding="utf-8", errors="replace")
        pieces.append(piece)
        total += len(piece)
    text = "".join(pieces)[:max_chars]
    if not text:
        raise ValueError(f"no Python source files found in the standard library at {str(stdlib)!r}")
    version = ".".join(map(str, sys.version_info[:3]))
    return text, f"stdlib {stdlib} (Python {version}, {len(text)} chars)"


def random_windows(data: Tensor, batch_size: int, context: int,
                   generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``batch_size`` windows of the 1-D token stream ``data`` at start offsets uniform on
    ``[0, len(data) - context - 1]``: ``x, y`` each ``(batch_size, context)``, ``y`` the next
    tokens of ``x`` (``CharCorpus.get_batch`` without its checks).

    Example:
        >>> x, y = random_windows(torch.arange(10), 2, 3, torch.Generator().manual_seed(0))
        >>> x.shape, bool((y == x + 1).all())
        (torch.Size([2, 3]), True)
    """
    start = torch.randint(len(data) - context, (batch_size, 1), generator=generator)
    windows = data[start + torch.arange(context + 1)]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


class CharCorpus:
    """A text as a token stream, split into ``train`` and ``val`` LongTensors.

    ``level="char"``: one token per Unicode character, vocabulary the sorted distinct
    characters of the text (nanoGPT's ``shakespeare_char``). ``level="byte"``: one token
    per UTF-8 byte, ``vocab_size == 256``; text that is not valid UTF-8 round-trips through
    ``surrogateescape``. The last ``round(n * val_fraction)`` tokens are ``val``, the rest
    ``train`` (nanoGPT's split: no shuffling, so ``val`` is text the model never saw).

    Attributes: ``text`` (str), ``level``, ``vocab_size``, ``train`` and ``val`` (1-D
    int64), ``source`` (where the text came from).

    Example:
        >>> corpus = CharCorpus("hello world, hello corpus", val_fraction=0.2)
        >>> corpus.vocab_size, len(corpus.train), len(corpus.val)
        (13, 20, 5)
        >>> corpus.decode(corpus.encode("hello"))
        'hello'
        >>> x, y = corpus.get_batch("train", 2, 4, generator=torch.Generator().manual_seed(0))
        >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
        (torch.Size([2, 4]), True)
    """

    def __init__(self, text: str, level: str = "char", val_fraction: float = 0.1,
                 *, source: str = "<string>"):
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {text!r:.80}")
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
                or not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be a float in [0, 1), got {val_fraction!r}")
        self.text, self.level, self.val_fraction, self.source = text, level, val_fraction, source
        if level == "char":
            self.itos = sorted(set(text))
            self._codes = np.array([ord(c) for c in self.itos], dtype=np.uint32)
        data = self.encode(text)
        n_val = round(len(data) * val_fraction)
        self.train, self.val = data[: len(data) - n_val], data[len(data) - n_val:]

    @classmethod
    def from_path(cls, path: Union[str, os.PathLike], level: str = "char",
                  val_fraction: float = 0.1) -> "CharCorpus":
        """Read a text file (UTF-8 for ``level="char"``; any bytes for ``level="byte"``).

        Line endings are kept as they are in the file.

        Example:
            >>> CharCorpus.from_path("/no/such/file.txt")
            Traceback (most recent call last):
            ...
            ValueError: path '/no/such/file.txt' is not a readable file
        """
        if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
            raise ValueError(f"path {str(path)!r} is not a readable file")
        raw = Path(path).read_bytes()
        if level == "byte":
            text = raw.decode("utf-8", errors="surrogateescape")
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{str(path)!r} is not UTF-8 text (bad byte at offset {e.start}); "
                    f"use level='byte'"
                ) from None
        if not text:
            raise ValueError(f"{str(path)!r} is empty")
        return cls(text, level, val_fraction, source=str(path))

    @classmethod
    def default(cls, level: str = "char", val_fraction: float = 0.1,
                max_chars: int = 1_000_000) -> "CharCorpus":
        """An embedded corpus: Python source of the running interpreter's standard library.

        The top-level ``*.py`` files of ``sysconfig.get_paths()["stdlib"]`` in sorted
        order, each preceded by a ``# ---- name.py ----`` line, concatenated and cut at
        ``max_chars`` characters (1 M by default, the size of tiny Shakespeare). Nothing is
        downloaded; the text is identical on every machine with the same Python version
        (it changes with the version, and with distributions that patch the stdlib).

        Example:
            >>> corpus = CharCorpus.default(max_chars=5000)
            >>> len(corpus.text), corpus.text.startswith("# ---- ")
            (5000, True)
        """
        _check_positive_int(max_chars, "max_chars")
        text, source = _stdlib_text(max_chars)
        return cls(text, level, val_fraction, source=source)

    @property
    def vocab_size(self) -> int:
        return 256 if self.level == "byte" else len(self.itos)

    def encode(self, s: str) -> Tensor:
        """``str`` -> 1-D int64 tensor of token ids (ValueError for an unknown character)."""
        if not isinstance(s, str):
            raise ValueError(f"encode expects a str, got {type(s).__name__}")
        if self.level == "byte":
            raw = s.encode("utf-8", errors="surrogateescape")
            return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))
        codes = np.frombuffer(s.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
        ids = np.searchsorted(self._codes, codes)
        last = len(self._codes) - 1
        bad = (ids > last) | (self._codes[np.minimum(ids, last)] != codes)
        if bad.any():
            raise ValueError(f"character {chr(codes[bad.argmax()])!r} is not in the vocabulary")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids: Tensor) -> str:
        """1-D tensor (or sequence) of token ids in ``[0, vocab_size)`` -> ``str``."""
        ids = np.asarray(torch.as_tensor(ids).cpu(), dtype=np.int64)
        if ids.ndim > 1:
            raise ValueError(f"decode expects a 1-D tensor, got shape {ids.shape}")
        ids = ids.reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.vocab_size}), got range [{ids.min()}, {ids.max()}]"
            )
        if self.level == "byte":
            return ids.astype(np.uint8).tobytes().decode("utf-8", errors="surrogateescape")
        return "".join(self.itos[i] for i in ids.tolist())

    def get_batch(self, split: str, batch_size: int, context: int,
                  generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """``batch_size`` random windows of ``split``: ``x, y`` each ``(batch_size, context)``
        int64, ``y[:, t] == x[:, t + 1]`` inside the window (next-token targets).

        Start offsets are uniform on ``[0, len(split) - context - 1]`` from ``generator``
        (the global RNG if None); a split shorter than ``context + 1`` raises ValueError.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        _check_positive_int(batch_size, "batch_size")
        _check_positive_int(context, "context")
        _check_generator(generator)
        data = self.train if split == "train" else self.val
        if len(data) < context + 1:
            raise ValueError(
                f"{split} split has {len(data)} tokens, fewer than context + 1 = {context + 1}"
            )
        return random_windows(data, batch_size, context, generator)

    def __len__(self) -> int:
        return len(self.train) + len(self.val)

    def __repr__(self) -> str:
        return (f"CharCorpus(level={self.level!r}, vocab_size={self.vocab_size}, "
                f"train={len(self.train)}, val={len(self.val)}, source={self.source!r})")


# --------------------------------------------------------------------------- Zipf


class ZipfChain(NamedTuple):
    """The Markov chain of :func:`zipf_corpus`: token probabilities ``p`` ``(V,)`` float64,
    each token's ``cluster`` ``(V,)`` int64, and each cluster's total probability
    ``p_cluster`` ``(n_clusters,)`` float64."""

    p: Tensor
    cluster: Tensor
    p_cluster: Tensor


def zipf_chain(vocab_size: int, exponent: float = 1.1, n_clusters: int = 8, coherence: float = 0.9) -> ZipfChain:
    """The parts of :func:`zipf_corpus`'s chain, after checking every setting.

    Example:
        >>> chain = zipf_chain(4, 1.0, n_clusters=2)
        >>> [round(v, 4) for v in chain.p.tolist()], chain.cluster.tolist()
        ([0.48, 0.24, 0.16, 0.12], [0, 1, 0, 1])
    """
    _check_positive_int(vocab_size, "vocab_size")
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) \
            or not math.isfinite(exponent) or exponent <= 0:
        raise ValueError(f"exponent must be a positive finite float, got {exponent!r}")
    _check_positive_int(n_clusters, "n_clusters")
    if n_clusters > vocab_size:
        raise ValueError(f"n_clusters ({n_clusters}) must be at most vocab_size ({vocab_size})")
    if isinstance(coherence, bool) or not isinstance(coherence, (int, float)) \
            or not 0.0 <= coherence <= 1.0:
        raise ValueError(f"coherence must be a float in [0, 1], got {coherence!r}")
    p = torch.arange(1, vocab_size + 1, dtype=torch.float64).pow(-float(exponent))
    p /= p.sum()
    cluster = torch.arange(vocab_size) % n_clusters
    return ZipfChain(p, cluster, torch.zeros(n_clusters, dtype=torch.float64).index_add_(0, cluster, p))


def zipf_corpus(vocab_size: int, length: int, exponent: float = 1.1,
                generator: Optional[torch.Generator] = None, *, n_clusters: int = 8,
                coherence: float = 0.9) -> Tensor:
    """A token stream ``(length,)`` int64 whose stationary token frequencies are exactly
    ``p_k ∝ k^(-exponent)`` for token id ``k - 1`` (id 0 is the most frequent).

    Not i.i.d.: tokens fall into ``n_clusters`` clusters (``id % n_clusters``, so each
    cluster holds an interleaved slice of every frequency range) and the stream is the
    first-order Markov chain

        ``P(next = j | prev = i) = coherence * p_j [j ~ i] / P(cluster(i)) + (1 - coherence) p_j``

    (``[j ~ i]`` is 1 when ``j`` and ``i`` share a cluster): with probability ``coherence``
    the next token is drawn from the Zipf law restricted to the previous token's cluster,
    otherwise from the full Zipf law. This
    chain leaves ``p`` invariant (the first token is drawn from ``p``), so every position
    has marginal ``p``, while the previous token tells a model which cluster comes next
    (runs of mean length ``1 / ((1 - coherence)(1 - P(cluster)))``). A bigram model can
    learn all of it: the best achievable loss is :func:`zipf_entropy_rate`, against the
    unigram entropy ``H(p)`` (``coherence=0``: i.i.d. Zipf). (Drawing from a Zipf law
    whose ranking is randomly permuted by the previous token is *not* used: its stationary
    marginal is nearly flat, log-log slope about -0.1 for exponent 1.1.)

    Example:
        >>> tokens = zipf_corpus(100, 10_000, generator=torch.Generator().manual_seed(0))
        >>> tokens.shape, tokens.dtype, int(tokens.bincount().argmax())
        (torch.Size([10000]), torch.int64, 0)
    """
    _check_positive_int(length, "length")
    _check_generator(generator)
    p, cluster, p_cluster = zipf_chain(vocab_size, exponent, n_clusters, coherence)
    # The cluster sequence is its own Markov chain: keep with prob. coherence, else redraw
    # from p_cluster. Redraw at every position, then carry the last redraw forward.
    redraw = torch.rand(length, generator=generator, dtype=torch.float64) >= coherence
    redraw[0] = True
    fresh = torch.multinomial(p_cluster, length, replacement=True, generator=generator)
    last = torch.where(redraw, torch.arange(length), 0).cummax(0).values
    clusters = fresh[last]
    tokens = torch.empty(length, dtype=torch.long)
    for c in range(n_clusters):  # given its cluster, each token is an independent draw
        where = (clusters == c).nonzero().squeeze(1)
        if len(where):
            ids = torch.arange(c, vocab_size, n_clusters)
            tokens[where] = ids[torch.multinomial(p[ids], len(where), replacement=True,
                                                  generator=generator)]
    return tokens


def zipf_entropy_rate(vocab_size: int, exponent: float = 1.1, *, n_clusters: int = 8,
                      coherence: float = 0.9) -> float:
    """Entropy rate in nats of :func:`zipf_corpus` with these settings: the lowest mean
    next-token cross-entropy any model can reach on it (``coherence=0`` gives ``H(p)``).

    Example:
        >>> h_iid = zipf_entropy_rate(100, coherence=0.0)
        >>> h_markov = zipf_entropy_rate(100, coherence=0.9)
        >>> round(h_iid, 4), h_markov < h_iid
        (3.4566, True)
    """
    p, cluster, p_cluster = zipf_chain(vocab_size, exponent, n_clusters, coherence)
    rate = 0.0
    for c in range(n_clusters):
        q = (1 - coherence) * p + coherence * torch.where(cluster == c, p / p_cluster[c], 0.0)
        q = q[q > 0]
        rate += float(p_cluster[c] * -(q * q.log()).sum())
    return rate


def zipf_conditional_nll(prev: Tensor, nxt: Tensor, vocab_size: int, exponent: float = 1.1, *,
                         n_clusters: int = 8, coherence: float = 0.9) -> Tensor:  # fmt: skip
    """``-log P(nxt | prev)`` under the chain of :func:`zipf_corpus`, float64 of the shape of
    ``prev`` (same shape as ``nxt``): the loss of the Bayes predictor, whose mean over a long
    stream is :func:`zipf_entropy_rate`.

    Example:
        >>> nll = zipf_conditional_nll(torch.tensor([0, 0]), torch.tensor([0, 1]), 16)
        >>> bool(nll[0] < nll[1])  # 0 and 1 sit in different clusters
        True
    """
    p, cluster, p_cluster = zipf_chain(vocab_size, exponent, n_clusters, coherence)
    same = (cluster[prev] == cluster[nxt]).double()
    q = (1 - coherence) * p[nxt] + coherence * same * p[nxt] / p_cluster[cluster[prev]]
    return -q.log()


class TokenStream:
    """A token stream split into ``train`` and ``val`` (1-D int64) with :class:`CharCorpus`'s
    ``get_batch``, so that the language-model training loops accept it.

    Example:
        >>> stream = TokenStream(torch.arange(20), torch.arange(20, 30), vocab_size=30)
        >>> x, y = stream.get_batch("val", 2, 4, torch.Generator().manual_seed(0))
        >>> bool((x >= 20).all()), x.shape
        (True, torch.Size([2, 4]))
    """

    def __init__(self, train: Tensor, val: Tensor, vocab_size: int):
        self.train, self.val, self.vocab_size = train, val, vocab_size

    def get_batch(self, split: str, batch_size: int, context: int,
                  generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        return random_windows(self.train if split == "train" else self.val, batch_size, context, generator)


def token_frequency_buckets(tokens: Tensor, vocab_size: int, n_buckets: int,
                            *, by: str = "mass") -> Tensor:
    """Frequency bucket of every token id: ``(vocab_size,)`` int64 in ``[0, n_buckets)``.

    Token ids are ranked by their count in ``tokens`` (any shape, ids in
    ``[0, vocab_size)``), most frequent first, ties by smaller id; bucket 0 is the most
    frequent, and every token of bucket ``b`` is at least as frequent as every token of
    bucket ``b + 1``. ``by="mass"``: each bucket holds about ``1 / n_buckets`` of the
    occurrences (Kunstner et al. 2024; a single token carrying more than that leaves some
    buckets empty, and unseen ids land in the last bucket). ``by="rank"``: each bucket
    holds about ``vocab_size / n_buckets`` token ids.

    Example:
        >>> tokens = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
        >>> token_frequency_buckets(tokens, 5, 2).tolist()
        [0, 1, 1, 1, 1]
        >>> token_frequency_buckets(tokens, 5, 2, by="rank").tolist()
        [0, 0, 0, 1, 1]
    """
    _check_positive_int(vocab_size, "vocab_size")
    _check_positive_int(n_buckets, "n_buckets")
    if by not in ("mass", "rank"):
        raise ValueError(f"by must be 'mass' or 'rank', got {by!r}")
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"tokens must be an integer tensor, got {tokens!r:.80}")
    flat = tokens.reshape(-1).long().cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}), "
            f"got range [{int(flat.min())}, {int(flat.max())}]"
        )
    counts = torch.bincount(flat, minlength=vocab_size)
    order = torch.sort(counts, descending=True, stable=True).indices
    if by == "rank":
        position = torch.arange(vocab_size, dtype=torch.float64) / vocab_size
    else:
        sorted_counts = counts[order].double()
        position = (sorted_counts.cumsum(0) - sorted_counts) / max(float(sorted_counts.sum()), 1.0)
    buckets = torch.empty(vocab_size, dtype=torch.long)
    buckets[order] = (position * n_buckets).floor().long().clamp_(0, n_buckets - 1)
    return buckets
