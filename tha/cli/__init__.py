"""python -m tha: subcommands, each with --help."""

from __future__ import annotations

import argparse
import sys

from . import __version__, bench, demo, inspect_cli
from .console import (Console, common_options, parse_addr, parse_duration,
                      print_applied, read_secret, setup_logging)
from .errors import Error


# ---- python -m tha standby -----------------------------------------------------

STANDBY_DOC = """\
The generic standby: mirrors whatever heap an active sends (the schema
comes in the handshake, so no application code is needed) and prints a
line per frame applied. The first line of output is `listening HOST:PORT`
(useful with port 0). With --promote-after it promotes itself when the
active has been silent that long: the epoch goes up and the old active is
fenced. SIGTERM or SIGINT close it cleanly (exit 0).

With --save FILE it keeps what it mirrors on disk: a checkpoint after each
bulk sync, every --save-every seconds and on SIGTERM/SIGINT; with --log
also a delta log of every frame (fsync policy --fsync), which lets the
active wait for ack="persisted". Started again with the same files, it
loads them and the active resumes it from its backlog (only what it
missed) instead of a full bulk sync.
"""


def add_standby_parser(sub):
    p = sub.add_parser("standby", help="mirror an active's heap (no application "
                       "code needed)", description=STANDBY_DOC,
                       parents=[common_options()])
    p.add_argument("--listen", type=parse_addr, default=("127.0.0.1", 7400),
                   metavar="HOST:PORT", help="address to listen on (default "
                   "127.0.0.1:7400; port 0 picks one)")
    p.add_argument("--promote-after", type=parse_duration, metavar="T",
                   help="promote after the active is silent this long (1s, 500ms, 2)")
    p.add_argument("--quiet", action="store_true",
                   help="no line per applied frame")
    p.add_argument("--save", metavar="FILE",
                   help="checkpoint file: load it at start if it exists, write "
                        "it after bulk syncs, every --save-every and on exit")
    p.add_argument("--log", metavar="FILE",
                   help="delta log beside --save (needed for ack='persisted')")
    p.add_argument("--save-every", type=parse_duration, default=30.0, metavar="T",
                   help="checkpoint (with --log: compact) this often (default 30s)")
    p.add_argument("--tracking", choices=("auto", "wp", "diff", "explicit"),
                   default="auto", help="how the heap finds changes once promoted "
                   "(default auto)")
    p.add_argument("--fsync", default="always",
                   help="log fsync policy: always, 'every 100ms', never "
                        "(default always)")
    p.set_defaults(func=run_standby)
    return p


def run_standby(args) -> int:
    from .replication import Standby

    setup_logging(args.verbose)
    secret = read_secret(args.secret_file)
    console = Console()
    console.install_signals()
    on_applied = None if args.quiet else print_applied(console)
    if args.log and not args.save:
        console.say("python -m tha standby: error: --log needs --save", err=True)
        return 2
    try:
        sb = Standby(listen=args.listen, secret=secret,
                     promote_after=args.promote_after, on_applied=on_applied,
                     save=args.save, log=args.log, fsync=args.fsync,
                     save_every=args.save_every if args.save else None,
                     tracking=args.tracking)
    except (Error, OSError) as e:
        console.say(f"python -m tha standby: error: {e}", err=True)
        return 2
    close_error = None
    try:
        console.say("listening %s:%d" % tuple(sb.address))
        if sb.load_report is not None:
            console.say(f"loaded {args.save}: {sb.load_report}")
        announced = False
        while not console.stop.is_set():
            console.pump(0.1)
            console.bulk_progress(sb)
            if sb.promoted and not announced:
                announced = True
                st = sb.status()
                mech = sb.heap.stats()["tracking_mechanism"]
                console.say(f"promoted: epoch {st['epoch']} at seq {st['applied_seq']}; "
                            f"old actives are fenced; tracking {mech}")
        console.flush()
    finally:
        try:
            sb.close()  # with --save: the last checkpoint
        except Error as e:
            close_error = e
    if close_error is not None:
        console.say(f"python -m tha standby: closing: {close_error}", err=True)
        return 1
    if args.save:  # say what is on disk, only that
        if sb.heap is None:
            console.say(f"nothing to save: no state was received ({args.save} "
                        "not written)")
        else:
            console.say(f"saved seq {sb.heap.stats()['seq']} to {args.save}")
    console.say("standby closed")
    return 0


