r"""Phase retrieval with anisotropic Gaussian inputs, learned by a quadratic two-layer network.

The model of Braun, Bao, Huang and Imaizumi, "Spectral Gradient Descent Mitigates
Anisotropy-Driven Misalignment: A Case Study in Phase Retrieval" (arXiv 2601.22652):

* data ``x ~ N(0, Sigma)`` in ``R^d``, label ``y = (theta*^T x)^2`` for a unit signal ``theta*``;
* student ``f_W(x) = (1/m) ||W x||^2 = x^T M x`` with ``W`` of shape ``(m, d)`` and
  ``M = W^T W / m`` (a two-layer network, quadratic activation, second layer fixed at
  ``1/m``), started from a small random ``W``;
* loss ``L(W) = (1/4) E (f_W(x) - y)^2``.

Population gradient (Isserlis / Wick). Write ``T = theta* theta*^T`` and ``D = M - T``
(symmetric), so the residual is ``r(x) = x^T D x``. For ``x ~ N(0, Sigma)``,
``E[x_i x_j x_k x_l] = S_ij S_kl + S_ik S_jl + S_il S_jk`` (``S = Sigma``), hence for any
symmetric ``D``::

    E[(x^T D x) x x^T] = tr(D S) S + 2 S D S                                   (1)
    E[(x^T D x)^2]     = tr(D S)^2 + 2 tr(D S D S)                             (2)

Since ``dr/dW = (2/m) W x x^T``, ``grad L = (1/2) E[r dr/dW] = (1/m) W E[r x x^T]``::

    L(W)      = (1/4) [tr(D S)^2 + 2 tr(D S D S)]
    grad L(W) = (1/m) W [tr(D S) S + 2 S D S]                                  (3)

With ``D = -T`` in (1): ``E[y x x^T] = (theta*^T S theta*) S + 2 S theta* theta*^T S``.

Early-phase linearization. At a small ``W`` we have ``M ~ 0`` and ``D ~ -T``, so
``grad L ~ -(1/m) W K`` with ``K = (theta*^T S theta*) S + 2 S theta* theta*^T S`` and GD
``W <- W - lr grad L`` is ``W_{k+1} = W_k (I + (lr/m) K)``. When ``theta*`` and a direction
``u`` are eigenvectors of ``S`` (``S theta* = s theta*``, ``S u = s_u u``), they are
eigenvectors of ``K`` with eigenvalues ``3 s^2`` and ``s s_u``, so per GD step::

    a_{k+1} = (1 + 3 s^2 lr / m) a_k,   b_{k+1} = (1 + s s_u lr / m) b_k        (4)

for ``a_k = ||W_k theta*||``, ``b_k = ||W_k u||``. For the spiked covariance
``S = I + lam v v^T`` with ``v`` orthogonal to ``theta*`` (``s = 1``, ``s_v = 1 + lam``) the
factors are ``1 + 3 lr/m`` (signal), ``1 + (1 + lam) lr/m`` (spike) and ``1 + lr/m`` (bulk):
the spike outgrows the signal exactly when ``lam > 2``, and ``b_k / a_k`` grows by
``(1 + (1 + lam) lr/m) / (1 + 3 lr/m)`` per step. SpecGD's step ``polar(grad L)`` has every
singular value equal to one, so ``||W_{k+1} u|| <= ||W_k u|| + lr`` for every unit ``u``: each
coefficient grows at most additively, whatever the variance of its direction.

GD's step-size limit. At a solution ``W* = u theta*^T`` (``||u||^2 = m``) the residual is zero
and the Hessian is the Gauss-Newton term ``(1/4) E (x^T dM x)^2`` with
``dM = (W*^T E + E^T W*) / m``. Along the unit direction ``(u/sqrt(m)) theta*^T`` the curvature
is ``6 s^2 / m``, along ``(u/sqrt(m)) v^T`` it is ``2 s s_v / m``, along directions ``e w^T``
with ``e`` orthogonal to ``u`` it is zero, and these directions do not couple. GD is stable
near the solution only for ``lr < m / max(3 s^2, s s_v)``: ``m / max(3, 1 + lam)`` for the
spiked model, so the same spike that is amplified early also caps GD's step.

Conventions: float64 on CPU, ``W`` is ``(m, d)``, ``x`` rows are samples ``(n, d)``. The
problem's basis is the standard one (``theta* = e_j``, the spike ``= e_1`` or ``e_2``); the
Gaussian initialization is rotation invariant, so this loses no generality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..linalg import orthogonalize, polar_svd
from ..linalg.checks import check_nonnegative_int, check_positive_int

METHODS = ("gd", "specgd", "muon")
DTYPE = torch.float64


@dataclass(frozen=True)
class PhaseRetrievalProblem:
    """A covariance, the signal and the top-variance direction orthogonal to it.

    Attributes:
        sigma: ``(d, d)`` float64 covariance ``Sigma`` (symmetric positive definite).
        theta: ``(d,)`` float64 unit signal ``theta*``.
        spike: ``(d,)`` float64 unit top-variance direction ``v``, orthogonal to ``theta``.
        sqrt_sigma: ``(d, d)`` float64 symmetric square root of ``sigma`` (for sampling).
        name: a short label.
        sigma_diag: ``(d,)`` diagonal of ``sigma`` when ``sigma`` is diagonal, else ``None``
            (then ``W Sigma`` is an elementwise product instead of a matmul).
    """

    sigma: Tensor
    theta: Tensor
    spike: Tensor
    sqrt_sigma: Tensor
    name: str = ""
    sigma_diag: Optional[Tensor] = None  # (d,) when sigma is diagonal: a fast path for W Sigma

    @property
    def d(self) -> int:
        return self.sigma.shape[0]

    @property
    def signal_variance(self) -> float:
        """``theta*^T Sigma theta*``."""
        return float(self.theta @ self.sigma @ self.theta)

    @property
    def spike_variance(self) -> float:
        """``v^T Sigma v``."""
        return float(self.spike @ self.sigma @ self.spike)

    def target(self) -> Tensor:
        """``T = theta* theta*^T``, ``(d, d)``."""
        return torch.outer(self.theta, self.theta)


def _check_dim(d, minimum: int = 3) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or d < minimum:
        raise ValueError(f"d must be an integer >= {minimum}, got {d!r}")
    return d


def spiked_problem(d: int, lam: float) -> PhaseRetrievalProblem:
    """``Sigma = I + lam v v^T`` with ``theta* = e_1`` and spike ``v = e_2`` (orthogonal).

    Args:
        d: dimension, an integer >= 3 (signal, spike and at least one bulk direction).
        lam: spike strength ``>= 0``; ``lam = 0`` is the isotropic model.

    Example:
        >>> p = spiked_problem(5, 4.0)
        >>> p.signal_variance, p.spike_variance
        (1.0, 5.0)
    """
    _check_dim(d)
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    theta = torch.zeros(d, dtype=DTYPE)
    theta[0] = 1.0
    v = torch.zeros(d, dtype=DTYPE)
    v[1] = 1.0
    sigma = torch.eye(d, dtype=DTYPE) + lam * torch.outer(v, v)
    sqrt_sigma = torch.eye(d, dtype=DTYPE) + (math.sqrt(1.0 + lam) - 1.0) * torch.outer(v, v)
    return PhaseRetrievalProblem(sigma, theta, v, sqrt_sigma, f"spiked(lam={lam:g})", torch.diagonal(sigma).clone())


def power_law_problem(d: int, alpha: float, signal_index: int, normalization: str = "trace") -> PhaseRetrievalProblem:
    """``Sigma = c diag(i^-alpha)``, ``i = 1..d``, with ``theta* = e_{signal_index}``.

    The top-variance direction ``e_1`` is the spike (orthogonal to the signal because
    ``signal_index >= 2``); every direction ``i`` with ``Sigma_ii > 3 Sigma_jj``
    (``j = signal_index``) grows faster than the signal under early GD (see (4) above).

    Args:
        d: dimension, an integer >= 3.
        alpha: decay exponent ``>= 0``.
        signal_index: 1-based eigen-index of the signal, ``2 <= signal_index <= d``.
        normalization: ``"trace"`` (``c`` such that ``tr Sigma = d``: mean variance 1) or
            ``"top"`` (``c = 1``: the top eigenvalue is 1).

    Example:
        >>> p = power_law_problem(10, 1.0, 4, "top")
        >>> round(p.signal_variance, 6), p.spike_variance
        (0.25, 1.0)
    """
    _check_dim(d)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if isinstance(signal_index, bool) or not isinstance(signal_index, int) or not 2 <= signal_index <= d:
        raise ValueError(f"signal_index must be an integer in [2, d={d}], got {signal_index!r}")
    if normalization not in ("trace", "top"):
        raise ValueError(f"normalization must be 'trace' or 'top', got {normalization!r}")
    eig = torch.arange(1, d + 1, dtype=DTYPE).pow(-float(alpha))
    if normalization == "trace":
        eig = eig * (d / eig.sum())
    theta = torch.zeros(d, dtype=DTYPE)
    theta[signal_index - 1] = 1.0
    v = torch.zeros(d, dtype=DTYPE)
    v[0] = 1.0
    name = f"power-law(alpha={alpha:g}, signal=e_{signal_index}, {normalization})"
    return PhaseRetrievalProblem(torch.diag(eig), theta, v, torch.diag(eig.sqrt()), name, eig)


def init_student(m: int, d: int, scale: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Small random first layer: ``(m, d)`` float64 with i.i.d. ``N(0, scale^2 / d)`` entries,
    so each row has norm about ``scale``."""
    check_positive_int(m, "m")
    _check_dim(d, 1)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return torch.randn(m, d, dtype=DTYPE, generator=generator) * (scale / math.sqrt(d))


