"""Davis & Drusvyatskiy, "When do spectral gradient updates help in deep learning?"
(arXiv 2512.04299): five experiments.

For a block ``W`` fed by activations ``A`` with gradient ``G``, one Euclidean step
(``W - ||A||_op^-2 G``) and one spectral step (``W - ||A||_F^-2 ||G||_* polar(G)``) guarantee
decreases ``||G||_F^2 / (2 ||A||_op^2)`` and ``||G||_*^2 / (2 ||A||_F^2)``: the spectral step
wins when the nuclear rank ``nr(G) = ||G||_*^2 / ||G||_F^2`` exceeds the stable rank
``st(A) = ||A||_F^2 / ||A||_op^2``. Post-activations have a low stable rank.

* ``init-stable-rank``: ``st(sigma(W X))`` at Gaussian initialization (one layer, sweeping
  width and sample count; a deep feedforward net per layer; a GPT block) against the
  spike bound ``B(sigma) = E[sigma(g)^2] / E[sigma(g)]^2`` (:func:`spike_bound`).
* ``random-features``: GD vs SpecGD (and SpecGD restarted from GD iterates) on
  ``min_W (1/2n) ||W A - Y||_F^2`` with ReLU and SwiGLU features.
* ``sparse-regression``: a 4-layer squared-ReLU net on ``y = x1 x2 x3``: GD everywhere vs
  SpecGD on layers 2-3.
* ``nuclear-rank-growth``: ``nr`` of the random-feature gradient at the zero init and after
  one GD step, against the feature dimension ``k``.
* ``lm-spectra``: a tiny GPT trained with Muon under :class:`SpectralMonitor`.

Everything the figures and claims use is in the series; see
``docs/reproductions/davis-drusvyatskiy.md`` for the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import matplotlib.pyplot as plt
import numpy as np
import scipy.integrate
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import CharCorpus
from ..diagnostics import SpectralMonitor
from ..models import GPT, GPTConfig
from .plots import mean_band, save
from .registry import Claim, Experiment, register
from .series import curve, geomean, key_of, seed_runs
from .training import lm_optimizer, load_corpus, train_lm

# ----------------------------------------------------------------------------------------------
# Shared pieces: activations, their spike bounds, rank measures, the two update rules.
# ----------------------------------------------------------------------------------------------

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


def _scalar_activation(name: str, leaky: tuple[float, float]) -> Callable[[float], float]:
    q, p = leaky
    return {
        "abs": abs,
        "relu": lambda t: max(t, 0.0),
        "leaky_relu": lambda t: q * t if t > 0 else p * t,
        "relu2": lambda t: max(t, 0.0) ** 2,
        "gelu": lambda t: 0.5 * t * (1.0 + math.erf(t / math.sqrt(2.0))),
        "tanh": math.tanh,
    }[name]


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
        mean, second = gaussian_moments(_scalar_activation(name, leaky))
        return second / mean**2
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def top_singular_value(A: Tensor) -> float:
    """``||A||_op`` of one ``(m, n)`` matrix, in float64: the exact SVD up to
    ``min(m, n) = 256``, ARPACK (``scipy.sparse.linalg.svds``, fixed start vector, ``tol=1e-10``)
    above it."""
    A = A.detach().to(torch.float64)
    if min(A.shape) <= 256:
        return float(torch.linalg.svdvals(A)[0])
    a = A.cpu().numpy()
    s = scipy.sparse.linalg.svds(a, k=1, tol=1e-10, return_singular_vectors=False,
                                 v0=np.ones(min(a.shape)))  # fmt: skip
    return float(s[0])


def fast_stable_rank(A: Tensor) -> float:
    """``||A||_F^2 / ||A||_op^2`` in float64 (0 for a zero matrix), for matrices too large for a
    full SVD (see :func:`top_singular_value`).

    Example:
        >>> fast_stable_rank(torch.eye(3))
        3.0
    """
    top = top_singular_value(A)
    return float(A.detach().to(torch.float64).square().sum()) / top**2 if top > 0 else 0.0


def nuclear_rank_of(s: Tensor) -> float:
    """``(sum s)^2 / sum s^2`` from singular values ``s`` (0 if all vanish)."""
    fro = float(s.square().sum())
    return float(s.sum()) ** 2 / fro if fro > 0 else 0.0


def spectral_direction(G: Tensor, rtol: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """``(singular values, polar factor U V^T)`` of ``G`` from one SVD; singular values at most
    ``rtol * s_max`` (default ``max(m, n) eps``) are dropped from the polar factor, as in
    :func:`specgrad.linalg.polar_svd`."""
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    if rtol is None:
        rtol = max(G.shape) * torch.finfo(G.dtype).eps
    keep = (S > rtol * S[:1]).to(G.dtype) if S.numel() else S
    return S, (U * keep) @ Vh


def gd_update(W: Tensor, G: Tensor, op_norm_sq: float, n: int, lr: float = 1.0) -> Tensor:
    """Euclidean step ``W - lr (n / ||A||_op^2) G`` (the ``1/L`` step of a loss ``(1/2n)||WA - Y||^2``)."""
    return W - (lr * n / op_norm_sq) * G


def specgd_update(W: Tensor, G: Tensor, fro_norm_sq: float, n: int, lr: float = 1.0) -> tuple[Tensor, Tensor]:
    """Spectral step ``W - lr (n / ||A||_F^2) ||G||_* polar(G)``; returns ``(W_new, sing. values of G)``."""
    S, P = spectral_direction(G)
    return W - (lr * n / fro_norm_sq) * float(S.sum()) * P, S


class _TopSingular:
    """``||A||_op`` of a sequence of slowly changing matrices by power iteration on ``A^T A``,
    warm-started from the previous top right singular vector; stops when the eigen-residual
    ``||A^T A v - theta v|| <= tol theta`` and falls back to the exact SVD after ``max_iters``."""

    def __init__(self, tol: float = 1e-10, max_iters: int = 300):
        self.v: Optional[Tensor] = None
        self.tol, self.max_iters = tol, max_iters

    def __call__(self, A: Tensor) -> float:
        v = self.v if self.v is not None and self.v.shape[0] == A.shape[1] else torch.ones(A.shape[1], dtype=A.dtype)
        v = v / v.norm()
        for _ in range(self.max_iters):
            w = A.mT @ (A @ v)
            norm = float(w.norm())
            if norm == 0.0:
                return 0.0
            theta = float(v @ w)
            if float((w - theta * v).norm()) <= self.tol * theta:
                self.v = w / norm
                return math.sqrt(theta)
            v = w / norm
        self.v = v
        return float(torch.linalg.matrix_norm(A, ord=2))


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (nan with fewer than two positive points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return math.nan
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def _finite_or(value: float, default: float) -> float:
    return value if value is not None and math.isfinite(value) else default


def _pos(x) -> float:
    """A loss or gap for ratios: ``None``/nan/inf (a diverged run) -> 1e300, at least 1e-300."""
    x = math.nan if x is None else float(x)
    return min(max(x, 1e-300), 1e300) if math.isfinite(x) else 1e300


def _fmax(values) -> float:
    """Max of the finite values (nan if none)."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else math.nan


def _r8(values) -> list[float]:
    """Round to 8 significant digits (keeps result files small)."""
    return [float(f"{float(x):.8g}") for x in values]


# ----------------------------------------------------------------------------------------------
# 1. init-stable-rank
# ----------------------------------------------------------------------------------------------


@dataclass
class InitStableRankConfig:
    activations: tuple[str, ...] = ACTIVATIONS
    leaky_q: float = LEAKY_SLOPES[0]  # leaky ReLU slope for t > 0
    leaky_p: float = LEAKY_SLOPES[1]  # leaky ReLU slope for t < 0
    # (a) one layer A = sigma(W X): W (m x d) with N(0, 1/d) entries, X (d x n) standard Gaussian
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)  # m = d = width ...
    samples_per_width: float = 2.0  # ... and n = samples_per_width * width
    sample_width: int = 512  # the sample sweep: m = d = sample_width ...
    sample_counts: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)  # ... and these n
    # (b) deep feedforward net: A_l = sigma(W_l A_{l-1} / rms(A_{l-1})), W_l N(0, 1/width)
    depth: int = 8
    deep_width: int = 512
    deep_samples: int = 1024
    # (c) the tiny GPT at initialization on one batch of the default character corpus
    gpt_mlps: tuple[str, ...] = ("gelu", "relu2", "swiglu")
    gpt_n_layer: int = 4
    gpt_n_head: int = 4
    gpt_n_embd: int = 128
    gpt_context: int = 64
    gpt_batch: int = 32
    bound_tolerance: float = 0.02  # finite-size slack of the "below B(sigma)" claims


