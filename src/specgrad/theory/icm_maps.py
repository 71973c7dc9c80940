"""The isotropic-curvature model's optimal map as an optimizer's spectral map, and an SVD-free
polynomial approximation of it (the model and its solver: :mod:`.curvature`).

* :func:`icm_map` (:class:`ICMMap`): ``s -> s*`` solved per call, for
  :class:`~specgrad.optim.SpectralDescent`;
* :func:`fit_icm_polynomial` (:class:`ICMPolynomial`): an odd polynomial ``p`` fitted to the
  max-normalized map on random spectra, applied with matrix products only,
  ``P(G) = (sum_j c_j (X X^T)^j) X`` for ``X = G / sigma``, ``sigma`` from
  :func:`power_iteration_norm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..linalg import spectral_map
from ..linalg.checks import check_positive_int, check_range
from .curvature import Curvature, Solution, dirichlet_sample, solve

Array = np.ndarray




class ICMMap:
    """The isotropic-curvature optimal map ``s -> s*``, for ``SpectralDescent(f=...)``.

    Called with the descending singular values ``(k,)`` (or ``(..., k)``, solved per row) of the
    (momentum) update, it solves (2) and returns ``s*`` in the input's dtype and device.

    Sphere dimension: ``n`` if given, else ``k``. For ``m >= n`` (tall or square ``G``, the
    ``nn.Linear`` weights ``(out, in)`` with ``out >= in``) ``k = n`` is exact. For a wide ``G``
    the spectrum does not show ``n``; ``k`` then treats the update as acting on the output side
    (``zeta`` on ``S^{m-1}``, the same program for ``G^T``), which is what the spectrum can see.

    Scale: the optimum depends on ``s`` relative to ``H``. ``input_scale=None`` uses ``s`` as is (``H``
    in the loss's units, ``s`` the gradient's singular values); a number ``c`` first rescales
    ``s`` to ``c s / max s``, so the map sees only the shape of the spectrum at a fixed size
    (for a pure power ``H`` every scale gives the same shape). ``normalize="max"`` (default)
    divides ``s*`` by its largest value: the update has operator norm 1, as with Muon, and the
    optimizer's ``lr`` keeps Muon's meaning; ``normalize="none"`` returns the model's step
    itself (``lr = 1`` is the modelled optimum). Every map is made monotone: with a sampled
    ``H`` a sampling wobble could break the order, so ``s*`` is replaced by its running minimum
    along the descending ``s`` (a no-op for an exact ``H``).

    Each call warm-starts from the previous solution of the same length (rescaled).

    Example:
        >>> from specgrad.theory.curvature import quadratic_quartic
        >>> f = icm_map(quadratic_quartic(1.0, 1.0), input_scale=1.0)
        >>> out = f(torch.tensor([2.0, 1.0, 0.5]))
        >>> out[0].item(), bool((out[1:] / out[:-1] > torch.tensor([0.5, 0.5])).all())
        (1.0, True)
    """

    def __init__(self, H: Curvature, n: Optional[int] = None, input_scale: Optional[float] = None,
                 normalize: str = "max", samples: int = 2048, seed: int = 0):  # fmt: skip
        if not isinstance(H, Curvature):
            raise ValueError(f"H must be a Curvature, got {type(H).__name__}")
        if normalize not in ("max", "none"):
            raise ValueError(f"normalize must be 'max' or 'none', got {normalize!r}")
        if input_scale is not None:
            check_range("input_scale", input_scale, 0.0, math.inf, lo_open=True)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be a positive integer or None, got {n!r}")
        self.H, self.n, self.input_scale, self.normalize = H, n, input_scale, normalize
        self.samples, self.seed = samples, seed
        self._weights: dict[int, Array] = {}
        self._last: dict[int, tuple[Array, Array]] = {}
        self.last_solution: Optional[Solution] = None

    def solve_spectrum(self, s: Array) -> Array:
        """``s*`` ``(k,)`` for one numpy spectrum ``(k,)`` (any order), before normalization."""
        k = s.size
        n = k if self.n is None else self.n
        x = s if self.input_scale is None or s.max() == 0 else s * (self.input_scale / s.max())
        if not self.H.exact and n not in self._weights:
            self._weights[n] = dirichlet_sample(n, self.samples, self.seed)
        x0 = None
        if k in self._last:
            prev_x, prev_q = self._last[k]
            if prev_x.max() > 0 and x.max() > 0:
                x0 = prev_q * (x.max() / prev_x.max())
        sol = solve(x, self.H, n, x0=x0, weights=self._weights.get(n), tol=1e-9)
        self._last[k] = (x, sol.q)
        self.last_solution = sol
        return sol.q

    def __call__(self, s: Tensor) -> Tensor:
        if not isinstance(s, Tensor) or s.ndim < 1:
            raise ValueError(f"s must be a tensor of singular values (..., k), got {s!r}")
        flat = s.detach().reshape(-1, s.shape[-1]).cpu().double().numpy()
        out = np.empty_like(flat)
        for i, row in enumerate(flat):
            order = np.argsort(-row, kind="stable")
            q = self.solve_spectrum(row[order])
            q = np.minimum.accumulate(q)  # monotone along descending s
            if self.normalize == "max" and q.max() > 0:
                q = q / q.max()
            out[i, order] = q
        return torch.from_numpy(out).reshape(s.shape).to(dtype=s.dtype, device=s.device)


def icm_map(H: Curvature, n: Optional[int] = None, *, input_scale: Optional[float] = None,
            normalize: str = "max", samples: int = 2048, seed: int = 0) -> ICMMap:  # fmt: skip
    """The curvature-optimal spectral map for :class:`~specgrad.optim.SpectralDescent`
    (see :class:`ICMMap` for ``n``, ``input_scale`` and ``normalize``).

    Example:
        >>> from specgrad.optim import SpectralDescent
        >>> from specgrad.theory.curvature import power
        >>> W = torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))
        >>> opt = SpectralDescent([W], f=icm_map(power(4.0), input_scale=1.0), lr=0.1)
        >>> W.grad = torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64))
        >>> opt.step()
        >>> [round(v, 3) for v in (-W.diagonal() / 0.1).tolist()]
        [1.0, 0.695, 0.444]
    """
    return ICMMap(H, n, input_scale, normalize, samples, seed)



# --------------------------------------------------------------------------------------
# an SVD-free polynomial approximation




def power_iteration_norm(X: Tensor, iters: int = 20) -> Tensor:
    """``sqrt(v^T X X^T v)`` after ``iters`` steps of power iteration on ``X X^T`` from a fixed
    start (all ones), for each matrix of ``X`` ``(..., m, n)`` with ``m <= n``, shape
    ``(..., 1, 1)``: the SVD-free scale ``sigma`` of :class:`ICMPolynomial`, a lower estimate of
    ``||X||_op`` that is part of the polynomial map's definition (its fitted coefficients
    assume this very estimate), not a converged norm.

    Example:
        >>> X = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
        >>> round(float(power_iteration_norm(X)), 6)
        3.0
    """
    A = X @ X.mT
    v = torch.ones(*A.shape[:-1], 1, dtype=A.dtype, device=A.device)
    for _ in range(iters):
        v = A @ v
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    return (v.mT @ A @ v).clamp_min(0.0).sqrt()


@dataclass
class ICMPolynomial:
    """An odd polynomial ``p(x) = sum_j c_j x^(2j+1)`` of the normalized update ``X = G / sigma``
    (``sigma`` a power-iteration estimate of ``||G||_op``) that approximates the max-normalized
    ICM map without an SVD: ``P(G) = (sum_j c_j (X X^T)^j) X`` has singular values ``p(s_i / sigma)``.

    The ICM map is not a function of ``s_i / s_max`` alone (it mixes the spectrum: for ``H = r^4``
    the normalized map solves ``y^3 + delta y = (1 + delta) x`` with ``delta`` set by the whole
    spectrum), so a fixed polynomial has an irreducible error. ``error`` states it: the largest
    ``||P(G) - U f(S) V^T||_op`` (the exact map's update has operator norm 1) over ``validation``
    held-out matrices of the fitting distribution (:func:`random_matrices`), times 1.25 as a
    margin for unseen draws; ``validation_error`` is that maximum itself, ``fit_error`` the same
    on the fitting spectra; ``monotone`` says whether ``p' > 0`` on ``[0, 1]``.
    """

    coefficients: tuple[float, ...]
    error: float
    validation_error: float
    fit_error: float
    monotone: bool
    shape: tuple[int, int]
    validation: int
    power_iters: int = 20
    curvature: str = ""

    def scalar(self, x) -> Array:
        x = np.asarray(x, dtype=np.float64)
        x2 = x * x
        acc = np.zeros_like(x)
        for c in reversed(self.coefficients):
            acc = acc * x2 + c
        return acc * x

    def __call__(self, G: Tensor) -> Tensor:
        """``P(G)`` for ``G`` ``(..., m, n)``: matrix products only (Horner in the Gram matrix of
        the smaller side); a zero matrix maps to zero."""
        if not isinstance(G, Tensor) or G.ndim < 2:
            raise ValueError(f"G must be a (..., m, n) tensor, got {type(G).__name__}")
        tall = G.shape[-2] > G.shape[-1]
        X = G.mT if tall else G
        X = X / power_iteration_norm(X, self.power_iters).clamp_min(torch.finfo(X.dtype).tiny)
        A = X @ X.mT
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        P = self.coefficients[-1] * eye
        for c in reversed(self.coefficients[:-1]):
            P = A @ P + c * eye
        out = P @ X
        return out.mT if tall else out


def random_matrices(shape: tuple[int, int], count: int, seed: int = 0) -> list[Tensor]:
    """``count`` float64 matrices ``Z diag(i^-beta) O``: ``Z`` Gaussian of ``shape``, ``O`` a random
    rotation, ``beta ~ Unif[0, 1.5]`` per matrix (from white to strongly decaying spectra, as
    gradients show)."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    out = []
    for _ in range(count):
        beta = float(torch.rand((), generator=g, dtype=torch.float64)) * 1.5
        Z = torch.randn(m, n, dtype=torch.float64, generator=g)
        O = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))[0]
        out.append((Z * torch.arange(1, n + 1, dtype=torch.float64).pow(-beta)) @ O)
    return out


