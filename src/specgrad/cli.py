"""The ``specgrad`` command line: ``run``, ``list``, ``demo``."""

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
