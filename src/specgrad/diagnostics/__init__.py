"""The layerwise spectral-advantage diagnostic: ``nr(G_l)`` against ``st(A_{l-1})``."""

from .diagnose import diagnose
from .loggers import CSVLogger, JSONLinesLogger, TensorBoardLogger, plot_history
from .monitor import SpectralMonitor, conv2d_patches, first_input
from .stats import SketchedActivation, TokenCounts, gradient_norms

__all__ = [
    "CSVLogger",
    "JSONLinesLogger",
    "SketchedActivation",
    "SpectralMonitor",
    "TensorBoardLogger",
    "TokenCounts",
    "conv2d_patches",
    "diagnose",
    "first_input",
    "gradient_norms",
    "plot_history",
]
