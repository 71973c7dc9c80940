"""The command line on bad input: one line on stderr, exit code 2, nothing left on disk."""

import errno
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from specgrad import cli
from specgrad.experiments import EXPERIMENTS, Claim, Experiment, register, write_json
from specgrad.experiments.catalog import load_all
from specgrad.experiments.registry import setting
from specgrad.report import build_report

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass
class BoundedConfig:
    steps: int = setting(4, ge=1)
    dim: int = setting(3, ge=1)
    samples: int = setting(5, ge=1)
    feature_dim: int = setting(2, ge=1)
    relu_steps: int = setting(2, ge=0)
    init_scale: float = setting(1e-3, gt=0)
    routing: str = setting("all", choices=("all", "hidden"))
    widths: tuple[int, ...] = setting((2, 3), ge=1, nonempty=True)
    lr: float = 0.1  # no bounds declared: finite, as every float
    crash: bool = False

    def validate(self):
        if self.relu_steps > self.steps:
            raise ValueError(f"relu_steps ({self.relu_steps}) must not exceed steps ({self.steps})")


def bounded_run_seed(cfg, seed, ctx):
    if cfg.crash:
        raise RuntimeError("boom")
    ctx.steps(cfg.steps, "toy")
    losses = []
    for k in range(cfg.steps):
        losses.append(1.0 / (k + 1))
        ctx.advance()
    return {"gd": {"loss": losses}}


def bounded_tune(cfg, ctx):
    return {"best_lr": cfg.lr}


def bounded_plot(cfg, series, summary, folder):
    (folder / "toy.png").write_bytes(b"\x89PNG")
    return ["toy.png"]


register(Experiment(
    name="bounded-toy", description="a toy whose settings declare bounds", config=BoundedConfig,
    run_seed=bounded_run_seed, tune=bounded_tune, plot=bounded_plot,
    analyze=lambda cfg, series: ({"n": len(series)}, [Claim("runs", "it runs", 1.0, 0.5)]),
))  # fmt: skip


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


BAD_SETTINGS = [
    ("steps=-5", "setting 'steps' must be >= 1, got -5"),
    ("dim=0", "setting 'dim' must be >= 1, got 0"),
    ("samples=0", "setting 'samples' must be >= 1, got 0"),
    ("feature_dim=-3", "setting 'feature_dim' must be >= 1, got -3"),
    ("relu_steps=-5", "setting 'relu_steps' must be >= 0, got -5"),
    ("init_scale=nan", "setting 'init_scale' must be > 0, got nan"),
    ("init_scale=0", "setting 'init_scale' must be > 0, got 0"),
    ("lr=inf", "setting 'lr' must be finite, got inf"),
    ("lr=-nan", "setting 'lr' must be finite, got nan"),
    ("routing=5x", "setting 'routing' must be one of 'all', 'hidden', got '5x'"),
    ("widths=2,0", "every value of setting 'widths' must be >= 1, got 0 in 2,0"),
    ("widths=", "setting 'widths' needs at least one value"),
    ("relu_steps=9", "relu_steps (9) must not exceed steps (4)"),
    ("steps=2.5", "setting 'steps' expects int, got '2.5'"),
]


@pytest.mark.parametrize("pair, message", BAD_SETTINGS)
def test_a_setting_out_of_range_is_one_line_and_writes_nothing(tmp_path, capsys, pair, message):
    out = tmp_path / "out"
    assert cli.main(["run", "bounded-toy", "--out", str(out), "--set", pair]) == 2
    assert message in one_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("name, pair", [
    ("random-features", "dim=0"), ("random-features", "samples=0"), ("random-features", "feature_dim=-3"),
    ("random-features", "relu_steps=-5"), ("sparse-regression", "steps=-5"), ("phase-retrieval", "init_scale=nan"),
    ("long-tail-classification", "routing=5x"),
])  # fmt: skip
def test_the_experiments_bad_settings_of_the_issue_are_one_line(tmp_path, capsys, name, pair):
    out = tmp_path / "out"
    assert cli.main(["run", name, "--out", str(out), "--set", pair]) == 2
    assert f"setting {pair.split('=')[0]!r}" in one_line(capsys)
    assert not out.exists()

def test_the_corrected_rerun_is_not_refused(tmp_path, capsys):
    out = str(tmp_path)
    assert cli.main(["run", "bounded-toy", "--out", out, "--set", "steps=-5"]) == 2
    assert cli.main(["run", "bounded-toy", "--out", out, "--set", "steps=3"]) == 0


def test_a_crash_before_any_saved_work_does_not_lock_the_folder(tmp_path):
    from specgrad.experiments import run_experiment

    with pytest.raises(RuntimeError, match="boom"):
        run_experiment("bounded-toy", "smoke", tmp_path, overrides={"crash": "true"}, progress=False)
    assert (tmp_path / "bounded-toy" / "config.json").exists()
    assert (tmp_path / "bounded-toy" / "tuning.json").exists()  # tuning finished: that is work
    (tmp_path / "bounded-toy" / "tuning.json").unlink()
    result = run_experiment("bounded-toy", "smoke", tmp_path, progress=False)
    assert result["config"]["crash"] is False


