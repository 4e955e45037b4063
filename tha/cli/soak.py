"""``python -m tha soak``: a cluster of real processes under random faults
(the cluster and its checker: tha/soak/)."""

from __future__ import annotations

import random
import sys

from ..soak import ALL_KINDS, Config, soak

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


def add_parser(sub):
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
    p.set_defaults(func=run)
    return p


def run(args) -> int:
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