def random_spectra(shape: tuple[int, int], count: int, seed: int = 0) -> list[Array]:
    """Descending singular values of :func:`random_matrices`."""
    return [torch.linalg.svdvals(Z).numpy() for Z in random_matrices(shape, count, seed)]


def fit_icm_polynomial(H: Curvature, shape: tuple[int, int] = (64, 32), degree: int = 4, *,
                       fit: int = 40, validation: int = 40, input_scale: Optional[float] = 1.0,
                       seed: int = 0) -> ICMPolynomial:  # fmt: skip
    """Least-squares odd polynomial of ``degree`` terms (``x, x^3, ..., x^(2 degree - 1)``) in
    ``x = s / s_max`` to the max-normalized ICM map ``icm_map(H, input_scale=input_scale)`` on the
    spectra of ``fit`` :func:`random_matrices` of ``shape``; ``validation`` fresh matrices (another
    seed) measure the stated ``error`` on the matrix outputs (power-iteration normalization
    included).

    Example:
        >>> from specgrad.theory.curvature import quadratic_power
        >>> P = fit_icm_polynomial(quadratic_power(1.0, 1.0, 4.0), (16, 8), 3, fit=8, validation=8)
        >>> P.error < 0.1
        True
    """
    check_positive_int(degree, "degree")
    f = icm_map(H, input_scale=input_scale)
    xs, ys = [], []
    for s in random_spectra(shape, fit, seed):
        ys.append(f(torch.from_numpy(s)).numpy())
        xs.append(s / s.max())
    x, y = np.concatenate(xs), np.concatenate(ys)
    basis = np.stack([x ** (2 * j + 1) for j in range(degree)], 1)
    coef = np.linalg.lstsq(basis, y, rcond=None)[0]
    poly = ICMPolynomial(tuple(float(c) for c in coef), 0.0, 0.0, 0.0, False, tuple(shape), validation,
                         curvature=H.name)  # fmt: skip
    poly.fit_error = float(max(np.abs(poly.scalar(a) - b).max() for a, b in zip(xs, ys)))
    errs = [float(torch.linalg.matrix_norm(poly(G) - spectral_map(G, f), ord=2))
            for G in random_matrices(shape, validation, seed + 10_007)]  # fmt: skip
    poly.validation_error = max(errs)
    poly.error = 1.25 * poly.validation_error
    grid = np.linspace(0.0, 1.0, 2001)
    deriv = sum((2 * j + 1) * c * grid ** (2 * j) for j, c in enumerate(coef))
    poly.monotone = bool(np.all(deriv > 0))
    return poly