def test_unwritable_out_is_one_line_and_creates_nothing(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, message in [
        (a_file, "is a file, not a folder"),
        (a_file / "below", "is a file, not a folder"),
        (Path("/proc/specgrad-results"), "cannot write results to /proc/specgrad-results"),
    ]:
        assert cli.main(["run", "bounded-toy", "--out", str(out)]) == 2
        assert message in one_line(capsys)
        assert cli.main(["reproduce", "--only", "bounded-toy", "--preset", "smoke", "--out", str(out)]) == 2
        assert message in one_line(capsys)
    assert a_file.read_text() == "x" and sorted(tmp_path.iterdir()) == [a_file]

    # a read-only mount: creating the folder works (it exists), writing in it does not
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "touch", read_only)
    assert cli.main(["run", "bounded-toy", "--out", str(tmp_path / "ro")]) == 2
    err = one_line(capsys)
    assert "cannot write results to" in err and "Read-only file system" in err
    assert sorted(tmp_path.iterdir()) == [a_file]  # the folders it made are gone again


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert cli.main(["run", "bounded-toy", "--out", str(ro)]) == 2
        assert "Permission denied" in one_line(capsys)
        assert not list(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_reproduce_checks_preset_and_device_before_running_anything(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert cli.main(["reproduce", "--preset", "nope", "--out", str(out)]) == 2
    assert "unknown preset 'nope'" in one_line(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        assert cli.main(["reproduce", "--device", device, "--out", str(out)]) == 2
        assert "no CUDA device is available here" in one_line(capsys)
        assert cli.main(["run", "bounded-toy", "--device", device, "--out", str(out)]) == 2
        assert "no CUDA device is available here" in one_line(capsys)
    assert cli.main(["reproduce", "--device", "tpu", "--out", str(out)]) == 2
    assert "unknown device 'tpu'" in one_line(capsys)
    assert cli.main(["reproduce", "--only", "nope", "--out", str(out)]) == 2
    assert "unknown experiments ['nope']" in one_line(capsys)
    assert not out.exists()  # no folders, no report


@pytest.mark.parametrize("size", ["0", "1", "-3"])
def test_demo_size_too_small(capsys, size):
    assert cli.main(["demo", "--size", size]) == 2
    assert f"--size must be at least 2, got {size}" in one_line(capsys)


def test_report_of_a_missing_folder(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no results folder" in one_line(capsys)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("name, content, remedy", [
    ("seeds/seed0.json", '{"seed": 0, "seconds": 1.0, "ser', "delete it to run seed 0 again"),
    ("seeds/seed0.json", '{"seed": 0}', "delete it to run seed 0 again"),
    ("tuning.json", "", "delete it to tune again"),
    ("config.json", "\xff not json", "use --force to start over"),
])  # fmt: skip
def test_resuming_with_a_corrupt_saved_file_names_it(tmp_path, capsys, name, content, remedy):
    out = str(tmp_path)
    assert cli.main(["run", "bounded-toy", "--out", out]) == 0
    (tmp_path / "bounded-toy" / "result.json").unlink()
    (tmp_path / "bounded-toy" / name).write_text(content)
    capsys.readouterr()
    assert cli.main(["run", "bounded-toy", "--out", out]) == 2
    err = one_line(capsys)
    assert str(tmp_path / "bounded-toy" / name) in err and remedy in err
    assert cli.main(["run", "bounded-toy", "--out", out, "--force"]) == 0


def test_report_names_a_corrupt_result_and_builds(tmp_path, capsys):
    assert cli.main(["run", "bounded-toy", "--out", str(tmp_path)]) == 0
    bad = tmp_path / "random-features" / "result.json"
    bad.parent.mkdir()
    bad.write_text('{"experiment": "random-features", "claims": [')
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"random-features is marked unreadable: {bad}" in captured.err
    page = (tmp_path / "report.html").read_text()
    assert "data-claim='bounded-toy:runs'" in page and str(bad) in page


def test_list_never_cuts_a_name(capsys, monkeypatch):
    load_all()
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80
    names = {line.split("│")[1].strip() for line in out.splitlines() if line.count("│") > 2}
    assert set(EXPERIMENTS) <= names


def test_files_are_created_with_the_normal_mode(tmp_path):
    old = os.umask(0o022)
    try:
        assert cli.main(["run", "bounded-toy", "--out", str(tmp_path)]) == 0
        write_json(tmp_path / "failed" / "error.json", {"message": "RuntimeError: x"})
        build_report(tmp_path)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    assert names >= {"report.html", "failed/error.json", "bounded-toy/config.json", "bounded-toy/tuning.json",
                     "bounded-toy/seeds/seed0.json", "bounded-toy/result.json", "bounded-toy/toy.png"}
    assert {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        n: "0o644" for n in names}


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "specgrad", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)  # fmt: skip


def test_in_a_subprocess_bad_input_is_one_line_and_exit_2(tmp_path):
    """The real entry point (no capsys): stderr holds one line, no traceback."""
    out = tmp_path / "out"
    for args in (["run", "phase-retrieval", "--set", "init_scale=nan", "--out", str(out)],
                 ["demo", "--size", "0"],
                 ["reproduce", "--preset", "nope", "--out", str(out)],
                 ["run", "phase-retrieval", "--out", "/proc/specgrad-results"]):  # fmt: skip
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() and "\n" not in proc.stderr.strip(), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_saved_files_are_whole_json(tmp_path):
    assert cli.main(["run", "bounded-toy", "--out", str(tmp_path)]) == 0
    for p in (tmp_path / "bounded-toy").rglob("*.json"):
        json.loads(p.read_text())
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".write-test*"))