def _one_layer(cfg: InitStableRankConfig, m: int, d: int, n: int, g: torch.Generator) -> dict[str, tuple[float, float]]:
    """``{activation: (st(A), empirical spike bound)}`` for one draw of ``W, X`` (shared by
    every activation; SwiGLU draws a second matrix for its up projection)."""
    X = torch.randn(d, n, generator=g, dtype=torch.float64)
    W = torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    Z = W @ X
    Z2 = (torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)) @ X if "swiglu" in cfg.activations else None
    out = {}
    for name in cfg.activations:
        A = post_activation(name, Z, Z2, (cfg.leaky_q, cfg.leaky_p))
        fro = float(A.square().sum())
        spike = float(A.sum()) ** 2 / (m * n)  # (1^T A 1)^2 / (m n) <= ||A||_op^2
        out[name] = (fast_stable_rank(A), fro / spike if spike > 0 else math.inf)
    return out


def _deep_net(cfg: InitStableRankConfig, name: str, g: torch.Generator) -> list[float]:
    """Per-layer ``st(A_l)``, ``l = 1..depth``; every layer's input is rescaled to unit mean
    square (what a norm layer does) so that each pre-activation is ~ N(0, 1)."""
    w, n = cfg.deep_width, cfg.deep_samples
    A = torch.randn(w, n, generator=g, dtype=torch.float64)
    out = []
    for _ in range(cfg.depth):
        A = A / A.square().mean().sqrt()
        Z = (torch.randn(w, w, generator=g, dtype=torch.float64) / math.sqrt(w)) @ A
        Z2 = (torch.randn(w, w, generator=g, dtype=torch.float64) / math.sqrt(w)) @ A if name == "swiglu" else None
        A = post_activation(name, Z, Z2, (cfg.leaky_q, cfg.leaky_p))
        out.append(fast_stable_rank(A))
    return out


