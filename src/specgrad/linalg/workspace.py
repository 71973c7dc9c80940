"""Buffers reused from call to call: what keeps repeated linear algebra from allocating."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class Workspace:
    """Buffers kept between calls that iterate the same shapes, such as the steps of an
    optimizer: a fresh tensor of a few MB is page-faulted in on every call on CPU (glibc
    hands large blocks back to the kernel), one fault per 4 KiB page, which for small
    matrices rivals the cost of their products. CUDA's caching allocator makes it moot there.

    A tensor returned by :meth:`get` is overwritten by the next call that asks for the same
    name and shape, so results computed in a workspace must be used before that.

    Example:
        >>> ws = Workspace()
        >>> ws.get("A", (2, 3), torch.float32, "cpu") is ws.get("A", (2, 3), torch.float32, "cpu")
        True
    """

    def __init__(self):
        self._buffers: dict[tuple, Tensor] = {}

    def get(self, name: str, shape, dtype: torch.dtype, device) -> Tensor:
        key = (name, tuple(shape), dtype, torch.device(device))
        t = self._buffers.get(key)
        if t is None:
            t = self._buffers[key] = torch.empty(tuple(shape), dtype=dtype, device=device)
        return t

    def __len__(self) -> int:
        return len(self._buffers)


def buffer(ws: Optional[Workspace], name: str, shape, like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``ws``'s buffer ``name`` of ``shape`` (``like``'s device, ``dtype`` or ``like``'s), or a
    fresh tensor when there is no workspace."""
    dtype = like.dtype if dtype is None else dtype
    if ws is None:
        return torch.empty(tuple(shape), dtype=dtype, device=like.device)
    return ws.get(name, shape, dtype, like.device)
