"""AdaMuon: Muon with sign-stabilized momentum and an element-wise second moment of its update."""

from __future__ import annotations

import torch

from .muon import Muon
from .normuon import SecondMomentNormalize
from .transforms import ApplyLR, AsMatrix, DecoupledWeightDecay, Momentum, Orthogonalize, ShapeScale, Transform


class SignStabilize(Transform):
    """``M <- sign(M)`` before the orthogonalization when ``sign_momentum`` is True (default
    True): AdaMuon's sign-stabilized orthogonal update, which bounds every entry the
    polar map sees. ``False`` leaves the momentum as it is (AdaMuon's first version)."""

    defaults = {"sign_momentum": True}

    def validate(self, group):
        if not isinstance(group["sign_momentum"], bool):
            raise ValueError(f"sign_momentum must be True or False, got {group['sign_momentum']!r}")

    def __call__(self, u):
        if u.group["sign_momentum"]:
            u.updates = [x.sign() for x in u.updates]


class ElementwiseSecondMoment(SecondMomentNormalize):
    """AdaMuon's variance-adaptive scaling of an orthogonalized update ``O``:

        V <- beta2 * V + (1 - beta2) * O * O                  (elementwise)
        O <- O / (sqrt(V) + eps), then rescaled to ||O||_F = sqrt(min(m, n)) per matrix

    Source: Si, Zhang, Shen, "AdaMuon: Adaptive Muon Optimizer" (arXiv 2507.11005),
    Algorithm 1, and the authors' ``adamuon.py`` (github.com/Chongjie-Si/AdaMuon):
    ``beta2 = 0.999``, ``eps = 1e-8``. No bias correction, as in the paper: ``1 - beta2^t``
    is one factor for every entry, which the rescale removes. Reads ``beta2`` (in ``[0, 1)``,
    default 0.999) and ``eps`` (positive, default 1e-8); keeps ``exp_avg_sq``, shaped like
    the matrix view of the update, created at the first step from the update.
    """

    defaults = {"beta2": 0.999, "eps": 1e-8}
    key = "exp_avg_sq"

    def statistic(self, o):
        return o * o


class AdaMuon(Muon):
    """AdaMuon (Si et al. 2025, arXiv 2507.11005): Muon on the sign of the momentum, then an
    element-wise second-moment normalization of the orthogonalized update.

    For each matrix ``W`` (``m x n``)::

        M <- Muon's (Nesterov) momentum of G;  O <- orthogonalize(sign(M))
        V <- beta2 V + (1 - beta2) O * O;       O <- O / (sqrt(V) + eps)
        W <- W - lr * (weight_decay * W + scale(m, n) * sqrt(min(m, n)) * O / ||O||_F)

    Takes every argument of :class:`~specgrad.optim.Muon` (same defaults, so it drops in
    for Muon at Muon's learning rate), plus ``beta2`` (default 0.999), ``eps`` (default
    1e-8) and ``sign_momentum`` (default True; :class:`SignStabilize`). The paper's
    RMS-aligned step (update RMS ``0.2 lr``, reusing AdamW's learning rate) is
    ``shape_scaling="match_rms_adamw"``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> opt = AdaMuon(model.parameters(), lr=0.02)
        >>> model(torch.randn(4, 8)).sum().backward()
        >>> opt.step()
        >>> opt.state[model[0].weight]["exp_avg_sq"].shape
        torch.Size([16, 8])
    """

    rule = "adamuon"

    def chain(self):
        return [Momentum(), AsMatrix(), SignStabilize(), Orthogonalize(), ElementwiseSecondMoment(), ShapeScale(),
                DecoupledWeightDecay(), ApplyLR()]  # fmt: skip