def _check_w(W: Tensor, problem: PhaseRetrievalProblem) -> None:
    if not isinstance(W, Tensor) or W.ndim != 2 or W.shape[1] != problem.d:
        shape = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
        raise ValueError(f"W must be a (m, d={problem.d}) tensor, got {shape}")


def student_output(W: Tensor, X: Tensor) -> Tensor:
    """``f_W(x) = ||W x||^2 / m`` for each row of ``X`` ``(n, d)``; returns ``(n,)``."""
    return (X @ W.mT).square().sum(-1) / W.shape[0]


def population_loss_and_gradient(W: Tensor, problem: PhaseRetrievalProblem) -> tuple[Tensor, Tensor]:
    """Exact ``(L(W), grad L(W))`` from the Gaussian moments (1)-(3) of the module docstring.

    ``L = (1/4)[tr(DS)^2 + 2 tr(DSDS)]``, ``grad L = (1/m) W [tr(DS) S + 2 S D S]`` with
    ``D = W^T W / m - theta* theta*^T`` and ``S = Sigma``; evaluated without forming ``D``
    (``O(m d^2 + m^2 d)``). ``W`` is ``(m, d)`` float64; returns a 0-dim tensor and an
    ``(m, d)`` tensor.

    Example:
        >>> p = spiked_problem(4, 2.0)
        >>> W = torch.zeros(3, 4, dtype=torch.float64)
        >>> float(population_loss_and_gradient(W, p)[0])  # (1/4)(1 + 2) at W = 0
        0.75
    """
    _check_w(W, problem)
    m = W.shape[0]
    S, theta = problem.sigma, problem.theta
    A = W * problem.sigma_diag if problem.sigma_diag is not None else W @ S  # (m, d): W S
    B = A @ W.mT  # (m, m): W S W^T
    s_theta = problem.sigma_diag * theta if problem.sigma_diag is not None else S @ theta  # (d,)
    w_s_theta = W @ s_theta  # (m,): W S theta
    s = theta @ s_theta  # theta^T S theta
    tr_ds = torch.diagonal(B).sum() / m - s
    tr_dsds = B.square().sum() / m**2 - 2 * w_s_theta.square().sum() / m + s * s
    loss = 0.25 * (tr_ds**2 + 2 * tr_dsds)
    # W K = tr(DS) W S + 2 W S (M - T) S = tr(DS) A + 2 [(B/m) A - (W S theta)(S theta)^T]
    WK = tr_ds * A + 2 * ((B / m) @ A - torch.outer(w_s_theta, s_theta))
    return loss, WK / m


