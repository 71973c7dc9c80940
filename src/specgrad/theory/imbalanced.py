r"""Imbalanced Gaussian mixtures learned by linear and deep linear models.

The model of Vasudeva, Deora, Zhao, Sharan and Thrampoulidis, "How Muon's Spectral Design
Benefits Generalization: A Study on Imbalanced Data" (arXiv 2510.22980):

* ``k`` classes with priors ``p_c``; class ``c`` has mean ``mu e_c`` in ``R^d`` (``d >= k``,
  orthogonal means of norm ``mu``) and isotropic noise: ``x = mu e_y + sigma z``,
  ``z ~ N(0, I_d)``; the label is the one-hot ``Y = e_y`` in ``R^k``;
* a linear model ``W`` of shape ``(k, d)`` (or a product ``W_L ... W_1``), squared loss
  ``L(W) = (1/2) E ||W x - Y||^2``.

Second moments. ``S_xx = E[x x^T] = mu^2 diag(p, 0) + sigma^2 I_d`` and
``S_yx = E[Y x^T] = mu [diag(p) | 0]`` (``(k, d)``), so::

    L(W)      = (1/2) tr(W S_xx W^T) - tr(W S_yx^T) + 1/2
    grad L(W) = W S_xx - S_yx                                                  (1)

and the minimizer is ``W* = S_yx S_xx^{-1} = [diag(w*) | 0]`` with, for each class,
``s_c^xx = mu^2 p_c + sigma^2``, ``s_c^yx = mu p_c`` and ``w*_c = s_c^yx / s_c^xx``.

Decoupling. From ``W_0 = 0`` (or any ``[diag(w) | 0]``) the gradient (1) is diagonal, so
every method below keeps ``W_t = [diag(w_t) | 0]`` and each class evolves on its own:
``g_c = s_c^xx w_c - s_c^yx``.

* GD ``w <- w - eta g``: ``w_c(t) = w*_c (1 - (1 - eta s_c^xx)^t)`` exactly (discrete time);
  its gradient-flow limit is ``w*_c (1 - exp(-eta s_c^xx t))``. For ``a = eta s_c^xx`` in
  ``(0, 1)`` the two differ by at most ``w*_c a / (2 e (1 - a))`` at every ``t``
  (``log(1 - a) >= -a - a^2 / (2 (1 - a))`` and ``max_t t e^{-a t} = 1 / (a e)``). Early on
  ``w_c(t) ~ eta mu p_c t``: GD learns the frequent classes first.
* NGD ``w <- w - eta g / ||g||``: the same direction as GD, a different speed.
* SpecGD ``w <- w - eta polar(G)``: the polar factor of ``[diag(g) | 0]`` is
  ``[diag(sign g) | 0]``, so every ``w_c`` grows by exactly ``eta`` per step, whatever its
  class prior, until it passes ``w*_c``; from then on it alternates between
  ``eta (n_c - 1)`` and ``eta n_c`` with ``n_c = ceil(w*_c / eta)`` (a 2-cycle around its
  target, within ``eta`` of it). The continuous-time form is ``min(eta t, w*_c)``.

Deep linear models. ``f(x) = W_L ... W_1 x`` with ``W_1`` ``(k, d)`` and ``W_l`` ``(k, k)``
above it; the gradient of layer ``l`` is ``A_l^T grad L(W_eff) B_l^T`` with
``A_l = W_L ... W_{l+1}`` and ``B_l = W_{l-1} ... W_1``. From the aligned, balanced init
``W_1 = a_0 [I | 0]``, ``W_l = a_0 I`` every layer stays ``diag(a_t)`` (the same ``a`` in
every layer), ``w = a^L`` and per class::

    GD:     a <- a - eta a^{L-1} (s^xx a^L - s^yx)
    SpecGD: a <- a + eta sign(s^yx - s^xx a^L)     (each layer's polar factor is sign diag)

SpecGD's ``w_c`` reaches the fraction ``f`` of ``w*_c`` after exactly
``ceil(((f w*_c)^{1/L} - a_0) / eta)`` steps, so for ``a_0, eta -> 0`` the ratio of the
saturation times of the most and the least frequent class is
``(w*_max / w*_min)^{1/L} = ((SNR + 1/p_min) / (SNR + 1/p_max))^{1/L}`` with
``SNR = mu^2 / sigma^2`` (use ``w* = (1/mu) SNR / (SNR + 1/p)``): the study's relative gap
``(...)^{1/L} - 1`` shrinks with depth. Under SpecGD the *frequent* class saturates last (its
target is larger). GD's saturation time under gradient flow is the integral
``(1/(eta L)) int_{u_0}^{f w*} u^{-(2 - 2/L)} / (s^yx - s^xx u) du`` (``u = a^L``), which for a
small ``a_0`` is dominated by the escape from the init, ``~ 1/s^yx ~ 1/p``: under GD the
rare class saturates last.

Conventions: float64 on CPU, ``W`` is ``(k, d)`` (out, in), samples are rows ``(n, d)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

from ..linalg import polar_svd
from ..linalg.checks import check_nonnegative_int, check_positive_int

DTYPE = torch.float64
LINEAR_METHODS = ("gd", "ngd", "specgd")
DEEP_METHODS = ("gd", "specgd")


@dataclass(frozen=True)
class Mixture:
    """``k``-class Gaussian mixture with means ``mu e_c`` in ``R^d`` and noise ``sigma``.

    Attributes:
        priors: ``(k,)`` float64 class priors ``p_c`` (positive, summing to 1).
        mu: norm of every class mean.
        sigma: noise standard deviation per coordinate.
        d: input dimension, ``d >= k``.
    """

    priors: Tensor
    mu: float
    sigma: float
    d: int

    @property
    def k(self) -> int:
        return self.priors.shape[0]

    @property
    def snr(self) -> float:
        """``mu^2 / sigma^2``."""
        return self.mu**2 / self.sigma**2

    @property
    def s_xx(self) -> Tensor:
        """``(k,)``: ``s_c^xx = mu^2 p_c + sigma^2``, the input second moment along ``e_c``."""
        return self.mu**2 * self.priors + self.sigma**2

    @property
    def s_yx(self) -> Tensor:
        """``(k,)``: ``s_c^yx = mu p_c``, the input-label cross moment along ``e_c``."""
        return self.mu * self.priors

    @property
    def target(self) -> Tensor:
        """``(k,)``: ``w*_c = s_c^yx / s_c^xx``, the diagonal of the population minimizer."""
        return self.s_yx / self.s_xx

    def second_moments(self) -> tuple[Tensor, Tensor]:
        """``(S_xx (d, d), S_yx (k, d))`` of the module docstring."""
        S_xx = self.sigma**2 * torch.eye(self.d, dtype=DTYPE)
        S_xx[: self.k, : self.k] += torch.diag(self.mu**2 * self.priors)
        S_yx = torch.zeros(self.k, self.d, dtype=DTYPE)
        S_yx[:, : self.k] = torch.diag(self.s_yx)
        return S_xx, S_yx


def mixture(priors: Sequence[float] | Tensor, mu: float, sigma: float, d: Optional[int] = None) -> Mixture:
    """Build a :class:`Mixture`; ``priors`` are normalized to sum to one, ``d`` defaults to ``k``.

    Example:
        >>> m = mixture([0.5, 0.3, 0.2], mu=2.0, sigma=1.0)
        >>> [round(v, 4) for v in m.target.tolist()]
        [0.3333, 0.2727, 0.2222]
    """
    p = torch.as_tensor(priors, dtype=DTYPE).flatten()
    if p.numel() < 2 or not bool(torch.isfinite(p).all()) or bool((p <= 0).any()):
        raise ValueError(f"priors must be at least 2 finite positive numbers, got {priors!r}")
    for name, v in (("mu", mu), ("sigma", sigma)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    k = p.numel()
    d = k if d is None else d
    if isinstance(d, bool) or not isinstance(d, int) or d < k:
        raise ValueError(f"d must be an integer >= k={k}, got {d!r}")
    return Mixture(p / p.sum(), float(mu), float(sigma), d)


def harmonic_priors(k: int) -> Tensor:
    """``p_c ~ 1/c`` for ``c = 1..k`` (Zipf), normalized; ``(k,)`` float64.

    Example:
        >>> [round(v, 4) for v in harmonic_priors(3).tolist()]
        [0.5455, 0.2727, 0.1818]
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    p = 1.0 / torch.arange(1, k + 1, dtype=DTYPE)
    return p / p.sum()


