r"""The isotropic curvature model of one update step (Su, arXiv 2511.00674).

One step ``W <- W - Q`` on a weight ``W`` of shape ``(m, n)`` with gradient ``G`` is modelled by
the convex program::

    min_Q  -tr(Q G^T) + E_{zeta ~ Unif(S^{n-1})} H(||Q zeta||)                    (1)

for a convex, nondecreasing radial curvature function ``H`` (``H(r)`` is the loss change
beyond first order along a direction of length ``r``).

Reduction to the spectrum. Write ``G = U diag(s) V^T`` (thin SVD, ``k = min(m, n)`` values).
The objective is invariant under ``Q -> A Q B^T`` for orthogonal ``A, B`` fixing ``G``, and convex,
so some optimum is aligned, ``Q = U diag(q) V^T`` (``tests/test_curvature.py`` checks this by a
general-``Q`` autograd solve). For aligned ``Q``, ``xi = V_full^T zeta`` is again uniform on
``S^{n-1}`` and::

    ||Q zeta||^2 = sum_i q_i^2 w_i,   w = (xi_1^2, ..., xi_n^2) ~ Dirichlet(1/2, ..., 1/2)

so (1) becomes a problem in ``q in R^k_{>=0}`` alone::

    f(q) = -sum_i s_i q_i + E H(r),   r = sqrt(sum_{i<=k} q_i^2 w_i)              (2)
    d f / d q_i = -s_i + q_i E[phi(r) w_i],   phi(r) = H'(r) / r                  (3)

Exact sphere moments. With ``w_i = g_i^2 / |g|^2`` for ``g ~ N(0, I_n)`` and ``|g|`` independent
of ``w``, ``E[(sum a_i g_i^2)^j] = E[|g|^{2j}] E[(sum a_i w_i)^j]``; the left side is the
``j``-th moment of a weighted chi-square, whose cumulants are ``kappa_l = 2^(l-1) (l-1)! sum a^l``,
and ``E|g|^{2j} = n (n+2) ... (n+2j-2)``. Hence, with ``a = q^2``::

    E r^2 = sum q^2 / n,    E r^4 = ((sum q^2)^2 + 2 sum q^4) / (n (n+2))          (4)

and every even polynomial ``H(r) = sum_j c_j r^(2j)`` has an exact objective.

Closed forms. Quadratic ``H = c r^2``: (3) gives ``q = n s / (2c)``, a scaled gradient.
Quartic ``H = c r^4``: by (4), ``d/dq_i E r^4 = (4 q_i sum q^2 + 8 q_i^3) / (n(n+2))``, so::

    q_i^3 + D q_i = n (n+2) s_i / (8 c),   D = (1/2) sum_j q_j^2                    (5)

For super-quadratic ``H`` the optimum keeps the order of ``s`` and homogenizes it,
``q_i / q_j <= s_i / s_j`` for ``s_i >= s_j``: (3) reads ``s_i = q_i E[phi(r) w_i]`` with ``phi``
nondecreasing, and a larger ``q_i`` tilts ``w_i`` toward larger ``r``. With a kink (left slope
``a``, right slope ``b``) at ``r0`` and ``m >= n``, ``q = r0 1`` makes ``r = r0`` for every ``zeta``
(``sum w = 1``), and the optimum is ``r0 U V^T`` once ``b`` is large enough: orthogonalization.

Non-polynomial ``H`` (:mod:`.sphere`): non-integer powers ``c r^p`` have one-dimensional
Laplace-integral forms; any other part ``h`` (a softplus kink, a user callable) is
``E h(r) = h(r_lo) + int P(r^2 > t) d h(sqrt t)``, with the law of ``r^2`` (a ratio of Gaussian
quadratic forms) from Imhof's inversion formula: a deterministic two-dimensional quadrature.
Its error is controlled by re-evaluating the gradient at the solution on a finer rule
(``Solution.grad_se``). A seeded Monte Carlo sample of ``N`` Dirichlet vectors is kept as an
option (``expectation="monte-carlo"``, or ``weights``): the same sample for every ``q``, so the
sampled objective is a deterministic convex function; ``grad_se`` is then the standard error
of ``q_i E[phi(r) w_i]`` at the solution relative to ``max s``.

Conventions: numpy float64; ``s`` is ``(k,)`` nonnegative (any order); ``n >= k`` is the
dimension of ``zeta`` (the in-features of an ``nn.Linear`` weight ``(out, in)`` with ``out >= in``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from scipy.optimize import brentq, minimize, minimize_scalar
from torch import Tensor

from .sphere import (dirichlet_sample, moments_with_gradient, positive_part, power_expectation, radial_expectation,
                     sphere_moments)

__all__ = ["Curvature", "quadratic", "power", "quadratic_quartic", "quadratic_power", "smoothed_kink", "hard_kink",
           "custom", "kink", "sphere_moments", "dirichlet_sample", "ReducedProgram", "Solution", "solve",
           "ray_start", "quartic_fixed_point", "kink_descent", "order_violations", "max_pair_ratio",
           "homogenization_ratio",
           "general_objective"]  # fmt: skip


Array = np.ndarray


# --------------------------------------------------------------------------------------
# curvature functions


@dataclass(frozen=True)
class Curvature:
    """A radial curvature function ``H(r) = sum_j poly[j-1] r^(2j) + sum c r^p + rest(r)``, ``r >= 0``.

    ``poly`` holds the coefficients of the even-polynomial part (exact sphere moments);
    ``powers`` pairs ``(c, p)`` of non-even powers ``c r^p`` (one-dimensional integrals);
    ``rest`` / ``rest_dh`` any remaining part and its derivative (numpy ufunc-like callables, a
    two-dimensional quadrature), or ``None``; ``rest_floor`` a radius below which ``rest' = 0``
    to working precision and ``rest_breaks`` radii where ``rest'`` changes fast (both only
    guide the quadrature). ``H`` should be convex and nondecreasing on ``[0, inf)`` for (2) to be
    convex. Build one with :func:`quadratic`, :func:`power`, :func:`quadratic_quartic`,
    :func:`quadratic_power`, :func:`smoothed_kink`, :func:`hard_kink` or :func:`custom`.

    Example:
        >>> H = quadratic_quartic(1.0, 0.5)
        >>> float(H(np.array(2.0))), H.exact
        (12.0, True)
    """

    name: str
    poly: tuple[float, ...] = ()
    rest: Optional[Callable[[Array], Array]] = None
    rest_dh: Optional[Callable[[Array], Array]] = None
    params: dict = field(default_factory=dict)
    max_radius: Optional[float] = None  # H = +inf beyond it (a hard kink): a bound q_i <= max_radius
    control_variate: bool = True  # Monte Carlo: sample only H minus a fitted b1 r^2 + b2 r^4 (off for kinks)
    powers: tuple[tuple[float, float], ...] = ()
    rest_floor: float = 0.0
    rest_breaks: tuple[float, ...] = ()

    @property
    def exact(self) -> bool:
        """Whether ``H`` is an even polynomial (closed-form objective)."""
        return self.rest is None and not self.powers

    def sampled(self, r) -> Array:
        """The part of ``H`` that is not an even polynomial."""
        r = np.asarray(r, dtype=np.float64)
        out = sum(c * r**p for c, p in self.powers) + np.zeros_like(r)
        return out + self.rest(r) if self.rest is not None else out

    def sampled_dh(self, r) -> Array:
        """Derivative of :meth:`sampled`."""
        r = np.asarray(r, dtype=np.float64)
        out = sum(c * p * r ** (p - 1) for c, p in self.powers) + np.zeros_like(r)
        return out + self.rest_dh(r) if self.rest is not None else out

    def __call__(self, r) -> Array:
        r = np.asarray(r, dtype=np.float64)
        return sum(c * r ** (2 * (j + 1)) for j, c in enumerate(self.poly)) + self.sampled(r)

    def derivative(self, r) -> Array:
        """``H'(r)``."""
        r = np.asarray(r, dtype=np.float64)
        return sum(2 * (j + 1) * c * r ** (2 * j + 1) for j, c in enumerate(self.poly)) + self.sampled_dh(r)


