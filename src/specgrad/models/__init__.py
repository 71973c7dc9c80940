"""Small models the experiments train: a nanoGPT-style decoder.

Imports nothing else of specgrad.
"""

from .gpt import GPT, MLP, Block, CausalSelfAttention, GPTConfig, swiglu_hidden

__all__ = ["GPT", "MLP", "Block", "CausalSelfAttention", "GPTConfig", "swiglu_hidden"]
