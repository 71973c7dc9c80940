"""Vasudeva, Deora, Zhao, Sharan and Thrampoulidis, "How Muon's Spectral Design Benefits
Generalization: A Study on Imbalanced Data" (arXiv 2510.22980): five experiments.

SpecGD learns every principal component of the data at the same rate, where GD learns the
dominant ones first; on imbalanced data spectral methods should reach balanced and
minority-class accuracy early. Claims are decided against each run's noise (:mod:`.verdicts`).

* :mod:`.gmm` (``imbalanced-gmm``): linear models on an imbalanced Gaussian mixture, the
  closed-form trajectories and early-stopped balanced accuracy;
* :mod:`.depth` (``imbalanced-depth``): deep linear models, per-class saturation times;
* :mod:`.depth_random` (``imbalanced-depth-random``): the same from random, non-aligned
  inits, square and wide (:mod:`.deep_linear` trains layers of any shape);
* :mod:`.long_tail_classification`: MLPs on long-tailed digits and MNIST-1D, a small conv net
  on long-tailed CIFAR-10/100 read from a local copy;
* :mod:`.long_tail_tokens`: a tiny GPT on a Zipfian token stream, loss per frequency bucket.

The exact model (moments, closed forms, deep linear recursion) is
:mod:`specgrad.theory.imbalanced`; the long-tailed data sets :mod:`specgrad.data.longtail`.
"""
