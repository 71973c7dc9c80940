"""The layerwise spectral-advantage diagnostic: ``nr(G_l)`` against ``st(A_{l-1})``."""

from .accumulators import ActivationGram, SketchedActivation, TokenCounts
from .diagnose import diagnose
from .loggers import CSVLogger, JSONLinesLogger, TensorBoardLogger, plot_history
from .monitor import Block, SpectralMonitor, conv2d_patches, first_input

__all__ = [
    "ActivationGram",
    "Block",
    "CSVLogger",
    "JSONLinesLogger",
    "SketchedActivation",
    "SpectralMonitor",
    "TensorBoardLogger",
    "TokenCounts",
    "conv2d_patches",
    "diagnose",
    "first_input",
    "plot_history",
]
