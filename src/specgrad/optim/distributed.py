"""Spectral maps on ``torch.distributed``: each matrix is orthogonalized by one owner rank.

Work is split by a cost model: the flops of the orthogonalization of an ``m x n`` matrix
(``k = min(m, n)``, ``l = max(m, n)``):

* Newton-Schulz / Polar Express: ``steps * (4 k^2 l + 2 k^3)``;
* SVD: ``~ 4 k^2 l + 8 k^3`` (Golub-Kahan bidiagonalization plus the back transform);

balanced by longest-processing-time-first (largest matrix to the least loaded rank), not
round-robin by index. Two layouts:

* **replicated** (DDP: every rank holds every full matrix, gradients already averaged):
  each rank computes its own matrices, batched by shape, then one ``all_gather`` of the
  padded, flattened outputs gives every rank every result. The gather fills ``W`` buffers of
  ``max_r(sum_{i owned by r} m_i n_i)`` elements per rank per step, ``W - 1`` of which cross
  the network (``benchmarks/distributed_step.py`` checks the count).
* **sharded** (FSDP2: DTensor parameters ``Shard(0)``, uneven shards allowed): an
  ``all_to_all`` sends each rank's row shard of matrix ``i`` to its owner, the owner
  computes, and a second ``all_to_all`` returns the row shards. Each of the two
  ``all_to_all`` calls moves ``W`` messages per rank, each padded to the largest
  (source, owner) message ``P = max_{s,d} sum_{i owned by d} rows_s(i) n_i`` (gloo needs equal
  sizes), so a rank sends and receives ``2 * 2 * (W - 1) * P * itemsize`` bytes per step;
  with balanced owners ``P ~ sum_i m_i n_i / W^2``, i.e. about ``4 (W - 1) / W^2`` times the
  matrices' bytes.

Element-wise parts of the chain (momentum, shape scaling, weight decay) never communicate.
"""

from __future__ import annotations

import heapq
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

try:  # DTensor moved out of _tensor in 2.5+; both names exist in recent releases
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    from torch.distributed._tensor import DTensor  # type: ignore


def orth_cost(method: str, m: int, n: int, steps: int) -> float:
    """Flops of orthogonalizing one ``m x n`` matrix (see the module docstring)."""
    k, l = min(m, n), max(m, n)
    if method == "svd":
        return 4.0 * k * k * l + 8.0 * k**3
    return steps * (4.0 * k * k * l + 2.0 * k**3)