# ---- python -m tha soak ----------------------------------------------------------

SOAK_DOC = """\
Runs a cluster of real processes on 127.0.0.1 (an active and, with the
default --nodes 3, two standbys, a generated secret, a temp dir) under
random faults for --minutes: a client writes to the active (plain cdata
writes, allocations, frees, pointer rewires; each write's
sync(ack="applied") is recorded once it returns) while kill -9, link cuts,
stalled and corrupted links (a proxy per link), SIGSTOP/SIGCONT of the
active past the heir's promotion timeout, promotions, rejoins and
intruders with the wrong secret hit it. After every event the cluster
settles and is checked: every acked sync is in the current active's
state, in-sync standbys' dump() digests equal the active's, and every
node's state is one the writes could have made. Prints a summary line
(syncs, failovers, bytes, max lag, events, violations) and, on any
violation, the violations and the event history: exit 1. Everything it
started (processes, files) is cleaned up, also on SIGINT/SIGTERM.
"""


def add_soak_parser(sub):
    from .soak import ALL_KINDS
    p = sub.add_parser("soak", help="a cluster under random faults, checked after "
                       "every event", description=SOAK_DOC)
    p.add_argument("--minutes", type=float, default=1.0,
                   help="how long to inject faults (default 1; 0.5 works)")
    p.add_argument("--seed", type=int, help="the schedule of faults (default: random, "
                   "printed)")
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3, >= 2)")
    p.add_argument("--quorum", default="all",
                   help="standbys each sync waits for: 'all' (default) or a number")
    p.add_argument("--kinds", default=",".join(ALL_KINDS),
                   help="comma list of fault kinds to draw from (default: %(default)s)")
    p.add_argument("--touch", action="store_true",
                   help="heap.touch() after each write (default: plain writes found "
                        "by tracking)")
    p.add_argument("--keep", action="store_true",
                   help="on a violation keep the temp dir with the nodes' logs")
    p.set_defaults(func=run_soak)
    return p


def run_soak(args) -> int:
    import random

    from .soak import ALL_KINDS, Config, soak

    kinds = tuple(k for k in args.kinds.split(",") if k)
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        print(f"python -m tha soak: error: unknown fault kind {bad[0] if bad else '(none)'}"
              f" (kinds: {', '.join(ALL_KINDS)})", file=sys.stderr)
        return 2
    if args.nodes < 2:
        print("python -m tha soak: error: --nodes must be at least 2", file=sys.stderr)
        return 2
    if args.quorum != "all" and not (args.quorum.isdigit()
                                     and int(args.quorum) <= args.nodes - 1):
        print(f"python -m tha soak: error: --quorum must be 'all' or 0..{args.nodes - 1}",
              file=sys.stderr)
        return 2
    if args.minutes < 0:
        print("python -m tha soak: error: --minutes cannot be negative", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    cfg = Config(seconds=args.minutes * 60, seed=seed, nodes=args.nodes,
                 quorum=args.quorum, touch=args.touch, kinds=kinds)
    try:
        return soak(cfg, keep=args.keep)
    except KeyboardInterrupt:
        return 130


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tha",
        description="Transparent High Availability for C structs.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    add_standby_parser(sub)
    inspect_cli.add_parsers(sub)
    bench.add_parser(sub)
    add_soak_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except Error as e:  # a tha error the subcommand did not expect: one line
        print(f"python -m tha {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
