"""The experiment runner: result file, resumption, config refusal, bad input, CLI."""

import json
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from specgrad import cli
from specgrad.experiments import EXPERIMENTS, Claim, Experiment, UsageError, register, run_experiment, write_json

CALLS: list[int] = []


@dataclass
class ToyConfig:
    steps: int = 5
    lr: float = 0.1
    decay: bool = True
    label: Optional[str] = None
    widths: tuple[int, ...] = (2, 3)


def toy_run_seed(cfg, seed, ctx):
    CALLS.append(seed)
    if cfg.label == "interrupt" and seed == 1 and CALLS.count(1) == 1:
        raise KeyboardInterrupt
    g = torch.Generator().manual_seed(seed)
    x = float(torch.rand((), generator=g)) + 1
    ctx.steps(cfg.steps, "toy")
    losses = []
    for _ in range(cfg.steps):
        x *= 1 - cfg.lr
        losses.append(x)
        ctx.advance()
    return {"gd": {"step": list(range(cfg.steps)), "loss": losses}}


def toy_analyze(cfg, series):
    finals = [m["loss"][-1] for k, m in series.items() if k.startswith("gd/")]
    mean = sum(finals) / len(finals)
    return {"final_loss": mean}, [Claim("loss-falls", "GD lowers the loss below 1.5", mean, 1.5, "max")]


def toy_plot(cfg, series, summary, folder):
    (folder / "toy.png").write_bytes(b"\x89PNG")
    return ["toy.png"]


TOY = register(Experiment(
    name="toy", description="a geometric decay", config=ToyConfig, run_seed=toy_run_seed,
    analyze=toy_analyze, plot=toy_plot, presets={"smoke": {"steps": 3}, "quick": {"steps": 10}},
    seeds={"smoke": 2, "quick": 3, "paper": 3}, size=lambda c: f"{c.steps} steps",
))  # fmt: skip


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


def test_result_file_has_the_documented_format(tmp_path):
    result = run_experiment("toy", "smoke", tmp_path, progress=False)
    on_disk = json.loads((tmp_path / "toy" / "result.json").read_text())
    assert on_disk == result
    assert set(result) >= {"experiment", "preset", "config", "env", "series", "summary", "claims", "figures"}
    assert result["config"] == {"steps": 3, "lr": 0.1, "decay": True, "label": None, "widths": [2, 3]}
    assert sorted(result["series"]) == ["gd/seed0", "gd/seed1"]
    assert len(result["series"]["gd/seed0"]["loss"]) == 3
    assert result["claims"][0]["passed"] is True and result["claims"][0]["id"] == "loss-falls"
    assert result["figures"] == ["toy.png"] and (tmp_path / "toy" / "toy.png").exists()
    assert result["env"]["torch"] == torch.__version__
    # nothing but whole files: no temp files left behind
    assert not list((tmp_path / "toy").rglob("*.tmp"))


def test_seeds_determine_the_run(tmp_path):
    a = run_experiment("toy", "smoke", tmp_path / "a", progress=False)
    b = run_experiment("toy", "smoke", tmp_path / "b", progress=False)
    assert a["series"] == b["series"]
    assert a["series"]["gd/seed0"] != a["series"]["gd/seed1"]


def test_resume_after_interruption_redoes_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_experiment("toy", "smoke", tmp_path, overrides={"label": "interrupt"}, progress=False)
    assert CALLS == [0, 1]
    assert (tmp_path / "toy" / "seeds" / "seed0.json").exists()
    assert not (tmp_path / "toy" / "seeds" / "seed1.json").exists()
    assert not (tmp_path / "toy" / "result.json").exists()
    result = run_experiment("toy", "smoke", tmp_path, overrides={"label": "interrupt"}, progress=False)
    assert CALLS == [0, 1, 1]  # seed 0 was not run again
    assert sorted(result["series"]) == ["gd/seed0", "gd/seed1"]
    run_experiment("toy", "smoke", tmp_path, overrides={"label": "interrupt"}, seeds=3, progress=False)
    assert CALLS == [0, 1, 1, 2]  # more seeds extend the run


