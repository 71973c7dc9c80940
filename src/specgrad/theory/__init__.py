"""Small exact models that tests and experiments compare against.

Imports nothing from :mod:`specgrad.experiments` (dependencies point downward:
experiments -> theory -> linalg). The phase-retrieval model's functions are re-exported
here; the other models are used as modules (``specgrad.theory.imbalanced``).
"""

from . import curvature, imbalanced
from .curvature import Curvature, ICMMap, ICMPolynomial, fit_icm_polynomial, icm_map, sphere_moments
from .phase_retrieval import (
    PhaseRetrievalProblem,
    coefficients,
    empirical_loss_and_gradient,
    gd_growth_factors,
    gd_stability_limit,
    init_student,
    linearized_kernel,
    population_loss,
    population_loss_and_gradient,
    power_law_problem,
    sample,
    spiked_problem,
    student_output,
    train,
)

__all__ = [
    "curvature",
    "imbalanced",
    "Curvature",
    "ICMMap",
    "ICMPolynomial",
    "fit_icm_polynomial",
    "icm_map",
    "sphere_moments",
    "PhaseRetrievalProblem",
    "coefficients",
    "empirical_loss_and_gradient",
    "gd_growth_factors",
    "gd_stability_limit",
    "init_student",
    "linearized_kernel",
    "population_loss",
    "population_loss_and_gradient",
    "power_law_problem",
    "sample",
    "spiked_problem",
    "student_output",
    "train",
]
