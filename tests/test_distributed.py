"""Muon, SpecGD and Hybrid on torch.distributed: 2 gloo processes spawned by each test.

DDP (replicated parameters, work split by cost) and FSDP2 (DTensor shards, uneven) must
give the parameters of the single-process run on the same global batch; gradient-None
cases must not hang; a torch.distributed.checkpoint round trip must continue identically.
"""

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from specgrad.diagnostics import SpectralMonitor
from specgrad.optim import AdaMuon, Hybrid, Muon, NorMuon, SpecGD

WORLD = 2
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model():
    torch.manual_seed(0)
    # odd row counts: FSDP2 shards them unevenly (7 -> 4 + 3, 5 -> 3 + 2)
    return nn.Sequential(nn.Linear(6, 7, bias=False), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3, bias=False))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


FAMILY = {"muon": Muon, "normuon": NorMuon, "adamuon": AdaMuon}


def make_opt(kind, params, **kw):
    if kind in FAMILY:  # NorMuon and AdaMuon with cautious weight decay; all in the gradient's dtype
        return FAMILY[kind](params, lr=0.05, weight_decay=0.1, orthogonalizer="polar_express", ns_dtype=None,
                            cautious_weight_decay=kind != "muon", **kw)  # fmt: skip
    return SpecGD(params, lr=0.05, step_size="nuclear", momentum=0.9, **kw)


def single_process(kind):
    m = model()
    opt = make_opt(kind, m.parameters())
    X, Y = batch()
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(m(X), Y).backward()
        opt.step()
    return [p.detach() for p in m.parameters()]


def _local_batch(rank):
    X, Y = batch()
    return X.chunk(WORLD)[rank], Y.chunk(WORLD)[rank]


