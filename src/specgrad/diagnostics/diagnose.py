"""``diagnose``: one forward/backward, a row per block, and optionally a measured probe."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Optional, Union

import pandas as pd
import torch
from torch import Tensor, nn

from ..linalg import NonFiniteStatisticError, least_squares_smoothness, majorization_step, polar_svd
from ..views import unwrap
from ..views import MatrixView
from .monitor import MAX_DIM, Block, SpectralMonitor

# -- tuning ------------------------------------------------------------------------------
# The curvature estimate's finite-difference step t starts where the second difference
# t^2 <G, H G> would be this fraction of the loss for curvature c = 1 (least squares is
# exact for any t) ...
CURVATURE_CHANGE = 1e-3
# ... and grows tenfold (at most CURVATURE_TRIES times) until the second difference is at
# least this fraction of the loss: a thousand times float32 rounding, which a float64 copy
# keeps where a model computes in float32 on purpose (transformers' RMSNorm, rotary
# embedding and loss upcast to float32, which downcasts float64).
CURVATURE_RESOLUTION = 1e-4
CURVATURE_TRIES = 4

COLUMNS = ["block", "shape", "st_A", "nr_G", "ratio", "verdict", "predicted_gain", "grad_fro", "grad_nuc",
           "act_fro", "act_op", "rows", "kind", "parameter", "tied"]  # fmt: skip
PROBE_COLUMNS = ["curvature", "loss_euclidean", "loss_spectral", "measured", "agrees", "probe_note"]


def batch_loss(model: nn.Module, batch, loss_fn: Optional[Callable] = None) -> Tensor:
    """The scalar loss of ``batch``, in any form :func:`diagnose` takes: a function of the
    model, a dict of keyword inputs (the model returns ``.loss``), ``(inputs, targets)`` with
    ``loss_fn(outputs, targets)``, or inputs (``loss_fn(outputs)``, or the model's loss)."""
    if _is_call(batch):
        out = batch(model)
    elif isinstance(batch, Mapping):
        out = model(**batch)
    elif isinstance(batch, (tuple, list)) and len(batch) == 2 and loss_fn is not None:
        inputs, targets = batch
        return loss_fn(model(inputs), targets)
    else:
        out = model(batch)
    if loss_fn is not None:
        return loss_fn(out)
    if isinstance(out, Tensor):
        return out
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError(f"the model returned {type(out).__name__} without .loss: pass loss_fn")
    return loss


def _is_call(batch) -> bool:
    return callable(batch) and not isinstance(batch, (nn.Module, Tensor))


def _cast(x: Any, dtype: torch.dtype) -> Any:
    """``x`` with its floating tensors (in tuples, lists and dicts) cast to ``dtype``."""
    if isinstance(x, Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(v, dtype) for v in x)
    if isinstance(x, Mapping):
        return {k: _cast(v, dtype) for k, v in x.items()}
    return x


class _Randomness:
    """The random state at the start of :func:`diagnose`, replayed for every forward, so
    dropout draws the same masks in the gradient pass and each probed loss (and the caller's
    random stream is left as it was)."""

    def __init__(self, model: nn.Module):
        self.devices = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for d, s in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(s, d)
            yield


@contextmanager
def _as_found(model: nn.Module):
    """Restore every module's train/eval mode and every buffer (BatchNorm's running
    statistics) on exit."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def diagnose(
    model: nn.Module,
    batch,
    loss_fn: Optional[Callable] = None,
    *,
    probe: bool = False,
    curvature: Union[str, float] = "estimate",
    layers: Optional[Iterable[str]] = None,
    max_dim: int = MAX_DIM,
    views: Optional[Mapping[str, MatrixView]] = None,
    probe_dtype: Optional[torch.dtype] = torch.float64,
) -> pd.DataFrame:
    """Which blocks of ``model`` would a spectral step help, on this batch?

    Runs one forward/backward in training mode and returns a row per block of
    :class:`SpectralMonitor` (every matrix it can see, by the model's matrix views: a fused
    q/k/v as three blocks, an expert stack as one per expert):
    ``block, shape, st_A, nr_G, ratio, verdict, predicted_gain``, where
    ``predicted_gain = nr(G) / st(A)`` is the ratio of the guaranteed one-step decreases,
    spectral over Euclidean; ``nr >= st`` favours the spectral step and ``nr >= 2 st``
    guarantees it lands lower for least squares. ``verdict`` is ``"no gradient"`` for an
    all-zero (or absent) gradient and ``"no input"`` for a block whose module did not run.
    ``parameter`` names the weight; ``tied`` lists every module using a tied weight
    (reported once, its combined gradient against the input of its multiplying use).
    Matrices the monitor cannot see are in ``frame.attrs["skipped"]`` (block -> reason).

    ``batch``:

    - ``(inputs, targets)`` with ``loss_fn``: ``loss_fn(model(inputs), targets)``;
    - a dict (transformers style, e.g. ``input_ids`` and ``labels``): ``model(**batch)``;
    - a function: ``batch(model)``;
    - anything else: ``model(batch)``;

    the loss is then ``loss_fn(output)``, or without ``loss_fn`` the output itself (a
    scalar) or its ``.loss``.

    With ``probe=True`` it also measures: for each block alone it takes the Euclidean step
    ``W - G / L_F`` and the spectral step ``W - (||G||_* / L_op) polar(G)``, with
    ``L_F = c ||A||_op^2 / n`` and ``L_op = c ||A||_F^2 / n`` (``n`` activation rows),
    evaluates the loss, restores the weights, and adds ``loss_euclidean``,
    ``loss_spectral``, ``measured`` (the winner), ``agrees`` and ``probe_note`` (why a
    block was not probed: no exact Gram past ``max_dim`` for the curvature estimate, an
    embedding, no gradient, a curvature that is not positive). The output-space curvature
    ``c`` is given (``curvature=1.0`` for ``(1/2n) sum ||W a - y||^2``) or estimated per block
    (``"estimate"``) from the loss's second difference along ``G``:
    ``c = <G, H G> / (||G A^T||_F^2 / n)``, exact for least squares; its step is sized by
    the loss (see :data:`CURVATURE_CHANGE`), so the second difference stands well above
    rounding. Loss differences this small are rounding noise in float32, so the probe runs
    on a ``probe_dtype`` (float64) copy of the model, its own gradient pass included (its
    inputs cast at the model's entrance; a function ``batch`` must call the model it is
    given), when the model has another dtype: memory for a second copy of the weights and
    activations; ``probe_dtype=None`` probes the model itself. Layers that compute in
    float32 on purpose (transformers' RMSNorm and loss) keep float32 rounding in the copy.
    Every forward replays the random state diagnose started with (the same dropout masks).

    The model's weights, buffers (BatchNorm running statistics), train/eval modes and the
    caller's random state are left as they were found; gradients are those of this batch
    afterwards. A compiled model is diagnosed through its original modules. A NaN or Inf in
    an activation or gradient (a NaN loss) raises
    :class:`~specgrad.linalg.NonFiniteStatisticError` naming the blocks.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
        >>> x, y = torch.randn(256, 10), torch.randn(256, 3)
        >>> report = diagnose(net, (x, y), torch.nn.functional.mse_loss, probe=True)
        >>> list(report.columns)[:7]
        ['block', 'shape', 'st_A', 'nr_G', 'ratio', 'verdict', 'predicted_gain']
        >>> bool(report["measured"].isin(["spectral", "euclidean"]).all())  # a float64 copy is probed
        True
    """
    if not (curvature == "estimate" or (isinstance(curvature, (int, float)) and curvature > 0)):
        raise ValueError(f"curvature must be 'estimate' or a positive number, got {curvature!r}")
    model = unwrap(model)
    randomness = _Randomness(model)
    settings = dict(layers=None if layers is None else list(layers), max_dim=max_dim, views=views)
    with _as_found(model):
        loss, frame, skipped, blocks, grams = _measure(model, batch, loss_fn, randomness, settings, keep=probe)
        if probe:
            params = [p for p in model.parameters() if p.is_floating_point()]
            if probe_dtype is None or all(p.dtype == probe_dtype for p in params):
                target, measured = model, (loss, frame, blocks, grams)
            else:
                target = _copy(model, probe_dtype)
                target.register_forward_pre_hook(lambda m, a, k: (_cast(a, probe_dtype), _cast(k, probe_dtype)),
                                                 with_kwargs=True)  # fmt: skip
                batch = batch if _is_call(batch) else _cast(batch, probe_dtype)
                loss64, rows64, _, blocks64, grams64 = _measure(target, batch, loss_fn, randomness, settings, keep=True)
                measured = (loss64, rows64, blocks64, grams64)
            results = _probe_all(target, batch, loss_fn, randomness, frame, *measured, curvature)
            frame = pd.concat([frame, pd.DataFrame(results, index=frame.index, columns=PROBE_COLUMNS)], axis=1)
    frame.attrs["skipped"] = skipped
    return frame


def _copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A ``dtype`` copy of ``model``; transformers' expert kernels (``grouped_mm``, float32
    and half precision only) replaced by their eager loop."""
    try:
        target = copy.deepcopy(model).to(dtype)
    except Exception as e:  # a model holding something deepcopy cannot copy
        raise ValueError(f"diagnose(probe=True) probes a {dtype} copy of the model, and copying it failed ({e}); "
                         "pass probe_dtype=None to probe the model in its own dtype") from e  # fmt: skip
    if hasattr(target, "set_experts_implementation") and "eager" not in str(target.get_experts_implementation()):
        try:
            target.set_experts_implementation("eager")
        except (ValueError, NotImplementedError):
            pass
    return target


def _measure(model, batch, loss_fn, randomness, settings, keep: bool):
    """One monitored forward/backward: the loss, the rows, the skipped blocks, and (with
    ``keep``) the blocks and copies of their exact Grams (the monitor reuses its buffers)."""
    model.train()
    model.zero_grad(set_to_none=True)
    with SpectralMonitor(model, every=1, **settings) as mon, randomness.replay():
        loss = batch_loss(model, batch, loss_fn)
        loss.backward()
        blocks = {name: mon.block(name) for name in mon.blocks}
        grams = {n: None if (g := b.gram()) is None else g.clone() for n, b in blocks.items()} if keep else {}
        try:
            recorded = {r["block"]: r for r in mon.step()}
        except NonFiniteStatisticError as e:
            raise NonFiniteStatisticError(f"diagnose: {e} (the loss on this batch is {float(loss.detach())})") from e
        skipped = dict(mon.skipped)
    rows = []
    for name, b in blocks.items():
        r = recorded.get(name)
        if r is None:
            G = b.grad()
            no_grad = G is None or not bool(G.any())
            nan = math.nan
            shape = "x".join(map(str, b.matrix(b.param().detach()).shape))
            r = dict(block=name, kind=b.kind, shape=shape, rows=0,
                     st_A=nan, nr_G=nan, ratio=nan, verdict="no gradient" if no_grad else "no input", grad_fro=nan,
                     grad_nuc=nan, act_fro=nan, act_op=nan)  # fmt: skip
        rows.append(dict(r, predicted_gain=r["ratio"], parameter=b.parameter, tied=", ".join(b.uses)))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return loss.detach(), frame, skipped, blocks, grams


def _probe_all(model, batch, loss_fn, randomness, frame, loss, measured, blocks, grams, curvature) -> list[dict]:
    """The probe of every row of ``frame``, with the blocks, Grams and records ``measured``
    of the model that is probed (the model itself, or its float64 copy)."""
    by_name = {r.block: r for r in measured.itertuples()}
    base = float(loss)

    def evaluate() -> float:
        with torch.no_grad(), randomness.replay():
            return float(batch_loss(model, batch, loss_fn))

    out = []
    for r in frame.itertuples():
        m = by_name.get(r.block)
        note = _unprobed(m, blocks.get(r.block), grams.get(r.block), curvature)
        if note:
            out.append(dict(curvature=math.nan, loss_euclidean=math.nan, loss_spectral=math.nan, measured="n/a",
                            agrees=None, probe_note=note))  # fmt: skip
            continue
        result = _probe(evaluate, blocks[r.block], grams[r.block], m, base, curvature)
        result["agrees"] = None if result["measured"] == "n/a" else result["measured"] == r.verdict
        out.append(result)
    return out


def _unprobed(row, block: Optional[Block], gram, curvature) -> str:
    """Why a block cannot be probed ("" when it can)."""
    if row is None or block is None:
        return "not measured in the probe's pass"
    if row.verdict in ("no gradient", "no input"):
        return row.verdict
    if block.kind == "embedding":
        return "embedding (token counts): not probed"
    if curvature == "estimate" and gram is None:
        return "no exact Gram (wider than max_dim) for the curvature estimate: pass curvature="
    return ""


def _probe(evaluate: Callable[[], float], block: Block, gram, row, base: float, curvature) -> dict:
    W = block.param()
    G = block.grad().detach().clone()
    M = block.view.matrices(W.data)
    # the view of a transposed, split or non-contiguous weight may be a copy: write it back
    writes_through = M.untyped_storage().data_ptr() == W.data.untyped_storage().data_ptr()
    target = M[block.index] if block.rows is None else M[block.index][block.rows]
    saved = target.clone()

    def put(value: Tensor) -> None:
        target.copy_(value)
        if not writes_through:
            W.data.copy_(block.view.restore(M))

    def loss_at(delta: Tensor) -> float:
        put(saved - delta)
        try:
            return evaluate()
        finally:
            put(saved)

    n = row.rows
    if curvature == "estimate":
        GA_sq = float(torch.einsum("ij,jk,ik->", G.double(), gram, G.double()))  # ||G A^T||_F^2
        if base != 0 and GA_sq > 0:
            t = math.sqrt(CURVATURE_CHANGE * abs(base) * n / GA_sq)
        else:
            t = 1e-3 / max(row.grad_fro, 1e-30) * max(float(saved.norm()), 1.0)
        for _ in range(CURVATURE_TRIES):
            second = (loss_at(t * G) - 2 * base + loss_at(-t * G)) / t**2
            if abs(second) * t**2 >= CURVATURE_RESOLUTION * abs(base):
                break
            t *= 10
        else:
            return dict(curvature=math.nan, loss_euclidean=math.nan, loss_spectral=math.nan, measured="n/a",
                        agrees=None, probe_note="curvature along G below the loss's rounding")  # fmt: skip
        c = second / (GA_sq / n) if GA_sq > 0 else math.nan
    else:
        c = float(curvature)
    L_F, L_op = least_squares_smoothness(row.act_fro**2, row.act_op**2, int(n), c) if c > 0 else (math.nan, math.nan)
    if not (L_F > 0 and L_op > 0):
        return dict(curvature=c, loss_euclidean=math.nan, loss_spectral=math.nan, measured="n/a", agrees=None,
                    probe_note="curvature along G is not positive")  # fmt: skip
    loss_e = loss_at(majorization_step(G, L_F, "frobenius"))
    loss_s = loss_at(majorization_step(G, L_op, "spectral", polar=polar_svd(G.double()).to(G.dtype),
                                       nuclear=row.grad_nuc))  # fmt: skip
    measured = "spectral" if loss_s < loss_e else "euclidean"
    return dict(curvature=c, loss_euclidean=loss_e, loss_spectral=loss_s, measured=measured, agrees=None, probe_note="")