def _check_pos(name: str, value, strict: bool = True) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if strict else value < 0):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {value!r}")
    return float(value)


def quadratic(c: float = 1.0) -> Curvature:
    """``H(r) = c r^2``: the optimum is the scaled gradient ``q = n s / (2c)``."""
    c = _check_pos("c", c)
    return Curvature(f"quadratic c={c:g}", (c,), params={"c": c})


def power(p: float, c: float = 1.0) -> Curvature:
    """``H(r) = c r^p``, ``p >= 2`` (exact moments when ``p`` is an even integer).

    Example:
        >>> power(4.0).poly, power(2.5).exact
        ((0.0, 1.0), False)
    """
    c = _check_pos("c", c)
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 2):
        raise ValueError(f"p must be a finite number >= 2, got {p!r}")
    p = float(p)
    name = f"power p={p:g}"
    if p == round(p) and int(p) % 2 == 0:
        return Curvature(name, tuple([0.0] * (int(p) // 2 - 1) + [c]), params={"c": c, "p": p})
    return Curvature(name, (), params={"c": c, "p": p}, powers=((c, p),))


def quadratic_quartic(c2: float, c4: float) -> Curvature:
    """``H(r) = c2 r^2 + c4 r^4``: quadratic near zero, quartic further out."""
    c2, c4 = _check_pos("c2", c2, False), _check_pos("c4", c4, False)
    return Curvature(f"quad+quartic c2={c2:g} c4={c4:g}", (c2, c4), params={"c2": c2, "c4": c4})


def quadratic_power(c2: float, cp: float, p: float) -> Curvature:
    """``H(r) = c2 r^2 + cp r^p`` (``p > 2``): the shape fitted to measured curvature.
    The quadratic part is exact, the power part sampled unless ``p`` is an even integer."""
    c2 = _check_pos("c2", c2, False)
    cp = _check_pos("cp", cp, False)
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p > 2):
        raise ValueError(f"p must be a finite number > 2, got {p!r}")
    p = float(p)
    name = f"quad+power c2={c2:.3g} cp={cp:.3g} p={p:.3g}"
    params = {"c2": c2, "cp": cp, "p": p}
    if p == round(p) and int(p) % 2 == 0:
        poly = [c2] + [0.0] * (int(p) // 2 - 1)
        poly[-1] += cp
        return Curvature(name, tuple(poly), params=params)
    return Curvature(name, (c2,), params=params, powers=((cp, p),))


def smoothed_kink(radius: float = 1.0, left: float = 0.0, right: float = 100.0, width: float = 1e-3) -> Curvature:
    """Slope ``left`` below ``radius``, ``right`` above, joined by a softplus of ``width``:
    ``H(r) = left r + (right - left) width softplus((r - radius) / width)``."""
    radius, width = _check_pos("radius", radius), _check_pos("width", width)
    left, right = _check_pos("left", left, False), _check_pos("right", right)
    if right <= left:
        raise ValueError(f"right slope must exceed the left one, got left={left!r}, right={right!r}")

    jump = right - left

    def h(r):
        return jump * width * np.logaddexp(0.0, (r - radius) / width)

    def dh(r):
        z = (r - radius) / width
        return jump * np.exp(-np.logaddexp(0.0, -z))  # sigmoid, overflow-free

    name = f"kink r0={radius:g} slopes {left:g}/{right:g}"
    params = {"radius": radius, "left": left, "right": right, "width": width}
    # softplus(-36) = 2e-16: below radius - 36 width the softplus part is flat
    return Curvature(name, (), h, dh, params=params, control_variate=False, powers=((left, 1.0),) if left else (),
                     rest_floor=max(radius - 36 * width, 0.0),
                     rest_breaks=tuple(radius + width * j for j in range(-36, 37, 4)))  # fmt: skip


def kink(radius: float = 1.0, left: float = 0.0, right: float = 100.0) -> Curvature:
    """The kink itself: slope ``left`` below ``radius``, ``right`` above,
    ``H(r) = left r + (right - left) max(r - radius, 0)`` (the theorem's assumption, finite slopes).

    Example:
        >>> H = kink(1.0, 0.5, 10.0)
        >>> [float(H(np.array(r))) for r in (0.5, 2.0)]
        [0.25, 10.5]
    """
    radius = _check_pos("radius", radius)
    left, right = _check_pos("left", left, False), _check_pos("right", right)
    if right <= left:
        raise ValueError(f"right slope must exceed the left one, got left={left!r}, right={right!r}")
    jump = right - left

    def h(r):
        return jump * np.maximum(r - radius, 0.0)

    def dh(r):
        return np.where(r > radius, jump, 0.0)

    name = f"kink r0={radius:g} slopes {left:g}/{right:g}"
    return Curvature(name, (), h, dh, params={"radius": radius, "left": left, "right": right}, control_variate=False,
                     powers=((left, 1.0),) if left else (), rest_floor=radius, rest_breaks=(radius,))  # fmt: skip


def hard_kink(radius: float = 1.0, left: float = 0.0) -> Curvature:
    """The sharp limit of :func:`smoothed_kink`: ``H(r) = left r`` for ``r <= radius`` and ``+inf``
    beyond. Then ``E H(||Q zeta||) < inf`` iff ``||Q||_op <= radius``, so (2) gets the bounds
    ``0 <= q_i <= radius``; with ``left = 0`` the optimum is ``radius U V^T``."""
    radius, left = _check_pos("radius", radius), _check_pos("left", left, False)
    name = f"hard kink r0={radius:g} left {left:g}"
    if left == 0:
        return Curvature(name, (), params={"radius": radius, "left": 0.0}, max_radius=radius)
    return Curvature(name, (), params={"radius": radius, "left": left}, max_radius=radius, control_variate=False,
                     powers=((left, 1.0),))  # fmt: skip


def custom(h: Callable[[Array], Array], dh: Callable[[Array], Array], name: str = "custom") -> Curvature:
    """Any ``H`` (convex, nondecreasing) given with its derivative; its expectation by the
    two-dimensional quadrature (or Monte Carlo)."""
    if not (callable(h) and callable(dh)):
        raise ValueError("h and dh must be callables on numpy arrays")
    return Curvature(name, (), h, dh)


# --------------------------------------------------------------------------------------
# the reduced program


class ReducedProgram:
    """Objective (2) and gradient (3) for one spectrum: exact moments for the even-polynomial
    part of ``H``; the rest by quadrature (``expectation="quadrature"``, :mod:`.sphere`) or
    averaged over a fixed Dirichlet sample (``"monte-carlo"``, or when ``weights`` are given).
    ``points`` and ``h`` set the two-dimensional quadrature's resolution."""

    def __init__(self, s: Array, H: Curvature, n: int, samples: int = 4096, seed: int = 0,
                 weights: Optional[Array] = None, expectation: str = "quadrature", points: int = 10,
                 h: float = 0.25):  # fmt: skip
        if expectation not in ("quadrature", "monte-carlo"):
            raise ValueError(f"expectation must be 'quadrature' or 'monte-carlo', got {expectation!r}")
        self.s, self.H, self.n = s, H, n
        self.k = s.shape[0]
        self.w = None
        self.points, self.h = points, h
        self.cv = np.zeros(2)  # control variate b1 r^2 + b2 r^4 (exact moments) taken out of the sample
        self.quadrature = not H.exact and weights is None and expectation == "quadrature"
        if not H.exact and not self.quadrature:
            w = dirichlet_sample(n, samples, seed) if weights is None else weights
            self.w = np.ascontiguousarray(w[:, : self.k])

    def fit_control_variate(self, q: Array) -> None:
        """Least-squares ``b1 r^2 + b2 r^4`` to the sampled part of ``H`` at ``q``: the sample then
        only averages the small remainder (the sampled objective stays an unbiased estimate
        for any fixed ``b``)."""
        if self.w is None or not self.H.control_variate or not np.any(q > 0):
            return
        r2 = self.w @ (q * q)
        basis = np.stack([r2 - r2.mean(), r2**2 - (r2**2).mean()], 1)
        y = self.H.sampled(np.sqrt(r2))
        self.cv = np.linalg.lstsq(basis, y - y.mean(), rcond=None)[0]

    def value_grad(self, q: Array, grad: bool = True) -> tuple[float, Array]:
        # line searches may probe huge q: overflow then gives inf, which they step back from
        with np.errstate(over="ignore", invalid="ignore"):
            return self._value_grad(q, grad)

    def value(self, q: Array) -> float:
        return self.value_grad(q, grad=False)[0]

    def _value_grad(self, q: Array, need_grad: bool = True) -> tuple[float, Array]:
        val = -float(self.s @ q)
        grad = -self.s.copy()
        c = np.zeros(max(len(self.H.poly), 2 if self.w is not None else 0))
        c[: len(self.H.poly)] += self.H.poly
        if self.w is not None:
            c[:2] += self.cv
        if c.size:
            mom, dmom = moments_with_gradient(q * q, self.n, c.size)
            val += float(c @ mom)
            grad += (c @ dmom) * 2 * q
        if self.quadrature:
            v, g = self._quadrature(q, self.points, self.h, need_grad)
            val += v
            grad += g
        if self.w is not None:
            r2 = self.w @ (q * q)
            r = np.sqrt(r2)
            val += float(np.mean(self.H.sampled(r) - self.cv[0] * r2 - self.cv[1] * r2 * r2))
            phi = self._phi(r) - 2 * self.cv[0] - 4 * self.cv[1] * r2
            grad += q * (phi @ self.w) / self.w.shape[0]
        return val, grad

    def _quadrature(self, q: Array, points: int, h: float, need_grad: bool = True) -> tuple[float, Array]:
        """``E`` of the non-polynomial part of ``H`` and its gradient in ``q``."""
        a = q * q
        val, ga = 0.0, np.zeros(self.k)
        for c, p in self.H.powers:
            v, g = power_expectation(a, self.n, p / 2)
            val, ga = val + c * v, ga + c * g
        H = self.H
        if H.rest is not None:
            def dG(t):
                r = np.sqrt(t)
                return H.rest_dh(r) / (2 * np.maximum(r, 1e-300))

            v, g = radial_expectation(a, self.n, dG, float(H.rest(np.array(H.rest_floor))), t_lo=H.rest_floor**2,
                                      breaks=[b * b for b in H.rest_breaks if b > 0], points=points, h=h,
                                      grad=need_grad)  # fmt: skip
            val, ga = val + v, ga + g
        return val, 2 * q * ga

    def _phi(self, r: Array) -> Array:
        """``H_sampled'(r) / r``; at ``r = 0`` a one-sided difference quotient."""
        tiny = 1e-300
        safe = np.maximum(r, tiny)
        return self.H.sampled_dh(safe) / safe

    def expectation_error(self, q: Array) -> Array:
        """Per-coordinate error of the expectation's part of the gradient at ``q``: the Monte Carlo
        standard error of ``q_i E[phi(r) w_i]``, or for the quadrature the change of the gradient
        on a rule with twice the nodes per panel and half the inner step; zeros when exact."""
        if self.quadrature:
            with np.errstate(over="ignore", invalid="ignore"):
                return np.abs(self._quadrature(q, 2 * self.points, self.h / 2)[1] - self._quadrature(q, self.points,
                                                                                                     self.h)[1])
        if self.w is None:
            return np.zeros(self.k)
        r2 = self.w @ (q * q)
        phi = self._phi(np.sqrt(r2)) - 2 * self.cv[0] - 4 * self.cv[1] * r2
        terms = phi[:, None] * self.w * q[None, :]
        return terms.std(0, ddof=1) / math.sqrt(self.w.shape[0])

    mc_standard_error = expectation_error


@dataclass
class Solution:
    """Optimal singular values ``q`` ``(k,)`` (order of the input ``s``), the objective, the
    largest stationarity residual ``max_i |df/dq_i|`` over active coordinates relative to
    ``max s``, the error of the expectation's part of that gradient ``grad_se`` (relative to
    ``max s``: the Monte Carlo standard error, or the quadrature's change on a finer rule; 0
    when exact), and the evaluation method (``"exact"``, ``"quadrature"`` or ``"monte-carlo N=..."``)."""

    q: Array
    objective: float
    residual: float
    grad_se: float
    method: str
    iterations: int


def _check_spectrum(s, n: Optional[int]) -> tuple[Array, int]:
    s = np.asarray(s.detach().cpu().double() if isinstance(s, Tensor) else s, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"s must be a nonempty 1-d array of finite values >= 0, got {s!r}")
    n = s.size if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < s.size:
        raise ValueError(f"n must be an integer >= len(s) = {s.size}, got {n!r}")
    return s, int(n)


def solve(
    s,
    H: Curvature,
    n: Optional[int] = None,
    *,
    samples: int = 4096,
    seed: int = 0,
    x0: Optional[Array] = None,
    tol: float = 1e-12,
    weights: Optional[Array] = None,
    expectation: str = "quadrature",
    maxiter: int = 5000,
) -> Solution:
    """Optimal singular values ``s*`` of (1) for a gradient with singular values ``s``.

    Args:
        s: ``(k,)`` singular values of ``G`` (any order, ``>= 0``), numpy or torch.
        H: the curvature function.
        n: dimension of ``zeta`` (columns of ``G``), ``>= k``; default ``k`` (``m >= n``).
        expectation: ``"quadrature"`` (deterministic, :mod:`.sphere`) or ``"monte-carlo"`` for the
            part of ``H`` that is not an even polynomial.
        samples, seed: the Monte Carlo sample (``weights``, ``(N, >= k)`` Dirichlet rows, replaces
            it when given, and selects Monte Carlo).
        x0: a starting point (e.g. the previous step's solution); default: the best multiple of ``s``.
        tol: projected-gradient tolerance relative to ``max s``; ``maxiter``: L-BFGS-B iterations.

    Returns:
        A :class:`Solution`; ``solution.q`` is ``s*`` in the order of ``s``.

    Example:
        >>> sol = solve(np.array([3.0, 1.0]), quadratic(2.0), n=2)
        >>> np.round(sol.q, 6).tolist()  # n s / (2c)
        [1.5, 0.5]
    """
    s, n = _check_spectrum(s, n)
    k = s.size
    smax = float(s.max())
    if smax == 0:
        return Solution(np.zeros(k), 0.0, 0.0, 0.0, "zero gradient", 0)
    prog = ReducedProgram(s, H, n, samples, seed, weights, expectation)
    if x0 is None or np.asarray(x0).shape != (k,) or not np.all(np.isfinite(x0)):
        # two rays: along s (right for near-quadratic H) and along (1, ..., 1) (right near a kink)
        starts = [ray_start(prog, s), ray_start(prog, np.where(s > 0, smax, 0.0))]
    else:
        starts = [np.asarray(x0, dtype=np.float64)]
    hi = H.max_radius
    starts = [np.clip(x, 0.0, hi) for x in starts]
    bounds = [(0.0, hi)] * k
    opts = {"maxiter": maxiter, "maxcor": 30, "ftol": 1e-16, "gtol": tol * smax}
    res = None
    for start in starts:
        prog.fit_control_variate(start)
        r = minimize(prog.value_grad, start, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
        if res is None or r.fun < res.fun:
            res, cv = r, prog.cv
    prog.cv = cv
    if prog.w is not None:  # refit the control variate at the solution and polish
        prog.fit_control_variate(res.x)
        res = minimize(prog.value_grad, res.x, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
    q = res.x
    if H.exact and H.max_radius is None and k <= 512:
        q = _newton_polish(prog, q, smax)
    val, grad = prog.value_grad(q)
    lower = q <= 0
    upper = np.zeros(k, bool) if hi is None else q >= hi
    resid = np.abs(np.where(lower, np.minimum(grad, 0.0), np.where(upper, np.maximum(grad, 0.0), grad)))
    se = prog.expectation_error(q)
    method = "exact" if H.exact else "quadrature" if prog.quadrature else f"monte-carlo N={prog.w.shape[0]}"
    return Solution(q, val, float(resid.max() / smax), float(se.max() / smax), method, int(res.nit))


def ray_start(prog: ReducedProgram, s: Array) -> Array:
    """``t s`` with ``t`` minimizing ``f(t s)`` (a 1-d convex search on a log scale)."""
    def f(logt):
        return prog.value(math.exp(logt) * s)

    if prog.H.max_radius is not None:  # bounded: the ray to the bound
        return s * (prog.H.max_radius / s.max())
    lo, hi = -30.0, 30.0
    grid = np.linspace(lo, hi, 41)
    vals = [f(x) for x in grid]
    i = int(np.argmin(vals))
    res = minimize_scalar(f, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, 40)]), method="bounded",
                          options={"xatol": 1e-10})  # fmt: skip
    return math.exp(res.x) * s


def _newton_polish(prog: ReducedProgram, q: Array, smax: float, steps: int = 4) -> Array:
    """A few Newton steps on the free coordinates with a finite-difference Hessian of the
    exact gradient (it is a polynomial, so central differences are accurate to ~1e-10)."""
    for _ in range(steps):
        _, g = prog.value_grad(q)
        free = q > 1e-12 * max(1.0, float(q.max()))
        if not free.any() or np.abs(g[free]).max() <= 1e-15 * smax:
            break
        idx = np.flatnonzero(free)
        Hs = np.empty((idx.size, idx.size))
        for c, i in enumerate(idx):
            h = 1e-6 * max(abs(q[i]), 1e-8)
            e = np.zeros_like(q)
            e[i] = h
            Hs[:, c] = (prog.value_grad(q + e)[1][idx] - prog.value_grad(q - e)[1][idx]) / (2 * h)
        try:
            step = np.linalg.solve(0.5 * (Hs + Hs.T), g[idx])
        except np.linalg.LinAlgError:
            break
        new = q.copy()
        new[idx] = np.maximum(q[idx] - step, 0.0)
        if prog.value_grad(new)[0] > prog.value_grad(q)[0] + 1e-14 * abs(prog.value_grad(q)[0]):
            break
        q = new
    return q


def quartic_fixed_point(s, c: float, n: Optional[int] = None) -> Array:
    """Independent solution of (5) for ``H = c r^4``: for a trial ``D`` each ``q_i`` is the unique
    positive root of ``q^3 + D q = n (n+2) s_i / (8c)``; ``D = (1/2) sum q^2`` is then a scalar
    root found by bisection.

    Example:
        >>> q = quartic_fixed_point([1.0, 1.0], 1.0, 2)  # q^3 + q^3 = 8/8
        >>> np.round(q, 6).tolist()
        [0.793701, 0.793701]
    """
    s, n = _check_spectrum(s, n)
    b = n * (n + 2) * s / (8 * c)

    def cubic_roots(D):
        # Cardano for q^3 + D q - b = 0 with D >= 0: one real root
        disc = np.sqrt((b / 2) ** 2 + (D / 3) ** 3)
        return np.cbrt(b / 2 + disc) + np.cbrt(b / 2 - disc)

    def gap(D):
        return 0.5 * float(np.sum(cubic_roots(D) ** 2)) - D

    hi = 0.5 * float(np.sum(np.cbrt(b) ** 2)) + 1.0
    D = brentq(gap, 0.0, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    return cubic_roots(D)


def kink_descent(s, directions, left: float, right: float, radius: float = 1.0) -> tuple[float, int]:
    """Directional derivatives of the objective of the kink :func:`kink` at orthogonalization
    ``q = radius (1, ..., 1)`` (``m >= n``, ``k = n``): there every ``r = radius``, so along ``delta`` it
    changes at the rate ``phi(delta) = -s . delta + left sum(delta) / n + (right - left) E[(delta . w)_+]``
    (:func:`~specgrad.theory.sphere.positive_part`). Orthogonalization is optimal iff ``phi >= 0``
    for every ``delta``; a negative value along one of ``directions`` ``(D, k)`` certifies that it is
    not. Returns the smallest ``phi`` over ``directions``, each scaled to ``max |delta| = 1``,
    relative to ``max s``, and the index of its direction.

    Example:
        >>> s = np.array([1.0, 0.8, 0.6])
        >>> kink_descent(s, [s - s.mean()], 0.0, 100.0)[0] > 0  # steep: no descent this way
        True
        >>> kink_descent(s, [s - s.mean()], 0.0, 1.0)[0] < 0  # shallow: orthogonalization loses
        True
    """
    s, n = _check_spectrum(s, None)
    vals = []
    for d in np.atleast_2d(np.asarray(directions, dtype=np.float64)):
        d = d / max(np.abs(d).max(), 1e-300)
        v, _ = positive_part(d, n)
        vals.append(-float(s @ d) + left * float(d.sum()) / n + (right - left) * v)
    i = int(np.argmin(vals))
    return vals[i] / float(s.max()), i


# --------------------------------------------------------------------------------------
# summaries of a map s -> s*


def order_violations(s, q, rtol: float = 1e-9) -> int:
    """Pairs ``(i, j)`` with ``s_i > s_j`` but ``q_i < q_j (1 - rtol)``: 0 for an order-keeping map."""
    s, q = np.asarray(s, dtype=float), np.asarray(q, dtype=float)
    order = np.argsort(-s, kind="stable")
    s, q = s[order], q[order]
    count = 0
    for i in range(len(s)):
        bigger = s[i] > s[i + 1:]
        count += int(np.sum(bigger & (q[i] < q[i + 1:] * (1 - rtol))))
    return count


def max_pair_ratio(s, q) -> float:
    """``max over s_i > s_j > 0 of (q_i / q_j) / (s_i / s_j)``: at most 1 for a homogenizing map."""
    s, q = np.asarray(s, dtype=float), np.asarray(q, dtype=float)
    keep = (s > 0) & (q > 0)
    s, q = s[keep], q[keep]
    if s.size < 2:
        return 1.0
    ls, lq = np.log(s), np.log(q)
    ds = ls[:, None] - ls[None, :]
    dq = lq[:, None] - lq[None, :]
    mask = ds > 0
    return float(np.exp(np.max(dq[mask] - ds[mask]))) if mask.any() else 1.0


def homogenization_ratio(s, q) -> float:
    """``(max q / min q) / (max s / min s)`` over ``s > 0``: 1 for a scaled gradient, ``1 / cond(s)``
    for orthogonalization, below 1 for a homogenizing map."""
    s, q = np.asarray(s, dtype=float), np.asarray(q, dtype=float)
    keep = s > 0
    s, q = s[keep], q[keep]
    return float((q.max() / q.min()) / (s.max() / s.min()))


# --------------------------------------------------------------------------------------
# the general (unreduced) program, for checking the reduction


def general_objective(Q: Tensor, G: Tensor, c2: float, c4: float) -> Tensor:
    """(1) for ``H = c2 r^2 + c4 r^4`` and a general ``Q`` ``(m, n)`` (torch, differentiable):
    ``E (zeta^T A zeta)^2 = ((tr A)^2 + 2 tr(A^2)) / (n (n+2))`` for ``A = Q^T Q``."""
    n = Q.shape[-1]
    A = Q.mT @ Q
    tr = torch.diagonal(A).sum()
    return -(Q * G).sum() + c2 * tr / n + c4 * (tr**2 + 2 * (A * A).sum()) / (n * (n + 2))

