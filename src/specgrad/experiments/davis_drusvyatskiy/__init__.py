"""Davis & Drusvyatskiy, "When do spectral gradient updates help in deep learning?"
(arXiv 2512.04299): seven experiments, one module each.

For a block ``W`` fed by activations ``A`` with gradient ``G``, one Euclidean step
(``W - ||A||_op^-2 G``) and one spectral step (``W - ||A||_F^-2 ||G||_* polar(G)``) guarantee
decreases ``||G||_F^2 / (2 ||A||_op^2)`` and ``||G||_*^2 / (2 ||A||_F^2)``: the spectral step
wins when the nuclear rank ``nr(G) = ||G||_*^2 / ||G||_F^2`` exceeds the stable rank
``st(A) = ||A||_F^2 / ||A||_op^2``. Post-activations have a low stable rank.

* :mod:`.init_stable_rank`: ``st(sigma(W X))`` at Gaussian initialization (one layer, sweeping
  width and sample count; a deep feedforward net per layer; a GPT block) against the spike
  bound ``B(sigma) = E[sigma(g)^2] / E[sigma(g)]^2`` (and the plain deep net without rescaling)
  (:func:`~specgrad.theory.random_features.spike_bound`).
* :mod:`.random_features`: GD vs SpecGD (and SpecGD restarted from GD iterates) on
  ``min_W (1/2n) ||W A - Y||_F^2`` with ReLU and SwiGLU features.
* :mod:`.sparse_regression`: a 4-layer squared-ReLU net on ``y = x1 x2 x3``: GD everywhere vs
  SpecGD on layers 2-3 (the loop is :mod:`.sparse_training`).
* :mod:`.sparse_regression_swiglu`: the same net with SwiGLU layers at two batch sizes.
* :mod:`.nuclear_rank_growth`: ``nr`` of the random-feature gradient at the zero init and
  after one GD step, against the feature dimension ``k``, for the realizable and the
  teacher-student model.
* :mod:`.stable_rank_sweeps`: GD vs SpecGD across ``st(I + lam 1 1^T)``, and the SwiGLU net's
  stable ranks against the batch size.
* :mod:`.lm_spectra`: a tiny GPT trained with Muon under
  :class:`~specgrad.diagnostics.SpectralMonitor`.

The problems and update rules are :mod:`specgrad.theory.random_features` and
:mod:`specgrad.theory.sparse_regression`. Everything the figures and claims use is in the
series; see ``docs/reproductions/davis-drusvyatskiy.md`` for the results.
"""
