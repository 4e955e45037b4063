"""The demo: an employee/department graph mutated in rounds and mirrored.

Without --local or --role: the real thing on this machine. It starts an
active and two standbys, each its own process on 127.0.0.1 with a
generated secret; the active builds the company and mutates it in rounds
(plain writes, each round a sync(ack="applied")), a live line per process
shows seq, dirty blocks, bytes and sync time; part-way the active is killed
with SIGKILL, the first standby promotes after the heartbeat timeout and
carries on the rounds from the seq it resumed at, the second standby joins
it by bulk sync. At the end the states are compared (dump() digests) and
checked: no acknowledged sync lost. Exits 1 if anything did not hold.

--local mirrors into a second heap in this process: each round changes a
few employees, encodes a delta, applies it to the mirror and prints what
moved. --role active and --role standby are the same program as two
processes over TCP (two terminals): the active syncs after every round and
prints seq, bytes, dirty blocks and time; the standby prints what it
applied and, with --promote-after, takes over when the active dies,
carrying on the rounds from the last synced state (to a new standby given
by --standby).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import threading
import time

from .._ffi import ffi as _cffi, lib
from ..errors import Error, Fenced, SyncTimeout
from ..heap import Heap
from ..replication import Active
from ..schema import Schema
from . import failover
from .console import Console, common_options, parse_addr, parse_duration, print_applied, start
from .standby import listen, mirror

CDEF = """
struct dept { char name[32]; uint32_t id; uint32_t headcount; struct emp *head; };
struct emp  { char name[32]; uint32_t id; double salary;
              struct emp *mgr; struct dept *dept; struct emp *reports[4]; };
