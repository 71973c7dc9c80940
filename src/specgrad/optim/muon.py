"""Muon: momentum, then orthogonalization, for the hidden matrices of a network."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..linalg import polar_express_schedule
from .chain import ChainOptimizer
from .transforms import ApplyLR, AsMatrix, DecoupledWeightDecay, Momentum, Orthogonalize, ShapeScale


FAST = {
    "orthogonalizer": "newton_schulz",
    "ns_coefficients": polar_express_schedule(4, 3e-3, safety=1.03),
    "ns_steps": 4,
    "ns_norm": "schatten8",
    "ns_gram": "auto",
    "ns_dtype": torch.bfloat16,
}
"""``Muon(params, **FAST)``: 4 Polar Express steps (fitted for ``sigma_min / sigma_max >=
3e-3``, with a 3% margin for rounding) in bfloat16 on the Schatten-8-normalized update,
rectangular matrices in Gram form. It spends fewer flops than ``torch.optim.Muon``'s 5
Jordan steps, which shortens the step where flops decide its time (CPU) more than where
batching does (GPU); measured times are in the README and ``benchmarks/optimizer_step.py``.
Its orthogonality error is smaller on spectra decaying like ``1/sqrt(i)``, larger where
singular values reach below ``3e-3 sigma_max``."""

TORCH_MUON = {
    "orthogonalizer": "newton_schulz",
    "ns_coefficients": "jordan",
    "ns_steps": 5,
    "ns_norm": "frobenius",
    "ns_gram": False,
    "ns_dtype": torch.bfloat16,
}
"""``Muon(params, **TORCH_MUON)``: the update of ``torch.optim.Muon`` (Keller Jordan's
``(3.4445, -4.7750, 2.0315)`` for 5 steps, in bfloat16, on the Frobenius-normalized
update), equal to it up to bfloat16 rounding. :meth:`Muon.torch_compatible` adds torch's
``lr`` and ``weight_decay`` defaults."""


def fast_ns_dtype(device: Union[str, torch.device]) -> Optional[torch.dtype]:
    """The precision ``ns_dtype="auto"`` picks on ``device``: ``torch.bfloat16`` on a GPU (or
    other accelerator) and on a CPU whose oneDNN has native bfloat16 matrix products
    (AVX512-BF16, AMX); ``None`` (the gradient's dtype) on other CPUs, which emulate
    bfloat16 products several times slower than float32 ones.

    Example:
        >>> fast_ns_dtype("cuda")
        torch.bfloat16
    """
    device = torch.device(device)
    if device.type != "cpu":
        return torch.bfloat16
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        native = False
    return torch.bfloat16 if native else None


class Muon(ChainOptimizer):
    """Muon (Keller Jordan, 2024): EMA momentum, then the polar factor of the update.

    For each matrix ``W`` (conv weights viewed as ``(out, in*kh*kw)``):

        buf <- momentum * buf + (1 - momentum) * G
        M   <- (1 - momentum) * G + momentum * buf   (Nesterov; else M = buf)
        W   <- (1 - lr * weight_decay) * W - lr * scale(out, in) * orthogonalize(M)

    The default iteration is 5 Polar Express steps (Amsel et al. 2025) in the fastest
    precision of the device (:func:`fast_ns_dtype`): about 2.5x closer to orthogonal than
    ``torch.optim.Muon``'s 5 Jordan steps (``max |sigma_i - 1|`` 0.13 against 0.32 on
    gradient-like spectra) at the same number of products, and faster than its step where
    measured (README, ``benchmarks/optimizer_step.py``). :data:`TORCH_MUON` (or
    :meth:`torch_compatible`) is ``torch.optim.Muon``'s exact rule, :data:`FAST` fewer
    flops still.

    Parameters with fewer than 2 dims (and any group with ``algorithm="adamw"``) follow
    AdamW with the ``adamw`` settings. Use :func:`specgrad.optim.split_params` to also send
    embeddings, the output head and the first layer to AdamW.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer; named
            parameters (``model.named_parameters()``) make error messages name them.
        lr: learning rate of the matrices (default 0.02).
        momentum: EMA coefficient in ``[0, 1)`` (default 0.95).
        nesterov: Nesterov momentum (default True).
        orthogonalizer: ``"polar_express"`` (default: Amsel et al. 2025's per-step minimax
            quintics), ``"newton_schulz"`` (with ``ns_coefficients``) or ``"svd"``.
        ns_steps: iterations of the iterative orthogonalizers (default 5).
        ns_coefficients: Newton-Schulz schedule (default Keller Jordan's triple; read by
            ``"newton_schulz"`` only).
        ns_dtype: precision of the iteration: ``"auto"`` (default; :func:`fast_ns_dtype` of
            the group's device: bfloat16 on a GPU or a CPU with bfloat16 matrix units, as
            ``torch.optim.Muon``, else the gradient's dtype), a dtype, or ``None`` (the
            gradient's dtype).
        ns_norm: ``"frobenius"`` (default, as ``torch.optim.Muon``) or ``"schatten8"``, a
            tighter bound of ``sigma_max`` at no cost (see
            :func:`~specgrad.linalg.quintic_iteration`).
        ns_gram: iterate rectangular matrices on their Gram matrix: ``False`` (default),
            ``True`` or ``"auto"`` (aspect ratio >= 2). :data:`FAST` sets all three.
        weight_decay: decoupled, applied with the unscaled ``lr`` (default 0).
        cautious_weight_decay: decay only the coordinates the update moves toward zero
            (``mask = 1[update * W > 0]``; Chen et al. 2025; see
            :class:`~specgrad.optim.transforms.DecoupledWeightDecay`). Default False.
        shape_scaling: ``"original"`` (``sqrt(max(1, out/in))``, Keller Jordan; default),
            ``"match_rms_adamw"`` (``0.2 sqrt(max(out, in))``, Moonlight, Liu et al. 2025),
            ``"spectral"`` (``sqrt(out/in)``) or ``"none"``.
        adamw: settings of the AdamW rule (``lr``, ``betas``, ``eps``, ``weight_decay``);
            defaults ``lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0``.
        nonfinite: ``"raise"`` or ``"skip"`` on NaN/Inf gradients (see ``ChainOptimizer``).
        distribute: under DDP, split the orthogonalizations across ranks by cost and share
            the results with one ``all_gather`` (FSDP2 DTensor parameters are always split).
        **settings: the further group keys that the links of a subclass's chain read
            (:class:`~specgrad.optim.NorMuon`'s ``beta2``, ``eps``); a key no link reads is
            refused.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> opt = Muon(model.parameters(), lr=0.02)
        >>> [g["algorithm"] for g in opt.param_groups]
        ['adamw', 'muon']
        >>> model(torch.randn(4, 8)).sum().backward()
        >>> opt.step()
    """

    rule = "muon"

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        orthogonalizer: str = "polar_express",
        ns_steps: int = 5,
        ns_coefficients="jordan",
        ns_dtype: Union[None, str, torch.dtype] = "auto",
        ns_norm: str = "frobenius",
        ns_gram=False,
        weight_decay: float = 0.0,
        cautious_weight_decay: bool = False,
        shape_scaling: str = "original",
        adamw: Optional[dict] = None,
        nonfinite: str = "raise",
        distribute: bool = False,
        **settings,
    ):
        known = {k for t in self.chain() for k in t.defaults}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{type(self).__name__} got unknown settings {unknown}; its chain reads {sorted(known)}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            orthogonalizer=orthogonalizer,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
            ns_dtype=ns_dtype,
            ns_norm=ns_norm,
            ns_gram=ns_gram,
            weight_decay=weight_decay,
            cautious_weight_decay=cautious_weight_decay,
            shape_scaling=shape_scaling,
            **settings,
        )
        super().__init__(params, defaults, adamw=adamw, nonfinite=nonfinite, distribute=distribute)

    def add_param_group(self, param_group: dict) -> None:
        # ns_dtype="auto" becomes a dtype here, where the group's device is known
        dtype = param_group.get("ns_dtype", self.defaults.get("ns_dtype"))
        if param_group.get("algorithm", self.rule) == self.rule and dtype == "auto":
            params = param_group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            first = next((p[1] if isinstance(p, tuple) else p for p in params), None)
            param_group = {**param_group, "params": params,
                           "ns_dtype": fast_ns_dtype(first.device if first is not None else "cpu")}  # fmt: skip
        super().add_param_group(param_group)

    @classmethod
    def torch_compatible(cls, params, lr: float = 1e-3, weight_decay: float = 0.1, **kwargs) -> "Muon":
        """``torch.optim.Muon``'s update and defaults (``lr=1e-3``, ``weight_decay=0.1``,
        momentum 0.95 with Nesterov, :data:`TORCH_MUON`'s iteration, ``"original"`` shape
        scaling); ``kwargs`` as for :class:`Muon`.

        Example:
            >>> W = torch.nn.Parameter(torch.zeros(4, 4))
            >>> Muon.torch_compatible([W]).param_groups[0]["ns_dtype"]
            torch.bfloat16
        """
        return cls(params, lr=lr, weight_decay=weight_decay, **{**TORCH_MUON, **kwargs})

    def chain(self):
        return [Momentum(), AsMatrix(), Orthogonalize(), ShapeScale(), DecoupledWeightDecay(), ApplyLR()]
