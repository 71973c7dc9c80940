"""Muon step time and bytes communicated per step on torch.distributed (gloo, CPU).

For 1 and 2 ranks (4 with ``--ranks 1,2,4`` where cores allow), a GPT-like parameter set
(``L`` layers of width ``d``) is stepped by ``Muon`` in both layouts:

* DDP: replicated parameters, ``distribute=True``: each rank orthogonalizes its share and
  one ``all_gather`` shares the results;
* FSDP2: ``fully_shard`` DTensor parameters: two ``all_to_all`` per step.

Bytes are counted by wrapping the collectives of ``specgrad.optim.distributed`` and compared
with the formulas of its docstring (bytes a rank receives per step):

* DDP: ``(W - 1) * max_r(sum_{i owned by r} m_i n_i) * itemsize``;
* FSDP2: ``2 * W * P * itemsize`` received (and as many sent), ``P`` the padded message size.

Times are medians over steps; the 1-rank row is the baseline of the ratios.

    python benchmarks/distributed_step.py [--layers 2 --width 256 --ranks 1,2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def gpt_like(layers: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width, bias=False),
                   nn.Linear(width, 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)]  # fmt: skip
    return nn.ModuleList(blocks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, layout, layers, width, steps, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from specgrad.optim import Muon, distributed as D

    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    received = [0]
    for name in ("all_gather", "all_to_all"):
        original = getattr(D.dist, name)

        def counted(out_list, *args, _orig=original, **kw):
            received[0] += sum(t.numel() * t.element_size() for t in out_list)
            return _orig(out_list, *args, **kw)

        setattr(D.dist, name, counted)
    model = gpt_like(layers, width)
    if layout == "fsdp" and world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
    opt = Muon(model.parameters(), lr=0.02, distribute=(layout == "ddp" and world > 1))
    g = torch.Generator().manual_seed(rank)
    times = []
    for step in range(steps + 1):
        for p in model.parameters():
            grad = torch.randn(p.shape, generator=g)
            p.grad = grad if not hasattr(p, "device_mesh") else D.DTensor.from_local(
                grad.chunk(world)[rank], p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
        received[0] = 0
        if world > 1:
            dist.barrier()
        t = time.perf_counter()
        opt.step()
        if step:  # the first step allocates state
            times.append(time.perf_counter() - t)
    shapes = [tuple(p.shape) for p in model.parameters()]
    torch.save({"median": statistics.median(times), "received": received[0], "shapes": shapes},
               os.path.join(out, f"{layout}{world}_rank{rank}.pt"))  # fmt: skip
    if world > 1:
        dist.destroy_process_group()


def predicted_bytes(layout: str, shapes, world: int, itemsize: int = 4) -> int:
    from specgrad.optim.distributed import assign_owners, orth_cost, shard_rows

    if world == 1:
        return 0
    owners = assign_owners([orth_cost("newton_schulz", m, n, 5) for m, n in shapes], world)
    if layout == "ddp":
        load = [sum(m * n for (m, n), o in zip(shapes, owners) if o == r) for r in range(world)]
        return world * max(load) * itemsize  # all_gather fills W buffers, own one included
    rows = [shard_rows(m, world) for m, _ in shapes]
    pair = max(sum((rows[i][s][1] - rows[i][s][0]) * shapes[i][1] for i in range(len(shapes)) if owners[i] == d)
               for s in range(world) for d in range(world))  # fmt: skip
    return 2 * world * pair * itemsize


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    table = Table(title=f"Muon step on gloo/CPU, {args.layers} layers x width {args.width}, 1 thread per rank")
    for col in ("layout", "ranks", "ms / step", "x 1 rank", "MB received / rank", "predicted MB", "match"):
        table.add_column(col, justify="right" if col != "layout" else "left")
    with tempfile.TemporaryDirectory() as out:
        base = None
        for layout in ("ddp", "fsdp"):
            for world in (int(w) for w in args.ranks.split(",")):
                mp.spawn(_worker, args=(world, _free_port(), layout, args.layers, args.width, args.steps, out), nprocs=world)
                res = [torch.load(os.path.join(out, f"{layout}{world}_rank{r}.pt")) for r in range(world)]
                ms = 1e3 * max(r["median"] for r in res)
                base = ms if world == 1 and base is None else base
                got = max(r["received"] for r in res)
                want = predicted_bytes(layout, res[0]["shapes"], world)
                table.add_row(layout, str(world), f"{ms:.1f}", f"{ms / base:.2f}", f"{got / 1e6:.2f}",
                              f"{want / 1e6:.2f}", "yes" if got == want else "NO")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