def sample(mix: Mixture, n: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """``n`` draws: ``X`` ``(n, d)`` float64 and labels ``y`` ``(n,)`` int64 with ``P(y = c) = p_c``."""
    check_positive_int(n, "n")
    y = torch.multinomial(mix.priors, n, replacement=True, generator=generator)
    return _features(mix, y, generator), y


def sample_balanced(mix: Mixture, per_class: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """``per_class`` draws of every class (a balanced test set): ``X`` ``(k per_class, d)``, ``y``."""
    check_positive_int(per_class, "per_class")
    y = torch.arange(mix.k).repeat_interleave(per_class)
    return _features(mix, y, generator), y


def _features(mix: Mixture, y: Tensor, generator) -> Tensor:
    X = mix.sigma * torch.randn(y.numel(), mix.d, dtype=DTYPE, generator=generator)
    X[torch.arange(y.numel()), y] += mix.mu
    return X


def _check_w(W: Tensor, mix: Mixture) -> None:
    if not isinstance(W, Tensor) or W.shape != (mix.k, mix.d):
        shape = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
        raise ValueError(f"W must be a (k={mix.k}, d={mix.d}) tensor, got {shape}")


def population_loss_and_gradient(W: Tensor, mix: Mixture) -> tuple[Tensor, Tensor]:
    """Exact ``(L(W), grad L(W))`` of ``L = (1/2) E ||W x - Y||^2``, eq. (1); ``W`` ``(k, d)``.

    Example:
        >>> m = mixture([0.5, 0.5], mu=1.0, sigma=1.0)
        >>> loss, G = population_loss_and_gradient(torch.zeros(2, 2, dtype=torch.float64), m)
        >>> float(loss), G.diagonal().tolist()
        (0.5, [-0.5, -0.5])
    """
    _check_w(W, mix)
    S_xx, S_yx = mix.second_moments()
    WS = W @ S_xx
    loss = 0.5 * (WS * W).sum() - (W * S_yx).sum() + 0.5
    return loss, WS - S_yx


def empirical_loss_and_gradient(W: Tensor, X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(1/(2n)) sum_i ||W x_i - e_{y_i}||^2`` and its gradient ``(1/n) (W X^T - Y^T) X``;
    ``W`` ``(k, d)``, ``X`` ``(n, d)``, ``y`` ``(n,)`` int64."""
    if X.ndim != 2 or W.ndim != 2 or X.shape[1] != W.shape[1] or y.shape != X.shape[:1]:
        raise ValueError(f"need W (k, d), X (n, d), y (n,); got {tuple(W.shape)}, {tuple(X.shape)}, {tuple(y.shape)}")
    R = X @ W.mT
    R[torch.arange(y.numel()), y] -= 1.0  # residual W x - e_y, (n, k)
    return 0.5 * R.square().sum() / X.shape[0], R.mT @ X / X.shape[0]


def _check_times(t) -> np.ndarray:
    t = np.asarray(t, dtype=float)
    if t.ndim != 1 or (t < 0).any() or not np.isfinite(t).all():
        raise ValueError("t must be a 1-D array of finite times >= 0")
    return t


def gd_diagonal(mix: Mixture, lr: float, t, discrete: bool = True) -> np.ndarray:
    """GD's ``w_c(t)`` from ``W_0 = 0``, ``(len(t), k)``: ``w*_c (1 - (1 - lr s_c^xx)^t)``
    (``discrete``, exact for integer ``t``) or ``w*_c (1 - exp(-lr s_c^xx t))`` (gradient flow).

    Example:
        >>> m = mixture([0.5, 0.5], mu=1.0, sigma=1.0)
        >>> gd_diagonal(m, 0.5, [0, 1, 2]).round(4).tolist()
        [[0.0, 0.0], [0.25, 0.25], [0.3125, 0.3125]]
    """
    t = _check_times(t)
    s, w = mix.s_xx.numpy(), mix.target.numpy()
    if discrete:
        return w * (1 - (1 - lr * s)[None, :] ** t[:, None])
    return w * (1 - np.exp(-lr * s[None, :] * t[:, None]))


def gd_flow_gap_bound(mix: Mixture, lr: float) -> np.ndarray:
    """``(k,)``: ``w*_c a_c / (2 e (1 - a_c))`` with ``a_c = lr s_c^xx < 1``, an upper bound on
    ``|discrete - flow|`` of :func:`gd_diagonal` at every ``t`` (module docstring)."""
    a = lr * mix.s_xx.numpy()
    if (a >= 1).any():
        raise ValueError(f"the bound needs lr * s_xx < 1, got {a.max():.3g}")
    return mix.target.numpy() * a / (2 * math.e * (1 - a))


def specgd_diagonal(mix: Mixture, lr: float, t, discrete: bool = True) -> np.ndarray:
    """SpecGD's ``w_c(t)`` from ``W_0 = 0``, ``(len(t), k)``. Discrete (integer ``t``):
    ``lr t`` up to ``n_c = ceil(w*_c / lr)``, then ``lr n_c`` at even ``t - n_c`` and
    ``lr (n_c - 1)`` at odd; continuous: ``min(lr t, w*_c)``.

    Example:
        >>> m = mixture([0.5, 0.5], mu=1.0, sigma=1.0)   # w* = 1/3
        >>> specgd_diagonal(m, 0.15, [0, 1, 2, 3, 4, 5])[:, 0].round(2).tolist()
        [0.0, 0.15, 0.3, 0.45, 0.3, 0.45]
    """
    t = _check_times(t)
    w = mix.target.numpy()
    if not discrete:
        return np.minimum(lr * t[:, None], w[None, :])
    n = np.ceil(w / lr - 1e-12)  # a target hit exactly stays put (zero gradient): same n
    tt = t[:, None]
    after = np.where((tt - n) % 2 == 0, n, n - 1) * lr
    exact_hit = np.isclose(n * lr, w, rtol=1e-12, atol=0)
    after = np.where(exact_hit, w, after)
    return np.where(tt <= n, lr * tt, after)


def train_linear(mix: Mixture, method: str, lr: float, steps: int, *, X: Optional[Tensor] = None,
                 y: Optional[Tensor] = None) -> dict[str, list]:  # fmt: skip
    """Train ``W`` ``(k, d)`` from zero for ``steps`` steps of ``"gd"`` (``W - lr G``), ``"ngd"``
    (``W - lr G / ||G||_F``) or ``"specgd"`` (``W - lr polar(G)``, exact SVD). ``G`` is the
    population gradient (1), or the empirical one on ``(X, y)`` when given.

    Returns per-step lists (``steps + 1`` entries, step 0 = init): ``step``, ``loss`` (the
    population loss), ``w<c>`` (the diagonal ``W[c, c]``) and ``off`` (``||W - diag||_F``).
    """
    if method not in LINEAR_METHODS:
        raise ValueError(f"method must be one of {LINEAR_METHODS}, got {method!r}")
    _check_lr(lr)
    check_nonnegative_int(steps, "steps")
    W = torch.zeros(mix.k, mix.d, dtype=DTYPE)
    eye = torch.zeros_like(W)
    eye[:, : mix.k] = torch.eye(mix.k, dtype=DTYPE)
    rows = torch.zeros(steps + 1, mix.k + 2, dtype=DTYPE)
    for t in range(steps + 1):
        loss, G = population_loss_and_gradient(W, mix)
        rows[t, 0] = loss
        rows[t, 1 : mix.k + 1] = W.diagonal()
        rows[t, -1] = (W * (1 - eye)).norm()
        if t == steps:
            break
        if X is not None:
            G = empirical_loss_and_gradient(W, X, y)[1]
        W = W - lr * _direction(method, G)
    out: dict[str, list] = {"step": list(range(steps + 1)), "loss": rows[:, 0].tolist()}
    for c in range(mix.k):
        out[f"w{c}"] = rows[:, c + 1].tolist()
    out["off"] = rows[:, -1].tolist()
    return out


def _direction(method: str, G: Tensor) -> Tensor:
    if method == "gd":
        return G
    if method == "ngd":
        norm = G.norm()
        return G / norm if norm > 0 else G
    return polar_svd(G)


def _check_lr(lr) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")


def population_class_accuracy(w: Tensor | Sequence[float], mix: Mixture, nodes: int = 96) -> Tensor:
    """Per-class population accuracy ``(k,)`` of the classifier ``argmax_c w_c x_c`` (the
    model ``W = [diag(w) | 0]``) on the mixture.

    For class ``c`` with ``x_c = mu + sigma z`` and ``x_j = sigma z_j``::

        acc_c = E_z prod_{j != c} Phi(w_c (mu + sigma z) / (w_j sigma))

    by Gauss-Hermite quadrature with ``nodes`` nodes. Needs every ``w_c > 0``, except that
    ``w = 0`` (every score ties; ties broken uniformly at random) gives ``1/k``.

    Example:
        >>> m = mixture([0.5, 0.5], mu=2.0, sigma=1.0)
        >>> round(float(population_class_accuracy([1.0, 1.0], m)[0]), 6)  # Phi(mu / sqrt 2)
        0.92135
    """
    w = torch.as_tensor(w, dtype=DTYPE)
    if w.shape != (mix.k,):
        raise ValueError(f"w must have shape (k={mix.k},), got {tuple(w.shape)}")
    if bool((w == 0).all()):
        return torch.full((mix.k,), 1.0 / mix.k, dtype=DTYPE)
    if not bool((w > 0).all()):
        raise ValueError(f"every w_c must be > 0 (or all zero), got {w.tolist()}")
    z, weights = np.polynomial.hermite_e.hermegauss(nodes)
    z, weights = torch.as_tensor(z, dtype=DTYPE), torch.as_tensor(weights / math.sqrt(2 * math.pi), dtype=DTYPE)
    score = w[:, None] * (mix.mu + mix.sigma * z[None, :])  # (k, nodes): w_c x_c of a class-c point
    # log Phi(score_c / (w_j sigma)) for every pair (c, j), nodes last; the diagonal is left out
    logs = torch.special.log_ndtr(score[:, None, :] / (w[None, :, None] * mix.sigma))
    logs = logs * (1 - torch.eye(mix.k, dtype=DTYPE))[:, :, None]
    return (logs.sum(1).exp() * weights).sum(-1)


def population_balanced_loss(w: Tensor | Sequence[float], mix: Mixture) -> float:
    """Class-balanced population squared loss of ``W = [diag(w) | 0]``: the mean over classes
    (not the priors) of ``(1/2) E[||W x - e_c||^2 | y = c]``, which for a class-``c`` point
    (``x_j = sigma z_j``, ``x_c = mu + sigma z_c``) is ``(1/2) (sigma^2 ||w||^2 + (mu w_c - 1)^2)``.

    Example:
        >>> m = mixture([0.5, 0.3, 0.2], mu=2.0, sigma=1.0)
        >>> population_balanced_loss([0.0, 0.0, 0.0], m)
        0.5
        >>> round(population_balanced_loss(m.target, m), 4)   # the (prior-weighted) optimum's
        0.2218
    """
    w = torch.as_tensor(w, dtype=DTYPE)
    if w.shape != (mix.k,):
        raise ValueError(f"w must have shape (k={mix.k},), got {tuple(w.shape)}")
    return float(0.5 * (mix.sigma**2 * w.square().sum() + (mix.mu * w - 1).square().mean()))


# --- deep linear models ---------------------------------------------------------------


def init_deep(mix: Mixture, depth: int, scale: float) -> list[Tensor]:
    """Aligned, balanced init: ``W_1 = scale [I | 0]`` ``(k, d)`` and ``W_l = scale I_k`` for
    ``l = 2..depth``; ``depth = 1`` with ``scale = 0`` is the linear model from zero."""
    check_positive_int(depth, "depth")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    if depth > 1 and scale == 0:
        raise ValueError("a deep model needs scale > 0 (zero is a saddle point)")
    W1 = torch.zeros(mix.k, mix.d, dtype=DTYPE)
    W1[:, : mix.k] = scale * torch.eye(mix.k, dtype=DTYPE)
    return [W1] + [scale * torch.eye(mix.k, dtype=DTYPE) for _ in range(depth - 1)]


def product(layers: Sequence[Tensor]) -> Tensor:
    """``W_L ... W_1`` for ``layers = [W_1, ..., W_L]``."""
    out = layers[0]
    for W in layers[1:]:
        out = W @ out
    return out


def deep_gradients(layers: Sequence[Tensor], mix: Mixture) -> tuple[Tensor, list[Tensor]]:
    """Population loss of ``W_L ... W_1`` and the gradient of every layer,
    ``A_l^T grad L(W_eff) B_l^T`` (``A_l = W_L ... W_{l+1}``, ``B_l = W_{l-1} ... W_1``)."""
    L = len(layers)
    below = [None] * L  # B_l
    acc = None
    for i, W in enumerate(layers):
        below[i] = acc
        acc = W if acc is None else W @ acc
    loss, G = population_loss_and_gradient(acc, mix)
    grads = [None] * L
    above = None  # A_l
    for i in range(L - 1, -1, -1):
        left = G if above is None else above.mT @ G
        grads[i] = left if below[i] is None else left @ below[i].mT
        above = layers[i] if above is None else above @ layers[i]
    return loss, grads


def train_deep(
    mix: Mixture,
    depth: int,
    method: str,
    lr: float,
    steps: int,
    *,
    init_scale: float,
    stop_fraction: Optional[float] = None,
    callback: Optional[Callable[[int], None]] = None,
) -> dict[str, list]:
    """Train ``W_L ... W_1`` from :func:`init_deep` with ``"gd"`` (every layer ``W_l - lr G_l``)
    or ``"specgd"`` (``W_l - lr polar(G_l)``, exact SVD per layer) on the population loss.

    Stops after ``steps`` steps, or earlier once every diagonal entry of the product has
    reached ``stop_fraction`` of its target ``w*_c``. Returns per-step lists: ``step``,
    ``loss``, ``w<c>`` (diagonal of the product) and ``off`` (its off-diagonal Frobenius norm).
    """
    if method not in DEEP_METHODS:
        raise ValueError(f"method must be one of {DEEP_METHODS}, got {method!r}")
    _check_lr(lr)
    check_nonnegative_int(steps, "steps")
    layers = init_deep(mix, depth, init_scale)
    target = mix.target
    eye = torch.zeros(mix.k, mix.d, dtype=DTYPE)
    eye[:, : mix.k] = torch.eye(mix.k, dtype=DTYPE)
    rows = []
    for t in range(steps + 1):
        loss, grads = deep_gradients(layers, mix)
        P = product(layers)
        diag = P.diagonal()
        rows.append(torch.cat([loss[None], diag, (P * (1 - eye)).norm()[None]]))
        if t == steps or (stop_fraction is not None and bool((diag >= stop_fraction * target).all())):
            break
        if method == "gd":
            layers = [W - lr * G for W, G in zip(layers, grads)]
        else:
            layers = [W - lr * polar_svd(G) for W, G in zip(layers, grads)]
        if callback is not None:
            callback(t)
    R = torch.stack(rows)
    out: dict[str, list] = {"step": list(range(R.shape[0])), "loss": R[:, 0].tolist()}
    for c in range(mix.k):
        out[f"w{c}"] = R[:, c + 1].tolist()
    out["off"] = R[:, -1].tolist()
    return out


def deep_scalar_recursion(
    mix: Mixture, depth: int, method: str, lr: float, steps: int, init_scale: float
) -> np.ndarray:
    """The per-class recursion of the aligned deep model (module docstring), ``(steps + 1, k)``
    values of ``w_c = a_c^L``: what :func:`train_deep` must follow exactly."""
    if method not in DEEP_METHODS:
        raise ValueError(f"method must be one of {DEEP_METHODS}, got {method!r}")
    s, r = mix.s_xx.numpy(), mix.s_yx.numpy()
    a = np.full(mix.k, float(init_scale))
    out = [a**depth]
    for _ in range(steps):
        g = s * a**depth - r
        a = a - lr * a ** (depth - 1) * g if method == "gd" else a - lr * np.sign(g)
        out.append(a**depth)
    return np.stack(out)


def saturation_steps(w: Sequence[float], target: float, fraction: float = 0.9) -> float:
    """First step at which ``w >= fraction * target``; ``nan`` if never."""
    w = np.asarray(w, dtype=float)
    hit = np.flatnonzero(np.isfinite(w) & (w >= fraction * target))
    return float(hit[0]) if hit.size else math.nan


def specgd_saturation_steps(
    mix: Mixture, depth: int, lr: float, init_scale: float, fraction: float = 0.9
) -> np.ndarray:
    """``(k,)`` exact discrete SpecGD saturation steps of the aligned deep model:
    ``ceil(((fraction w*_c)^{1/L} - a_0) / lr)`` (0 if the init is already there).

    Example:
        >>> m = mixture([0.5, 0.5], mu=1.0, sigma=1.0)    # w* = 1/3, 0.9 w* = 0.3
        >>> specgd_saturation_steps(m, 1, 0.01, 0.0).tolist()
        [30.0, 30.0]
    """
    a_star = (fraction * mix.target.numpy()) ** (1.0 / depth)
    # the tiny slack absorbs the rounding of a sum of lr's that lands exactly on a_star
    return np.maximum(np.ceil((a_star - init_scale) / lr - 1e-9), 0.0)


def gd_flow_saturation_steps(
    mix: Mixture, depth: int, lr: float, init_scale: float, fraction: float = 0.9
) -> np.ndarray:
    """``(k,)`` gradient-flow time (in units of steps of size ``lr``) for GD's ``w_c`` to go
    from ``init_scale^L`` to ``fraction w*_c``:
    ``(1/(lr L)) int u^{-(2 - 2/L)} / (s^yx - s^xx u) du`` (module docstring), by quadrature
    in ``log u`` (``depth = 1`` with ``init_scale = 0``: ``-log(1 - fraction) / (lr s^xx)``)."""
    out = []
    for s, r, w in zip(mix.s_xx.tolist(), mix.s_yx.tolist(), mix.target.tolist()):
        u1 = fraction * w
        if depth == 1 and init_scale == 0:
            out.append(-math.log(1 - fraction) / (lr * s))
            continue
        u0 = init_scale**depth
        if u0 >= u1:
            out.append(0.0)
            continue
        # du = u dv: integrand u^{2/L - 1} / (r - s u)
        val, _ = integrate.quad(lambda v: math.exp(v * (2 / depth - 1)) / (r - s * math.exp(v)),
                                math.log(u0), math.log(u1), epsabs=0, epsrel=1e-11, limit=400)  # fmt: skip
        out.append(val / (lr * depth))
    return np.asarray(out)


def study_gap(mix: Mixture, depth: int) -> float:
    """The study's relative gap of saturation times between the most and the least
    frequent class, ``((SNR + 1/p_min) / (SNR + 1/p_max))^{1/L} - 1`` (SpecGD, small init
    and step; ``SNR = mu^2 / sigma^2``).

    Example:
        >>> round(study_gap(mixture([0.5, 0.3, 0.2], mu=2.0, sigma=1.0), 1), 6)
        0.5
    """
    p_min, p_max = float(mix.priors.min()), float(mix.priors.max())
    return ((mix.snr + 1 / p_min) / (mix.snr + 1 / p_max)) ** (1.0 / depth) - 1


def gd_stability_lr(mix: Mixture, depth: int) -> float:
    """``2 / lambda_max`` at the aligned solution: the Hessian of ``(1/2) s^xx (a_1...a_L)^2 -
    s^yx a_1...a_L`` in the layer scalars at ``a_l = (w*)^{1/L}`` has top eigenvalue
    ``L s^xx (w*)^{2 - 2/L}``; GD is stable near the solution only below this step."""
    lam = depth * mix.s_xx * mix.target ** (2 - 2 / depth)
    return float(2 / lam.max())
