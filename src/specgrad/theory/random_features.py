"""Random-feature least squares (Davis & Drusvyatskiy, arXiv 2512.04299): activations, their
spike bounds, the problem and its two majorization steps, and GD's gradients in closed form.

For a block ``W`` ``(k, k)`` fed by features ``A = sigma(V X)`` ``(k, n)`` and the loss
``f(W) = (1/2n) ||W A - Y||_F^2``, the Euclidean step ``W - (n / ||A||_op^2) G`` and the
spectral step ``W - (n / ||A||_F^2) ||G||_* polar(G)`` guarantee decreases
``||G||_F^2 / (2 L_F)`` and ``||G||_*^2 / (2 L_op)`` (:mod:`specgrad.linalg.majorization`): the
spectral step wins when ``nr(G) > st(A)``. The mean of ``sigma(W X)`` at a Gaussian init is a
rank-one spike, so post-activations have a low stable rank, at most about
:func:`spike_bound`.

Example:
    >>> prob = random_feature_problem(dim=8, feature_dim=4, samples=32, activation="relu", seed=0)
    >>> W = torch.zeros(8, 8, dtype=torch.float64)
    >>> f0, G = prob.loss_and_gradient(W)
    >>> f1, _ = prob.loss_and_gradient(prob.step(W, G, "spectral"))
    >>> f1 < f0, prob.stable_rank < spike_bound("relu")
    (True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import scipy.integrate
import torch
import torch.nn.functional as F
from torch import Tensor

from ..linalg import least_squares_smoothness, majorization_step, matrix_norms, stable_rank

ACTIVATIONS = ("abs", "relu", "leaky_relu", "relu2", "gelu", "tanh", "swiglu")
LEAKY_SLOPES = (1.0, 0.1)  # default (q, p): slope q for t > 0, p for t < 0


def post_activation(name: str, Z: Tensor, Z2: Optional[Tensor] = None,
                    leaky: tuple[float, float] = LEAKY_SLOPES) -> Tensor:  # fmt: skip
    """``sigma(Z)`` elementwise; ``"swiglu"`` is ``silu(Z) * Z2`` (``Z2`` the up projection).

    Example:
        >>> post_activation("relu2", torch.tensor([-1.0, 2.0])).tolist()
        [0.0, 4.0]
    """
    if name == "abs":
        return Z.abs()
    if name == "relu":
        return F.relu(Z)
    if name == "leaky_relu":
        q, p = leaky
        return torch.where(Z > 0, q * Z, p * Z)
    if name == "relu2":
        return F.relu(Z).square()
    if name == "gelu":
        return F.gelu(Z)
    if name == "tanh":
        return torch.tanh(Z)
    if name == "swiglu":
        if Z2 is None:
            raise ValueError("swiglu needs the second pre-activation Z2")
        return F.silu(Z) * Z2
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def scalar_activation(name: str, leaky: tuple[float, float] = LEAKY_SLOPES) -> Callable[[float], float]:
    """``sigma`` on Python floats, for quadrature (every activation but ``"swiglu"``).

    Example:
        >>> scalar_activation("leaky_relu")(-2.0)
        -0.2
    """
    q, p = leaky
    table = {
        "abs": abs,
        "relu": lambda t: max(t, 0.0),
        "leaky_relu": lambda t: q * t if t > 0 else p * t,
        "relu2": lambda t: max(t, 0.0) ** 2,
        "gelu": lambda t: 0.5 * t * (1.0 + math.erf(t / math.sqrt(2.0))),
        "tanh": math.tanh,
    }
    if name not in table:
        raise ValueError(f"no scalar form of {name!r}; choose one of {tuple(table)}")
    return table[name]


def gaussian_moments(fn: Callable[[float], float]) -> tuple[float, float]:
    """``(E fn(g), E fn(g)^2)`` for ``g ~ N(0, 1)`` by adaptive quadrature (kinks at 0 are
    handled by splitting the line there).

    Example:
        >>> [round(v, 10) for v in gaussian_moments(lambda t: max(t, 0.0))]  # 1/sqrt(2 pi), 1/2
        [0.3989422804, 0.5]
    """
    pdf = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    out = []
    for k in (1, 2):
        f = lambda t: fn(t) ** k * pdf(t)  # noqa: E731
        out.append(scipy.integrate.quad(f, -math.inf, 0.0, epsabs=1e-13, epsrel=1e-12)[0]
                   + scipy.integrate.quad(f, 0.0, math.inf, epsabs=1e-13, epsrel=1e-12)[0])  # fmt: skip
    return out[0], out[1]


def spike_bound(name: str, leaky: tuple[float, float] = LEAKY_SLOPES) -> float:
    """``B(sigma) = E[sigma(g)^2] / E[sigma(g)]^2 = 1 + Var sigma(g) / (E sigma(g))^2``, ``g ~ N(0,1)``.

    The mean of ``sigma(W X)`` is a rank-one spike ``E[sigma(g)] 1 1^T``, so
    ``||A||_op^2 >= (1^T A 1)^2 / (m n) ~ m n E[sigma]^2`` while ``||A||_F^2 ~ m n E[sigma^2]``:
    ``st(A) <= B(sigma) (1 + o(1))``. Closed forms (the paper's numbers): ``pi/2`` for
    ``|t|``, ``pi`` for ReLU, ``pi (q^2 + p^2) / (q - p)^2`` for leaky ReLU with slopes ``q``
    (``t > 0``) and ``p`` (``t < 0``), ``6`` for squared ReLU; GELU by quadrature; ``inf`` for
    zero-mean activations (tanh, SwiGLU with independent gate and up projections).

    Example:
        >>> round(spike_bound("relu"), 6), spike_bound("relu2"), spike_bound("swiglu")
        (3.141593, 6.0, inf)
    """
    q, p = leaky
    if name == "abs":
        return math.pi / 2
    if name == "relu":
        return math.pi
    if name == "leaky_relu":
        return math.pi * (q * q + p * p) / (q - p) ** 2 if q != p else math.inf
    if name == "relu2":
        return 6.0
    if name in ("tanh", "swiglu"):
        return math.inf
    if name == "gelu":
        mean, second = gaussian_moments(scalar_activation(name, leaky))
        return second / mean**2
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def spike_bound_at_scale(name: str, variance: float, leaky: tuple[float, float] = LEAKY_SLOPES) -> float:
    """``E[sigma(z)^2] / E[sigma(z)]^2`` for ``z ~ N(0, variance)``: the spike bound of a layer
    whose pre-activations have that variance (a plain deep net's layers drift away from
    variance 1). Equal to :func:`spike_bound` for positively homogeneous activations (``|t|``,
    ReLU, leaky ReLU, ReLU^2); for GELU it grows like ``pi / (2 variance)`` as the variance
    goes to 0 (GELU is then nearly linear, ``E gelu(z) ~ variance / sqrt(2 pi)``).

    Example:
        >>> round(spike_bound_at_scale("relu", 0.01), 6), round(spike_bound_at_scale("gelu", 1.0), 4)
        (3.141593, 5.3435)
    """
    if not variance > 0:
        raise ValueError(f"variance must be positive, got {variance}")
    if name in ("abs", "relu", "leaky_relu", "relu2") or not math.isfinite(spike_bound(name, leaky)):
        return spike_bound(name, leaky)
    fn, s = scalar_activation(name, leaky), math.sqrt(variance)
    mean, second = gaussian_moments(lambda t: fn(s * t))
    return second / mean**2


@dataclass(frozen=True)
class RandomFeatureProblem:
    """``min_W (1/2n) ||W A - Y||_F^2`` for features ``A`` ``(k, n)`` and targets ``Y = W# A``
    ``(k, n)``, float64, with its optimum ``f_star`` and the squared norms of ``A``."""

    A: Tensor
    Y: Tensor
    f_star: float
    op_sq: float  # ||A||_op^2
    fro_sq: float  # ||A||_F^2
    stable_rank: float  # st(A)

    @property
    def samples(self) -> int:
        return self.A.shape[1]

    def loss_and_gradient(self, W: Tensor) -> tuple[float, Tensor]:
        """``(1/2n) ||W A - Y||_F^2`` and its gradient ``(1/n) (W A - Y) A^T``."""
        n = self.samples
        R = W @ self.A - self.Y
        return float(0.5 / n * R.square().sum()), R @ self.A.T / n

    def step(self, W: Tensor, G: Tensor, norm: str, lr: float = 1.0) -> Tensor:
        """``W - lr D`` for the majorization step ``D`` of the loss in ``norm``: ``"frobenius"``
        is GD's ``(n / ||A||_op^2) G``, ``"spectral"`` SpecGD's ``(n / ||A||_F^2) ||G||_* polar(G)``."""
        L_F, L_op = least_squares_smoothness(self.fro_sq, self.op_sq, self.samples)
        return W - lr * majorization_step(G, L_F if norm == "frobenius" else L_op, norm)


def least_squares_problem(A: Tensor, Y: Tensor) -> RandomFeatureProblem:
    """The problem of features ``A`` ``(k, n)`` and targets ``Y`` ``(k', n)``: its optimum by
    lstsq and the norms of ``A``."""
    W_star = torch.linalg.lstsq(A.T, Y.T, driver="gelsd").solution.T
    f_star = float(0.5 / A.shape[1] * (W_star @ A - Y).square().sum())
    norms = matrix_norms(A)
    return RandomFeatureProblem(A, Y, f_star, float(norms.operator) ** 2, float(norms.frobenius) ** 2,
                                float(stable_rank(A)))  # fmt: skip


def random_feature_problem(dim: int, feature_dim: int, samples: int, activation: str, seed: int) -> RandomFeatureProblem:
    """``A = sigma(V X)`` (or ``silu(V1 X) * (V2 X)``) with ``X`` ``(feature_dim, samples)``
    standard Gaussian and ``V`` ``(dim, feature_dim)`` with ``N(0, 1/feature_dim)`` entries;
    ``Y = W# A`` for ``W#`` ``(dim, dim)`` with ``N(0, 1/dim)`` entries. Everything float64,
    drawn from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    X = torch.randn(feature_dim, samples, generator=g, dtype=dt)
    V = torch.randn(dim, feature_dim, generator=g, dtype=dt) / math.sqrt(feature_dim)
    if activation == "swiglu":
        V2 = torch.randn(dim, feature_dim, generator=g, dtype=dt) / math.sqrt(feature_dim)
        A = post_activation("swiglu", V @ X, V2 @ X)
    else:
        A = post_activation(activation, V @ X)
    W_sharp = torch.randn(dim, dim, generator=g, dtype=dt) / math.sqrt(dim)
    return least_squares_problem(A, W_sharp @ A)


def teacher_student_features(dim: int, feature_dim: int, samples: int, activation: str,
                             generator: torch.Generator) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The authors' "Model 2": student features ``A = sigma(V_s X)`` ``(dim, samples)`` and targets
    ``Y = W_t sigma(V_t X)`` from an independent teacher (``V_s``, ``V_t`` ``(dim, feature_dim)``
    with ``N(0, 1/feature_dim)`` entries, ``W_t`` ``(dim, dim)`` with ``N(0, 1/dim)``), drawn in
    the order ``X, V_s, V_t, W_t``; not realizable (``f* > 0``). ``activation`` is not SwiGLU.

    Example:
        >>> A, Y = teacher_student_features(6, 3, 10, "relu", torch.Generator().manual_seed(0))
        >>> A.shape, Y.shape, bool((A >= 0).all())
        (torch.Size([6, 10]), torch.Size([6, 10]), True)
    """
    dt = torch.float64
    X = torch.randn(feature_dim, samples, generator=generator, dtype=dt)
    V_s = torch.randn(dim, feature_dim, generator=generator, dtype=dt) / math.sqrt(feature_dim)
    V_t = torch.randn(dim, feature_dim, generator=generator, dtype=dt) / math.sqrt(feature_dim)
    W_t = torch.randn(dim, dim, generator=generator, dtype=dt) / math.sqrt(dim)
    return post_activation(activation, V_s @ X), W_t @ post_activation(activation, V_t @ X)


def rotated_gd_gradients_for_targets(A: Tensor, Y: Tensor, steps: Sequence[int]) -> list[Tensor]:
    """``G_t U`` (as :func:`rotated_gd_gradients`) for any targets ``Y`` ``(k', n)``, realizable
    or not: with ``S = A A^T / n = U diag(lam) U^T`` and ``B = Y A^T / n``, GD from zero with
    step ``1/lam_max`` has ``G_{t+1} = G_t (I - eta S)``, so ``G_t U = -(B U) diag((1 - eta lam)^t)``
    (returned without the sign).

    Example:
        >>> A = torch.eye(3, dtype=torch.float64) * 2
        >>> [float(G.abs().max()) for G in rotated_gd_gradients_for_targets(A, torch.ones(2, 3, dtype=torch.float64), [0, 1])]
        [0.6666666666666666, 0.0]
    """
    n = A.shape[1]
    lam, U = torch.linalg.eigh(A @ A.T / n)
    lam = lam.clamp_min(0)
    eta = 1.0 / float(lam.max())
    BU = (Y @ A.T / n) @ U
    return [BU * (1 - eta * lam) ** t for t in steps]


def rotated_gd_gradients(A: Tensor, W_sharp: Tensor, steps: Sequence[int]) -> list[Tensor]:
    """``G_t U`` at each ``t`` in ``steps``: the GD gradient of ``min (1/2n) ||W A - W# A||^2``
    from ``W_0 = 0`` with step ``n / ||A||_op^2``, in closed form, times the orthogonal matrix
    ``U`` below; it has ``G_t``'s singular values, so every rank and norm of ``G_t``.

    With ``S = A A^T / n = U diag(lam) U^T`` and ``eta = 1/lam_max``: ``W_t - W# = -W# (I - eta S)^t``
    and ``G_t = (W_t - W#) S = -W# U diag((1 - eta lam)^t lam) U^T``, so
    ``G_t U = -(W# U) diag((1 - eta lam)^t lam)`` (returned without the sign). Exact in exact
    arithmetic (the tests compare it with the iteration), and one ``k x k`` product per
    recorded step instead of a GD run.

    Example:
        >>> A = torch.eye(3, dtype=torch.float64) * 2
        >>> G1 = rotated_gd_gradients(A, torch.eye(3, dtype=torch.float64), [0, 1])[1]
        >>> float(G1.abs().max())  # S = (4/3) I, eta = 3/4: one step solves the problem
        0.0
    """
    n = A.shape[1]
    lam, U = torch.linalg.eigh(A @ A.T / n)
    lam = lam.clamp_min(0)
    eta = 1.0 / float(lam.max())
    WU = W_sharp @ U
    return [WU * ((1 - eta * lam) ** t * lam) for t in steps]