def _gpt_at_init(cfg: InitStableRankConfig, mlp: str, seed: int, corpus: CharCorpus) -> dict[str, list]:
    """Stable ranks inside the tiny GPT at init, per block: the LayerNorm outputs feeding Q/K/V
    (``ln_1``) and the MLP (``ln_2``), the MLP post-activation (input of ``mlp.c_proj``), and
    the token-indicator ``1/p_max`` of the batch."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, context=cfg.gpt_context, n_layer=cfg.gpt_n_layer,
                          n_head=cfg.gpt_n_head, n_embd=cfg.gpt_n_embd, mlp=mlp))  # fmt: skip
    idx, _ = corpus.get_batch("train", cfg.gpt_batch, cfg.gpt_context, torch.Generator().manual_seed(seed))
    captured: dict[str, Tensor] = {}
    hooks = []

    def keep(key):
        return lambda module, args, output: captured.__setitem__(key, args[0].detach().reshape(-1, args[0].shape[-1]))

    for i, block in enumerate(model.transformer.h):
        hooks.append(block.attn.c_attn.register_forward_hook(keep(f"attn_in{i}")))
        hooks.append(block.mlp.c_proj.register_forward_hook(keep(f"mlp_post{i}")))
        first = block.mlp.w1 if mlp == "swiglu" else block.mlp.c_fc
        hooks.append(first.register_forward_hook(keep(f"mlp_in{i}")))
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    counts = torch.bincount(idx.reshape(-1), minlength=corpus.vocab_size)
    token_st = idx.numel() / float(counts.max())
    L = cfg.gpt_n_layer
    return {
        "layer": list(range(L)),
        "st_attn_input": [fast_stable_rank(captured[f"attn_in{i}"]) for i in range(L)],
        "st_mlp_input": [fast_stable_rank(captured[f"mlp_in{i}"]) for i in range(L)],
        "st_mlp_post": [fast_stable_rank(captured[f"mlp_post{i}"]) for i in range(L)],
        "dim_attn_input": [cfg.gpt_n_embd] * L,
        "dim_mlp_post": [captured["mlp_post0"].shape[1]] * L,
        "token_indicator": [token_st] * L,
    }


def init_run_seed(cfg: InitStableRankConfig, seed: int, ctx) -> dict:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, list]] = {}
    ctx.steps(len(cfg.widths) + len(cfg.sample_counts) + len(cfg.activations) + len(cfg.gpt_mlps), "sweeps")
    sweeps = [("width", w, w, max(1, round(cfg.samples_per_width * w))) for w in cfg.widths]
    sweeps += [("samples", cfg.sample_width, cfg.sample_width, n) for n in cfg.sample_counts]
    for sweep, m, d, n in sweeps:
        for name, (st, emp) in _one_layer(cfg, m, d, n, g).items():
            rec = out.setdefault(f"{sweep}/{name}", {"width": [], "samples": [], "stable_rank": [], "empirical_bound": []})
            rec["width"].append(m)
            rec["samples"].append(n)
            rec["stable_rank"].append(st)
            rec["empirical_bound"].append(emp)
        ctx.advance()
    for name in cfg.activations:
        out[f"deep/{name}"] = {"layer": list(range(1, cfg.depth + 1)), "stable_rank": _deep_net(cfg, name, g)}
        ctx.advance()
    if cfg.gpt_mlps:
        corpus = CharCorpus.default()
        for mlp in cfg.gpt_mlps:
            out[f"gpt/{mlp}"] = _gpt_at_init(cfg, mlp, seed, corpus)
            ctx.advance()
    return out


def init_analyze(cfg: InitStableRankConfig, series: dict) -> tuple[dict, list[Claim]]:
    leaky = (cfg.leaky_q, cfg.leaky_p)
    bounds = {a: spike_bound(a, leaky) for a in cfg.activations}
    spiked = [a for a in cfg.activations if math.isfinite(bounds[a])]
    summary: dict[str, float] = {f"bound/{a}": b for a, b in bounds.items() if math.isfinite(b)}
    worst, growth, deep_worst = 1e-300, 0.0, 1e-300
    for a in cfg.activations:
        for sweep in ("width", "samples"):
            runs = seed_runs(series, f"{sweep}/{a}")
            if not runs:
                continue
            st = np.asarray([r["stable_rank"] for r in runs], dtype=float)
            xs = np.asarray(runs[0]["width" if sweep == "width" else "samples"], dtype=float)
            summary[f"{sweep}/{a}/st_at_max"] = float(st[:, -1].mean())
            summary[f"{sweep}/{a}/st_at_min"] = float(st[:, 0].mean())
            summary[f"{sweep}/{a}/loglog_slope"] = _finite_or(loglog_slope(np.tile(xs, st.shape[0]), st.ravel()), 0.0)
            if a in spiked:
                ratio = float(st.max()) / bounds[a]
                summary[f"{sweep}/{a}/max_st_over_bound"] = ratio
                worst = max(worst, ratio)
                if sweep == "width":
                    g = float(st[:, -1].mean() / st[:, 0].mean())
                    summary[f"width/{a}/growth_max_over_min"] = g
                    growth = max(growth, g)
        runs = seed_runs(series, f"deep/{a}")
        if runs:
            st = np.asarray([r["stable_rank"] for r in runs], dtype=float)
            summary[f"deep/{a}/max_st"] = float(st.max())
            summary[f"deep/{a}/last_layer_st"] = float(st[:, -1].mean())
            if a in spiked:
                deep_worst = max(deep_worst, float(st.max()) / bounds[a])
    for mlp in cfg.gpt_mlps:
        runs = seed_runs(series, f"gpt/{mlp}")
        if runs:
            for key in ("st_attn_input", "st_mlp_input", "st_mlp_post", "token_indicator"):
                summary[f"gpt/{mlp}/max_{key}"] = float(max(max(r[key]) for r in runs))
            summary[f"gpt/{mlp}/max_st_mlp_post_over_dim"] = summary[f"gpt/{mlp}/max_st_mlp_post"] / runs[0]["dim_mlp_post"][0]
            summary[f"gpt/{mlp}/max_st_attn_input_over_dim"] = summary[f"gpt/{mlp}/max_st_attn_input"] / runs[0]["dim_attn_input"][0]
    summary["max_st_over_bound"] = worst
    summary["max_width_growth_spiked"] = growth
    summary["deep/max_st_over_bound"] = deep_worst
    claims: list[Claim] = []
    tol = 1 + cfg.bound_tolerance
    if spiked and any(f"width/{a}/max_st_over_bound" in summary for a in spiked):
        claims.append(Claim(
            "one-layer-below-spike-bound",
            f"one layer at Gaussian init: st(sigma(WX)) <= B(sigma) = E[sigma^2]/E[sigma]^2 (pi/2 for |t|, pi for ReLU, "
            f"pi(q^2+p^2)/(q-p)^2 for leaky ReLU, 6 for ReLU^2, {bounds.get('gelu', math.nan):.3f} for GELU) at every "
            f"width and sample count, up to {cfg.bound_tolerance:.0%} finite-size slack: max st/B",
            worst, tol, "max"))  # fmt: skip
        claims.append(Claim(
            "one-layer-bounded-in-width",
            f"these stable ranks do not grow with width: st at width {cfg.widths[-1]} over st at width "
            f"{cfg.widths[0]} is at most 1.25 for every activation with a nonzero Gaussian mean (worst case)",
            growth, 1.25, "max"))  # fmt: skip
    if "swiglu" in cfg.activations and "width/swiglu/loglog_slope" in summary:
        claims.append(Claim(
            "swiglu-grows-with-width",
            "SwiGLU post-activations (zero mean, no spike) have a stable rank growing with width: log-log slope of "
            "st against width (m = d, n proportional) >= 0.7", summary["width/swiglu/loglog_slope"], 0.7, "min"))  # fmt: skip
    if spiked and any(f"deep/{a}/max_st" in summary for a in spiked):
        claims.append(Claim(
            "deep-net-below-spike-bound",
            f"deep feedforward net ({cfg.depth} layers, width {cfg.deep_width}) at init: every layer's "
            f"post-activation st <= B(sigma) (+{cfg.bound_tolerance:.0%}): max st/B over layers and activations",
            deep_worst, tol, "max"))  # fmt: skip
    plain = [m for m in cfg.gpt_mlps if m != "swiglu" and f"gpt/{m}/max_st_mlp_post_over_dim" in summary]
    if plain:
        value = max(max(summary[f"gpt/{m}/max_st_mlp_post_over_dim"], summary[f"gpt/{m}/max_st_attn_input_over_dim"])
                    for m in plain)  # fmt: skip
        summary["gpt/max_st_over_dim_non_gated"] = value
        claims.append(Claim(
            "gpt-init-low-stable-rank",
            f"tiny GPT at init ({'/'.join(plain)} MLP): the normalized inputs of Q/K/V and the MLP post-activations "
            "have stable rank at most 0.25 of their dimension (max over blocks)", value, 0.25, "max"))  # fmt: skip
    return summary, claims


def init_plot(cfg: InitStableRankConfig, series: dict, summary: dict, folder) -> list[str]:
    leaky = (cfg.leaky_q, cfg.leaky_p)
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    for ax, sweep, xkey, title in ((axes[0], "width", "width", f"m = d = width, n = {cfg.samples_per_width:g} width"),
                                   (axes[1], "samples", "samples", f"m = d = {cfg.sample_width}, n samples")):  # fmt: skip
        for k, a in enumerate(cfg.activations):
            cur = curve(series, f"{sweep}/{a}", "stable_rank", x=xkey)
            if cur is None:
                continue
            mean_band(ax, *cur, f"C{k}", a, marker="o", ms=3)
            b = spike_bound(a, leaky)
            if math.isfinite(b):
                ax.axhline(b, color=f"C{k}", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xkey)
        ax.set_ylabel("st(sigma(W X))")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("post-activation stable rank at Gaussian init (dotted: B = E[s^2]/E[s]^2)", fontsize=11)
    files.append(save(fig, folder, "one_layer.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    for k, a in enumerate(cfg.activations):
        cur = curve(series, f"deep/{a}", "stable_rank", x="layer")
        if cur is not None:
            axes[0].plot(cur[0], cur[1].mean(0), "o-", color=f"C{k}", ms=3, label=a)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("st(A_l)")
    axes[0].set_title(f"deep net at init, width {cfg.deep_width}, n = {cfg.deep_samples}", fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    ax = axes[1]
    token = []
    for j, mlp in enumerate(cfg.gpt_mlps):
        runs = seed_runs(series, f"gpt/{mlp}")
        if not runs:
            continue
        layers = np.asarray(runs[0]["layer"]) + 0.06 * (j - (len(cfg.gpt_mlps) - 1) / 2)
        for key, marker, ls, what in (("st_attn_input", "o", "-", "ln_1 out (Q/K/V input)"),
                                      ("st_mlp_input", "s", "--", "ln_2 out (MLP input)"),
                                      ("st_mlp_post", "^", ":", f"MLP post-act. (dim {runs[0]['dim_mlp_post'][0]})")):  # fmt: skip
            vals = np.mean([r[key] for r in runs], axis=0)
            ax.plot(layers, vals, marker=marker, ls=ls, color=f"C{j}", label=f"{mlp}: {what}")
        token.append(float(np.mean([r["token_indicator"][0] for r in runs])))
    if token:
        ax.axhline(float(np.mean(token)), color="k", ls=":", lw=1, label="token indicator 1/p_max")
    ax.set_xticks(range(cfg.gpt_n_layer))
    ax.set_xlabel("block")
    ax.set_ylabel("stable rank")
    ax.set_title(f"tiny GPT at init ({cfg.gpt_n_layer}x{cfg.gpt_n_embd}), one batch of "
                 f"{cfg.gpt_batch}x{cfg.gpt_context} tokens", fontsize=10)  # fmt: skip
    ax.legend(fontsize=6, ncol=2)
    files.append(save(fig, folder, "deep_and_transformer.png"))
    return files


register(Experiment(
    name="init-stable-rank",
    description="Davis-Drusvyatskiy: post-activation stable rank at Gaussian init vs E[s^2]/E[s]^2",
    config=InitStableRankConfig, run_seed=init_run_seed, analyze=init_analyze, plot=init_plot,
    presets={
        "smoke": dict(widths=(16, 32, 64), sample_width=32, sample_counts=(16, 64), depth=3, deep_width=48,
                      deep_samples=64, gpt_mlps=("gelu", "swiglu"), gpt_n_layer=1, gpt_n_head=2, gpt_n_embd=32,
                      gpt_context=16, gpt_batch=8),
        "demo": dict(widths=(64, 128, 256, 512, 1024), sample_counts=(64, 256, 1024, 4096)),
        "quick": dict(),
        "paper": dict(widths=(64, 128, 256, 512, 1024, 2048, 4096), sample_width=1024,
                      sample_counts=(128, 256, 512, 1024, 2048, 4096, 8192, 16384), depth=12, deep_width=1024,
                      deep_samples=2048, gpt_n_layer=6, gpt_n_head=6, gpt_n_embd=384, gpt_context=256, gpt_batch=64),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 5},
    size=lambda c: f"widths {c.widths[0]}..{c.widths[-1]}, depth {c.depth}, GPT {c.gpt_n_layer}x{c.gpt_n_embd}",
))


# ----------------------------------------------------------------------------------------------
# 2. random-features
# ----------------------------------------------------------------------------------------------


@dataclass
class RandomFeaturesConfig:
    dim: int = 100  # W and W# are dim x dim; A = sigma(V X) has dim rows
    feature_dim: int = 50  # X is feature_dim x samples, V is dim x feature_dim (entries N(0, 1/feature_dim))
    samples: int = 400
    activations: tuple[str, ...] = ("relu", "swiglu")
    relu_steps: int = 1000
    swiglu_steps: int = 400
    restart_every: int = 100  # SpecGD restarted from the GD iterate every this many steps (0: none)
    restart_from_peak: bool = True  # ... and from the GD step where nr(G) peaks
    mid_step: int = 100  # step of the mid-run gap ratio in the summary

    def steps(self, activation: str) -> int:
        return self.swiglu_steps if activation == "swiglu" else self.relu_steps


def random_feature_problem(cfg: RandomFeaturesConfig, activation: str, seed: int) -> dict:
    """``A = sigma(V X)`` (or ``silu(V1 X) * (V2 X)``), ``Y = W# A`` in float64, the least-squares
    optimum ``f*`` (lstsq) and the norms of ``A``."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    X = torch.randn(cfg.feature_dim, cfg.samples, generator=g, dtype=dt)
    V = torch.randn(cfg.dim, cfg.feature_dim, generator=g, dtype=dt) / math.sqrt(cfg.feature_dim)
    if activation == "swiglu":
        V2 = torch.randn(cfg.dim, cfg.feature_dim, generator=g, dtype=dt) / math.sqrt(cfg.feature_dim)
        A = post_activation("swiglu", V @ X, V2 @ X)
    else:
        A = post_activation(activation, V @ X)
    W_sharp = torch.randn(cfg.dim, cfg.dim, generator=g, dtype=dt) / math.sqrt(cfg.dim)
    Y = W_sharp @ A
    s = torch.linalg.svdvals(A)
    W_star = torch.linalg.lstsq(A.T, Y.T, driver="gelsd").solution.T
    n = cfg.samples
    f_star = float(0.5 / n * (W_star @ A - Y).square().sum())
    return {"A": A, "Y": Y, "f_star": f_star, "op_sq": float(s[0] ** 2), "fro_sq": float(s.square().sum()),
            "stable_rank": float(s.square().sum() / s[0] ** 2)}  # fmt: skip


