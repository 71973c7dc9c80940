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
import secrets
import shutil
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from rich.console import Console
from rich.markup import escape
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


def write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, then a rename,
    so a reader (or a resumed run) sees the old file or the new one, never a part. The
    folder is created if needed; the file gets the mode ``open(path, "w")`` would give
    (``0o666`` less the umask), not ``mkstemp``'s ``0o600``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: os.PathLike | str, text: str) -> None:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: os.PathLike | str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (:func:`write_bytes`); NaN/Inf become ``null``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_json(folder / "a" / "x.json", {"loss": [1.0, float("nan")]})
        >>> json.loads((folder / "a" / "x.json").read_text())
        {'loss': [1.0, None]}
    """
    write_text(path, json.dumps(to_jsonable(obj), indent=1, allow_nan=False))


def read_json(path: Path, remedy: str, keys: tuple[str, ...] = ()) -> Any:
    """The JSON object in ``path``; :class:`UsageError` naming the file, what is wrong and
    ``remedy`` (what to do) if it cannot be read, is not JSON, or lacks one of ``keys``."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror or e}); {remedy}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UsageError(f"{path} is not valid JSON ({e}); {remedy}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(map(repr, missing))}; {remedy}")
    return obj


def prepare_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) and check that a file can be written in it;
    :class:`UsageError` saying why not otherwise, with nothing left behind."""
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            raise UsageError(f"cannot write results to {folder}: {p} is a file, not a folder")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{secrets.token_hex(4)}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        for p in missing:
            try:
                p.rmdir()
            except OSError:
                pass
        raise UsageError(f"cannot write results to {folder}: {e.strerror or e}") from None


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _log(console: Console, text: str) -> None:
    """``[HH:MM:SS] text`` on one line, however long (a log file is read by grep, not eyes)."""
    console.print(f"{time.strftime('%H:%M:%S')} {text}", soft_wrap=True, highlight=False)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


@dataclasses.dataclass
class _Phase:
    label: str
    total: int
    done: int
    started: float
    shown: float


class ProgressDisplay:
    """The progress of every phase of a run (tuning, each seed, each experiment) with the
    time left.

    On a terminal: live bars. Elsewhere (a log file, CI, ``make demo | tee log``): a line
    when a phase starts, then one every ``every`` seconds with the count done, the time
    spent and the time left at the pace so far.
    """

    def __init__(self, console: Console, *, every: float = 30.0, live: Optional[bool] = None):
        self.console = console
        self.every = every
        live = console.is_terminal if live is None else live
        self._bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
        ) if live else None  # fmt: skip
        self._phases: dict[int, _Phase] = {}

    def __enter__(self) -> "ProgressDisplay":
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bars is not None:
            self._bars.stop()

    def add(self, label: str, total: int) -> int:
        """Start a phase of ``total`` units; returns its id."""
        label = escape(label)  # "[demo]" is text, not markup
        if self._bars is not None:
            return self._bars.add_task(label, total=total)
        key = max(self._phases, default=-1) + 1
        now = time.monotonic()
        self._phases[key] = _Phase(label, total, 0, now, now)
        _log(self.console, f"{label}: 0/{total}")
        return key

    def advance(self, key: int, n: int = 1) -> None:
        if self._bars is not None:
            self._bars.advance(key, n)
            return
        phase = self._phases.get(key)
        if phase is None:
            return
        phase.done += n
        now = time.monotonic()
        if now - phase.shown >= self.every:
            phase.shown = now
            spent = now - phase.started
            left = spent / phase.done * max(phase.total - phase.done, 0) if phase.done else None
            _log(self.console, f"{phase.label}: {phase.done}/{phase.total}, {_clock(spent)} spent, "
                               f"{'?' if left is None else _clock(left)} left")  # fmt: skip

    def remove(self, key: int) -> None:
        if self._bars is not None:
            self._bars.remove_task(key)
        else:
            self._phases.pop(key, None)


class RunContext:
    """What ``run_seed`` gets besides config and seed: the device and a progress bar.

    ``ctx.steps(total, label)`` starts a bar of ``total`` units; ``ctx.advance(n)`` moves it.
    """

    def __init__(self, device: str, progress: Optional[ProgressDisplay], task_label: str, tuning: Optional[dict] = None):
        self.device = torch.device(device)
        self.tuning = tuning or {}
        self._progress = progress
        self._label = task_label
        self._task = None

    def steps(self, total: int, label: str = "") -> None:
        if self._progress is None:
            return
        self.close()
        self._task = self._progress.add(f"{self._label} {label}".strip(), total)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove(self._task)
            self._task = None


def check_device(device: str) -> str:
    """``device`` if this machine has it; :class:`UsageError` otherwise."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    return device


