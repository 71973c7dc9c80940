"""Braun, Bao, Huang and Imaizumi, "Spectral Gradient Descent Mitigates Anisotropy-Driven
Misalignment: A Case Study in Phase Retrieval" (arXiv 2601.22652): :mod:`.phase_retrieval`
(``phase-retrieval``); the model is :mod:`specgrad.theory.phase_retrieval`."""
