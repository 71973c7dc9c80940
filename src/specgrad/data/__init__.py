"""Token streams the experiments train on: character/byte corpora and Zipfian sequences.

Imports nothing else of specgrad.
"""

from .text import CharCorpus, token_frequency_buckets, zipf_corpus, zipf_entropy_rate

__all__ = ["CharCorpus", "token_frequency_buckets", "zipf_corpus", "zipf_entropy_rate"]
