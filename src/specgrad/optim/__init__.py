"""Optimizers built from one composable chain (see :mod:`specgrad.optim.transforms`).

``Muon``, ``SpecGD``, ``SpectralDescent``, ``Shampoo``, ``NormalizedGD`` and ``SignDescent``
are presets of :class:`ChainOptimizer` (``NorMuon`` and ``AdaMuon``: Muon's chain with one
more link); each sends parameters with fewer than 2 dims to an AdamW rule, and
:func:`split_params` decides the rest per layer. :class:`QKClip` caps attention logits after
the step (MuonClip). ``Hybrid`` is Muon's chain
with the spectral map replaced by a switch (:mod:`specgrad.optim.switch`) between a spectral
and a Euclidean sub-chain, fed by a decision (:mod:`specgrad.optim.decision`).
"""

from .adamuon import AdaMuon
from .chain import ChainOptimizer, NonFiniteGradError
from .euclidean import NormalizedGD, SignDescent
from .hybrid import Hybrid
from .muon import FAST, TORCH_MUON, Muon, fast_ns_dtype
from .normuon import NorMuon
from .qkclip import QKClip
from .routing import ParamRouting, routed_params, split_params
from .shampoo import Shampoo
from .specgd import SpecGD, SpectralDescent
from .transforms import SHAPE_SCALINGS, shape_scale

__all__ = [
    "AdaMuon",
    "ChainOptimizer",
    "FAST",
    "Hybrid",
    "Muon",
    "NonFiniteGradError",
    "NorMuon",
    "NormalizedGD",
    "ParamRouting",
    "QKClip",
    "SHAPE_SCALINGS",
    "Shampoo",
    "SignDescent",
    "SpecGD",
    "SpectralDescent",
    "TORCH_MUON",
    "fast_ns_dtype",
    "routed_params",
    "shape_scale",
    "split_params",
]
