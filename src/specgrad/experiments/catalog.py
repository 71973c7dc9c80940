"""The studies the experiments reproduce (the report's sections), and discovery of the
experiments: every module of a study package (a subpackage of :mod:`specgrad.experiments`)
is imported, and each experiment module registers itself. Adding an experiment is one new
module in a study package; listing its name in its study's ``experiments`` places it in the
report's section.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    claim: str  # what the study says, in one paragraph
    experiments: tuple[str, ...]
    doc: str = ""  # page under docs/reproductions/


STUDIES: tuple[Study, ...] = (
    Study(
        "char-lm",
        "Muon vs AdamW on a character-level language model",
        "Muon (orthogonalized momentum on hidden matrices) reaches AdamW's loss in fewer steps; "
        "published speedups are about 1.35x on NanoGPT and 1.4x at 0.1B parameters.",
        ("char-lm",),
    ),
    Study(
        "davis-drusvyatskiy",
        "When do spectral gradient updates help in deep learning? (Davis & Drusvyatskiy, arXiv 2512.04299)",
        "A spectral step on a block beats a Euclidean one when the gradient's nuclear rank exceeds the "
        "stable rank of the block's incoming activations; post-activations have low stable rank at "
        "initialization and during training, so spectral steps win on hidden layers; SwiGLU features "
        "are a counterexample where gradient descent wins.",
        ("init-stable-rank", "random-features", "sparse-regression", "sparse-regression-swiglu", "nuclear-rank-growth",
         "stable-ranks", "lm-spectra"),
        "davis-drusvyatskiy.md",
    ),
    Study(
        "criterion-accuracy",
        "Does the layerwise test predict? A validation of Davis & Drusvyatskiy's rule nr(G) >= st(A)",
        "Per block, the predicted gain nr(G)/st(A) tells whether a spectral step lowers the loss more than a "
        "Euclidean one (sufficient margin 2 for least squares); measured here against the one-step decreases "
        "of both steps, in float64, over models and training moments.",
        ("criterion-accuracy",),
        "criterion-accuracy.md",
    ),
    Study(
        "phase-retrieval",
        "Spectral gradient descent mitigates anisotropy-driven misalignment: phase retrieval "
        "(Braun, Bao, Huang, Imaizumi, arXiv 2601.22652)",
        "With a high-variance input direction orthogonal to the signal, GD multiplicatively amplifies "
        "that uninformative spike during the early escape from a small initialization and misaligns; "
        "SpecGD removes the amplification, aligns stably, and the effect persists for power-law spectra.",
        ("phase-retrieval",),
        "phase-retrieval.md",
    ),
    Study(
        "imbalanced",
        "How Muon's spectral design benefits generalization: imbalanced data "
        "(Vasudeva, Deora, Zhao, Sharan, Thrampoulidis, arXiv 2510.22980)",
        "SpecGD learns all principal components of the data at equal rates while GD learns the dominant "
        "ones first; on imbalanced data this gives spectral methods better balanced and minority-class "
        "accuracy early in training, normalizing GD's step does not close the gap, and depth changes the "
        "picture; Muon and Shampoo beat their Euclidean counterparts and Adam on long-tailed data.",
        ("imbalanced-gmm", "imbalanced-depth", "imbalanced-depth-random", "long-tail-classification",
         "long-tail-tokens"),
        "imbalanced.md",
    ),
    Study(
        "isotropic-curvature",
        "Isotropic curvature model: the optimal one-step update (Su, arXiv 2511.00674)",
        "Modelling one step by min_Q -tr(QG^T) + E H(||Q zeta||): for super-quadratic H the optimum keeps G's "
        "singular vectors and homogenizes its singular values with their order kept; a kinked H gives "
        "orthogonalization; measured GPT-2 curvature is quadratic near zero and super-quadratic (2 + alpha, "
        "alpha > 0) further out, so orthogonalization is directionally right but not optimal; "
        "Newton-Schulz maps are not monotone.",
        ("isotropic-curvature", "curvature-profile"),
        "isotropic-curvature.md",
    ),
    Study(
        "hybrid",
        "Beyond the studies: a condition-driven hybrid optimizer",
        "Taking, per block, the spectral step where nr(M) >= st(A) and the Euclidean one elsewhere "
        "should match the better of pure spectral and pure Euclidean training on every task, and beat "
        "both where layers (or phases of training) disagree.",
        ("hybrid", "hybrid-grid"),
        "hybrid.md",
    ),
)


def study_packages() -> list[str]:
    """Every study package: the subpackages of :mod:`specgrad.experiments`, by full name."""
    root = importlib.import_module(__package__)
    return [f"{__package__}.{m.name}" for m in pkgutil.iter_modules(root.__path__) if m.ispkg]


def load_all() -> None:
    """Import every module of every study package, so that each experiment registers itself."""
    for name in study_packages():
        package = importlib.import_module(name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{name}.{module.name}")


def study_of(name: str) -> Study | None:
    return next((s for s in STUDIES if name in s.experiments), None)
