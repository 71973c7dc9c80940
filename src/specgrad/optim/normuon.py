"""NorMuon: Muon with a per-row (neuron-wise) second-moment normalization of its update."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..linalg import check_range
from .muon import Muon
from .transforms import ApplyLR, AsMatrix, DecoupledWeightDecay, Momentum, Orthogonalize, ShapeScale, Transform


def rescale_to_polar_norm(x: Tensor) -> Tensor:
    """Each matrix of ``x`` (``(m, n)`` or a batch ``(B, m, n)``) rescaled to Frobenius norm
    ``sqrt(min(m, n))``, the norm of an exact polar factor of full rank; zero stays zero.

    After it the shape scalings keep their meaning: ``"match_rms_adamw"``
    (``0.2 sqrt(max(m, n))``) makes the update's RMS exactly 0.2, the RMS-aligned rescaling
    of NorMuon (Li et al. 2025) and AdaMuon (Si et al. 2025).

    Example:
        >>> x = rescale_to_polar_norm(torch.ones(2, 3, 8))
        >>> torch.linalg.matrix_norm(x).tolist()  # sqrt(3) each
        [1.7320507764816284, 1.7320507764816284]
    """
    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    target = math.sqrt(min(x.shape[-2], x.shape[-1]))
    return x * (target / norm.clamp_min(torch.finfo(x.dtype).tiny))


class SecondMomentNormalize(Transform):
    """``O <- O / (sqrt(v) + eps)``, ``v <- beta2 v + (1 - beta2) statistic(O)`` kept in
    ``state[key]``, then each matrix rescaled with :func:`rescale_to_polar_norm`. Subclasses
    name the statistic (a per-row mean of ``O^2``, or ``O^2`` itself), the state key and
    the default ``beta2``; ``beta2`` must lie in ``[0, 1)`` and ``eps`` be positive."""

    key: str

    def statistic(self, o: Tensor) -> Tensor:
        raise NotImplementedError

    def validate(self, group):
        check_range("beta2", group["beta2"], 0.0, 1.0)
        check_range("eps", group["eps"], 0.0, lo_open=True)

    def __call__(self, u):
        beta2, eps = u.group["beta2"], u.group["eps"]
        for i, (o, st) in enumerate(zip(u.updates, u.states)):
            stat = self.statistic(o)
            v = st.get(self.key)
            if v is None:  # created from the update, so it follows a sharded update's placement
                v = st[self.key] = torch.zeros_like(stat)
            v.lerp_(stat, 1 - beta2)
            u.updates[i] = rescale_to_polar_norm(o / (v.sqrt() + eps))


class RowNormalize(SecondMomentNormalize):
    """NorMuon's neuron-wise normalization of an orthogonalized update ``O`` (``m x n``, rows
    are output neurons; a batch ``(B, m, n)`` normalizes each matrix on its own):

        v <- beta2 * v + (1 - beta2) * mean_j O_ij^2        (one entry per row)
        O <- O / (sqrt(v) + eps), then rescaled to ||O||_F = sqrt(min(m, n))

    Source: Li, Liu, Liang, Chen, Zhao, "NorMuon: Making Muon more efficient and scalable"
    (arXiv 2510.05491), Algorithm 1, and ``dion/normuon.py`` of microsoft/dion: ``beta2 =
    0.95``, ``eps = 1e-8``, no bias correction (a bias correction is one factor for every
    row, which the rescale removes). Reads ``beta2`` (in ``[0, 1)``, default 0.95) and
    ``eps`` (positive, default 1e-8); keeps ``row_second_moment``, shaped ``(m, 1)`` or
    ``(B, m, 1)``, created at the first step from the update (so it follows a sharded
    update's placement).
    """

    defaults = {"beta2": 0.95, "eps": 1e-8}
    key = "row_second_moment"

    def statistic(self, o):
        return (o * o).mean(dim=-1, keepdim=True)


class NorMuon(Muon):
    """NorMuon (Li et al. 2025, arXiv 2510.05491): Muon, then a per-row second-moment
    normalization of the orthogonalized update (:class:`RowNormalize`).

    For each matrix ``W`` (``m x n``)::

        M <- Muon's (Nesterov) momentum of G;  O <- orthogonalize(M)
        v <- beta2 v + (1 - beta2) mean_j O_ij^2;  O <- O / (sqrt(v) + eps)
        W <- W - lr * (weight_decay * W + scale(m, n) * sqrt(min(m, n)) * O / ||O||_F)

    Takes every argument of :class:`~specgrad.optim.Muon` (same defaults, so it drops in
    for Muon at Muon's learning rate), plus ``beta2`` (default 0.95) and ``eps`` (default
    1e-8). The paper's RMS-matched step (update RMS ``0.2 lr``, AdamW's learning rate and
    weight decay carry over) is ``shape_scaling="match_rms_adamw"``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> opt = NorMuon(model.parameters(), lr=0.02, beta2=0.95)
        >>> model(torch.randn(4, 8)).sum().backward()
        >>> opt.step()
        >>> opt.state[model[0].weight]["row_second_moment"].shape
        torch.Size([16, 1])
    """

    rule = "normuon"

    def chain(self):
        return [Momentum(), AsMatrix(), Orthogonalize(), RowNormalize(), ShapeScale(), DecoupledWeightDecay(),
                ApplyLR()]  # fmt: skip
