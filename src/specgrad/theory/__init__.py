"""Small exact models that tests and experiments compare against.

Imports nothing from :mod:`specgrad.experiments` (dependencies point downward:
experiments -> theory -> linalg). The phase-retrieval model's functions are re-exported
here; the other models are used as modules (``specgrad.theory.imbalanced``):

* :mod:`.curvature`: the isotropic curvature model and its solver; :mod:`.icm_maps`: its
  optimal map as an optimizer's spectral map, and an SVD-free polynomial approximation;
* :mod:`.imbalanced`: imbalanced Gaussian mixtures, closed-form GD/SpecGD trajectories;
* :mod:`.phase_retrieval`: anisotropic phase retrieval, population gradients;
* :mod:`.random_features`: random-feature least squares, activations, spike bounds;
* :mod:`.sparse_regression`: ``y = x1 x2 x3`` and a squared-ReLU or SwiGLU network.
"""

from . import curvature, icm_maps, imbalanced, random_features, sparse_regression
from .curvature import Curvature, sphere_moments
from .icm_maps import ICMMap, ICMPolynomial, fit_icm_polynomial, icm_map
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
    "icm_maps",
    "imbalanced",
    "random_features",
    "sparse_regression",
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