def _worker(rank, port, scenario, kind, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        result = SCENARIOS[scenario](rank, kind, out)
    except Exception as e:  # noqa: BLE001 - reported to the parent through the file
        result = {"error": f"{type(e).__name__}: {e}"}
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    # gloo's threads can abort the interpreter's teardown ("terminate called without an
    # active exception") after the results are safely written: leave without it
    os._exit(0)


def ddp(rank, kind, out):
    m = nn.parallel.DistributedDataParallel(model())
    opt = make_opt(kind, m.parameters(), distribute=True)
    X, Y = _local_batch(rank)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(m(X), Y).backward()
        opt.step()
    return {"params": [p.detach().clone() for p in m.module.parameters()]}


def _fsdp_model():
    from torch.distributed.fsdp import fully_shard

    m = model()
    for layer in (m[0], m[2], m[4]):
        fully_shard(layer)
    fully_shard(m)
    return m


def fsdp(rank, kind, out):
    m = _fsdp_model()
    opt = make_opt(kind, m.parameters())
    X, Y = _local_batch(rank)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(m(X), Y).backward()
        opt.step()
    return {"params": [p.full_tensor().detach().clone() for p in m.parameters()],
            "state_types": sorted({type(v).__name__ for s in opt.state.values() for v in s.values()})}  # fmt: skip


def grad_none(rank, kind, out):
    """Layer 2 unused everywhere (skipped), then layer 0 used on rank 0 only (an error)."""
    m = model()
    opt = make_opt(kind, m.parameters(), distribute=True)
    X, Y = _local_batch(rank)
    frozen = m[2].weight.detach().clone()
    loss = nn.functional.mse_loss(m[4](torch.tanh(m[0](X))[:, :5]), Y)
    loss.backward()
    opt.step()
    result = {"unused_untouched": torch.equal(m[2].weight.detach(), frozen)}
    opt.zero_grad()
    h = m[0](X) if rank == 0 else torch.zeros(X.shape[0], 7)
    nn.functional.mse_loss(m[4](torch.tanh(m[2](torch.tanh(h)))), Y).backward()
    t0 = time.time()
    try:
        opt.step()
        result["disagree"] = "no error"
    except RuntimeError as e:
        result["disagree"] = str(e)
    result["seconds"] = time.time() - t0
    return result


def checkpoint(rank, kind, out):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    X, Y = _local_batch(rank)

    def train(m, opt, n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.mse_loss(m(X), Y).backward()
            opt.step()

    m = _fsdp_model()
    opt = make_opt(kind, m.parameters())
    train(m, opt, 3)
    msd, osd = get_state_dict(m, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(out, "ckpt"))
    train(m, opt, 3)
    expected = [p.full_tensor().detach().clone() for p in m.parameters()]

    m2 = _fsdp_model()
    with torch.no_grad():
        for p in m2.parameters():
            p.zero_()
    opt2 = make_opt(kind, m2.parameters())
    msd2, osd2 = get_state_dict(m2, opt2)
    state = {"model": msd2, "optim": osd2}
    dcp.load(state, checkpoint_id=os.path.join(out, "ckpt"))
    set_state_dict(m2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    train(m2, opt2, 3)
    got = [p.full_tensor().detach().clone() for p in m2.parameters()]
    return {"equal": all(torch.equal(a, b) for a, b in zip(got, expected))}


MONITORED = ["step", "block", "rows", "st_A", "nr_G", "grad_fro", "grad_nuc", "act_fro", "act_op"]


def monitored_run(m, X, Y, distribute=False, max_dim=4096):
    """Two Muon steps under a monitor sampling every step; its records as lists."""
    opt = make_opt("muon", m.parameters(), distribute=distribute)
    with SpectralMonitor(m, every=1, max_dim=max_dim) as mon:
        for _ in range(2):
            opt.zero_grad()
            nn.functional.mse_loss(m(X), Y).backward()
            mon.step()
            opt.step()
    frame = mon.frame()
    frame["block"] = frame["block"].str.replace("module.", "")
    return frame[MONITORED].values.tolist()


def monitor(rank, kind, out):
    X, Y = _local_batch(rank)
    if kind == "fsdp":
        return {"records": monitored_run(_fsdp_model(), X, Y)}
    wrapped = nn.parallel.DistributedDataParallel(model())
    return {"records": monitored_run(wrapped, X, Y, distribute=True, max_dim=5 if kind == "sketch" else 4096)}


def hybrid_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(),
                         nn.Linear(5, 3))  # fmt: skip


def hybrid_run(m, X, Y, **kw):
    """Hybrid (measuring every step, no hysteresis) on the two hidden blocks; the parameters
    and the choices."""
    opt = Hybrid(m, lr=0.05, every=1, hysteresis=0.0, euclidean="sgd", **kw)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(m(X), Y).backward()
        opt.step()
    opt.close()
    params = (m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m).parameters()
    return {"params": [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in params],
            "choices": opt.decisions()["choice"].tolist()}  # fmt: skip


def hybrid(rank, kind, out):
    X, Y = _local_batch(rank)
    if kind == "ddp":
        return hybrid_run(nn.parallel.DistributedDataParallel(hybrid_model()), X, Y, distribute=True)
    from torch.distributed.fsdp import fully_shard

    m = hybrid_model()
    for k in (0, 2, 4, 6):
        fully_shard(m[k])
    fully_shard(m)
    return hybrid_run(m, X, Y)


SCENARIOS = {"ddp": ddp, "fsdp": fsdp, "grad_none": grad_none, "checkpoint": checkpoint, "monitor": monitor,
             "hybrid": hybrid}


def spawn(scenario, kind, tmp_path, timeout=120):
    ctx = mp.spawn(_worker, args=(_free_port(), scenario, kind, str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.time() + timeout
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{scenario} did not finish in {timeout}s (a collective is waiting)")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in results:
        assert "error" not in r, r.get("error")
    return results


@pytest.mark.parametrize("kind", ["muon", "specgd", "normuon", "adamuon"])
def test_ddp_matches_single_process(kind, tmp_path):
    expected = single_process(kind)
    for r in spawn("ddp", kind, tmp_path):
        for a, b in zip(r["params"], expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_hybrid_matches_single_process(kind, tmp_path):
    """Hybrid takes the chain's distributed spectral map (split across ranks under DDP with
    distribute=True, by owner rank of FSDP2 shards) and its monitor measures the global
    batch: the same choices and parameters as one process."""
    expected = hybrid_run(hybrid_model(), *batch())
    assert sorted(set(expected["choices"])) == ["euclidean", "spectral"]
    for r in spawn("hybrid", kind, tmp_path):
        assert r["choices"] == expected["choices"]
        for a, b in zip(r["params"], expected["params"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["muon", "specgd", "normuon", "adamuon"])
def test_fsdp2_matches_single_process_with_uneven_shards(kind, tmp_path):
    expected = single_process(kind)
    results = spawn("fsdp", kind, tmp_path)
    for r in results:
        for a, b in zip(r["params"], expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert "DTensor" in results[0]["state_types"]  # momentum stays sharded like its parameter


def test_grad_none_is_skipped_and_disagreement_raises_everywhere(tmp_path):
    for r in spawn("grad_none", "muon", tmp_path):
        assert r["unused_untouched"]
        assert "ranks disagree about which parameters have a gradient" in r["disagree"]
        assert r["seconds"] < 30


def test_checkpoint_round_trip_continues_identically(tmp_path):
    for r in spawn("checkpoint", "muon", tmp_path):
        assert r["equal"]


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_monitor_aggregates_ranks_to_the_global_batch(kind, tmp_path):
    expected = monitored_run(model(), *batch())
    for r in spawn("monitor", kind, tmp_path):
        assert len(r["records"]) == len(expected) == 6
        for got, want in zip(r["records"], expected):
            assert got[:3] == want[:3]  # step, block, rows: the global batch's 8 rows
            assert got[3:] == pytest.approx(want[3:], rel=1e-5)


def test_monitor_sums_sketches_across_ranks(tmp_path):
    """Blocks wider than max_dim are sketched with independent draws per rank; the summed
    sketch keeps ||A||_F exact and the records agree across ranks."""
    expected = monitored_run(model(), *batch(), max_dim=5)
    results = spawn("monitor", "sketch", tmp_path)
    assert results[0]["records"] == results[1]["records"]
    for got, want in zip(results[0]["records"], expected):
        assert got[:3] == want[:3]
        assert got[7] == pytest.approx(want[7], rel=1e-6)  # act_fro is exact in a sketch
        assert got[3] == pytest.approx(want[3], rel=0.5)  # st_A from a 256-row sketch
