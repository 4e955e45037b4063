"""``python -m tha standby``: the generic standby, and the loop it shares
with ``demo --role standby`` (listen, mirror)."""

from __future__ import annotations

from ..errors import Error
from ..replication import Standby
from .console import (common_options, parse_addr, parse_duration, parse_size, print_applied,
                      start)

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


def add_parser(sub):
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
    p.add_argument("--reserve", type=parse_size, metavar="BYTES",
                   help="touch this much memory now for the first bulk sync's heap "
                   "(the active's image size: 256M, 1G): a machine without it "
                   "fails at start, and the sync writes into pages already there")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    console, secret = start(args)
    on_applied = None if args.quiet else print_applied(console)
    if args.log and not args.save:
        console.say("python -m tha standby: error: --log needs --save", err=True)
        return 2
    sb = listen(console, "python -m tha standby", listen=args.listen, secret=secret,
                promote_after=args.promote_after, on_applied=on_applied,
                save=args.save, log=args.log, fsync=args.fsync,
                save_every=args.save_every if args.save else None,
                tracking=args.tracking, reserve=args.reserve)
    if sb is None:
        return 2
    close_error = None
    try:
        mirror(console, sb)
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


# ---- what `standby` and `demo --role standby` share ---------------------------

def listen(console, prog: str, **options):
    """``Standby(**options)``, or None once the reason it cannot start (the
    address is taken, an option is refused) is said on stderr."""
    try:
        return Standby(**options)
    except (Error, OSError) as e:
        console.say(f"{prog}: error: {e}", err=True)
        return None


def mirror(console, sb, until_promoted: bool = False) -> None:
    """A standby command's main loop: `listening HOST:PORT` (and what was
    loaded from --save), then the queued lines and bulk progress until
    SIGTERM/SIGINT; with ``until_promoted`` until the standby promotes,
    else a promotion is announced once and the loop goes on."""
    console.say("listening %s:%d" % tuple(sb.address))
    if sb.load_report is not None:
        console.say(f"loaded {sb.save}: {sb.load_report}")
    announced = False
    while not console.stop.is_set():
        if until_promoted and sb.promoted:
            break
        console.pump(0.1)
        console.bulk_progress(sb)
        if sb.promoted and not announced and not until_promoted:
            announced = True
            st = sb.status()
            mech = sb.heap.stats()["tracking_mechanism"]
            console.say(f"promoted: epoch {st['epoch']} at seq {st['applied_seq']}; "
                        f"old actives are fenced; tracking {mech}")
    console.flush()
