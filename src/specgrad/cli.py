"""The ``specgrad`` command line: ``run``, ``list``, ``demo``, ``reproduce``, ``report``, ``diagnose``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .demo import linalg_table
    from .experiments import UsageError

    if args.size < 2:
        raise UsageError(f"--size must be at least 2, got {args.size}")
    Console().print(linalg_table(size=args.size, seed=args.seed))
    return 0


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .experiments import EXPERIMENTS, PRESETS
    from .experiments.catalog import load_all

    load_all()
    # the name is what one types: never cut or wrapped, however narrow the terminal
    table = Table(title="experiments (specgrad run NAME --preset PRESET)", show_lines=True)
    table.add_column("name", no_wrap=True, min_width=max(map(len, EXPERIMENTS), default=4))
    table.add_column("what it shows", ratio=1)
    table.add_column("size per preset", ratio=1)
    for name in sorted(EXPERIMENTS):
        exp = EXPERIMENTS[name]
        sizes = "\n".join(f"{p}: {exp.size(exp.make_config(p))}" for p in PRESETS)
        table.add_row(name, exp.description, sizes)
    Console().print(table)
    return 0


def _print_claims(console, name: str, out: str, result: dict) -> None:
    from rich.markup import escape

    for c in result["claims"]:
        op = ">=" if c["direction"] == "min" else "<="
        if c["passed"] is None:
            mark, line = "[yellow]N/A[/] ", f"{c['id']}: not assessed: {c['reason']}  ({c['statement']})"
        else:
            mark = "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]"
            value = "n/a" if c["value"] is None else f"{c['value']:.4g}"  # NaN/Inf are stored as null
            line = f"{c['id']}: {value} {op} {c['threshold']:.4g}  ({c['statement']})"
        console.print(f"{mark} {escape(line)}", soft_wrap=True)  # one line each, also in a log file
    console.print(f"result: {escape(out)}/{name}/result.json", soft_wrap=True)


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    from .experiments import UsageError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .experiments import run_experiment
    from .experiments.catalog import load_all

    load_all()
    result = run_experiment(
        args.name, args.preset, args.out, seeds=args.seeds, device=args.device,
        overrides=_parse_sets(args.set), force=args.force,
    )  # fmt: skip
    _print_claims(Console(), args.name, args.out, result)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from .experiments.runner import reproduce
    from .report import build_report, load_results

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    console = Console()
    status = reproduce(args.preset, args.out, only=only, device=args.device,
                       on_result=lambda name, result: _print_claims(console, name, args.out, result))  # fmt: skip
    results = load_results(Path(args.out))
    _warn_unreadable(results)
    path = build_report(args.out, results)
    failed = [n for n, s in status.items() if s != "ok"]
    if failed:
        console.print(f"[red]{len(failed)} experiment(s) failed[/]: {', '.join(failed)} (see the report)")
    console.print(f"report: {escape(str(path.resolve()))}", soft_wrap=True)
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from .experiments import UsageError
    from .report import build_report, load_results

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UsageError(f"no results folder at {str(folder)!r}")
    results = load_results(folder)
    _warn_unreadable(results)
    print(f"report: {build_report(folder, results).resolve()}")
    return 0


def _warn_unreadable(results: dict) -> None:
    from .report import unreadable

    for name, bad in unreadable(results).items():
        print(f"specgrad report: {name} is marked unreadable: {bad['file']}: {bad['message']}", file=sys.stderr)


# optimizer -> (learning rate of its matrices, of the AdamW rule on the rest)
DIAGNOSE_LRS = {"muon": (0.02, 1e-3), "specgd": (0.02, 1e-3), "shampoo": (1e-3, 1e-3), "adamw": (1e-3, 1e-3),
                "sgd": (0.1, 1e-3)}  # fmt: skip


HISTORY_EVERY = 2  # the monitor's sampling of the training steps (the last batch is diagnosed apart)


def _diagnose(args: argparse.Namespace) -> int:
    """Train ``--steps`` steps with the monitor on, diagnose (and probe) the last batch,
    print the table and the recommended routing, write the page."""
    import time

    import pandas as pd
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .diagnostics import SpectralMonitor, diagnose
    from .diagnostics.diagnose import PROBE_COLUMNS
    from .diagnostics.load import LoadError, load_batches, load_model
    from .diagnostics.page import render_page
    from .diagnostics.recommend import recommend_routing
    from .experiments import UsageError
    from .experiments.methods import make
    from .experiments.runner import write_text
    from .optim import split_params

    for name in ("steps", "batch_size", "seq_len", "probe_batch"):
        if getattr(args, name) < (2 if name == "seq_len" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be at least {2 if name == 'seq_len' else 1}, "
                             f"got {getattr(args, name)}")  # fmt: skip
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give the path of the HTML page to write")
    start = time.perf_counter()
    console = Console(stderr=False)
    try:
        loaded = load_model(args.model, seed=args.seed)
        model = loaded.model.to(args.device).train()
        data = load_batches(args.data, loaded, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                            seed=args.seed)  # fmt: skip
    except LoadError as e:
        raise UsageError(str(e)) from None
    routing = split_params(model)
    lr, adamw_lr = DIAGNOSE_LRS[args.optimizer]
    opt = make(args.optimizer, model, args.lr or lr, adamw={"lr": adamw_lr})
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{args.optimizer} steps", total=args.steps)
        with SpectralMonitor(model, every=HISTORY_EVERY) as mon:
            for i, batch in enumerate(data.batches):
                try:
                    loss = batch(model)
                    loss.backward()
                except (LoadError, RuntimeError, ValueError, TypeError, IndexError) as e:
                    if i:  # the data fitted the first step: a failure later is not a usage error
                        raise
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise UsageError(f"the data does not fit the model: {msg}") from None
                mon.step()
                opt.step()
                opt.zero_grad(set_to_none=True)
                progress.advance(task)
            parameters = {b: mon.block(b).parameter for b in mon.blocks}
            history = mon.frame()
        progress.add_task("last batch", total=None)
        last = data.batches[-1]
        report = diagnose(model, last)
        if args.probe != "off":
            progress.add_task(f"probe: one step per block on {args.probe_batch} sample(s) of the last batch", total=None)
            layers = None if args.probe == "all" else _probe_layers(report)
            try:
                probed = diagnose(model, last.head(args.probe_batch), probe=True, layers=layers).set_index("block")
            except ValueError as e:  # a model diagnose cannot copy to float64
                raise UsageError(f"the probe failed ({e}); rerun with --probe off") from None
            for col in PROBE_COLUMNS:
                report[col] = report["block"].map(probed[col])
            report["measured"] = report["measured"].fillna("-")
            report["probe_note"] = report["probe_note"].fillna("not probed (--probe all probes every block)")
            report["agrees"] = [m == v if m in ("spectral", "euclidean") else None
                                for m, v in zip(report["measured"], report["verdict"])]  # fmt: skip
    history["parameter"] = history["block"].map(parameters)
    rec = recommend_routing(pd.concat([history, report], ignore_index=True), routing=routing)
    seconds = time.perf_counter() - start
    _print_diagnosis(console, report, routing, rec)
    meta = {"model": args.model, "data": data.source + "".join(f" ({n})" for n in data.notes),
            "optimizer": f"{args.optimizer} for {args.steps} step(s), lr {args.lr or lr}",
            "probe": "off" if args.probe == "off" else f"{args.probe} blocks, {args.probe_batch} sample(s) of the last batch",
            "seconds": f"{seconds:.1f}"}  # fmt: skip
    write_text(out, render_page(report, rec, meta=meta))
    console.print(f"page: {escape(str(out.resolve()))}  ({seconds:.0f} s)", soft_wrap=True)
    return 0


def _probe_layers(report) -> "list[str] | None":
    """The modules of one layer of each repeated kind (the middle one of ``h.0.mlp``,
    ``h.1.mlp``, ...) and every module that is not repeated: what ``--probe sample`` probes."""
    import re

    probed = report[report["kind"] != "embedding"]  # never probed: their statistic is token counts
    modules = list(dict.fromkeys(p.rsplit(".", 1)[0] for p in probed["parameter"] if "." in p))
    roles: dict[str, list[str]] = {}
    for m in modules:
        roles.setdefault(re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", m), []).append(m)
    return [names[len(names) // 2] for names in roles.values()] or None


def _print_diagnosis(console, report, routing, rec) -> None:
    from rich.markup import escape
    from rich.table import Table

    rules = {r.name: r.rule for r in routing.routes}
    table = Table(title="nr(G) against st(A), per block (gain = nr/st; > 1 favours the spectral step)")
    for col in ("block", "matrix", "st(A)", "nr(G)", "gain", "verdict", "probe", "routed"):
        table.add_column(col, justify="right" if col in ("st(A)", "nr(G)", "gain") else "left",
                         no_wrap=col == "block")  # fmt: skip
    probe = "measured" in report
    for r in report.itertuples():
        color = {"spectral": "green", "euclidean": "yellow"}.get(r.verdict, "dim")
        table.add_row(escape(r.block), r.shape, f"{r.st_A:.3g}", f"{r.nr_G:.3g}", f"{r.predicted_gain:.3g}",
                      f"[{color}]{r.verdict}[/]", r.measured if probe else "", rules.get(r.parameter, ""))  # fmt: skip
    console.print(table)
    skipped = report.attrs.get("skipped", {})
    if skipped:
        console.print(f"{len(skipped)} matrices not measured (see the page): {escape(', '.join(list(skipped)[:5]))}"
                      + (" ..." if len(skipped) > 5 else ""))  # fmt: skip
    console.print("recommended routing:")
    console.print(escape(rec.code()), soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specgrad",
        description="Spectral gradient methods (Muon, SpecGD, Shampoo) and when they help.",
    )
    parser.add_argument("--version", action="version", version=f"specgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="orthogonalizers compared on random matrices (a table)")
    demo.add_argument("--size", type=int, default=512, help="matrix size (default 512)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    lst = sub.add_parser("list", help="the registered experiments and their presets")
    lst.set_defaults(func=_list)

    run = sub.add_parser("run", help="run (or resume) one experiment")
    run.add_argument("name", help="experiment name (see `specgrad list`)")
    run.add_argument("--preset", default="smoke", help="smoke | demo | quick | paper (default smoke)")
    run.add_argument("--out", default="results", help="output folder (default results)")
    run.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting of the config; repeatable")  # fmt: skip
    run.add_argument("--force", action="store_true", help="discard saved work in OUT/NAME and start over")
    run.set_defaults(func=_run)

    rep = sub.add_parser("reproduce", help="run every study (resuming) and build the HTML report")
    rep.add_argument("--preset", default="quick", help="smoke | demo | quick | paper (default quick)")
    rep.add_argument("--out", default="results", help="output folder (default results)")
    rep.add_argument("--only", default=None, metavar="NAMES", help="comma-separated experiment names")
    rep.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    rep.set_defaults(func=_reproduce)

    diag = sub.add_parser("diagnose", help="will Muon help this model? a table and an HTML page")
    diag.add_argument("--model", required=True,
                      help="a transformers config.json, a checkpoint folder, or module:factory (file.py:factory)")
    diag.add_argument("--data", default=None, help="a text file, a .pt/.npy/.npz tensor file or module:factory "
                      "(default: synthetic tokens or inputs)")
    diag.add_argument("--steps", type=int, default=5, help="optimizer steps with the monitor on (default 5)")
    diag.add_argument("--optimizer", default="muon", choices=sorted(DIAGNOSE_LRS), help="default muon")
    diag.add_argument("--lr", type=float, default=None, help="learning rate of the matrices (default: per optimizer)")
    diag.add_argument("--batch-size", type=int, default=8, help="sequences (or samples) per batch (default 8)")
    diag.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    diag.add_argument("--probe", default="sample", choices=("sample", "all", "off"),
                      help="measure one spectral and one Euclidean step per block: on one layer of each repeated "
                      "kind (sample, the default), on every block (all), or not (off)")
    diag.add_argument("--probe-batch", type=int, default=2, help="samples of the last batch the probe uses (default 2)")
    diag.add_argument("--out", default="diagnose.html", help="the HTML page to write (default diagnose.html)")
    diag.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    diag.add_argument("--seed", type=int, default=0)
    diag.set_defaults(func=_diagnose)

    report = sub.add_parser("report", help="build FOLDER/report.html from the result files in FOLDER")
    report.add_argument("folder")
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .experiments import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except UsageError as e:
        print(f"specgrad {args.command}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk filled up, a folder went away: not a bug to trace
        print(f"specgrad {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished seeds are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
