"""The ``specgrad`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    from .demo import linalg_table

    from rich.console import Console

    Console().print(linalg_table(size=args.size, seed=args.seed))
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