def rf_loss_grad(W: Tensor, A: Tensor, Y: Tensor) -> tuple[float, Tensor]:
    """``(1/2n) ||W A - Y||_F^2`` and its gradient ``(1/n) (W A - Y) A^T``."""
    n = A.shape[1]
    R = W @ A - Y
    return float(0.5 / n * R.square().sum()), R @ A.T / n


def _rf_path(prob: dict, W: Tensor, start: int, stop: int, method: str, keep: frozenset = frozenset()):
    """Run ``method`` (``"gd"`` or ``"specgd"``) from ``W`` at step ``start`` to ``stop``;
    return the series and the iterates at the steps in ``keep`` (before their update)."""
    A, Y, n = prob["A"], prob["Y"], prob["A"].shape[1]
    rec = {"step": [], "loss": [], "objective_gap": [], "nuclear_rank": []}
    saved = {}
    for t in range(start, stop):
        if t in keep:
            saved[t] = W.clone()
        loss, G = rf_loss_grad(W, A, Y)
        if method == "gd":
            s = torch.linalg.svdvals(G)
            W = gd_update(W, G, prob["op_sq"], n)
        else:
            W, s = specgd_update(W, G, prob["fro_sq"], n)
        rec["step"].append(t)
        rec["loss"].append(loss)
        rec["objective_gap"].append(loss - prob["f_star"])
        rec["nuclear_rank"].append(nuclear_rank_of(s))
    return {k: (v if k == "step" else _r8(v)) for k, v in rec.items()}, saved


def _gd_iterate(prob: dict, steps: int) -> Tensor:
    """The GD iterate after ``steps`` steps from zero (the same arithmetic as :func:`_rf_path`)."""
    A, Y, n = prob["A"], prob["Y"], prob["A"].shape[1]
    W = torch.zeros(Y.shape[0], A.shape[0], dtype=A.dtype)
    for _ in range(steps):
        W = gd_update(W, rf_loss_grad(W, A, Y)[1], prob["op_sq"], n)
    return W


def rf_run_seed(cfg: RandomFeaturesConfig, seed: int, ctx) -> dict:
    out = {}
    plans = {}
    for act in cfg.activations:
        T = cfg.steps(act)
        plans[act] = list(range(cfg.restart_every, T, cfg.restart_every)) if cfg.restart_every > 0 else []
    ctx.steps(sum(cfg.steps(a) * (3 + len(plans[a])) for a in cfg.activations), "GD/SpecGD paths")
    for act in cfg.activations:
        T, starts = cfg.steps(act), plans[act]
        prob = random_feature_problem(cfg, act, seed)
        zero = torch.zeros(cfg.dim, cfg.dim, dtype=torch.float64)
        gd, saved = _rf_path(prob, zero, 0, T, "gd", keep=frozenset(starts))
        out[f"{act}/gd"] = gd
        ctx.advance(T)
        out[f"{act}/specgd"] = _rf_path(prob, zero, 0, T, "specgd")[0]
        ctx.advance(T)
        for s0 in starts:
            out[f"{act}/specgd_from_{s0}"] = _rf_path(prob, saved[s0], s0, T, "specgd")[0]
            ctx.advance(T)
        if cfg.restart_from_peak:
            peak = int(np.argmax(gd["nuclear_rank"]))
            path = _rf_path(prob, _gd_iterate(prob, peak), peak, T, "specgd")[0]
            path["start"] = [peak]
            out[f"{act}/specgd_from_peak"] = path
        ctx.advance(T)
        out[f"{act}/data"] = {"stable_rank_A": [prob["stable_rank"]], "f_star": [prob["f_star"]],
                              "op_norm_sq": [prob["op_sq"]], "fro_norm_sq": [prob["fro_sq"]]}  # fmt: skip
    return out


def _at(run: dict, metric: str, step: int) -> float:
    """``run[metric]`` at ``step`` (the last value if the run stopped before it; nan if none)."""
    steps = run["step"]
    if not steps or step < steps[0]:
        return math.nan
    i = min(int(np.searchsorted(steps, step)), len(steps) - 1)
    v = run[metric][i]
    return math.nan if v is None else float(v)


def _paired_ratios(num: list[dict], den: list[dict], metric: str, step: int) -> list[float]:
    """Per seed, ``metric`` of ``num`` over ``metric`` of ``den`` at ``step``, through :func:`_pos`."""
    return [_pos(_at(a, metric, step)) / _pos(_at(b, metric, step)) for a, b in zip(num, den)]


def _gap_ratio(num: list[dict], den: list[dict], step: int) -> float:
    """Geometric mean over seeds of ``gap_num(step) / gap_den(step)`` (gaps floored at 1e-300)."""
    return geomean(_paired_ratios(num, den, "objective_gap", step))