def assign_owners(costs: Sequence[float], world: int) -> list[int]:
    """Longest-processing-time-first: each matrix, largest cost first, goes to the rank
    with the least total so far (ties to the lower rank). Deterministic, so every rank
    computes the same assignment.

    Example:
        >>> assign_owners([9.0, 1.0, 5.0, 4.0], 2)
        [0, 0, 1, 1]
    """
    heap = [(0.0, r) for r in range(world)]
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(heap)
        owners[i] = r
        heapq.heappush(heap, (load + costs[i], r))
    return owners


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 shard of a parameter, its gradient or state)."""
    return isinstance(t, DTensor)


def shard_rows(rows: int, world: int) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop)]`` of ``Shard(0)`` over ``world`` ranks (``torch.chunk``
    semantics: equal blocks of ``ceil(rows / world)``, the last ones shorter or empty).

    Example:
        >>> shard_rows(7, 2)
        [(0, 4), (4, 7)]
    """
    size = -(-rows // world) if rows else 0
    return [(min(r * size, rows), min((r + 1) * size, rows)) for r in range(world)]


def exchange_replicated(mats: list[Tensor], owners: list[int], compute: Callable[[list[int]], dict[int, Tensor]],
                        group=None) -> list[Tensor]:  # fmt: skip
    """Replicated layout: ``compute(indices)`` returns this rank's results; one
    ``all_gather`` of padded flat buffers shares them. Returns every result on every rank."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    mine = [i for i, o in enumerate(owners) if o == rank]
    results = compute(mine)
    sizes = [sum(mats[i].numel() for i, o in enumerate(owners) if o == r) for r in range(world)]
    dtype, device = mats[0].dtype, mats[0].device
    buf = torch.zeros(max(sizes), dtype=dtype, device=device)
    if mine:
        torch.cat([results[i].reshape(-1).to(dtype) for i in mine], out=buf[: sizes[rank]])
    gathered = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(gathered, buf, group=group)
    out: list[Optional[Tensor]] = [None] * len(mats)
    for r in range(world):
        offset = 0
        for i in (i for i, o in enumerate(owners) if o == r):
            n = mats[i].numel()
            out[i] = results[i] if r == rank else gathered[r][offset : offset + n].view(mats[i].shape)
            offset += n
    return out  # type: ignore[return-value]


def exchange_sharded(shards: list[Tensor], shapes: list[tuple[int, int]], owners: list[int],
                     compute: Callable[[dict[int, Tensor]], dict[int, Tensor]], group=None) -> list[Tensor]:  # fmt: skip
    """Sharded layout: ``shards[i]`` is this rank's row block of the full ``shapes[i]``
    matrix. Owners receive the blocks (``all_to_all``), ``compute({i: full})`` returns full
    results, and the row blocks go back (``all_to_all``). Returns this rank's row block of
    every result."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    dtype, device = shards[0].dtype, shards[0].device
    ranges = [shard_rows(m, world) for m, _ in shapes]

    def block(i: int, r: int) -> int:
        lo, hi = ranges[i][r]
        return (hi - lo) * shapes[i][1]

    n_mats = len(shards)

    def pair(src: int, dst: int) -> int:  # elements rank src sends to rank dst in phase 1
        return sum(block(i, src) for i in range(n_mats) if owners[i] == dst)

    # gloo's all_to_all wants equal sizes: every message is padded to the largest one
    width = max(pair(s, d) for s in range(world) for d in range(world))

    def padded(parts: list[Tensor]) -> Tensor:
        buf = torch.zeros(width, dtype=dtype, device=device)
        if parts:
            flat = torch.cat([p.reshape(-1).to(dtype) for p in parts])
            buf[: flat.numel()] = flat
        return buf

    # 1. every rank sends its row block of matrix i to owners[i]
    send = [padded([shards[i] for i in range(n_mats) if owners[i] == dst]) for dst in range(world)]
    recv = [torch.empty(width, dtype=dtype, device=device) for _ in range(world)]
    dist.all_to_all(recv, send, group=group)
    full = {}
    offsets = [0] * world
    for i in (i for i, o in enumerate(owners) if o == rank):
        parts = []
        for src in range(world):
            n = block(i, src)
            parts.append(recv[src][offsets[src] : offsets[src] + n])
            offsets[src] += n
        full[i] = torch.cat(parts).view(shapes[i])
    results = compute(full)
    # 2. owners send row block r of each result back to rank r (the same sizes, mirrored)
    send = [padded([results[i][ranges[i][dst][0] : ranges[i][dst][1]] for i in sorted(results)]) for dst in range(world)]
    recv = [torch.empty(width, dtype=dtype, device=device) for _ in range(world)]
    dist.all_to_all(recv, send, group=group)
    out: list[Optional[Tensor]] = [None] * n_mats
    offsets = [0] * world
    for i, src in enumerate(owners):
        n = block(i, rank)
        out[i] = recv[src][offsets[src] : offsets[src] + n].view(-1, shapes[i][1])
        offsets[src] += n
    return out  # type: ignore[return-value]


def check_grads_agree(has_grad: list[bool], nonfinite: list[bool], group=None,
                      device=None) -> tuple[list[int], set[int]]:  # fmt: skip
    """One ``all_reduce`` of every parameter's ``(has_grad, nonfinite)`` flags.

    Returns the indices of parameters that some ranks have gradients for and others not
    (the caller raises on every rank alike, so none waits on a collective), and the indices
    whose gradient is non-finite on any rank. ``device``: where the flags travel (a CUDA
    device under NCCL).
    """
    world = dist.get_world_size(group)
    flags = torch.tensor([[float(h), float(b)] for h, b in zip(has_grad, nonfinite)] or [[0.0, 0.0]],
                         dtype=torch.float64, device=device)  # fmt: skip
    dist.all_reduce(flags, group=group)
    rows = flags.tolist()[: len(has_grad)]  # one transfer to the host, not one per flag
    return [k for k, (h, _) in enumerate(rows) if 0 < h < world], {k for k, (_, b) in enumerate(rows) if b > 0}