def test_mismatched_config_is_refused_and_force_starts_over(tmp_path):
    run_experiment("toy", "smoke", tmp_path, progress=False)
    with pytest.raises(UsageError, match="lr: 0.1 there, 0.5 now"):
        run_experiment("toy", "smoke", tmp_path, overrides={"lr": "0.5"}, progress=False)
    with pytest.raises(UsageError, match="preset 'smoke' there, 'quick' now"):
        run_experiment("toy", "quick", tmp_path, progress=False)
    CALLS.clear()
    result = run_experiment("toy", "smoke", tmp_path, overrides={"lr": "0.5"}, force=True, progress=False)
    assert CALLS == [0, 1] and result["config"]["lr"] == 0.5


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"nope": "1"}, "has no setting 'nope'; settings: steps, lr, decay, label, widths"),
        ({"steps": "2.5"}, "'steps' expects int, got '2.5'"),
        ({"lr": "fast"}, "'lr' expects float"),
        ({"decay": "maybe"}, "'decay' expects bool"),
        ({"widths": "2,x"}, "'widths' expects int"),
    ],
)
def test_bad_settings_are_one_clear_line(tmp_path, overrides, match):
    with pytest.raises(UsageError, match=match):
        run_experiment("toy", "smoke", tmp_path, overrides=overrides, progress=False)


