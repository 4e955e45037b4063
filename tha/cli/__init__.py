"""python -m tha: subcommands, each with --help.

One module per command group: demo.py (``demo``), standby.py
(``standby``), inspect.py (``inspect``, ``leaks``, ``verify``), bench.py
(``bench``), soak.py (``soak``), node.py (``node``), cluster.py
(``cluster list|switchover|failover``); console.py holds what the long-running
ones share (addresses, durations, the secret file, logging, signals, a
console printing from the main thread).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from ..errors import Error
from . import bench, cluster, demo, inspect, node, soak, standby


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="tha" if os.path.basename(sys.argv[0]) == "tha" else "python -m tha",
        description="Transparent High Availability for C structs.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    standby.add_parser(sub)
    inspect.add_parsers(sub)
    bench.add_parser(sub)
    soak.add_parser(sub)
    node.add_parser(sub)
    cluster.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except Error as e:  # a tha error the subcommand did not expect: one line
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not fail
        return 128 + signal.SIGPIPE
