r"""Expectations over the unit sphere of functions of ``R = sum_i a_i w_i``, deterministic.

For ``zeta`` uniform on ``S^{n-1}`` and ``Q = U diag(q) V^T``, ``||Q zeta||^2 = R`` with ``a = q^2``
(padded with ``n - k`` zeros) and ``w = (xi_1^2, ..., xi_n^2) ~ Dirichlet(1/2, ..., 1/2)``.
Write ``w_i = g_i^2 / |g|^2`` for ``g ~ N(0, I_n)``; ``|g|^2 ~ chi^2_n`` is independent of ``w``.
Three tools, each with the gradient in ``a``:

1. Even polynomials (:func:`sphere_moments`, :func:`moments_with_gradient`): the raw moments of
   ``X = sum a_i g_i^2`` follow from its cumulants ``kappa_l = 2^(l-1) (l-1)! sum a^l``, and
   ``E R^j = E X^j / (n (n+2) ... (n+2j-2))``.

2. Non-integer powers ``E R^beta`` (:func:`power_expectation`), a one-dimensional integral. By
   the same independence ``E R^beta = E X^beta / E[(chi^2_n)^beta]``, and for ``m < beta < m+1``
   (``m = floor(beta)``) the Laplace transform ``L(s) = E e^{-sX} = prod (1 + 2 s a_i)^{-1/2}``
   gives::

       E X^beta = (1 / Gamma(-beta)) int_0^inf [L(s) - sum_{l<=m} (-s)^l mu_l / l!] s^(-beta-1) ds

   (``mu_l = E X^l``). The integral runs over ``s = e^y``: below ``s = 1/10`` (after scaling
   ``sum a = 1``) the bracket's Taylor series is integrated term by term, above it Gauss-Legendre
   panels in ``y`` (the integrand is analytic in a strip of half-width ``pi`` around the real
   ``y`` axis, so the panels converge geometrically), and the polynomial part's tail beyond
   ``s = 1e14`` in closed form.

3. Any radial function (:func:`radial_expectation`), a two-dimensional integral. With
   ``G(t) = h(sqrt t)`` and ``S(t) = P(R > t)``, ``E G(R) = G(t0) + int_{t0}^{max a} G'(t) S(t) dt``
   when ``G' = 0`` below ``t0``. ``R > t`` iff ``sum (a_i - t) g_i^2 > 0``, a Gaussian quadratic form,
   whose law has Imhof's (1961) inversion formula::

       S(t) = 1/2 + (1/pi) int_{-inf}^{inf} Im psi_t(e^x) dx,  psi_t(u) = prod_i (1 - i u (a_i - t))^{-nu_i/2}

   (``nu_i = 1``, the ``n - k`` zero coordinates as one term with ``nu = n - k``), and
   ``dS/da_i = (1/pi) int Im[psi_t(u) (nu_i/2) i u / (1 - i u (a_i - t))] dx``. The inner integral is
   a trapezoid rule in ``x = log u`` (the integrand is analytic in ``|Im x| < pi/2``, so the error
   is about ``exp(-pi^2 / h)`` for step ``h``); the outer one Gauss-Legendre on panels between
   the sorted ``a_i`` (where the law of ``R`` has its square-root singularities) and the caller's
   break points, with ``t = lo + (hi - lo)(1 - cos phi)/2`` to smooth the endpoint singularities.

Conventions: numpy float64; ``a`` is ``(k,)`` nonnegative, ``k <= n``. Every function returns
``(value, gradient in a)``, the gradient ``(k,)``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.special import gammaln

Array = np.ndarray

_GL_CACHE: dict[int, tuple[Array, Array]] = {}


def _gauss_legendre(points: int) -> tuple[Array, Array]:
    if points not in _GL_CACHE:
        _GL_CACHE[points] = np.polynomial.legendre.leggauss(points)
    return _GL_CACHE[points]


def _check(a, n: int, signed: bool = False) -> Array:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1 or not np.all(np.isfinite(a)) or (not signed and np.any(a < 0)):
        raise ValueError(f"a must be a 1-d array of finite values{'' if signed else ' >= 0'}, got {a!r}")
    if a.size > n:
        raise ValueError(f"need k <= n, got {a.size} values for n={n}")
    return a


# --------------------------------------------------------------------------------------
# 1. even polynomials


def gaussian_moments(a: Array, order: int) -> tuple[Array, Array]:
    """Raw moments ``E X^j``, ``j = 0..order``, of ``X = sum a_i g_i^2`` ``(order + 1,)`` and their
    gradients in ``a`` ``(order + 1, k)``, from the cumulants ``2^(l-1) (l-1)! sum a^l``."""
    k = a.shape[-1]
    kappa = [0.0] * (order + 1)
    dkappa = [np.zeros(k)] * (order + 1)
    for l in range(1, order + 1):
        const = 2.0 ** (l - 1) * math.factorial(l - 1)
        kappa[l] = const * float(np.sum(a**l))
        dkappa[l] = const * l * a ** (l - 1)
    m = [1.0] + [0.0] * order
    dm = [np.zeros(k) for _ in range(order + 1)]
    for j in range(1, order + 1):
        for l in range(1, j + 1):
            b = math.comb(j - 1, l - 1)
            m[j] += b * kappa[l] * m[j - l]
            dm[j] = dm[j] + b * (dkappa[l] * m[j - l] + kappa[l] * dm[j - l])
    return np.array(m), np.stack(dm)


def moments_with_gradient(a, n: int, order: int, signed: bool = False) -> tuple[Array, Array]:
    """Sphere moments ``E R^j``, ``j = 1..order`` ``(order,)``, and their gradients in ``a``
    ``(order, k)`` (``signed``: ``a`` of any sign)."""
    a = _check(a, n, signed)
    m, dm = gaussian_moments(a, order)
    norm = np.cumprod([n + 2.0 * i for i in range(order)])
    return m[1:] / norm, dm[1:] / norm[:, None]


def sphere_moments(a, n: int, order: int) -> Array:
    """``E[(sum_i a_i w_i)^j]`` for ``j = 1..order``, ``w ~ Dirichlet(1/2 x n)`` (the squared
    coordinates of a uniform unit vector in ``R^n``); ``a`` is ``(k,)``, ``k <= n``, padded with zeros.

    Example:
        >>> a = np.array([1.0, 2.0, 0.0])
        >>> np.allclose(sphere_moments(a, 3, 2), [1.0, (9 + 2 * 5) / 15])
        True
    """
    return moments_with_gradient(a, n, order)[0]


def dirichlet_sample(n: int, samples: int, seed: int = 0) -> Array:
    """``(samples, n)`` float64 rows ``w = g^2 / |g|^2``, ``g ~ N(0, I_n)`` from a seeded generator."""
    g = torch.randn(samples, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).numpy()
    g2 = g * g
    return g2 / g2.sum(1, keepdims=True)


# --------------------------------------------------------------------------------------
# 2. non-integer powers: one-dimensional Laplace integrals


def power_expectation(a, n: int, beta: float, *, panel_width: float = 2.0, points: int = 12) -> tuple[float, Array]:
    """``E R^beta`` and its gradient in ``a`` for a non-integer ``beta > 0`` (so ``E ||Q zeta||^p``
    with ``p = 2 beta``), by the Laplace integral (2) of the module docstring.

    Example:
        >>> a = np.array([1.0, 0.5, 0.2])
        >>> v, g = power_expectation(a, 3, 1.5)
        >>> w = dirichlet_sample(3, 400_000, seed=1)
        >>> bool(abs(v - np.mean((w @ a) ** 1.5)) < 3e-3)
        True
    """
    a = _check(a, n)
    if not (beta > 0 and math.isfinite(beta)) or beta == round(beta):
        raise ValueError(f"beta must be a finite non-integer > 0, got {beta!r}")
    c = float(a.sum())
    if c == 0:
        return 0.0, np.zeros_like(a)
    x = a / c
    F, dF = _laplace_power(x, beta, panel_width, points)
    log_chi = beta * math.log(2.0) + gammaln(n / 2 + beta) - gammaln(n / 2)  # log E (chi^2_n)^beta
    scale = math.exp(-log_chi)
    # f(a) = c^beta F(a / c): df/da_i = c^(beta-1) [beta F + dF_i - sum_j x_j dF_j]
    value = c**beta * F * scale
    grad = c ** (beta - 1) * (beta * F + dF - float(x @ dF)) * scale
    return float(value), grad


def _laplace_power(x: Array, beta: float, panel_width: float, points: int) -> tuple[float, Array]:
    """``E X^beta`` and its gradient for ``sum x = 1``."""
    m = int(math.floor(beta))
    terms = 26
    mu, dmu = gaussian_moments(x, m + terms)
    fact = np.array([math.factorial(l) for l in range(m + terms + 1)], dtype=np.float64)
    sign = (-1.0) ** np.arange(m + terms + 1)
    s_sw, s_hi = 0.1, 1e14
    # [0, s_sw]: the Taylor series of the bracket, term by term (l > beta)
    l = np.arange(m + 1, m + terms + 1)
    coef = sign[l] / fact[l] * s_sw ** (l - beta) / (l - beta)
    val = float(coef @ mu[l])
    grad = coef @ dmu[l]
    # [s_hi, inf): the polynomial part's tail (the L(s) part is below L(s_hi) s_hi^-beta / beta)
    l = np.arange(0, m + 1)
    coef = -sign[l] / fact[l] * s_hi ** (l - beta) / (beta - l)
    val += float(coef @ mu[l])
    grad = grad + coef @ dmu[l]
    # [s_sw, s_hi]: Gauss-Legendre panels in y = log s
    y0, y1 = math.log(s_sw), math.log(s_hi)
    panels = max(1, math.ceil((y1 - y0) / panel_width))
    nodes, weights = _gauss_legendre(points)
    edges = np.linspace(y0, y1, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    y = ((edges[:-1] + edges[1:]) / 2)[:, None] + half[:, None] * nodes[None, :]
    wy = (half[:, None] * weights[None, :]).ravel()
    s = np.exp(y.ravel())
    one_plus = 1.0 + 2.0 * s[:, None] * x[None, :]  # (S, k)
    L = np.exp(-0.5 * np.log(one_plus).sum(1))
    poly = ((-s[:, None]) ** np.arange(m + 1)[None, :] / fact[: m + 1]) @ mu[: m + 1]
    dpoly = ((-s[:, None]) ** np.arange(m + 1)[None, :] / fact[: m + 1]) @ dmu[: m + 1]  # (S, k)
    kern = wy * s ** (-beta)
    val += float(kern @ (L - poly))
    grad = grad + kern @ (-(s * L)[:, None] / one_plus - dpoly)
    g = math.gamma(-beta)
    return val / g, grad / g


# --------------------------------------------------------------------------------------
# 3. any radial function: Imhof's formula inside a panel quadrature


def radial_expectation(
    a,
    n: int,
    dG: Callable[[Array], Array],
    G_lo: float,
    *,
    t_lo: float = 0.0,
    breaks: Sequence[float] = (),
    points: int = 10,
    h: float = 0.25,
    grad: bool = True,
    signed: bool = False,
) -> tuple[float, Array]:
    """``E G(R)`` and its gradient in ``a`` for a nondecreasing ``G`` with derivative ``dG`` (a numpy
    ufunc on ``t >= 0``) that vanishes below ``t_lo`` (``G_lo = G(t_lo)``), by the two-dimensional
    integral (3) of the module docstring; ``breaks`` are values of ``t`` where ``dG`` changes fast
    (panel ends), ``points`` Gauss nodes per panel, ``h`` the step of the inner rule; ``grad=False``
    skips the gradient (zeros). ``signed=True`` allows negative ``a`` (then ``R`` can be negative and
    ``t_lo >= 0`` must be a point below which ``G' = 0``).

    Example (``G(t) = t^(3/2)`` against the Laplace form)::

        >>> a = np.array([1.0, 0.5, 0.2, 0.05])
        >>> v, g = radial_expectation(a, 6, lambda t: 1.5 * np.sqrt(t), 0.0)
        >>> ref, ref_g = power_expectation(a, 6, 1.5)
        >>> bool(abs(v - ref) < 1e-9 and np.abs(g - ref_g).max() < 1e-8)
        True
    """
    a = _check(a, n, signed)
    k = a.size
    top = float(a.max()) if k else 0.0
    if top <= t_lo:
        return float(G_lo), np.zeros(k)
    ends = np.concatenate([[t_lo, top], a[(a > t_lo) & (a < top)],
                           [b for b in breaks if t_lo < b < top]])  # fmt: skip
    ends = np.unique(ends)
    ends = ends[np.concatenate([[True], np.diff(ends) > 1e-15 * top])]
    m = moments_with_gradient(a, n, 2, signed)[0]
    sd = math.sqrt(max(m[1] - m[0] ** 2, 0.0)) or top - t_lo
    ends = _graded(ends, np.unique(np.concatenate([a, [0.0]])), sd)
    nodes, weights = _gauss_legendre(points)
    phi = (nodes + 1) * (math.pi / 2)
    lo, hi = ends[:-1, None], ends[1:, None]
    t = (lo + (hi - lo) * (1 - np.cos(phi)) / 2).ravel()
    wt = ((hi - lo) / 2 * np.sin(phi) * weights * (math.pi / 2)).ravel() * dG(t)
    keep = wt != 0
    t, wt = t[keep], wt[keep]
    value, out = float(G_lo), np.zeros(k)
    for start in range(0, t.size, 64):
        S, dS = _survival(a, n, t[start:start + 64], h, grad)
        value += float(wt[start:start + 64] @ S)
        if grad:
            out += wt[start:start + 64] @ dS
    return value, out


def _graded(ends: Array, singular: Array, sd: float) -> Array:
    """Panel ends refined where the law of ``R`` calls for it. Every ``a_i`` is a singular point of
    the law, and one just beyond a panel's end slows its Gauss rule, so each panel is graded
    geometrically toward each end down to the distance from that end to the nearest other
    singular point; and no piece is wider than ``sd``, the standard deviation of ``R`` (``S(t)``
    falls by orders of magnitude over a few of them in its tails; at most 32 pieces a gap)."""
    out = [ends[:1]]
    for lo, hi in zip(ends[:-1], ends[1:]):
        w = hi - lo
        pts = [lo, hi]
        for start, sign in ((lo, 1.0), (hi, -1.0)):
            d = np.abs(singular - start)
            d = d[d > 1e-15 * max(abs(start), w)]
            step = min(float(d.min()), w) if d.size else w
            while step < w / 2:
                pts.append(start + sign * step)
                step *= 2
        pts = np.unique(np.array(pts))
        pieces = np.clip(np.ceil(np.diff(pts) / sd), 1, 32).astype(int)
        out += [np.linspace(a0, a1, q + 1)[1:] for a0, a1, q in zip(pts[:-1], pts[1:], pieces)]
    return np.concatenate(out)


def _survival(a: Array, n: int, t: Array, h: float, grad: bool = True) -> tuple[Array, Array]:
    """``S(t) = P(R > t)`` ``(T,)`` and ``dS/da`` ``(T, k)`` (``None`` unless ``grad``): the Laplace
    inversion of the indicator along the saddle-point line, see :func:`_tail`."""
    k = a.size
    lam = a[None, :] - t[:, None]  # (T, k)
    zero_nu = n - k
    if zero_nu:
        lam = np.concatenate([lam, -t[:, None]], 1)
    nu = np.concatenate([np.ones(k), [zero_nu]]) if zero_nu else np.ones(k)
    return _tail(lam, nu, h, grad, k)


def _tail(lam: Array, nu: Array, h: float, grad: bool, k: int) -> tuple[Array, Array]:
    """``P(Q > 0)`` for ``Q = sum_j lam_j chi^2_{nu_j}``, rows of ``lam`` ``(T, J)``, and its gradient in
    the first ``k`` columns. With ``M(s) = E e^{sQ} = prod (1 - 2 s lam_j)^{-nu_j/2}``, for ``c > 0`` in
    the domain of ``M``, ``P(Q > 0) = (1/pi) int_0^inf Re[M(c + iy) / (c + iy)] dy``, and for ``c < 0``
    the same integral is ``-P(Q < 0)``. ``c`` is the saddle point of ``|M(c)/c|`` on the side of the
    smaller probability (then the result has a small *relative* error, however small the
    probability); the integral is a trapezoid rule in ``x`` with ``y = sigma sinh(x)``,
    ``sigma^-2`` the curvature of ``log |M(c)/c|`` at ``c``."""
    T = lam.shape[0]
    S = np.zeros(T)
    dS = np.zeros((T, k)) if grad else None
    pos = (lam > 0) & (nu > 0)
    neg = (lam < 0) & (nu > 0)
    has_pos, has_neg = pos.any(1), neg.any(1)
    S[~has_neg & has_pos] = 1.0  # no negative part: Q > 0 almost surely (and dS = 0 at this order)
    rows = np.flatnonzero(has_pos & has_neg)
    if rows.size == 0:
        return S, dS
    L = lam[rows]
    mean = L @ nu
    upper = mean < 0  # P(Q > 0) < 1/2 (about): integrate on c > 0
    # the domain of M: 1 - 2 c lam_j > 0
    c_hi = np.where(upper, 0.5 / np.where(L > 0, L, 0.0).max(1), 0.0)
    c_lo = np.where(upper, 0.0, 0.5 / np.where(L < 0, L, 0.0).min(1))
    lo, hi = c_lo.copy(), c_hi.copy()
    for _ in range(80):  # bisection for K'(c) = 1/c, increasing in c on each side
        c = 0.5 * (lo + hi)
        g = (nu * L / (1 - 2 * c[:, None] * L)).sum(1) - 1 / c
        lo, hi = np.where(g < 0, c, lo), np.where(g < 0, hi, c)
    c = 0.5 * (lo + hi)
    d = 1 - 2 * c[:, None] * L  # > 0
    curv = (2 * nu * (L / d) ** 2).sum(1) + 1 / c**2
    sigma = 1 / np.sqrt(curv)
    log_m0 = -0.5 * (nu * np.log(d)).sum(1)
    # the upper end X: |M(c + iy) / (c + iy)| / |M(c) / c| * cosh x below 1e-17
    X = 4.0
    for cand in (4.0, 8.0, 16.0, 24.0, 32.0, 40.0):
        X = cand
        y = sigma * math.sinh(cand)
        ratio = -0.25 * (nu * np.log1p((2 * y[:, None] * L / d) ** 2)).sum(1) - 0.5 * np.log1p((y / c) ** 2)
        if np.all(ratio + cand < math.log(1e-17)):
            break
    xs = np.arange(0.0, X + h / 2, h)
    wx = np.full(xs.size, h)
    wx[0] = h / 2
    y = sigma[:, None] * np.sinh(xs)[None, :]  # (R, P)
    dy = sigma[:, None] * np.cosh(xs)[None, :] * wx[None, :]
    s = c[:, None] + 1j * y
    z = 1 - 2 * s[:, :, None] * L[:, None, :]  # (R, P, J)
    logm = -0.5 * (np.log(z) @ nu)
    m = np.exp(logm)
    part = (np.real(m / s) * dy).sum(1) / math.pi
    S[rows] = np.where(upper, part, 1 + part)
    if grad:
        # d/d lam_i of M(s)/s = M(s) nu_i / (1 - 2 s lam_i)
        dS[rows] = np.einsum("rp,rpk->rk", dy, np.real(m[:, :, None] / z[:, :, :k])) * (nu[:k] / math.pi)
    return S, dS


def positive_part(delta, n: int) -> tuple[float, Array]:
    """``E[(sum_i delta_i w_i)_+]`` and its gradient in ``delta`` (any signs): the directional
    derivative of a kink's expectation (``E (r - r0)_+`` at ``Q = r0 U V^T`` along ``U diag(delta) V^T``).

    Example:
        >>> v, g = positive_part(np.array([1.0, -1.0]), 2)  # E (w1 - w2)_+ = E|w1 - w2| / 2 = 1/pi
        >>> round(v, 8), round(1 / math.pi, 8)
        (0.31830989, 0.31830989)
    """
    return radial_expectation(delta, n, lambda t: np.ones_like(t), 0.0, signed=True)
