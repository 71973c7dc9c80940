"""Spectral linear algebra: orthogonalization, spectral maps, rank measures, operator and
nuclear norms, top eigenpairs, Gram accumulation.

Imports nothing else of specgrad.
"""

from .coefficients import (
    JORDAN,
    NEWTON_SCHULZ,
    QuinticSchedule,
    as_schedule,
    optimal_quintic,
    polar_express_schedule,
)
from .polar import (
    METHODS,
    NORMS,
    normalize_spectrum,
    orthogonality_error,
    orthogonalize,
    polar_svd,
    predicted_band,
    quintic_iteration,
    quintic_iteration_many,
    scalar_map,
    singular_value_range,
    stack_normalized,
)
from .checks import check_matrix, check_nonnegative_int, check_positive_int, check_range, working_dtype
from .majorization import STEP_NORMS, least_squares_smoothness, majorization_step
from .workspace import Workspace
from .ranks import MatrixNorms, effective_rank, matrix_norms, nuclear_rank, stable_rank
from .eigen import GramOf, operator_norm, top_eigenpairs, top_eigenvalues
from .gram import GramAccumulator
from .nuclear import frobenius_nuclear_norms
from .spectral import matrix_view, spectral_map

__all__ = [
    "JORDAN",
    "METHODS",
    "NORMS",
    "NEWTON_SCHULZ",
    "GramAccumulator",
    "GramOf",
    "MatrixNorms",
    "QuinticSchedule",
    "STEP_NORMS",
    "as_schedule",
    "check_matrix",
    "check_nonnegative_int",
    "check_positive_int",
    "check_range",
    "effective_rank",
    "frobenius_nuclear_norms",
    "least_squares_smoothness",
    "majorization_step",
    "matrix_norms",
    "matrix_view",
    "normalize_spectrum",
    "nuclear_rank",
    "operator_norm",
    "optimal_quintic",
    "orthogonality_error",
    "orthogonalize",
    "polar_express_schedule",
    "polar_svd",
    "predicted_band",
    "quintic_iteration",
    "quintic_iteration_many",
    "scalar_map",
    "singular_value_range",
    "stack_normalized",
    "spectral_map",
    "stable_rank",
    "top_eigenpairs",
    "top_eigenvalues",
    "Workspace",
    "working_dtype",
]
