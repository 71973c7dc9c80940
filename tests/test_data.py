"""Corpora of ``specgrad.data``: char/byte text, the embedded default, Zipfian streams, buckets."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from specgrad.data import CharCorpus, token_frequency_buckets, zipf_corpus, zipf_entropy_rate

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak. ünï ✓\n"
) * 20


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- CharCorpus


@pytest.mark.parametrize("level", ["char", "byte"])
def test_from_path_round_trip(tmp_path, level):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    corpus = CharCorpus.from_path(path, level=level)
    assert corpus.text == TEXT and corpus.source == str(path)
    ids = corpus.encode(TEXT)
    assert ids.dtype == torch.int64 and ids.ndim == 1
    assert int(ids.min()) >= 0 and int(ids.max()) < corpus.vocab_size
    assert corpus.decode(ids) == TEXT
    if level == "char":
        assert corpus.vocab_size == len(set(TEXT)) and len(ids) == len(TEXT)
        assert corpus.decode(corpus.encode("hear me")) == "hear me"
    else:
        assert corpus.vocab_size == 256 and len(ids) == len(TEXT.encode("utf-8"))


def test_byte_level_reads_any_file(tmp_path):
    raw = b"abc\xff\xfe\r\nxyz\x00" * 10
    path = tmp_path / "binary.dat"
    path.write_bytes(raw)
    corpus = CharCorpus.from_path(path, level="byte", val_fraction=0.0)
    assert bytes(corpus.train.to(torch.uint8).tolist()) == raw
    assert corpus.encode(corpus.decode(corpus.train)).equal(corpus.train)
    with pytest.raises(ValueError, match="is not UTF-8 text.*level='byte'"):
        CharCorpus.from_path(path, level="char")


def test_bad_input_raises(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(ValueError, match="missing.txt"):
        CharCorpus.from_path(missing)
    with pytest.raises(ValueError, match=str(tmp_path).replace("\\", "\\\\")):
        CharCorpus.from_path(tmp_path)  # a directory
    with pytest.raises(ValueError, match="level must be one of .*'word'"):
        CharCorpus(TEXT, level="word")
    with pytest.raises(ValueError, match="val_fraction must be a float in \\[0, 1\\), got 1.0"):
        CharCorpus(TEXT, val_fraction=1.0)
    with pytest.raises(ValueError, match="non-empty str"):
        CharCorpus("")
    corpus = CharCorpus(TEXT)
    with pytest.raises(ValueError, match="character 'Z' is not in the vocabulary"):
        corpus.encode("Zebra")
    with pytest.raises(ValueError, match=f"token ids must be in \\[0, {corpus.vocab_size}\\)"):
        corpus.decode(torch.tensor([0, corpus.vocab_size]))


@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.25, 0.5])
def test_split_is_deterministic_tail(val_fraction):
    text = TEXT[:1000]
    corpus = CharCorpus(text, val_fraction=val_fraction)
    n_val = round(1000 * val_fraction)
    assert (len(corpus.train), len(corpus.val)) == (1000 - n_val, n_val)
    assert torch.cat([corpus.train, corpus.val]).equal(corpus.encode(text))
    assert corpus.decode(corpus.val) == text[1000 - n_val:]
    again = CharCorpus(text, val_fraction=val_fraction)
    assert again.train.equal(corpus.train) and again.val.equal(corpus.val)
    assert len(corpus) == 1000


def test_get_batch_shapes_shift_and_determinism():
    corpus = CharCorpus(TEXT)
    B, T = 6, 10
    x, y = corpus.get_batch("train", B, T, generator=gen(0))
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
    assert x[:, 1:].equal(y[:, :-1])
    windows = corpus.train.unfold(0, T + 1, 1)  # every window of the split
    for row in torch.cat([x, y[:, -1:]], dim=1):
        assert (windows == row).all(1).any()
    x2, y2 = corpus.get_batch("train", B, T, generator=gen(0))
    assert x2.equal(x) and y2.equal(y)
    x3, _ = corpus.get_batch("train", B, T, generator=gen(1))
    assert not x3.equal(x)
    xv, _ = corpus.get_batch("val", B, T, generator=gen(0))
    val_windows = corpus.val.unfold(0, T + 1, 1)[:, :T]
    assert all((val_windows == row).all(1).any() for row in xv)


def test_get_batch_errors():
    corpus = CharCorpus(TEXT[:200], val_fraction=0.05)  # val has 10 tokens
    corpus.get_batch("val", 2, 9, generator=gen(0))  # 10 >= 9 + 1: fine
    with pytest.raises(ValueError, match="val split has 10 tokens, fewer than context \\+ 1 = 11"):
        corpus.get_batch("val", 2, 10, generator=gen(0))
    with pytest.raises(ValueError, match="split must be one of .*'test'"):
        corpus.get_batch("test", 2, 4)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        corpus.get_batch("train", 0, 4)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        corpus.get_batch("train", 2, 4, generator=0)


def test_default_corpus_is_embedded_and_reproducible():
    a, b = CharCorpus.default(), CharCorpus.default()
    assert a.text == b.text and a.train.equal(b.train) and a.val.equal(b.val)
    assert len(a.text) > 100_000 and len(a.text) <= 1_000_000
    assert a.text.startswith("# ---- ") and "def " in a.text and "import " in a.text
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in a.source
    assert 50 < a.vocab_size < 500
    assert len(a.val) == round(len(a.text) * 0.1)
    small = CharCorpus.default(max_chars=20_000, level="byte")
    assert small.text == a.text[:20_000] and small.vocab_size == 256


# --------------------------------------------------------------------------- Zipf


def loglog_slope(counts: np.ndarray, top: int) -> float:
    c = np.sort(counts)[::-1][:top].astype(float)
    return float(np.polyfit(np.log(np.arange(1, top + 1)), np.log(c), 1)[0])


@pytest.mark.parametrize("exponent", [0.8, 1.1, 1.5])
def test_zipf_frequencies_follow_power_law(exponent):
    V = 500
    z = zipf_corpus(V, 200_000, exponent=exponent, generator=gen(0))
    assert z.shape == (200_000,) and z.dtype == torch.int64
    assert int(z.min()) >= 0 and int(z.max()) < V
    counts = np.bincount(z.numpy(), minlength=V)
    assert abs(loglog_slope(counts, 50) + exponent) < 0.15
    # the marginal is exactly Zipf in rank = id + 1: the top ids are the most frequent
    p = np.arange(1, V + 1) ** -exponent
    p /= p.sum()
    assert np.abs(counts[:5] / len(z) - p[:5]).max() < 0.02


def test_zipf_is_learnable_markov_and_reproducible():
    V, C, coherence = 200, 8, 0.9
    z = zipf_corpus(V, 100_000, generator=gen(3), n_clusters=C, coherence=coherence)
    assert z.equal(zipf_corpus(V, 100_000, generator=gen(3), n_clusters=C, coherence=coherence))
    assert not z.equal(zipf_corpus(V, 100_000, generator=gen(4), n_clusters=C, coherence=coherence))
    p = torch.arange(1, V + 1, dtype=torch.float64) ** -1.1
    p_cluster = torch.zeros(C, dtype=torch.float64).index_add_(0, torch.arange(V) % C, p / p.sum())
    same = float(((z[1:] % C) == (z[:-1] % C)).double().mean())
    expected = coherence + (1 - coherence) * float((p_cluster ** 2).sum())
    assert abs(same - expected) < 0.01
    iid = zipf_corpus(V, 100_000, generator=gen(3), n_clusters=C, coherence=0.0)
    same_iid = float(((iid[1:] % C) == (iid[:-1] % C)).double().mean())
    assert abs(same_iid - float((p_cluster ** 2).sum())) < 0.01


def test_zipf_entropy_rate():
    V = 300
    p = torch.arange(1, V + 1, dtype=torch.float64) ** -1.1
    p /= p.sum()
    h = float(-(p * p.log()).sum())
    assert math.isclose(zipf_entropy_rate(V, coherence=0.0), h, rel_tol=1e-12)
    assert math.isclose(zipf_entropy_rate(V, n_clusters=1), h, rel_tol=1e-12)
    rates = [zipf_entropy_rate(V, coherence=c) for c in (0.0, 0.5, 0.9, 1.0)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    # the plug-in bigram estimate on a long sample agrees (it is biased slightly low)
    z = zipf_corpus(V, 400_000, generator=gen(1)).numpy()
    joint = np.zeros((V, V))
    np.add.at(joint, (z[:-1], z[1:]), 1)
    joint /= joint.sum()
    cond = joint / joint.sum(1, keepdims=True).clip(1e-300)
    nz = joint > 0
    estimate = float(-(joint[nz] * np.log(cond[nz])).sum())
    assert -0.15 < estimate - rates[2] < 0.02


def test_zipf_bad_input():
    with pytest.raises(ValueError, match="vocab_size must be a positive integer, got 0"):
        zipf_corpus(0, 10)
    with pytest.raises(ValueError, match="length must be a positive integer, got -1"):
        zipf_corpus(10, -1)
    with pytest.raises(ValueError, match="exponent must be a positive finite float, got nan"):
        zipf_corpus(10, 10, exponent=float("nan"))
    with pytest.raises(ValueError, match="n_clusters \\(20\\) must be at most vocab_size \\(10\\)"):
        zipf_corpus(10, 10, n_clusters=20)
    with pytest.raises(ValueError, match="coherence must be a float in \\[0, 1\\], got 1.5"):
        zipf_corpus(10, 10, coherence=1.5)


# --------------------------------------------------------------------------- buckets


@pytest.mark.parametrize("by", ["mass", "rank"])
def test_buckets_cover_all_tokens_and_are_monotone(by):
    V, K = 500, 5
    z = zipf_corpus(V, 50_000, generator=gen(0))
    buckets = token_frequency_buckets(z, V, K, by=by)
    assert buckets.shape == (V,) and buckets.dtype == torch.int64
    assert int(buckets.min()) == 0 and int(buckets.max()) == K - 1
    counts = torch.bincount(z, minlength=V)
    for b in range(K - 1):
        upper, lower = counts[buckets == b], counts[buckets == b + 1]
        if len(upper) and len(lower):
            assert int(upper.min()) >= int(lower.max())
    assert int(counts[buckets == 0].max()) == int(counts.max())
    if by == "rank":
        assert torch.bincount(buckets, minlength=K).tolist() == [V // K] * K
    else:  # each bucket holds about 1/K of the occurrences (top token alone is ~17%)
        mass = torch.zeros(K).index_add_(0, buckets, counts.float()) / len(z)
        assert float((mass - 1 / K).abs().max()) < 0.1


def test_buckets_put_unseen_tokens_last_and_validate():
    buckets = token_frequency_buckets(torch.tensor([[2, 2, 2], [1, 1, 0]]), 6, 3)
    assert buckets.tolist() == [2, 1, 0, 2, 2, 2]
    with pytest.raises(ValueError, match="token ids must be in \\[0, 4\\), got range \\[0, 7\\]"):
        token_frequency_buckets(torch.tensor([0, 7]), 4, 2)
    with pytest.raises(ValueError, match="n_buckets must be a positive integer, got 0"):
        token_frequency_buckets(torch.tensor([0, 1]), 4, 0)
    with pytest.raises(ValueError, match="integer tensor"):
        token_frequency_buckets(torch.tensor([0.0, 1.0]), 4, 2)


# --------------------------------------------------------------------------- CIFAR from a local copy


def write_cifar(folder, variant: str = "cifar10", per_class_train: int = 12, per_class_test: int = 10,
                classes: int = 4):  # fmt: skip
    """A tiny copy in the python-pickle layout: random uint8 images whose first pixel is the label."""
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    key = b"labels" if variant == "cifar10" else b"fine_labels"
    rng = np.random.default_rng(0)

    def batch(labels):
        x = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        x[:, 0] = labels
        return {b"data": x, key: [int(v) for v in labels], b"batch_label": b"test"}

    train = np.repeat(np.arange(classes), per_class_train)
    rng.shuffle(train)
    test = np.repeat(np.arange(classes), per_class_test)
    files = ({f"data_batch_{i + 1}": part for i, part in enumerate(np.array_split(train, 5))}
             if variant == "cifar10" else {"train": train})  # fmt: skip
    files.update({"test_batch" if variant == "cifar10" else "test": test})
    for name, labels in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(batch(labels), f)
    return folder


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_reads_both_layouts(tmp_path, variant):
    from specgrad.data import cifar

    folder = write_cifar(tmp_path / variant, variant)
    name, x_tr, y_tr, x_te, y_te = cifar(folder)
    assert name == variant
    assert x_tr.shape == (48, 3, 32, 32) and x_te.shape == (40, 3, 32, 32) and x_tr.dtype == torch.float32
    assert torch.bincount(y_tr).tolist() == [12] * 4 and torch.bincount(y_te).tolist() == [10] * 4
    # standardized per channel over the training images; the first pixel still carries the label
    assert x_tr.mean((0, 2, 3)).abs().max() < 1e-5 and (x_tr.std((0, 2, 3)) - 1).abs().max() < 1e-4
    raw = x_tr[:, 0, 0, 0]
    order = [float(raw[y_tr == c][0]) for c in range(4)]
    assert order == sorted(order) and all(bool((raw[y_tr == c] == raw[y_tr == c][0]).all()) for c in range(4))


def test_cifar_finds_the_archive_folder_inside(tmp_path):
    from specgrad.data import cifar

    write_cifar(tmp_path / "cifar-10-batches-py")
    assert cifar(tmp_path)[0] == "cifar10"


def test_cifar_errors_name_the_path(tmp_path):
    import pickle

    from specgrad.data import cifar

    with pytest.raises(FileNotFoundError, match="does not exist"):
        cifar(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1..5 and test_batch"):
        cifar(tmp_path / "empty")
    bad = write_cifar(tmp_path / "bad", "cifar100")
    with open(bad / "train", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)  # CIFAR-10's key
    with pytest.raises(ValueError, match="fine_labels"):
        cifar(bad)
    shape = write_cifar(tmp_path / "shape", "cifar100")
    with open(shape / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"uint8 \(N, 3072\)"):
        cifar(shape)
    junk = write_cifar(tmp_path / "junk")
    (junk / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch is not a CIFAR pickle"):
        cifar(junk)


def test_long_tail_from_splits_follows_the_profile(tmp_path):
    from specgrad.data import cifar, long_tail_counts, long_tail_from_splits

    _, x_tr, y_tr, x_te, y_te = cifar(write_cifar(tmp_path / "c"))
    data = long_tail_from_splits(x_tr, y_tr, x_te, y_te, profile="exp", ratio=10.0, generator=gen(0), name="c")
    assert data.counts == long_tail_counts(12, 4, "exp", 10.0) == [12, 5, 2, 1]
    assert torch.bincount(data.y_train).tolist() == data.counts
    assert torch.bincount(data.y_val).tolist() == [2] * 4 and torch.bincount(data.y_test).tolist() == [8] * 4
    assert not set(data.val_index.tolist()) & set(data.test_index.tolist())
    assert data.x_train.shape[1:] == (3, 32, 32)