def population_loss(W: Tensor, problem: PhaseRetrievalProblem) -> Tensor:
    """Exact population loss ``L(W)`` (differentiable by autograd); a 0-dim tensor."""
    _check_w(W, problem)
    D = W.mT @ W / W.shape[0] - problem.target()
    DS = D @ problem.sigma
    return 0.25 * (torch.trace(DS) ** 2 + 2 * torch.trace(DS @ DS))


def sample(problem: PhaseRetrievalProblem, n: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """``n`` samples: ``X`` ``(n, d)`` with rows ``~ N(0, Sigma)`` and ``y = (X theta*)^2`` ``(n,)``."""
    check_positive_int(n, "n")
    Z = torch.randn(n, problem.d, dtype=DTYPE, generator=generator)
    X = Z * problem.sigma_diag.sqrt() if problem.sigma_diag is not None else Z @ problem.sqrt_sigma
    return X, (X @ problem.theta).square()


def empirical_loss_and_gradient(W: Tensor, X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(1/(4n)) sum_i (f_W(x_i) - y_i)^2`` and its gradient
    ``(1/(m n)) sum_i r_i W x_i x_i^T``; ``X`` ``(n, d)``, ``y`` ``(n,)``, ``W`` ``(m, d)``."""
    if X.ndim != 2 or W.ndim != 2 or X.shape[1] != W.shape[1] or y.shape != X.shape[:1]:
        raise ValueError(f"need W (m, d), X (n, d), y (n,); got {tuple(W.shape)}, {tuple(X.shape)}, {tuple(y.shape)}")
    m, n = W.shape[0], X.shape[0]
    XW = X @ W.mT  # (n, m)
    r = XW.square().sum(-1) / m - y
    grad = (XW * r[:, None]).mT @ X / (m * n)
    return 0.25 * r.square().mean(), grad


def coefficients(W: Tensor, problem: PhaseRetrievalProblem) -> dict[str, float]:
    """``a = ||W theta*||`` (signal), ``b = ||W v||`` (spike), ``c = ||W P_perp||_F`` (bulk,
    ``P_perp`` projects out ``theta*`` and ``v``) and ``alignment = a / ||W||_F``.

    Example:
        >>> p = spiked_problem(4, 1.0)
        >>> W = torch.tensor([[3.0, 0.0, 4.0, 0.0]], dtype=torch.float64)
        >>> coefficients(W, p)
        {'a': 3.0, 'b': 0.0, 'c': 4.0, 'alignment': 0.6}
    """
    a, b, c, alignment = _coefficients(W, problem).tolist()
    return {"a": a, "b": b, "c": c, "alignment": alignment}


def _coefficients(W: Tensor, problem: PhaseRetrievalProblem) -> Tensor:
    """``(a, b, c, alignment)`` as one float64 tensor ``(4,)`` (few small ops: this runs every step)."""
    ab = (W @ torch.stack([problem.theta, problem.spike], 1)).square().sum(0)  # (a^2, b^2)
    total = W.square().sum()
    c2 = (total - ab.sum()).clamp_min(0.0)
    sq = torch.cat([ab, c2[None]]).sqrt()
    alignment = sq[:1] / total.sqrt().clamp_min(torch.finfo(DTYPE).tiny)
    return torch.cat([sq, alignment])


def linearized_kernel(problem: PhaseRetrievalProblem) -> Tensor:
    """``K = (theta*^T S theta*) S + 2 S theta* theta*^T S = E[y x x^T]``, ``(d, d)``: at small
    ``W``, ``grad L ~ -(1/m) W K``."""
    s_theta = problem.sigma @ problem.theta
    return problem.signal_variance * problem.sigma + 2 * torch.outer(s_theta, s_theta)


def gd_growth_factors(problem: PhaseRetrievalProblem, lr: float, m: int) -> dict[str, float]:
    """Per-step growth factors of ``a_k`` and ``b_k`` under GD at small ``W`` (eq. (4)):
    ``1 + (lr/m) theta*^T K theta*`` and ``1 + (lr/m) v^T K v``, and their ratio, the
    per-step growth of ``b_k / a_k``. Exact for the linearized dynamics when ``theta*`` and
    ``v`` are eigenvectors of ``Sigma`` (both problem families here).

    Example:
        >>> g = gd_growth_factors(spiked_problem(10, 20.0), lr=1.0, m=10)
        >>> round(g["signal"], 6), round(g["spike"], 6), round(g["ratio"], 6)
        (1.3, 3.1, 2.384615)
    """
    K = linearized_kernel(problem)
    signal = 1 + lr / m * float(problem.theta @ K @ problem.theta)
    spike = 1 + lr / m * float(problem.spike @ K @ problem.spike)
    return {"signal": signal, "spike": spike, "ratio": spike / signal}


def gd_stability_limit(problem: PhaseRetrievalProblem, m: int) -> float:
    """Largest stable GD step near a solution: ``m / max(3 s^2, s s_v)`` for
    ``s = theta*^T Sigma theta*`` and ``s_v = v^T Sigma v`` (the top variance orthogonal to
    ``theta*``), i.e. ``2 / (largest Hessian eigenvalue)`` at ``W* = u theta*^T``.

    Example:
        >>> round(gd_stability_limit(spiked_problem(10, 20.0), m=10), 6)  # 10 / 21
        0.47619
    """
    s, s_v = problem.signal_variance, problem.spike_variance
    return m / max(3 * s * s, s * s_v)


class _Stepper:
    """One method's update rule, holding its state (Muon's momentum buffer)."""

    def __init__(self, method: str, lr: float, momentum: float, nesterov: bool, ns_steps: int):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.method, self.lr, self.momentum, self.nesterov, self.ns_steps = method, lr, momentum, nesterov, ns_steps
        self.buf: Optional[Tensor] = None

    def __call__(self, W: Tensor, G: Tensor) -> Tensor:
        if self.method == "gd":
            return W - self.lr * G
        if self.method == "specgd":
            return W - self.lr * polar_svd(G)
        # Muon, with the conventions of specgrad.optim.Muon: EMA momentum, Nesterov,
        # Jordan's quintic Newton-Schulz (5 steps); shape scale sqrt(max(1, m/d)) = 1 for m <= d.
        beta = self.momentum
        self.buf = (1 - beta) * G if self.buf is None else beta * self.buf + (1 - beta) * G
        update = (1 - beta) * G + beta * self.buf if self.nesterov else self.buf
        scale = math.sqrt(max(1.0, W.shape[0] / W.shape[1]))
        return W - self.lr * scale * orthogonalize(update, "newton_schulz", self.ns_steps)


def train(
    problem: PhaseRetrievalProblem,
    method: str,
    lr: float,
    steps: int,
    *,
    m: int,
    init_scale: float = 1e-3,
    seed: int = 0,
    n_samples: int = 0,
    fresh_batches: bool = False,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    diverge_norm: float = 1e6,
    callback: Optional[Callable[[int], None]] = None,
) -> dict[str, list]:
    """Train ``W`` from ``init_student(m, d, init_scale, seed)`` for ``steps`` steps.

    Updates: ``"gd"`` ``W <- W - lr G``; ``"specgd"`` ``W <- W - lr polar(G)`` (exact SVD);
    ``"muon"`` ``W <- W - lr NS5(nesterov-EMA momentum of G)``. ``G`` is the exact population
    gradient when ``n_samples == 0``, else the gradient on ``n_samples`` fixed samples
    (drawn once) or, with ``fresh_batches``, on a fresh batch of ``n_samples`` every step.

    Returns per-step lists (``steps + 1`` entries, step 0 = initialization) of ``step``,
    ``a``, ``b``, ``c``, ``alignment`` and ``loss`` (always the exact population loss). A
    run whose ``||W||_F`` exceeds ``diverge_norm`` (or turns non-finite) is stopped and the
    remaining entries are NaN.
    """
    check_nonnegative_int(steps, "steps")
    check_nonnegative_int(n_samples, "n_samples")
    stepper = _Stepper(method, lr, momentum, nesterov, ns_steps)
    gen = torch.Generator().manual_seed(seed)
    W = init_student(m, problem.d, init_scale, gen)
    data_gen = torch.Generator().manual_seed(1_000_003 + seed)
    data = sample(problem, n_samples, data_gen) if n_samples and not fresh_batches else None
    keys = ("a", "b", "c", "alignment", "loss")
    rows = torch.full((steps + 1, len(keys)), math.nan, dtype=DTYPE)
    for k in range(steps + 1):
        if not math.isfinite(norm := float(W.norm())) or norm > diverge_norm:
            break  # diverged: the remaining rows stay NaN
        loss, G = population_loss_and_gradient(W, problem)
        rows[k, :4] = _coefficients(W, problem)
        rows[k, 4] = loss
        if k == steps:
            break
        if n_samples:
            X, y = sample(problem, n_samples, data_gen) if fresh_batches else data
            G = empirical_loss_and_gradient(W, X, y)[1]
        W = stepper(W, G)
        if callback is not None:
            callback(k)
    out: dict[str, list] = {"step": list(range(steps + 1))}
    for i, key in enumerate(keys):
        out[key] = rows[:, i].tolist()
    return out
