"""Spectral linear algebra: orthogonalization, spectral maps, rank measures, operator and
nuclear norms, top eigenpairs, Gram accumulation.

Orthogonalization has a reference page, :mod:`~specgrad.linalg.polar` (``orthogonalize``,
``polar_svd``, the ``newton_schulz`` loop), and a fast path checked against it,
:mod:`~specgrad.linalg.fast_polar` (``orthogonalize_many`` and the batched iteration the
optimizers run). Imports nothing else of specgrad.
"""

from .coefficients import (
    JORDAN,
    NEWTON_SCHULZ,
    QuinticSchedule,
    as_schedule,
    optimal_quintic,
    polar_express_schedule,
    schedule_for,
)
from .polar import (
    DEFAULT_STEPS,
    METHODS,
    NORMS,
    check_gram,
    check_norm,
    newton_schulz,
    orthogonality_error,
    orthogonalize,
    polar_svd,
    predicted_band,
    scalar_map,
    singular_value_range,
)
from .fast_polar import (
    normalize_spectrum,
    orthogonalize_many,
    quintic_iteration,
    quintic_iteration_many,
    stack_normalized,
)
from .checks import (FLOAT_DTYPES, NonFiniteStatisticError, check_floating, check_matrix, check_nonnegative_int,
                     check_positive_int, check_range, working_dtype)
from .majorization import STEP_NORMS, least_squares_smoothness, majorization_step
from .workspace import Workspace
from .ranks import MatrixNorms, effective_rank, matrix_norms, nuclear_rank, stable_rank
from .eigen import GramOf, operator_norm, top_eigenpairs, top_eigenvalues
from .gram import GramAccumulator
from .nuclear import frobenius_nuclear_norms
from .spectral import matrix_view, spectral_map

__all__ = [
    "DEFAULT_STEPS",
    "FLOAT_DTYPES",
    "JORDAN",
    "METHODS",
    "NORMS",
    "NEWTON_SCHULZ",
    "GramAccumulator",
    "GramOf",
    "MatrixNorms",
    "NonFiniteStatisticError",
    "QuinticSchedule",
    "STEP_NORMS",
    "as_schedule",
    "check_floating",
    "check_gram",
    "check_matrix",
    "check_nonnegative_int",
    "check_norm",
    "check_positive_int",
    "check_range",
    "effective_rank",
    "frobenius_nuclear_norms",
    "least_squares_smoothness",
    "majorization_step",
    "matrix_norms",
    "matrix_view",
    "normalize_spectrum",
    "newton_schulz",
    "nuclear_rank",
    "operator_norm",
    "optimal_quintic",
    "orthogonality_error",
    "orthogonalize",
    "orthogonalize_many",
    "polar_express_schedule",
    "polar_svd",
    "predicted_band",
    "quintic_iteration",
    "quintic_iteration_many",
    "scalar_map",
    "schedule_for",
    "singular_value_range",
    "stack_normalized",
    "spectral_map",
    "stable_rank",
    "top_eigenpairs",
    "top_eigenvalues",
    "Workspace",
    "working_dtype",
]
