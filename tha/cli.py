"""python -m tha: subcommands, each with --help."""

from __future__ import annotations

import argparse
import sys

from . import __version__, bench, demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tha",
        description="Transparent High Availability for C structs.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    bench.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