"""


def _explicit(heap: Heap) -> bool:
    return heap.stats()["tracking"] == "explicit"


def build(heap: Heap, employees: int, depts: int, rng: random.Random):
    """A company: depts with heads, employees with managers and reports.
    Plain writes; on a heap with tracking="explicit" they are touched."""
    ds = heap.new("struct dept", count=depts)
    es = heap.new("struct emp", count=employees)
    for i in range(depts):
        ds[i].name = f"dept-{i}".encode()
        ds[i].id = i
    for i in range(employees):
        e = es[i]
        e.name = f"emp-{i}".encode()
        e.id = i
        e.salary = 50_000 + rng.randrange(50_000)
        e.dept = ds + rng.randrange(depts)
        e.dept.headcount += 1
        if i:
            boss = rng.randrange(i)
            e.mgr = es + boss
            slots = es[boss].reports
            for k in range(4):
                if slots[k] == heap.schema.ffi.NULL:
                    slots[k] = es + i
                    break
    for i in range(depts):
        ds[i].head = es + rng.randrange(employees)
    if _explicit(heap):
        heap.touch(ds)
        heap.touch(es)
    heap.roots["depts"] = ds
    heap.roots["staff"] = es
    return ds, es


def mutate(heap: Heap, es, ds, employees: int, depts: int, changes: int,
           rng: random.Random) -> None:
    """Raises, transfers and re-orgs on `changes` employees: plain writes,
    each touched only on a heap with tracking="explicit" (the other modes
    find them)."""
    touch = heap.touch if _explicit(heap) else (lambda p, field=None: None)
    for _ in range(changes):
        i = rng.randrange(employees)
        e = es + i
        what = rng.randrange(3)
        if what == 0:
            e.salary *= 1.03
            touch(e, "salary")
        elif what == 1:
            old = e.dept
            old.headcount -= 1
            touch(old, "headcount")
            e.dept = ds + rng.randrange(depts)
            e.dept.headcount += 1
            touch(e.dept, "headcount")
            touch(e, "dept")
        elif i:
            e.mgr = es + rng.randrange(i)
            touch(e, "mgr")


def run_local(args) -> int:
    rng = random.Random(args.seed)
    schema = Schema(CDEF)
    active = Heap(schema, capacity=args.capacity << 20, tracking="explicit")
    standby = Heap(schema, capacity=args.capacity << 20, tracking="explicit")
    t0 = time.perf_counter()
    ds, es = build(active, args.employees, args.depts, rng)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = active.snapshot()
    standby.apply(frame)
    bulk = time.perf_counter() - t0
    print(f"built {args.employees} employees in {args.depts} departments "
          f"in {built:.2f}s")
    print(f"bulk sync: snapshot seq {active.stats()['seq']}, {len(frame):,} bytes, "
          f"{bulk * 1e3:.1f} ms  (active at 0x{active.base:x}, "
          f"standby at 0x{standby.base:x})")
    print(f"{'round':>5} {'seq':>5} {'dirty':>7} {'bytes':>10} {'encode':>9} "
          f"{'apply':>9}")
    for rnd in range(1, args.rounds + 1):
        mutate(active, es, ds, args.employees, args.depts, args.changes, rng)
        dirty = active.stats()["dirty_blocks"]
        t0 = time.perf_counter()
        delta = active.delta()
        t1 = time.perf_counter()
        standby.apply(delta)
        t2 = time.perf_counter()
        print(f"{rnd:>5} {active.stats()['seq']:>5} {dirty:>7} {len(delta):>10,} "
              f"{(t1 - t0) * 1e3:>7.2f}ms {(t2 - t1) * 1e3:>7.2f}ms")
    same = active.dump() == standby.dump()
    staff = standby.roots["staff"]
    ffi = schema.ffi
    print(f"standby: staff[1] is {ffi.string(staff[1].name).decode()!r}, "
          f"managed by {ffi.string(staff[1].mgr.name).decode()!r}, "
          f"in {ffi.string(staff[1].dept.name).decode()!r}")
    print("mirror matches active: " + ("yes" if same else "NO"))
    return 0 if same else 1


def _count(heap: Heap, p) -> int:
    """Elements in the allocation that p starts (the demo's arrays)."""
    obj = _cffi.new("tha_obj_t *")
    heap._check(lib.tha_heap_lookup(heap._h, _cffi.cast("void *", heap._addr(p)), obj))
    return obj.count


def digest(heap: Heap) -> str:
    """What the processes compare: a hash of ``dump()`` (equal exactly when
    two heaps mirror each other)."""
    return hashlib.sha256(repr(heap.dump()).encode()).hexdigest()[:16]


class _Out:
    """Where a role's lines go: text for a person, or with the hidden
    ``--events`` (the processes plain ``python -m tha demo`` starts, see
    cli/failover.py) one JSON object per line for that parent, which draws
    the display and checks what the events say."""

    def __init__(self, console: Console, events: bool):
        self.console, self.events = console, events

    def line(self, text: str | None, ev: str | None = None, **fields) -> None:
        """``text`` for a person (None: nothing), event ``ev`` for the parent."""
        if not self.events:
            if text is not None:
                self.console.say(text)
        elif ev is not None:
            self.console.say(json.dumps({"ev": ev, **fields}))

    def error(self, text: str, ev: str = "error") -> None:
        """Why the role stops (or, ev "waiting", waits): stderr, and an event."""
        self.console.say(text, err=True)
        if self.events:
            self.console.say(json.dumps({"ev": ev, "text": text}))

    def on_applied(self):
        if not self.events:
            return print_applied(self.console)

        def on_applied(seq: int, nbytes: int, bulk: bool) -> None:  # queued: see Console
            self.console.put(json.dumps({"ev": "applied", "seq": seq, "bytes": nbytes,
                                         "bulk": bulk}))
        return on_applied

    def stop_at_eof(self) -> None:
        """With --events the parent holds this process's stdin: its end (the
        parent closed it, or died) stops the process as SIGTERM does."""
        def watch():  # the fd, not sys.stdin: no buffer lock held at exit
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            self.console.stop.set()
        if self.events:
            threading.Thread(target=watch, daemon=True, name="demo-stdin").start()


def _shipping(out: _Out, heap: Heap) -> None:
    """--events: the state the next sync ships and its seq, said before the
    sync, so the parent knows it even if this process dies during it."""
    if out.events:
        out.line(None, "shipping", seq=heap.stats()["seq"] + 1, digest=digest(heap))


def _rounds(console: Console, out: _Out, heap: Heap, act, args,
            rng: random.Random) -> int:
    """Mutate, sync, print; until --rounds are done or a signal stops it.
    A timeout is reported and the rounds go on; a fence (exit 3) or a
    definite refusal (wrong secret, other schema: exit 2) ends them."""
    ds, es = heap.roots["depts"], heap.roots["staff"]
    employees, depts = _count(heap, es), _count(heap, ds)
    out.line(f"{'round':>6} {'seq':>6} {'dirty':>6} {'bytes':>10} {'time':>10}")
    for rnd in range(1, args.rounds + 1):
        if console.stop.is_set():
            break
        mutate(heap, es, ds, employees, depts, args.changes, rng)
        heap.frame_size("delta")  # wp/diff find the plain writes: count them
        dirty = heap.stats()["dirty_blocks"]
        _shipping(out, heap)
        t0 = time.perf_counter()
        try:
            r = act.sync()
        except SyncTimeout as e:
            out.error(f"round {rnd}: {e}", "waiting")
            continue
        except Fenced as e:
            out.error(f"round {rnd}: {e}")
            return 3
        except Error as e:
            out.error(f"python -m tha demo: error: {e}")
            return 2
        dt = time.perf_counter() - t0
        out.line(f"{rnd:>6} {r.seq:>6} {dirty:>6} {r.bytes:>10,} {dt * 1e3:>8.2f}ms",
                 "round", round=rnd, seq=r.seq, dirty=dirty, bytes=r.bytes, ms=dt * 1e3)
        console.pump(args.interval)
    console.flush()
    out.line(None, "done", seq=heap.stats()["seq"], digest=digest(heap))
    return 0


def run_active(args) -> int:
    console, secret = start(args)
    out = _Out(console, args.events)
    out.stop_at_eof()
    rng = random.Random(args.seed)
    # plain writes, found by the heap (write protection or a shadow compare)
    heap = Heap(Schema(CDEF), capacity=args.capacity << 20, tracking="auto")
    build(heap, args.employees, args.depts, rng)
    standbys = args.standby or [("127.0.0.1", 7400)]
    where = ", ".join("%s:%d" % a for a in standbys)
    try:
        act = Active(heap, standbys, secret=secret, ack=args.ack, timeout=args.timeout)
    except Error as e:
        out.error(f"python -m tha demo: error: {e}")
        return 2
    try:
        out.line(f"active: {args.employees} employees in {args.depts} departments, "
                 f"replicating to {where} (ack={args.ack})", "built",
                 employees=args.employees, depts=args.depts, image=heap.stats()["top"])
        _shipping(out, heap)
        while not console.stop.is_set():
            t0 = time.perf_counter()
            try:
                r = act.sync()
                break
            except SyncTimeout as e:  # names each missing standby and why
                out.error(f"waiting for the standby: {e}", "waiting")
            except Fenced as e:
                out.error(str(e))
                return 3
            except Error as e:  # refused: wrong secret, other schema, ...
                out.error(f"python -m tha demo: error: {e}")
                return 2
        else:
            return 0
        ms = (time.perf_counter() - t0) * 1e3
        top = heap.stats()["top"]
        out.line(f"bulk sync: seq {r.seq}, {top:,} bytes of image, {ms:.1f} ms", "bulk",
                 seq=r.seq, bytes=top, ms=ms)
        return _rounds(console, out, heap, act, args, rng)
    finally:
        act.close()


def _await_promotion(console: Console, sb) -> None:
    """--events: queued lines until promoted or stopped (mirror() without
    its lines for a person)."""
    while not console.stop.is_set() and not sb.promoted:
        console.pump(0.05)
    console.flush()


def run_standby(args) -> int:
    """The standby role: mirrors, then carries on the rounds once promoted."""
    console, secret = start(args)
    out = _Out(console, args.events)
    out.stop_at_eof()
    # once promoted the rounds' plain writes are found, as on the active
    sb = listen(console, "python -m tha demo", listen=args.listen or ("127.0.0.1", 7400),
                secret=secret, promote_after=args.promote_after,
                on_applied=out.on_applied(), tracking="auto")
    if sb is None:
        return 2
    act = None
    try:
        if args.events:
            out.line(None, "listening", host=sb.address[0], port=sb.address[1])
            _await_promotion(console, sb)
        else:
            mirror(console, sb, until_promoted=True)
        if console.stop.is_set():
            with sb.cond:  # the state it stops with (no active is writing it)
                out.line(None, "final", seq=sb.applied_seq, bulk_syncs=sb.bulk_syncs,
                         digest=None if sb.heap is None else digest(sb.heap))
            return 0
        seen = time.monotonic()  # CLOCK_MONOTONIC: the parent's clock too
        heap = sb.heap
        st = heap.stats()
        out.line(f"promoted: resuming as the active at seq {st['seq']}, "
                 f"epoch {st['epoch']}", "promoted", seq=st["seq"], epoch=st["epoch"],
                 t=seen, digest=digest(heap) if args.events else None)
        standbys = args.standby or []
        try:
            act = Active(heap, standbys, secret=secret, ack=args.ack, timeout=args.timeout)
        except Error as e:
            out.error(f"python -m tha demo: error: {e}")
            return 2
        if standbys:
            out.line("replicating to " + ", ".join("%s:%d" % a for a in standbys))
        rng = random.Random(args.seed * 1000 + st["epoch"])
        return _rounds(console, out, heap, act, args, rng)
    finally:
        if act is not None:
            act.close()
        sb.close()


def add_parser(sub):
    p = sub.add_parser("demo", help="an active, two standbys and a failover, on this "
                       "machine (--local: one process; --role: one of two terminals)",
                       description=__doc__, parents=[common_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local", action="store_true",
                   help="mirror into a second heap in this process")
    p.add_argument("--role", choices=("active", "standby"),
                   help="one of two processes mirroring over TCP")
    p.add_argument("--listen", type=parse_addr, metavar="HOST:PORT",
                   help="standby: address to listen on (default 127.0.0.1:7400; "
                        "port 0 picks one, printed as `listening HOST:PORT`)")
    p.add_argument("--standby", type=parse_addr, action="append", metavar="HOST:PORT",
                   help="active: the standby to replicate to (default "
                        "127.0.0.1:7400); standby: where to replicate once promoted. "
                        "Repeat for several")
    p.add_argument("--promote-after", type=parse_duration, metavar="T",
                   help="standby: promote when the active is silent this long "
                        "(1s, 500ms, 2); without --local/--role: the first "
                        "standby's (default 1s)")
    p.add_argument("--ack", choices=("none", "received", "applied"), default="applied",
                   help="what sync() waits for (default applied)")
    p.add_argument("--timeout", type=parse_duration, default=5.0, metavar="T",
                   help="sync() gives up after this long (default 5s)")
    p.add_argument("--interval", type=parse_duration, default=None, metavar="T",
                   help="pause between rounds (default 0.5s with --role, 0.1s "
                        "without --local/--role, 0 with --local)")
    p.add_argument("--employees", type=int, default=10_000)
    p.add_argument("--depts", type=int, default=50)
    p.add_argument("--rounds", type=int, default=None,
                   help="default 5 with --local, 1000 with --role, 16 without "
                        "either (half before the kill, half after)")
    p.add_argument("--changes", type=int, default=100,
                   help="employees changed per round")
    p.add_argument("--capacity", type=int, default=64, help="heap size, MiB")
    p.add_argument("--seed", type=int, default=1)
    # the processes plain `demo` starts: JSON events on stdout, stdin EOF stops
    p.add_argument("--events", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    if args.local and args.role:
        print("python -m tha demo: error: --local or --role, not both", file=sys.stderr)
        return 2
    if args.rounds is None:
        args.rounds = 5 if args.local else 1000 if args.role else 16
    if args.interval is None:
        args.interval = 0.0 if args.local else 0.5 if args.role else 0.1
    if args.local:
        return run_local(args)
    if args.role is None:
        if args.listen or args.standby:  # the demo picks its own ports
            print("python -m tha demo: error: --listen and --standby go with --role",
                  file=sys.stderr)
            return 2
        return failover.run(args)
    return run_active(args) if args.role == "active" else run_standby(args)
