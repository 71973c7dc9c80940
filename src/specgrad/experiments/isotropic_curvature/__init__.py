"""Su, "Isotropic curvature model" (arXiv 2511.00674): two experiments.

* :mod:`.isotropic_curvature` (``isotropic-curvature``): the optimal one-step spectral map of
  the model against orthogonalization, for several curvature families;
* :mod:`.curvature_profile` (``curvature-profile``): the curvature ``H(r)`` measured on a tiny
  GPT, and an optimizer built on it.

The model and its solver are :mod:`specgrad.theory.curvature` and
:mod:`specgrad.theory.icm_maps`.
"""