def test_set_parses_every_supported_type(tmp_path):
    cfg = TOY.make_config("smoke", {"steps": "4", "lr": "0.25", "decay": "false", "label": "x", "widths": "4, 5,6"})
    assert cfg == ToyConfig(steps=4, lr=0.25, decay=False, label="x", widths=(4, 5, 6))
    assert TOY.make_config("smoke", {"label": "none"}).label is None


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    assert cli.main(["run", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert cli.main(["run", "toy", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'huge'; choose one of smoke, demo, quick, paper" in capsys.readouterr().err
    assert cli.main(["run", "toy", "--set", "lr", "--out", str(tmp_path)]) == 2
    assert "--set expects key=value" in capsys.readouterr().err
    assert cli.main(["run", "toy", "--device", "tpu", "--out", str(tmp_path)]) == 2
    assert cli.main(["run", "toy", "--out", str(tmp_path), "--set", "steps=2"]) == 0
    out = capsys.readouterr().out
    assert "PASS loss-falls" in out and "result.json" in out
    assert cli.main(["list"]) == 0
    assert "toy" in capsys.readouterr().out


def test_tuning_runs_once_and_reaches_every_seed(tmp_path):
    tuned = []

    def tune(cfg, ctx):
        tuned.append(1)
        return {"best_lr": 0.3}

    def run_seed(cfg, seed, ctx):
        return {"gd": {"lr": [ctx.tuning["best_lr"]]}}

    register(Experiment("tuned-toy", "", ToyConfig, run_seed, lambda c, s: ({}, []), tune=tune))
    result = run_experiment("tuned-toy", "smoke", tmp_path, progress=False)
    assert result["tuning"] == {"best_lr": 0.3}
    assert result["series"]["gd/seed0"]["lr"] == [0.3]
    run_experiment("tuned-toy", "smoke", tmp_path, seeds=2, progress=False)
    assert len(tuned) == 1  # loaded from tuning.json, not recomputed


def test_cli_prints_a_claim_whose_value_is_not_finite(tmp_path, capsys):
    register(Experiment("nan-toy", "", ToyConfig, toy_run_seed,
                        lambda c, s: ({}, [Claim("never", "never reached", float("inf"), 10.0, "max")])))  # fmt: skip
    assert cli.main(["run", "nan-toy", "--out", str(tmp_path)]) == 0
    assert "FAIL never: n/a <= 10" in capsys.readouterr().out


def test_registry_rejects_bad_definitions():
    with pytest.raises(ValueError, match="unknown fields"):
        Experiment("bad", "", ToyConfig, toy_run_seed, toy_analyze, presets={"smoke": {"stepz": 1}})
    with pytest.raises(ValueError, match="already registered"):
        register(Experiment("toy", "", ToyConfig, toy_run_seed, toy_analyze))
    assert "toy" in EXPERIMENTS


def test_demo_preset_defaults_to_quick():
    exp = Experiment("demo-toy", "", ToyConfig, toy_run_seed, toy_analyze,
                     presets={"quick": {"steps": 10}}, seeds={"smoke": 1, "quick": 3})  # fmt: skip
    assert exp.make_config("demo").steps == 10 and exp.seeds["demo"] == 3
    own = Experiment("demo-toy2", "", ToyConfig, toy_run_seed, toy_analyze,
                     presets={"quick": {"steps": 10}, "demo": {"steps": 4}}, seeds={"quick": 3, "demo": 1})  # fmt: skip
    assert own.make_config("demo").steps == 4 and own.seeds["demo"] == 1


def test_bounds_describe_what_is_allowed():
    from specgrad.experiments.registry import Bounds, check_setting

    assert Bounds(ge=1).describe() == ">= 1"
    assert Bounds(gt=0, le=1).describe() == "in (0, 1]"
    assert Bounds(lt=2.5).describe() == "< 2.5"
    assert Bounds(choices=("a", "b")).describe() == "one of 'a', 'b'"
    assert Bounds().describe() == "finite" and Bounds(finite=False).describe() == "any value"
    check_setting("x", float("inf"), Bounds(finite=False))
    check_setting("x", None, Bounds(ge=1))  # an Optional left unset
    check_setting("flag", True, Bounds(ge=2))  # bounds speak of numbers, not flags
    with pytest.raises(UsageError, match=r"every value of setting 'lrs' must be finite, got nan in 0.1,nan"):
        check_setting("lrs", (0.1, float("nan")))


def test_configs_declare_bounds_and_cross_field_rules():
    from dataclasses import field

    from specgrad.experiments.registry import bounds, setting

    @dataclass
    class Cfg:
        n: int = setting(2, ge=1)
        k: int = field(default=1, metadata=bounds(ge=0))
        p: float = setting(0.5, gt=0, lt=1)

        def __post_init__(self):
            if self.k == 7:
                raise ValueError("k must not be 7")

        def validate(self):
            if self.k > self.n:
                raise ValueError(f"k ({self.k}) must be at most n ({self.n})")

    exp = Experiment("bounds-toy", "", Cfg, toy_run_seed, toy_analyze, presets={"quick": {"n": 4}})
    assert exp.make_config("quick", {"k": "3", "p": "0.25"}) == Cfg(n=4, k=3, p=0.25)
    for override, match in [({"k": "-1"}, "setting 'k' must be >= 0, got -1"),
                            ({"p": "1"}, r"setting 'p' must be in \(0, 1\), got 1.0"),
                            ({"k": "5", "n": "4"}, r"bounds-toy: k \(5\) must be at most n \(4\)"),
                            ({"k": "7", "n": "8"}, "bounds-toy: k must not be 7")]:  # fmt: skip
        with pytest.raises(UsageError, match=match):
            exp.make_config("quick", override)
    with pytest.raises(ValueError, match="setting 'n' must be >= 1, got 0"):  # a preset is checked when defined
        Experiment("bounds-toy2", "", Cfg, toy_run_seed, toy_analyze, presets={"smoke": {"n": 0}})


def test_another_config_replaces_one_that_holds_no_work(tmp_path):
    write_json(tmp_path / "toy" / "config.json", {"experiment": "toy", "preset": "smoke", "config": {"steps": 99}})
    result = run_experiment("toy", "smoke", tmp_path, progress=False)
    assert json.loads((tmp_path / "toy" / "config.json").read_text())["config"] == result["config"]


def test_progress_off_a_terminal_is_a_line_per_phase_with_the_time_left(tmp_path):
    import io

    from rich.console import Console

    from specgrad.experiments.runner import ProgressDisplay

    buffer = io.StringIO()
    console = Console(file=buffer)
    assert not console.is_terminal
    with ProgressDisplay(console, every=0.0) as display:
        run_experiment("toy", "smoke", tmp_path, console=console, progress=display)
    lines = buffer.getvalue().splitlines()
    assert any("toy [smoke] seeds: 0/2" in line for line in lines)
    assert any("toy seed 0 toy: 0/3" in line for line in lines)
    assert any("toy seed 1 toy: 3/3, 0:00 spent, 0:00 left" in line for line in lines)
    assert any("toy [smoke] seeds: 2/2" in line for line in lines)


def test_reproduce_runs_the_quickest_first_and_reports_each_result(tmp_path, monkeypatch):
    from specgrad.experiments import registry
    from specgrad.experiments.catalog import load_all
    from specgrad.experiments.runner import reproduce

    load_all()

    def toy(name, minutes):
        return Experiment(name, "", ToyConfig, toy_run_seed, toy_analyze, presets={"smoke": {"steps": 2}},
                          seeds={"smoke": 1}, minutes=minutes)  # fmt: skip

    toys = [toy("a-unknown", {}), toy("b-slow", {"smoke": 5.0}), toy("c-fast", {"smoke": 0.2, "quick": 9.0})]
    monkeypatch.setattr(registry, "EXPERIMENTS", {t.name: t for t in toys})
    finished = []
    status = reproduce("smoke", tmp_path, progress=False, on_result=lambda name, result: finished.append(name))
    assert finished == ["c-fast", "b-slow", "a-unknown"] and set(status.values()) == {"ok"}
    finished.clear()
    reproduce("smoke", tmp_path, only=["b-slow", "a-unknown"], progress=False,
              on_result=lambda name, result: finished.append(name))  # fmt: skip
    assert finished == ["b-slow", "a-unknown"]  # the order asked for
