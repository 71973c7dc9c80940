"""Coefficient schedules of odd quintic iterations ``X <- a X + (b A + c A^2) X``, ``A = X X^T``.

One step maps every singular value ``s`` of ``X`` to ``p(s) = a s + b s^3 + c s^5`` and keeps
the singular vectors, so a schedule is fully described by the scalar composition of its
polynomials. :class:`QuinticSchedule` carries the coefficients and answers, before any
matrix is touched, where the output singular values land (:meth:`QuinticSchedule.band`).

Sources of the numbers:

* ``JORDAN`` = ``(3.4445, -4.7750, 2.0315)``: Keller Jordan's Muon coefficients (2024),
  chosen to maximize the slope at zero (``a``) so small singular values grow fast, at the
  price of not converging: after 5 steps, normalized singular values in ``[3e-3, 1]`` land
  in about ``[0.68, 1.20]`` and those down to ``1e-3`` in ``[0.47, 1.20]``
  (``QuinticSchedule((JORDAN,)).band(lower, 5)``), not at 1. Muon tolerates this.
* ``NEWTON_SCHULZ`` = ``(15/8, -10/8, 3/8)``: the classical degree-5 Newton-Schulz
  polynomial; converges to 1 but slowly from small singular values.
* :func:`polar_express_schedule`: Amsel, Persson, Musco & Gower, "The Polar Express:
  Optimal Matrix Sign Methods and Their Application to the Muon Algorithm" (2025). Each
  step is the minimax-optimal odd quintic on the current interval ``[l, u]`` of singular
  values, found by the Remez equioscillation condition; the interval is then mapped forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, Union

import numpy as np

Triple = tuple[float, float, float]

JORDAN: Triple = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ: Triple = (15 / 8, -10 / 8, 3 / 8)

# The Polar Express paper's cushion: the first polynomials are fitted on
# [max(l, cushion * u), u] so they never need to blow tiny singular values up by more
# than ~1/cushion in one step, which bfloat16 rounding would otherwise amplify.
POLAR_EXPRESS_CUSHION = 0.02407327424182761


@dataclass(frozen=True)
class QuinticSchedule:
    """A sequence of quintic coefficient triples, one per step.

    ``coefficients[k]`` is used at step ``k``; when more steps are asked for than
    triples exist, the last triple repeats (the Polar Express convention).
    ``normalization_safety`` multiplies the Frobenius norm the input is divided by, so the
    largest normalized singular value is at most ``1 / normalization_safety`` even after
    low-precision rounding of the norm.

    Example:
        >>> s = QuinticSchedule((JORDAN,))
        >>> [round(v, 2) for v in s.band(lower=1e-3, steps=5)]
        [0.47, 1.2]
    """

    coefficients: tuple[Triple, ...]
    normalization_safety: float = 1.0

    def __post_init__(self):
        if len(self.coefficients) == 0:
            raise ValueError("a schedule needs at least one (a, b, c) triple")
        for t in self.coefficients:
            if len(t) != 3 or not all(np.isfinite(t)):
                raise ValueError(f"each coefficient entry must be 3 finite numbers, got {t!r}")
        if not self.normalization_safety >= 1.0:
            raise ValueError(
                f"normalization_safety must be >= 1, got {self.normalization_safety!r}"
            )

    def as_dict(self) -> dict:
        """The schedule in plain types (a dict of tuples of floats), as a checkpoint keeps it:
        ``torch.load(weights_only=True)`` reads it back, and :func:`as_schedule` turns it
        into the schedule again.

        Example:
            >>> s = polar_express_schedule(3)
            >>> as_schedule(s.as_dict()) == s
            True
        """
        return {"coefficients": tuple(tuple(float(v) for v in t) for t in self.coefficients),
                "normalization_safety": float(self.normalization_safety)}  # fmt: skip

    def steps(self, steps: int) -> list[Triple]:
        """The triples actually used for ``steps`` iterations."""
        c = list(self.coefficients)
        return c[:steps] + [c[-1]] * max(0, steps - len(c))

    def scalar(self, s: np.ndarray, steps: int) -> np.ndarray:
        """Apply the composed polynomial to normalized singular values ``s`` (float64)."""
        x = np.asarray(s, dtype=np.float64)
        for a, b, c in self.steps(steps):
            x2 = x * x
            x = x * (a + x2 * (b + c * x2))
        return x

    def band(self, lower: float, steps: int, grid: int = 20001) -> tuple[float, float]:
        """Range ``(min, max)`` of output singular values when ``sigma_min / ||G||_F >= lower``.

        The input is divided by ``normalization_safety * ||G||_F``, so its singular values
        lie in ``[lower / normalization_safety, 1 / normalization_safety]``. Computed on a log-spaced grid
        (the maps are smooth, so ``grid`` points resolve the range to ~1e-6).
        """
        if not 0 < lower <= 1:
            raise ValueError(f"lower must lie in (0, 1], got {lower!r}")
        s = np.geomspace(lower / self.normalization_safety, 1 / self.normalization_safety, grid)
        y = np.abs(self.scalar(s, steps))
        return float(y.min()), float(y.max())


def optimal_quintic(l: float, u: float) -> Triple:
    """Minimax-optimal odd quintic approximating 1 on ``[l, u]`` (``0 < l <= u``).

    Finds ``p(x) = a x + b x^3 + c x^5`` whose error ``1 - p`` equioscillates at
    ``l < q < r < u`` (Remez): solve the 4x4 linear system for ``(a, b, c, E)`` given the
    points, move ``q, r`` to the stationary points of ``p`` (roots of
    ``p'(x) = a + 3 b x^2 + 5 c x^4``), repeat until ``E`` stops changing.
    """
    if not 0 < l <= u:
        raise ValueError(f"need 0 < l <= u, got l={l!r}, u={u!r}")
    if l / u >= 1 - 5e-6:
        # The interval is a point: the limit is the Newton-Schulz polynomial rescaled to u.
        return (15 / 8) / u, (-10 / 8) / u**3, (3 / 8) / u**5
    q, r = (3 * l + u) / 4, (l + 3 * u) / 4  # exact as l -> u
    err, old = np.inf, None
    for _ in range(200):
        old = err
        lhs = np.array(
            [[x, x**3, x**5, sign] for x, sign in ((l, 1), (q, -1), (r, 1), (u, -1))]
        )
        a, b, c, err = np.linalg.solve(lhs, np.ones(4))
        disc = 9 * b * b - 20 * a * c
        q, r = np.sqrt((-3 * b + np.array([-1.0, 1.0]) * np.sqrt(disc)) / (10 * c))
        if abs(old - err) <= 1e-15:
            break
    return float(a), float(b), float(c)


@lru_cache(maxsize=64)
def _polar_express_triples(steps: int, lower: float, cushion: float, safety: float):
    l, u = lower, 1.0
    triples = []
    for _ in range(steps):
        a, b, c = optimal_quintic(max(l, cushion * u), u)
        # With cushioning the polynomial is centred on [cushion*u, u]; rescale it so the
        # error is centred on [l, u]: 1 - p(l) = p(u) - 1.
        pl, pu = (a * x + b * x**3 + c * x**5 for x in (l, u))
        k = 2 / (pl + pu)
        a, b, c = k * a, k * b, k * c
        l = a * l + b * l**3 + c * l**5
        u = 2 - l
        # Evaluate p(x / safety): a margin for rounding that pushes singular values past u.
        triples.append((a / safety, b / safety**3, c / safety**5))
    return tuple(triples)


def polar_express_schedule(
    steps: int = 5,
    lower: float = 1e-3,
    *,
    cushion: float = POLAR_EXPRESS_CUSHION,
    safety: float = 1.01,
) -> QuinticSchedule:
    """Polar Express coefficients for ``steps`` iterations, assuming ``sigma_min >= lower``.

    ``lower`` bounds the normalized spectrum from below (``sigma_min / ||G||_F``); singular
    values under it still grow, just not to 1. ``safety`` (1.01 in the paper) both shrinks
    every polynomial's argument, ``p(x / safety)``, and inflates the normalizing norm, so
    rounding in bfloat16 never pushes a singular value out of the interval the polynomial
    was fitted on. ``safety=1`` gives the exact minimax composition.

    Example:
        >>> sched = polar_express_schedule(steps=5)
        >>> [round(v, 2) for v in sched.band(lower=1e-3, steps=5)]
        [0.84, 1.12]
        >>> [round(v, 4) for v in polar_express_schedule(steps=8).band(lower=1e-3, steps=8)]
        [1.0, 1.0]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < lower < 1:
        raise ValueError(f"lower must lie in (0, 1), got {lower!r}")
    if not 0 <= cushion < 1:
        raise ValueError(f"cushion must lie in [0, 1), got {cushion!r}")
    if not safety >= 1:
        raise ValueError(f"safety must be >= 1, got {safety!r}")
    triples = _polar_express_triples(steps, float(lower), float(cushion), float(safety))
    return QuinticSchedule(triples, normalization_safety=safety)


ScheduleLike = Union[str, Triple, Sequence[Triple], QuinticSchedule, dict]

_NAMED = {"jordan": JORDAN, "newton_schulz": NEWTON_SCHULZ}


def as_schedule(coefficients: ScheduleLike) -> QuinticSchedule:
    """Accept a name (``"jordan"``, ``"newton_schulz"``), one triple, a list of triples, a
    :class:`QuinticSchedule` or its :meth:`~QuinticSchedule.as_dict`."""
    if isinstance(coefficients, QuinticSchedule):
        return coefficients
    if isinstance(coefficients, dict):
        if set(coefficients) - {"coefficients", "normalization_safety"} or "coefficients" not in coefficients:
            raise ValueError(f"a schedule dict has keys 'coefficients' and 'normalization_safety', got {coefficients!r}")
        triples = tuple(tuple(float(v) for v in t) for t in coefficients["coefficients"])
        return QuinticSchedule(triples, float(coefficients.get("normalization_safety", 1.0)))
    if isinstance(coefficients, str):
        if coefficients not in _NAMED:
            raise ValueError(
                f"unknown coefficient schedule {coefficients!r}; named ones: {sorted(_NAMED)}"
            )
        return QuinticSchedule((_NAMED[coefficients],))
    seq = list(coefficients)
    if len(seq) == 3 and all(isinstance(v, (int, float)) for v in seq):
        return QuinticSchedule((tuple(float(v) for v in seq),))
    try:
        return QuinticSchedule(tuple(tuple(float(v) for v in t) for t in seq))
    except TypeError:
        raise ValueError(
            f"coefficients must be a name, an (a, b, c) triple or a list of triples, "
            f"got {coefficients!r}"
        ) from None


def schedule_for(method: str, steps: int = 5, *, coefficients: ScheduleLike = "jordan",
                 lower: float = 1e-3) -> QuinticSchedule:  # fmt: skip
    """The schedule an iterative method runs: ``"newton_schulz"``: :func:`as_schedule` of
    ``coefficients``; ``"polar_express"``: :func:`polar_express_schedule` of ``steps`` and
    ``lower`` (``coefficients`` unused).

    Example:
        >>> schedule_for("newton_schulz").coefficients == (JORDAN,)
        True
    """
    if method == "newton_schulz":
        return as_schedule(coefficients)
    if method == "polar_express":
        return polar_express_schedule(steps, lower)
    raise ValueError(f"need an iterative method, got {method!r}; choose 'newton_schulz' or 'polar_express'")