def _display(progress: "bool | ProgressDisplay", console: Console):
    """``progress`` itself when it is a display (already running), else a new one or none."""
    if isinstance(progress, ProgressDisplay):
        return nullcontext(progress)
    return ProgressDisplay(console) if progress else nullcontext(None)


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
    progress: "bool | ProgressDisplay" = True,
) -> dict:
    """Run (or resume) ``name`` at ``preset`` into ``out/name`` and return the result dict.

    Every input is checked before anything is written: :class:`UsageError` for an unknown
    experiment, preset, setting or device, a setting out of range, a folder that cannot be
    written, a saved file that cannot be read, and when ``out/name`` holds finished work of
    another config (pass ``force=True`` to start over). ``progress``: show the progress of
    each phase (or a :class:`ProgressDisplay` to show it in).
    """
    exp: Experiment = get(name)
    cfg = exp.make_config(preset, overrides)
    device = check_device(device)
    n_seeds = exp.seeds.get(preset, 1) if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds <= 0:
        raise UsageError(f"--seeds must be a positive integer, got {n_seeds!r}")
    console = console or Console(stderr=True)
    folder = Path(out) / name
    identity = to_jsonable({"experiment": name, "preset": preset, "config": dataclasses.asdict(cfg)})
    if force and folder.is_dir():
        shutil.rmtree(folder)
    prepare_folder(folder)
    saved = folder / "config.json"
    fresh = "use --force to start over, or another --out"
    previous = read_json(saved, fresh) if saved.exists() else None
    if previous is not None and previous != identity and _holds_work(folder):
        diff = _describe_difference(previous, identity)
        raise UsageError(f"{folder} holds a run with another config ({diff}); {fresh}")
    if previous != identity:  # written once the config is known to be valid
        write_json(saved, identity)

    started = time.perf_counter()
    series: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    tuning, records = _saved_work(exp, folder, n_seeds)
    with _display(progress, console) as bar:
        if tuning is None:
            tuning = _tuning(exp, cfg, folder, device, bar, console)
        overall = bar.add(f"{name} [{preset}] seeds", n_seeds) if bar else None
        try:
            for seed in range(n_seeds):
                if seed not in records:
                    records[seed] = _seed(exp, cfg, seed, folder, device, tuning, bar, console)
                record = records[seed]
                seconds[f"seed{seed}"] = record["seconds"]
                for method, metrics in record["series"].items():
                    series[f"{method}/seed{seed}"] = metrics
                if bar:
                    bar.advance(overall)
        finally:
            if bar:
                bar.remove(overall)
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


def _holds_work(folder: Path) -> bool:
    """Whether ``folder`` holds something a config change would waste (so must refuse)."""
    seeds = folder / "seeds"
    return ((folder / "tuning.json").exists() or (folder / "result.json").exists()
            or (seeds.is_dir() and any(seeds.glob("seed*.json"))))  # fmt: skip


def _saved_work(exp: Experiment, folder: Path, n_seeds: int) -> tuple[Optional[dict], dict[int, dict]]:
    """The tuning result and seed records already in ``folder``, all read before anything
    runs, so that a damaged file stops a resumed run at once, naming the file."""
    again = "or use --force to start over"
    path = folder / "tuning.json"
    tuning = read_json(path, f"delete it to tune again, {again}") if exp.tune and path.exists() else None
    records = {}
    for seed in range(n_seeds):
        path = folder / "seeds" / f"seed{seed}.json"
        if path.exists():
            records[seed] = read_json(path, f"delete it to run seed {seed} again, {again}", keys=("seconds", "series"))
    return tuning, records


def _seed(exp: Experiment, cfg, seed: int, folder: Path, device: str, tuning: dict, bar, console: Console) -> dict:
    """Run one seed and save its record."""
    ctx = RunContext(device, bar, f"{exp.name} seed {seed}", tuning)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        result = exp.run_seed(cfg, seed, ctx)
    finally:
        ctx.close()
    record = {"seed": seed, "seconds": time.perf_counter() - t0, "series": result}
    write_json(folder / "seeds" / f"seed{seed}.json", record)
    _log(console, f"{exp.name} seed {seed} finished in {_clock(record['seconds'])}")
    return record


def _tuning(exp: Experiment, cfg, folder: Path, device: str, bar, console: Console) -> dict:
    """Run the experiment's tuning stage (if it has one) and save its result."""
    if exp.tune is None:
        return {}
    ctx = RunContext(device, bar, f"{exp.name} tuning")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        tuning = to_jsonable(exp.tune(cfg, ctx))
    finally:
        ctx.close()
    write_json(folder / "tuning.json", tuning)
    _log(console, f"{exp.name} tuning finished in {_clock(time.perf_counter() - t0)}")
    return tuning


def _describe_difference(old: dict, new: dict) -> str:
    if not isinstance(old, dict):
        return "unreadable config"
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
    on_result: Optional[Callable[[str, dict], None]] = None,
) -> dict[str, str]:
    """Run (or resume) every registered experiment at ``preset`` (the quickest first, by
    :attr:`Experiment.minutes`), or those in ``only`` in that order; one that fails is
    recorded in ``out/NAME/error.json`` (message and traceback) and the others go on.
    ``on_result(name, result)`` is called as each one finishes.
    Returns ``{name: "ok" | "error: ..."}``.

    The preset, device, names and ``out`` are checked first: :class:`UsageError` before
    anything is run or written.
    """
    import traceback

    from .catalog import load_all
    from .registry import EXPERIMENTS, PRESETS

    load_all()
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    device = check_device(device)
    names = list(only) if only else sorted(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"unknown experiments {unknown}; available: {', '.join(sorted(EXPERIMENTS))}")
    if not only:  # the quickest first (those without an estimate last), so a result comes early
        names.sort(key=lambda n: EXPERIMENTS[n].minutes.get(preset, math.inf))
    for name in names:
        EXPERIMENTS[name].make_config(preset)
    prepare_folder(Path(out))
    console = console or Console(stderr=True)
    status = {}
    with _display(progress, console) as bar:
        overall = bar.add(f"reproduce [{preset}] experiments", len(names)) if bar else None
        for name in names:
            error_file = Path(out) / name / "error.json"
            try:
                result = run_experiment(name, preset, out, device=device, console=console, progress=bar or False)
                error_file.unlink(missing_ok=True)
                status[name] = "ok"
                if on_result is not None:
                    on_result(name, result)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one failed study must not stop the others
                write_json(error_file, {"message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
                _log(console, f"[red]{name} failed[/]: {escape(f'{type(e).__name__}: {e}')}")
                status[name] = f"error: {type(e).__name__}: {e}"
            if bar:
                bar.advance(overall)
    return status
