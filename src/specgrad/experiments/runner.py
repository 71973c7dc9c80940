"""Run a registered experiment: seeds, resumption, progress, figures and the result file.

Layout of ``OUT/NAME/``: ``config.json`` (preset and every setting used), ``seeds/seed<k>.json``
(one per finished seed, written as it finishes), ``result.json`` (the format of DESIGN.md)
and the figures. Every file is written atomically (temp file, then rename), so an
interrupted run leaves only whole files and rerunning the same command resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import __version__
from .registry import Experiment, UsageError, get


def to_jsonable(x: Any) -> Any:
    """Tensors, numpy scalars, tuples and NaN/Inf (as ``null``) made JSON-safe."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return to_jsonable(x.tolist())
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (torch.dtype, torch.device)):
        return str(x)
    return x


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically: a temp file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(obj), f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunContext:
    """What ``run_seed`` gets besides config and seed: the device and a progress bar.

    ``ctx.steps(total, label)`` starts a bar of ``total`` units; ``ctx.advance(n)`` moves it.
    """

    def __init__(self, device: str, progress: Optional[Progress], task_label: str, tuning: Optional[dict] = None):
        self.device = torch.device(device)
        self.tuning = tuning or {}
        self._progress = progress
        self._label = task_label
        self._task = None

    def steps(self, total: int, label: str = "") -> None:
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(f"{self._label} {label}".strip(), total=total)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None


def _check_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}; use cpu or cuda")
    return device


@contextmanager
def _progress(console: Console, enabled: bool):
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    )  # fmt: skip
    with progress:
        yield progress


def run_experiment(
    name: str,
    preset: str = "smoke",
    out: os.PathLike | str = "results",
    *,
    seeds: Optional[int] = None,
    device: str = "cpu",
    overrides: Optional[dict[str, str]] = None,
    force: bool = False,
    console: Optional[Console] = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) ``name`` at ``preset`` into ``out/name`` and return the result dict.

    Raises :class:`UsageError` for an unknown experiment, preset, setting or device, and
    when ``out/name`` holds a run with another config (pass ``force=True`` to start over).
    """
    exp: Experiment = get(name)
    cfg = exp.make_config(preset, overrides)
    device = _check_device(device)
    n_seeds = exp.seeds.get(preset, 1) if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds <= 0:
        raise UsageError(f"--seeds must be a positive integer, got {n_seeds!r}")
    console = console or Console(stderr=True)
    folder = Path(out) / name
    identity = {"experiment": name, "preset": preset, "config": dataclasses.asdict(cfg)}
    saved = folder / "config.json"
    if force and folder.exists():
        shutil.rmtree(folder)
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous != to_jsonable(identity):
            diff = _describe_difference(previous, to_jsonable(identity))
            raise UsageError(f"{folder} holds a run with another config ({diff}); "
                             f"use --force to start over or another --out")  # fmt: skip
    write_json(saved, identity)

    started = time.perf_counter()
    series: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    with _progress(console, progress) as bar:
        tuning = _tuning(exp, cfg, folder, device, bar, console)
        overall = bar.add_task(f"{name} [{preset}] seeds", total=n_seeds) if bar else None
        for seed in range(n_seeds):
            path = folder / "seeds" / f"seed{seed}.json"
            if path.exists():
                record = json.loads(path.read_text())
            else:
                ctx = RunContext(device, bar, f"{name} seed {seed}", tuning)
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                result = exp.run_seed(cfg, seed, ctx)
                ctx.close()
                record = {"seed": seed, "seconds": time.perf_counter() - t0, "series": result}
                write_json(path, record)
                console.log(f"{name} seed {seed} finished in {record['seconds']:.1f}s")
            seconds[f"seed{seed}"] = record["seconds"]
            for method, metrics in record["series"].items():
                series[f"{method}/seed{seed}"] = metrics
            if bar:
                bar.advance(overall)
    summary, claims = exp.analyze(cfg, series)
    figures = exp.plot(cfg, series, summary, folder) if exp.plot else []
    result = {
        **identity,
        "env": {"torch": torch.__version__, "specgrad": __version__, "device": device,
                "seconds": time.perf_counter() - started, "seed_seconds": seconds, "git": git_revision(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S")},  # fmt: skip
        "tuning": tuning,
        "series": series,
        "summary": summary,
        "claims": [c.to_dict() for c in claims],
        "figures": list(figures),
    }
    write_json(folder / "result.json", result)
    return to_jsonable(result)


def _tuning(exp: Experiment, cfg, folder: Path, device: str, bar, console: Console) -> dict:
    """Run (or load) the experiment's tuning stage."""
    if exp.tune is None:
        return {}
    path = folder / "tuning.json"
    if path.exists():
        return json.loads(path.read_text())
    ctx = RunContext(device, bar, f"{exp.name} tuning")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    tuning = to_jsonable(exp.tune(cfg, ctx))
    ctx.close()
    write_json(path, tuning)
    console.log(f"{exp.name} tuning finished in {time.perf_counter() - t0:.1f}s")
    return tuning


def _describe_difference(old: dict, new: dict) -> str:
    if old.get("preset") != new.get("preset"):
        return f"preset {old.get('preset')!r} there, {new.get('preset')!r} now"
    a, b = old.get("config", {}), new.get("config", {})
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in keys[:4]) or "different experiment"


def reproduce(
    preset: str = "quick",
    out: os.PathLike | str = "results",
    *,
    only: Optional[list[str]] = None,
    device: str = "cpu",
    console: Optional[Console] = None,
    progress: bool = True,
) -> dict[str, str]:
    """Run (or resume) every registered experiment at ``preset``; one that fails is
    recorded in ``out/NAME/error.json`` (message and traceback) and the others go on.
    Returns ``{name: "ok" | "error: ..."}``."""
    import traceback

    from .catalog import load_all
    from .registry import EXPERIMENTS

    load_all()
    names = sorted(EXPERIMENTS) if not only else list(only)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"unknown experiments {unknown}; available: {', '.join(sorted(EXPERIMENTS))}")
    console = console or Console(stderr=True)
    status = {}
    for name in names:
        error_file = Path(out) / name / "error.json"
        try:
            run_experiment(name, preset, out, device=device, console=console, progress=progress)
            error_file.unlink(missing_ok=True)
            status[name] = "ok"
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one failed study must not stop the others
            write_json(error_file, {"message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
            console.log(f"[red]{name} failed[/]: {type(e).__name__}: {e}")
            status[name] = f"error: {type(e).__name__}: {e}"
    return status
