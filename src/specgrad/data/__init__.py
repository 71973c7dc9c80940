"""Data the experiments train on: character/byte corpora, Zipfian token sequences, and
long-tailed classification sets (scikit-learn's digits, MNIST-1D, CIFAR-10/100 from a local copy).

Imports nothing else of specgrad.
"""

from .longtail import (
    LongTailData,
    balanced_split,
    cifar,
    digits,
    long_tail_counts,
    long_tail_from_splits,
    long_tail_subset,
    make_long_tail,
    mnist1d,
)
from .text import (
    CharCorpus,
    TokenStream,
    ZipfChain,
    random_windows,
    token_frequency_buckets,
    zipf_chain,
    zipf_conditional_nll,
    zipf_corpus,
    zipf_entropy_rate,
)

__all__ = [
    "CharCorpus",
    "LongTailData",
    "TokenStream",
    "ZipfChain",
    "balanced_split",
    "cifar",
    "digits",
    "long_tail_counts",
    "long_tail_from_splits",
    "long_tail_subset",
    "make_long_tail",
    "mnist1d",
    "random_windows",
    "token_frequency_buckets",
    "zipf_chain",
    "zipf_conditional_nll",
    "zipf_corpus",
    "zipf_entropy_rate",
]
