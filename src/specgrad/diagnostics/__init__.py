"""The layerwise spectral-advantage diagnostic: ``nr(G_l)`` against ``st(A_{l-1})``."""

from ..linalg import NonFiniteStatisticError
from .accumulators import ActivationGram, SketchedActivation, TokenCounts
from .diagnose import diagnose
from .inputs import conv1d_patches, conv2d_patches, first_input, model_blocks
from .loggers import CSVLogger, JSONLinesLogger, TensorBoardLogger, plot_history
from .monitor import Block, SpectralMonitor
from .recommend import Recommendation, recommend_routing

__all__ = [
    "ActivationGram",
    "Block",
    "CSVLogger",
    "JSONLinesLogger",
    "NonFiniteStatisticError",
    "Recommendation",
    "SketchedActivation",
    "SpectralMonitor",
    "TensorBoardLogger",
    "TokenCounts",
    "conv1d_patches",
    "conv2d_patches",
    "diagnose",
    "first_input",
    "model_blocks",
    "plot_history",
    "recommend_routing",
]
