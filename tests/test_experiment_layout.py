"""The shape of the experiments package: discovery (a module per experiment in a package per
study), no experiment importing another, one method table with learning-rate grids as
declared config fields, and ``--device`` honoured or refused by every experiment."""

import ast
import dataclasses
import importlib
import inspect

import pytest
import torch

from specgrad.experiments import EXPERIMENTS, UsageError
from specgrad.experiments.catalog import STUDIES, load_all, study_packages
from specgrad.experiments.methods import METHODS, lm_optimizer, lr_grid, make

load_all()
OURS = {name: exp for name, exp in EXPERIMENTS.items() if exp.run_seed.__module__.startswith("specgrad.experiments.")}
# experiments that run on ctx.device; every other one refuses a non-CPU device
ON_DEVICE = {"char-lm", "lm-spectra", "curvature-profile", "hybrid", "long-tail-classification", "long-tail-tokens"}


def _module(exp) -> str:
    return exp.run_seed.__module__


def test_every_study_package_module_is_discovered_and_listed_in_a_study():
    assert len(OURS) == 19
    modules = [_module(e) for e in OURS.values()]
    assert len(set(modules)) == len(modules), "one module per experiment"
    packages = set(study_packages())
    assert {m.rsplit(".", 1)[0] for m in modules} <= packages
    assert {s.key.replace("-", "_") for s in STUDIES} == {p.rsplit(".", 1)[1] for p in packages}
    listed = {n for s in STUDIES for n in s.experiments}
    assert listed == set(OURS)
    for study in STUDIES:  # each experiment sits in its study's package
        for name in study.experiments:
            assert _module(OURS[name]).split(".")[2] == study.key.replace("-", "_"), name


def _imported_modules(module: str) -> set[str]:
    source = inspect.getsource(importlib.import_module(module))
    package = module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_experiments_import_no_other_experiment():
    modules = {_module(e) for e in OURS.values()}
    for module in modules:
        assert not (_imported_modules(module) & (modules - {module})), module


def test_learning_rate_grids_are_declared_fields_and_settable():
    for name, exp in OURS.items():
        for f in dataclasses.fields(exp.config):
            if f.name.endswith("_lrs"):
                assert f.metadata.get("lr_grid"), f"{name}: {f.name} is not declared with lr_grid_field"
    cfg = EXPERIMENTS["long-tail-tokens"].make_config("smoke", {"muon_lrs": "0.01,0.02"})
    assert lr_grid(cfg, "muon") == lr_grid(cfg, "muon-head") == (0.01, 0.02)
    hybrid = EXPERIMENTS["hybrid"].make_config("quick")
    assert lr_grid(hybrid, "relu-features/spectral") == hybrid.rf_lrs
    assert lr_grid(hybrid, "char-lm/spectral") == hybrid.muon_lrs
    with pytest.raises(ValueError, match="no learning-rate grid"):
        lr_grid(cfg, "lion")


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 2))  # fmt: skip


def test_every_method_of_the_table_builds_and_steps():
    from specgrad.theory.curvature import power

    extra = {"icm": dict(H=power(4.0), samples=64), "hybrid": dict(every=1)}
    x = torch.randn(16, 4)
    for method in METHODS:
        net = _mlp()
        opt = make(method, net, 0.01, adamw={"lr": 1e-3}, **extra.get(method, {}))
        before = [p.detach().clone() for p in net.parameters()]
        net(x).square().mean().backward()
        opt.step()
        assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters())), method
    with pytest.raises(ValueError, match="unknown method"):
        make("lion", _mlp(), 0.1)


def test_lm_optimizer_routes_hidden_matrices_and_decays_only_matrices():
    net = _mlp()
    muon = lm_optimizer("muon", net, 0.02, 3e-3)
    assert [len(g["params"]) for g in muon.param_groups] == [1, 5]
    assert muon.param_groups[1]["lr"] == 3e-3 and muon.param_groups[1]["betas"] == (0.9, 0.99)
    adamw = lm_optimizer("adamw", net, 1e-3, 1e-3)
    assert [(len(g["params"]), g["weight_decay"]) for g in adamw.param_groups] == [(3, 0.1), (3, 0.0)]
    with pytest.raises(ValueError, match="unknown method"):
        lm_optimizer("sgd", net, 0.1, 0.1)


class _LRs(dict):
    def __missing__(self, key):
        return 0.01


class _Ctx:
    def __init__(self, device: str):
        self.device = torch.device(device)
        self.tuning = {"best_lr": _LRs(), "H": {"c2": 1.0, "cp": 1.0, "p": 3.0}}

    def steps(self, *args):
        pass

    def advance(self, n=1):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA device exists")
@pytest.mark.parametrize("name", sorted(OURS))
def test_device_is_used_or_refused_with_the_experiments_name(name):
    """A non-CPU device either reaches the experiment's tensors (here, without CUDA, an error
    from torch) or is refused up front with a UsageError naming the experiment; never ignored."""
    exp = OURS[name]
    cfg = exp.make_config("smoke")
    stages = [exp.run_seed] if exp.tune is None else [exp.tune, exp.run_seed]
    for stage in stages:
        args = (cfg, _Ctx("cuda")) if stage is exp.tune else (cfg, 0, _Ctx("cuda"))
        with pytest.raises(Exception) as info:
            stage(*args)
        if name in ON_DEVICE:
            message = str(info.value).lower()
            assert not isinstance(info.value, UsageError) and ("cuda" in message or "nvidia" in message), info.value
        else:
            assert isinstance(info.value, UsageError) and name in str(info.value), info.value