def rf_analyze(cfg: RandomFeaturesConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    for act in cfg.activations:
        gd, spec, data = seed_runs(series, f"{act}/gd"), seed_runs(series, f"{act}/specgd"), seed_runs(series, f"{act}/data")
        if not (gd and spec and data):
            continue
        last = cfg.steps(act) - 1
        mid = min(cfg.mid_step, last)
        st = [d["stable_rank_A"][0] for d in data]
        summary[f"{act}/stable_rank_A"] = float(np.mean(st))
        summary[f"{act}/f_star_max"] = float(max(d["f_star"][0] for d in data))
        summary[f"{act}/gd_final_gap"] = geomean([_at(r, "objective_gap", last) for r in gd])
        summary[f"{act}/specgd_final_gap"] = geomean([_at(r, "objective_gap", last) for r in spec])
        summary[f"{act}/gd_over_specgd_final"] = _gap_ratio(gd, spec, last)
        summary[f"{act}/gd_over_specgd_final_min_seed"] = min(_paired_ratios(gd, spec, "objective_gap", last))
        summary[f"{act}/gd_over_specgd_mid"] = _gap_ratio(gd, spec, mid)
        ratios = [float(np.nanmin(np.asarray(r["nuclear_rank"], dtype=float))) / s for r, s in zip(gd, st)]
        summary[f"{act}/gd_min_nr_over_st"] = float(min(ratios))
        summary[f"{act}/gd_frac_steps_nr_above_st"] = float(np.mean(
            [np.mean(np.asarray(r["nuclear_rank"], dtype=float) >= s) for r, s in zip(gd, st)]))
        summary[f"{act}/gd_nr_peak"] = float(np.mean([_fmax(r["nuclear_rank"]) for r in gd]))
        summary[f"{act}/gd_nr_init"] = float(np.mean([r["nuclear_rank"][0] for r in gd]))
        peak = seed_runs(series, f"{act}/specgd_from_peak")
        if peak:
            summary[f"{act}/peak_step"] = float(np.mean([r["start"][0] for r in peak]))
            summary[f"{act}/gd_over_specgd_from_peak_final"] = _gap_ratio(gd, peak, last)
        methods = {key_of(k) for k in series if k.startswith(f"{act}/specgd_from_")}
        restarts = sorted(methods - {f"{act}/specgd_from_peak"})
        if restarts:
            beating = sum(_gap_ratio(gd, seed_runs(series, m), last) > 1 for m in restarts)
            summary[f"{act}/restarts_beating_gd_at_end"] = float(beating)
            summary[f"{act}/restarts"] = float(len(restarts))
    claims = []
    if "relu/gd_over_specgd_final" in summary:
        claims += [
            Claim("relu-specgd-far-below-gd",
                  f"ReLU features: SpecGD's objective gap after {cfg.relu_steps} steps is at least 10x below GD's "
                  "(geometric mean over seeds of gap_GD / gap_SpecGD)", summary["relu/gd_over_specgd_final"], 10.0),
            Claim("relu-nr-exceeds-st",
                  "ReLU features: along the whole GD path the gradient's nuclear rank exceeds st(A) "
                  "(min over steps and seeds of nr(G_t)/st(A))", summary["relu/gd_min_nr_over_st"], 1.0),
        ]  # fmt: skip
        if "relu/gd_over_specgd_from_peak_final" in summary:
            claims.append(Claim(
                "relu-restart-from-peak-beats-gd",
                "ReLU features: SpecGD restarted from the GD iterate where nr(G) peaks ends below GD "
                "(gap_GD / gap_restart at the last step)", summary["relu/gd_over_specgd_from_peak_final"], 1.0))  # fmt: skip
    if "swiglu/gd_over_specgd_final" in summary:
        r = summary["swiglu/gd_over_specgd_final"]
        value = 1.0 / r if math.isfinite(r) and r > 0 else math.nan
        summary["swiglu/specgd_over_gd_final"] = value
        claims.append(Claim(
            "swiglu-gd-wins",
            f"SwiGLU features (high st(A)): GD ends below SpecGD after {cfg.swiglu_steps} steps "
            "(gap_SpecGD / gap_GD, geometric mean over seeds)", value, 1.0))  # fmt: skip
    return summary, claims


def rf_plot(cfg: RandomFeaturesConfig, series: dict, summary: dict, folder) -> list[str]:
    acts = [a for a in cfg.activations if seed_runs(series, f"{a}/gd")]
    fig, axes = plt.subplots(len(acts), 2, figsize=(11.5, 3.8 * len(acts)), squeeze=False)
    for row, act in zip(axes, acts):
        ax = row[0]
        restarts = sorted({key_of(k) for k in series if k.startswith(f"{act}/specgd_from_")})
        for m in restarts:
            r = seed_runs(series, m)[0]
            peak = m.endswith("peak")
            ax.plot(r["step"], np.maximum(r["objective_gap"], 1e-300), color="C2" if peak else "0.6",
                    lw=1.4 if peak else 0.8, label="SpecGD from nr peak" if peak else None)  # fmt: skip
        for m, color, label in (("gd", "C0", "GD"), ("specgd", "C3", "SpecGD")):
            xs, ys = curve(series, f"{act}/{m}", "objective_gap")
            mean_band(ax, xs, np.maximum(ys, 1e-300), color, label, center=lambda y, axis: np.exp(np.log(y).mean(axis)))
        ax.plot([], [], color="0.6", lw=0.8, label=f"SpecGD restarts (every {cfg.restart_every})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("objective gap f(W_t) - f*")
        ax.set_title(f"{act} features: st(A) = {summary.get(f'{act}/stable_rank_A', math.nan):.2f} (seed 0 restarts)",
                     fontsize=10)  # fmt: skip
        ax.legend(fontsize=7)
        ax = row[1]
        for m, color, label in (("gd", "C0", "nr(grad) along GD"), ("specgd", "C3", "nr(grad) along SpecGD")):
            mean_band(ax, *curve(series, f"{act}/{m}", "nuclear_rank"), color, label)
        ax.axhline(summary.get(f"{act}/stable_rank_A", math.nan), color="k", ls="--", lw=1, label="st(A)")
        ax.set_xlabel("step")
        ax.set_ylabel("nuclear rank")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(f"random features: W {cfg.dim}x{cfg.dim}, V {cfg.dim}x{cfg.feature_dim}, n = {cfg.samples} "
                 "(mean over seeds, min-max band)", fontsize=11)  # fmt: skip
    return [save(fig, folder, "random_features.png")]


register(Experiment(
    name="random-features",
    description="Davis-Drusvyatskiy: GD vs SpecGD on random-feature regression (ReLU: SpecGD wins, SwiGLU: GD wins)",
    config=RandomFeaturesConfig, run_seed=rf_run_seed, analyze=rf_analyze, plot=rf_plot,
    presets={
        "smoke": dict(dim=20, feature_dim=10, samples=60, relu_steps=40, swiglu_steps=30, restart_every=15, mid_step=10),
        "demo": dict(relu_steps=500, swiglu_steps=300),
        "quick": dict(),
        "paper": dict(),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 5},
    size=lambda c: f"W {c.dim}x{c.dim}, n {c.samples}, {c.relu_steps}/{c.swiglu_steps} steps",
))


# ----------------------------------------------------------------------------------------------
# 3. sparse-regression
# ----------------------------------------------------------------------------------------------

LOSSES = ("half_mse", "mse")


@dataclass
class SparseRegressionConfig:
    input_dim: int = 128
    hidden: int = 512
    samples: int = 512
    steps: int = 400
    gd_lr: float = 0.081
    specgd_lr: float = 0.1
    spectral_layers: tuple[int, ...] = (2, 3)  # 1-based; the others take the Euclidean step
    loss: str = "half_mse"  # "half_mse": (1/2n) sum (f(x_i) - y_i)^2 (the paper); "mse": (1/n) sum (authors' script)
    record_every: int = 5  # stable and nuclear ranks every this many steps (the loss every step)
    early_step: int = 100  # step of the "SpecGD is ahead early" claim
    base_seed: int = 42  # data and init of seed k come from base_seed + k


def sparse_problem(cfg: SparseRegressionConfig, seed: int):
    g = torch.Generator().manual_seed(cfg.base_seed + seed)
    dt = torch.float64
    x = torch.randn(cfg.samples, cfg.input_dim, generator=g, dtype=dt)
    y = (x[:, 0] * x[:, 1] * x[:, 2]).unsqueeze(1)
    shapes = [(cfg.hidden, cfg.input_dim), (cfg.hidden, cfg.hidden), (cfg.hidden, cfg.hidden), (1, cfg.hidden)]
    # nn.Linear's default init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    Ws = [(torch.rand(o, i, generator=g, dtype=dt) * 2 - 1) / math.sqrt(i) for o, i in shapes]
    return x, y, Ws


def _sparse_train(cfg: SparseRegressionConfig, method: str, x, y, W0, advance=lambda n: None) -> dict:
    """Full-batch training; the per-layer scale is ``n / ||A_{l-1}||^2`` (Frobenius norm for
    spectral layers, operator norm otherwise), ``A_0 = X``."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    spectral = set(cfg.spectral_layers) if method == "specgd" else set()
    lr = cfg.specgd_lr if method == "specgd" else cfg.gd_lr
    n = x.shape[0]
    Ws = [w.clone().requires_grad_(True) for w in W0]
    tops = [_TopSingular() for _ in Ws]
    rec: dict[str, list] = {"step": [], "loss": [], "diag_step": []}
    for l in (1, 2, 3):
        rec[f"st_A{l}"] = []
        rec[f"nr_G{l}"] = []
    for t in range(cfg.steps + 1):
        acts = [x]
        h = x
        for W in Ws[:3]:
            h = F.relu(h @ W.T).square()
            acts.append(h)
        r = h @ Ws[3].T - y
        loss = r.square().mean() * (0.5 if cfg.loss == "half_mse" else 1.0)
        rec["step"].append(t)
        rec["loss"].append(float(loss.detach()))
        if t == cfg.steps or not math.isfinite(rec["loss"][-1]):
            break
        grads = torch.autograd.grad(loss, Ws)
        diag = t % cfg.record_every == 0
        ops: dict[int, float] = {}

        def op(j: int) -> float:  # ||A_j||_op, computed at most once per step
            if j not in ops:
                ops[j] = tops[j](acts[j])
            return ops[j]

        with torch.no_grad():
            if diag:
                rec["diag_step"].append(t)
                for l in (1, 2, 3):
                    rec[f"st_A{l}"].append(float(acts[l].square().sum()) / op(l) ** 2)
            for l, (W, G) in enumerate(zip(Ws, grads), start=1):
                A = acts[l - 1]
                if l in spectral:
                    new, S = specgd_update(W, G, float(A.square().sum()), n, lr)
                else:
                    new = gd_update(W, G, op(l - 1) ** 2, n, lr)
                    S = torch.linalg.svdvals(G) if diag and l <= 3 else None
                if diag and l <= 3:
                    rec[f"nr_G{l}"].append(nuclear_rank_of(S))
                W.copy_(new)
        advance(1)
    return {k: _r8(v) if k not in ("step", "diag_step") else v for k, v in rec.items()}


def sparse_run_seed(cfg: SparseRegressionConfig, seed: int, ctx) -> dict:
    x, y, W0 = sparse_problem(cfg, seed)
    ctx.steps(2 * cfg.steps, "GD and SpecGD")
    return {m: _sparse_train(cfg, m, x, y, W0, ctx.advance) for m in ("gd", "specgd")}


def sparse_analyze(cfg: SparseRegressionConfig, series: dict) -> tuple[dict, list[Claim]]:
    gd, spec = seed_runs(series, "gd"), seed_runs(series, "specgd")
    summary: dict[str, float] = {}
    if not (gd and spec):
        return summary, []
    early = min(cfg.early_step, cfg.steps)
    for name, runs in (("gd", gd), ("specgd", spec)):
        summary[f"{name}/final_loss"] = geomean([_pos(_at(r, "loss", cfg.steps)) for r in runs])
        summary[f"{name}/loss_at_early_step"] = geomean([_pos(_at(r, "loss", early)) for r in runs])
        summary[f"{name}/diverged_runs"] = float(sum(not math.isfinite(_at(r, "loss", cfg.steps)) for r in runs))
        for l in (1, 2, 3):
            summary[f"{name}/max_st_A{l}"] = _fmax(v for r in runs for v in r[f"st_A{l}"])
        summary[f"{name}/max_hidden_st"] = _fmax(summary[f"{name}/max_st_A{l}"] for l in (1, 2, 3))
    summary["early_loss_ratio_gd_over_specgd"] = geomean(_paired_ratios(gd, spec, "loss", early))
    summary["final_loss_ratio_gd_over_specgd"] = geomean(_paired_ratios(gd, spec, "loss", cfg.steps))
    # the layerwise condition nr(G_l) >= st(A_{l-1}) for the spectral layers, along GD
    init_ratios = []
    for l in cfg.spectral_layers:
        if 2 <= l <= 3:
            for r in gd:  # the per-layer entries keep the last seed's
                nr, st = np.asarray(r[f"nr_G{l}"], dtype=float), np.asarray(r[f"st_A{l - 1}"], dtype=float)
                init_ratios.append(float(nr[0] / st[0]))
                summary[f"gd/nr_G{l}_over_st_A{l - 1}_init"] = init_ratios[-1]
                summary[f"gd/frac_steps_nr_G{l}_above_st_A{l - 1}"] = float(np.mean(nr >= st))
    summary["max_hidden_st"] = _fmax([summary["gd/max_hidden_st"], summary["specgd/max_hidden_st"]])
    claims = [
        Claim("specgd-ahead-early",
              f"SpecGD (layers {','.join(map(str, cfg.spectral_layers))} spectral) is ahead of GD early: loss_GD / "
              f"loss_SpecGD at step {early} (geometric mean over seeds)",
              summary["early_loss_ratio_gd_over_specgd"], 1.0),
        Claim("hidden-stable-rank-small",
              "post-activation stable ranks of the three hidden layers stay at most about 6 (<= 6.6) along both "
              "trainings (max over layers, recorded steps, methods and seeds)", summary["max_hidden_st"], 6.6, "max"),
    ]  # fmt: skip
    if init_ratios:
        summary["gd/min_nr_over_st_init"] = min(init_ratios)
        claims.append(Claim(
            "nr-exceeds-st-at-init",
            "at initialization the spectral layers satisfy nr(G_l) >= st(A_{l-1}) (min ratio over those layers and "
            "seeds)", min(init_ratios), 1.0))  # fmt: skip
    return summary, claims


def sparse_plot(cfg: SparseRegressionConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = {"gd": "C0", "specgd": "C3"}
    for m in ("gd", "specgd"):
        cur = curve(series, m, "loss")
        if cur is None:
            continue
        xs, ys = cur
        axes[0].plot(xs, np.exp(np.log(np.maximum(ys, 1e-300)).mean(0)), color=colors[m],
                     label=f"{m} (lr {cfg.specgd_lr if m == 'specgd' else cfg.gd_lr:g})")  # fmt: skip
        for l, ls in ((1, "-"), (2, "--"), (3, ":")):
            st = curve(series, m, f"st_A{l}", x="diag_step")
            nr = curve(series, m, f"nr_G{l}", x="diag_step")
            axes[1].plot(st[0], st[1].mean(0), color=colors[m], ls=ls, label=f"{m}: A{l}")
            axes[2].plot(nr[0], nr[1].mean(0), color=colors[m], ls=ls, label=f"{m}: W{l}")
    axes[0].axvline(min(cfg.early_step, cfg.steps), color="gray", ls=":", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_title(f"training loss ({'(1/2n)' if cfg.loss == 'half_mse' else '(1/n)'} sum (f - y)^2)", fontsize=10)
    axes[1].set_title("post-activation stable rank st(A_l)", fontsize=10)
    axes[2].set_title("gradient nuclear rank nr(G_l)", fontsize=10)
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"y = x1 x2 x3, x in R^{cfg.input_dim}, n = {cfg.samples}, {cfg.input_dim}-{cfg.hidden}-{cfg.hidden}-"
                 f"{cfg.hidden}-1 ReLU^2 net (mean over seeds)", fontsize=11)  # fmt: skip
    return [save(fig, folder, "sparse_regression.png")]


register(Experiment(
    name="sparse-regression",
    description="Davis-Drusvyatskiy: 4-layer ReLU^2 net on y = x1 x2 x3, GD vs SpecGD on the hidden layers",
    config=SparseRegressionConfig, run_seed=sparse_run_seed, analyze=sparse_analyze, plot=sparse_plot,
    presets={
        "smoke": dict(input_dim=32, hidden=64, samples=128, steps=40, record_every=4, early_step=20),
        "demo": dict(hidden=256, steps=300, record_every=10),
        "quick": dict(),
        "paper": dict(steps=2000),
    },  # fmt: skip
    seeds={"smoke": 1, "quick": 1, "paper": 3},
    size=lambda c: f"{c.input_dim}-{c.hidden}x3-1, n {c.samples}, {c.steps} steps",
))


# ----------------------------------------------------------------------------------------------
# 4. nuclear-rank-growth
# ----------------------------------------------------------------------------------------------


@dataclass
class NuclearRankGrowthConfig:
    dims: tuple[int, ...] = (64, 128, 256, 512)  # feature dimension k (W is k x k)
    input_ratio: float = 0.5  # d = input_ratio * k
    sample_ratio: float = 2.0  # n = sample_ratio * k
    activation: str = "relu"
    steps: int = 1024
    record_points: int = 64  # nr recorded at steps 0..8 and this many log-spaced steps up to `steps`


def _record_steps(cfg: NuclearRankGrowthConfig) -> list[int]:
    grid = set(range(min(9, cfg.steps + 1)))
    if cfg.steps > 0:
        grid |= {int(round(s)) for s in np.geomspace(1, cfg.steps, max(2, cfg.record_points))}
    return sorted(grid)


def gd_gradient_singular_values(A: Tensor, W_sharp: Tensor, steps: list[int]) -> list[Tensor]:
    """Singular values of the GD gradient ``G_t`` at each ``t`` in ``steps`` for
    ``min (1/2n) ||W A - W# A||^2`` from ``W_0 = 0`` with step ``n / ||A||_op^2``, in closed form.

    With ``S = A A^T / n = U diag(lam) U^T`` and ``eta = 1/lam_max``: ``W_t - W# = -W# (I - eta S)^t``
    and ``G_t = (W_t - W#) S = -W# U diag((1 - eta lam)^t lam) U^T``, whose singular values are
    those of ``(W# U) diag((1 - eta lam)^t lam)``. Exact in exact arithmetic (the tests compare it
    with the iteration), and one ``k x k`` SVD per recorded step instead of a GD run.
    """
    n = A.shape[1]
    lam, U = torch.linalg.eigh(A @ A.T / n)
    lam = lam.clamp_min(0)
    eta = 1.0 / float(lam.max())
    WU = W_sharp @ U
    return [torch.linalg.svdvals(WU * ((1 - eta * lam) ** t * lam)) for t in steps]


def nr_run_seed(cfg: NuclearRankGrowthConfig, seed: int, ctx) -> dict:
    steps = _record_steps(cfg)
    out = {}
    ctx.steps(len(cfg.dims), "feature dimensions")
    for k in cfg.dims:
        rf = RandomFeaturesConfig(dim=k, feature_dim=max(1, round(cfg.input_ratio * k)),
                                  samples=max(1, round(cfg.sample_ratio * k)))  # fmt: skip
        g = torch.Generator().manual_seed(seed * 100003 + k)
        X = torch.randn(rf.feature_dim, rf.samples, generator=g, dtype=torch.float64)
        V = torch.randn(k, rf.feature_dim, generator=g, dtype=torch.float64) / math.sqrt(rf.feature_dim)
        A = post_activation(cfg.activation, V @ X)
        W_sharp = torch.randn(k, k, generator=g, dtype=torch.float64) / math.sqrt(k)
        svals = gd_gradient_singular_values(A, W_sharp, steps)
        out[f"k{k}"] = {"step": steps, "nuclear_rank": _r8(nuclear_rank_of(s) for s in svals),
                        "k": [k], "stable_rank_A": [fast_stable_rank(A)]}  # fmt: skip
        ctx.advance()
    return out


def nr_analyze(cfg: NuclearRankGrowthConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {}
    ks, nr0, nr1 = [], [], []
    for k in cfg.dims:
        runs = seed_runs(series, f"k{k}")
        if not runs:
            continue
        for r in runs:
            ks.append(k)
            nr0.append(r["nuclear_rank"][0])
            nr1.append(r["nuclear_rank"][1] if len(r["nuclear_rank"]) > 1 else math.nan)
        summary[f"k{k}/nr_init"] = float(np.mean([r["nuclear_rank"][0] for r in runs]))
        summary[f"k{k}/nr_one_step"] = float(np.mean([r["nuclear_rank"][min(1, len(r["nuclear_rank"]) - 1)] for r in runs]))
        summary[f"k{k}/nr_max"] = float(np.mean([max(r["nuclear_rank"]) for r in runs]))
        summary[f"k{k}/nr_final"] = float(np.mean([r["nuclear_rank"][-1] for r in runs]))
        summary[f"k{k}/stable_rank_A"] = float(np.mean([r["stable_rank_A"][0] for r in runs]))
    claims = []
    if len(set(ks)) >= 2:
        s0, s1 = loglog_slope(ks, nr0), loglog_slope(ks, nr1)
        summary["loglog_slope_nr_init"] = _finite_or(s0, math.inf)
        summary["loglog_slope_nr_one_step"] = _finite_or(s1, 0.0)
        maxes = [summary[f"k{k}/nr_max"] for k in cfg.dims if f"k{k}/nr_max" in summary]
        summary["loglog_slope_nr_max"] = _finite_or(loglog_slope([k for k in cfg.dims if f"k{k}/nr_max" in summary], maxes), 0.0)
        x, y = np.asarray(ks, dtype=float), np.asarray(nr1, dtype=float)
        ok = np.isfinite(y)
        summary["linear_slope_nr_one_step"] = float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 else math.nan
        claims = [
            Claim("nr-init-about-constant",
                  "at the zero init the gradient's nuclear rank is about constant in k: |log-log slope of nr(G_0) "
                  "against k| <= 0.25", abs(summary["loglog_slope_nr_init"]), 0.25, "max"),
            Claim("nr-one-step-linear",
                  "after one GD step the nuclear rank grows about linearly in k: log-log slope of nr(G_1) against "
                  "k >= 0.7", summary["loglog_slope_nr_one_step"], 0.7),
        ]  # fmt: skip
    return summary, claims


def nr_plot(cfg: NuclearRankGrowthConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    for j, k in enumerate(cfg.dims):
        cur = curve(series, f"k{k}", "nuclear_rank")
        if cur is None:
            continue
        mean_band(axes[0], cur[0] + 1, cur[1], f"C{j}", f"k = {k}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("GD step + 1")
    axes[0].set_ylabel("nr(grad)")
    axes[0].set_title("nuclear rank of the GD gradient (ReLU random features)", fontsize=10)
    axes[0].legend(fontsize=8)
    ks = [k for k in cfg.dims if f"k{k}/nr_init" in summary]
    for key, marker, label in (("nr_init", "o", "initialization"), ("nr_one_step", "s", "after one step"),
                               ("nr_max", "^", "max along GD")):  # fmt: skip
        vals = [summary[f"k{k}/{key}"] for k in ks]
        slope = summary.get(f"loglog_slope_{key}", math.nan)
        axes[1].plot(ks, vals, marker + "-", label=f"{label} (log-log slope {slope:.2f})")
    axes[1].plot(ks, [summary[f"k{k}/stable_rank_A"] for k in ks], "k--", label="st(A)")
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("feature dimension k (d = k/2, n = 2k)")
    axes[1].set_ylabel("nr(grad)")
    axes[1].legend(fontsize=8)
    return [save(fig, folder, "nuclear_rank_growth.png")]


register(Experiment(
    name="nuclear-rank-growth",
    description="Davis-Drusvyatskiy: nuclear rank of the random-feature gradient at init and after one GD step vs k",
    config=NuclearRankGrowthConfig, run_seed=nr_run_seed, analyze=nr_analyze, plot=nr_plot,
    presets={"smoke": dict(dims=(16, 32, 64), steps=16, record_points=8), "quick": dict(), "paper": dict()},
    seeds={"smoke": 1, "demo": 1, "quick": 3, "paper": 3},
    size=lambda c: f"k in {c.dims}, {c.steps} steps",
))


# ----------------------------------------------------------------------------------------------
# 5. lm-spectra
# ----------------------------------------------------------------------------------------------

HIDDEN_KINDS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.in", "mlp.out")


@dataclass
class LMSpectraConfig:
    corpus: Optional[str] = None  # a text file; None: the embedded standard-library corpus
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    context: int = 64
    batch_size: int = 16
    mlp: str = "gelu"
    tied: bool = False  # False (default): wte and lm_head are separate blocks (as in modded-nanogpt)
    optimizer: str = "muon"  # any of training.LM_METHODS
    lr: float = 0.05  # spectral lr (Muon); AdamW on embeddings, head and norms at adamw_lr
    adamw_lr: float = 3e-3
    iters: int = 2000
    warmup: int = 50
    monitor_every: int = 25
    eval_every: int = 250
    eval_batches: int = 10


def _add_blocks(mon: SpectralMonitor, model: GPT, cfg: LMSpectraConfig) -> None:
    for i, block in enumerate(model.transformer.h):
        mon.add_fused(f"h{i}.attn", block.attn.c_attn)
        mon.add_block(f"h{i}.attn.o", block.attn.c_proj)
        if cfg.mlp == "swiglu":
            mon.add_block(f"h{i}.mlp.in", block.mlp.w1)
            mon.add_block(f"h{i}.mlp.in_up", block.mlp.w2)
        else:
            mon.add_block(f"h{i}.mlp.in", block.mlp.c_fc)
        mon.add_block(f"h{i}.mlp.out", block.mlp.c_proj)
    mon.add_block("embedding", model.transformer.wte, kind="embedding")
    mon.add_block("lm_head", model.lm_head)


def lm_run_seed(cfg: LMSpectraConfig, seed: int, ctx) -> dict:
    corpus = load_corpus(cfg.corpus)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=corpus.vocab_size, context=cfg.context, n_layer=cfg.n_layer, n_head=cfg.n_head,
                          n_embd=cfg.n_embd, mlp=cfg.mlp, tied=cfg.tied)).to(ctx.device)  # fmt: skip
    opt = lm_optimizer(cfg.optimizer, model, cfg.lr, cfg.adamw_lr)
    mon = SpectralMonitor(model, every=cfg.monitor_every, layers=[])
    _add_blocks(mon, model, cfg)
    ctx.steps(cfg.iters, "training")
    try:
        train = train_lm(model, corpus, opt, iters=cfg.iters, batch_size=cfg.batch_size, context=cfg.context,
                         warmup=min(cfg.warmup, max(1, cfg.iters // 10)), eval_every=cfg.eval_every,
                         eval_batches=cfg.eval_batches, seed=seed, advance=ctx.advance,
                         on_step=lambda step: mon.step())  # fmt: skip
        frame = mon.frame()
    finally:
        mon.close()
    out = {"training": {k: _r8(v) if k != "step" else v for k, v in train.items()}}
    for name, rows in frame.groupby("block", sort=False):
        rows = rows.sort_values("step")
        dim = int(str(rows["shape"].iloc[0]).split("x")[1])
        out[f"block/{name}"] = {"step": [int(s) for s in rows["step"]], "st_A": _r8(rows["st_A"]),
                                "nr_G": _r8(rows["nr_G"]), "in_dim": [dim]}  # fmt: skip
    return out


def _kind(block: str) -> str:
    """``"h0.attn.q"`` -> ``"attn.q"``, ``"h1.mlp.in_up"`` -> ``"mlp.in"``, others unchanged."""
    kind = block.split(".", 1)[1] if block.startswith("h") and "." in block else block
    return "mlp.in" if kind == "mlp.in_up" else kind


def _blocks(series: dict) -> list[str]:
    return sorted({key_of(k)[len("block/"):] for k in series if k.startswith("block/")})


def lm_analyze(cfg: LMSpectraConfig, series: dict) -> tuple[dict, list[Claim]]:
    summary: dict[str, float] = {"tied": float(cfg.tied)}
    train = seed_runs(series, "training")
    if train:
        summary["final_val_loss"] = float(np.mean([r["val_loss"][-1] for r in train]))
        summary["initial_val_loss"] = float(np.mean([r["val_loss"][0] for r in train]))
    post, normed, ratios = [], [], []
    for b in _blocks(series):
        runs = seed_runs(series, f"block/{b}")
        kind = _kind(b)
        st = np.concatenate([np.asarray(r["st_A"], dtype=float) for r in runs])
        nr = np.concatenate([np.asarray(r["nr_G"], dtype=float) for r in runs])
        dim = runs[0]["in_dim"][0]
        summary[f"{b}/max_st_A"] = float(st.max())
        summary[f"{b}/median_st_A"] = float(np.median(st))
        summary[f"{b}/median_nr_G"] = float(np.median(nr))
        ok = st > 0
        if ok.any():
            summary[f"{b}/median_nr_over_st"] = float(np.median(nr[ok] / st[ok]))
        if kind == "mlp.out":
            post.append(float(st.max()) / dim)
        if kind in ("attn.q", "mlp.in", "lm_head"):  # LayerNorm outputs: ln_1, ln_2, ln_f
            normed.append(float(st.max()) / dim)
        if kind in HIDDEN_KINDS:
            ratios.extend((nr[ok] / st[ok]).tolist())
    claims = []
    if post:
        summary["max_mlp_post_st_over_dim"] = max(post)
        claims.append(Claim(
            "mlp-post-activation-low-st",
            "MLP post-activations (input of mlp.c_proj) keep a stable rank below 0.25 of their dimension "
            "throughout training (max over blocks, recorded steps and seeds of st/dim)", max(post), 0.25, "max"))  # fmt: skip
    if normed:
        summary["max_normalized_input_st_over_dim"] = max(normed)
        claims.append(Claim(
            "normalized-inputs-low-st",
            "LayerNorm outputs feeding Q/K/V, the MLP and the head keep a stable rank below 0.25 of the width "
            "throughout training (max over blocks, steps and seeds of st/dim)", max(normed), 0.25, "max"))  # fmt: skip
    if ratios:
        arr = np.asarray(ratios)
        summary["hidden_median_nr_over_st"] = float(np.median(arr))
        summary["hidden_frac_nr_above_st"] = float(np.mean(arr >= 1))
        claims.append(Claim(
            "hidden-nr-above-st",
            "hidden-matrix gradients (Q, K, V, O, MLP in/out) have nuclear rank above the stable rank of their "
            "incoming activations: median of nr(G)/st(A) over blocks, recorded steps and seeds > 1",
            summary["hidden_median_nr_over_st"], 1.0))  # fmt: skip
    return summary, claims


def lm_plot(cfg: LMSpectraConfig, series: dict, summary: dict, folder) -> list[str]:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    blocks = _blocks(series)
    styles = {"attn.q": ("C0", "-"), "attn.k": ("C1", "-"), "attn.v": ("C2", "-"), "attn.o": ("C3", "-"),
              "mlp.in": ("C4", "--"), "mlp.out": ("C5", "--"), "embedding": ("k", ":"), "lm_head": ("C7", ":")}  # fmt: skip
    act_label = {"attn.q": "ln_1 output (Q/K/V input)", "attn.o": "attention output (O input)",
                 "mlp.in": "ln_2 output (MLP input)", "mlp.out": "MLP post-activation",
                 "embedding": "token indicator 1/p_max", "lm_head": "ln_f output (head input)"}  # fmt: skip
    seen_a, seen_g = set(), set()
    for b in blocks:
        kind = _kind(b)
        if b.endswith("in_up"):
            continue
        cur = curve(series, f"block/{b}", "st_A")
        nrc = curve(series, f"block/{b}", "nr_G")
        color, ls = styles.get(kind, ("0.5", "-"))
        if kind in act_label:
            axes[0].plot(cur[0], cur[1].mean(0), color=color, ls=ls, lw=1,
                         label=act_label[kind] if kind not in seen_a else None)  # fmt: skip
            seen_a.add(kind)
        axes[1].plot(nrc[0], nrc[1].mean(0), color=color, ls=ls, lw=1, label=kind if kind not in seen_g else None)
        seen_g.add(kind)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("st(A) of the block's input")
    axes[1].set_ylabel("nr(G) of the block's gradient")
    axes[0].set_title(f"activation stable rank (width {cfg.n_embd}, MLP {cfg.mlp})", fontsize=10)
    axes[1].set_yscale("log")
    axes[1].set_title("gradient nuclear rank" + (" (wte = lm_head: tied)" if cfg.tied else ""), fontsize=10)
    for ax in axes[:2]:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    train = curve(series, "training", "val_loss")
    if train is not None:
        axes[2].plot(train[0], train[1].mean(0), color="C0")
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("validation loss")
        axes[2].set_title(f"{cfg.optimizer}, lr {cfg.lr:g} (AdamW {cfg.adamw_lr:g})", fontsize=10)
    fig.suptitle(f"tiny GPT {cfg.n_layer}x{cfg.n_embd} on characters: st(A) and nr(G) along training (mean over seeds)",
                 fontsize=11)  # fmt: skip
    return [save(fig, folder, "lm_spectra.png")]


register(Experiment(
    name="lm-spectra",
    description="Davis-Drusvyatskiy: activation stable ranks and gradient nuclear ranks of a tiny GPT trained with Muon",
    config=LMSpectraConfig, run_seed=lm_run_seed, analyze=lm_analyze, plot=lm_plot,
    presets={
        "smoke": dict(n_layer=1, n_head=2, n_embd=32, context=16, batch_size=8, iters=30, warmup=5, monitor_every=10,
                      eval_every=15, eval_batches=2),
        "demo": dict(iters=1000),
        "quick": dict(),
        "paper": dict(n_layer=6, n_head=6, n_embd=384, context=256, batch_size=64, iters=5000, warmup=200, lr=0.02,
                      adamw_lr=1e-3, monitor_every=100, eval_every=250, eval_batches=50),
    },  # fmt: skip
    seeds={"smoke": 1, "demo": 1, "quick": 2, "paper": 3},
    size=lambda c: f"{c.n_layer}x{c.n_embd}, ctx {c.context}, {c.iters} it, {c.optimizer}",
))
