"""The demo: an employee/department graph mutated in rounds and mirrored.

``--local`` mirrors into a second heap in this process: each round changes
a few employees, encodes a delta, applies it to the mirror and prints what
moved. ``--role active`` and ``--role standby`` are the same program as two
processes over TCP: the active syncs after every round and prints seq,
bytes, dirty blocks and time; the standby prints what it applied and, with
``--promote-after``, takes over when the active dies, carrying on the rounds
from the last synced state (to a new standby given by ``--standby``).
"""

from __future__ import annotations

import random
import time

from .._ffi import ffi as _cffi, lib
from ..errors import Error, Fenced, SyncTimeout
from ..heap import Heap
from ..replication import Active
from ..schema import Schema
from .console import Console, common_options, parse_addr, parse_duration, print_applied, start
from .standby import listen, mirror

CDEF = """
struct dept { char name[32]; uint32_t id; uint32_t headcount; struct emp *head; };
struct emp  { char name[32]; uint32_t id; double salary;
              struct emp *mgr; struct dept *dept; struct emp *reports[4]; };
"""


def build(heap: Heap, employees: int, depts: int, rng: random.Random):
    """A company: depts with heads, employees with managers and reports."""
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
    heap.touch(ds)
    heap.touch(es)
    heap.roots["depts"] = ds
    heap.roots["staff"] = es
    return ds, es


def mutate(heap: Heap, es, ds, employees: int, depts: int, changes: int,
           rng: random.Random) -> None:
    """Raises, transfers and re-orgs on `changes` employees."""
    for _ in range(changes):
        i = rng.randrange(employees)
        e = es + i
        what = rng.randrange(3)
        if what == 0:
            e.salary *= 1.03
            heap.touch(e, "salary")
        elif what == 1:
            old = e.dept
            old.headcount -= 1
            heap.touch(old, "headcount")
            e.dept = ds + rng.randrange(depts)
            e.dept.headcount += 1
            heap.touch(e.dept, "headcount")
            heap.touch(e, "dept")
        elif i:
            e.mgr = es + rng.randrange(i)
            heap.touch(e, "mgr")


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


def _rounds(console: Console, heap: Heap, act, args, rng: random.Random) -> int:
    """Mutate, sync, print; until --rounds are done or a signal stops it.
    A timeout is reported and the rounds go on; a fence (exit 3) or a
    definite refusal (wrong secret, other schema: exit 2) ends them."""
    ds, es = heap.roots["depts"], heap.roots["staff"]
    employees, depts = _count(heap, es), _count(heap, ds)
    console.say(f"{'round':>6} {'seq':>6} {'dirty':>6} {'bytes':>10} {'time':>10}")
    for rnd in range(1, args.rounds + 1):
        if console.stop.is_set():
            break
        mutate(heap, es, ds, employees, depts, args.changes, rng)
        dirty = heap.stats()["dirty_blocks"]
        t0 = time.perf_counter()
        try:
            r = act.sync()
        except SyncTimeout as e:
            console.say(f"round {rnd}: {e}", err=True)
            continue
        except Fenced as e:
            console.say(f"round {rnd}: {e}", err=True)
            return 3
        except Error as e:
            console.say(f"python -m tha demo: error: {e}", err=True)
            return 2
        dt = time.perf_counter() - t0
        console.say(f"{rnd:>6} {r.seq:>6} {dirty:>6} {r.bytes:>10,} {dt * 1e3:>8.2f}ms")
        console.pump(args.interval)
    console.flush()
    return 0


def run_active(args) -> int:
    console, secret = start(args)
    rng = random.Random(args.seed)
    heap = Heap(Schema(CDEF), capacity=args.capacity << 20, tracking="explicit")
    build(heap, args.employees, args.depts, rng)
    standbys = args.standby or [("127.0.0.1", 7400)]
    where = ", ".join("%s:%d" % a for a in standbys)
    try:
        act = Active(heap, standbys, secret=secret, ack=args.ack, timeout=args.timeout)
    except Error as e:
        console.say(f"python -m tha demo: error: {e}", err=True)
        return 2
    try:
        console.say(f"active: {args.employees} employees in {args.depts} departments, "
                    f"replicating to {where} (ack={args.ack})")
        while not console.stop.is_set():
            t0 = time.perf_counter()
            try:
                r = act.sync()
                break
            except SyncTimeout as e:  # names each missing standby and why
                console.say(f"waiting for the standby: {e}", err=True)
            except Fenced as e:
                console.say(str(e), err=True)
                return 3
            except Error as e:  # refused: wrong secret, other schema, ...
                console.say(f"python -m tha demo: error: {e}", err=True)
                return 2
        else:
            return 0
        console.say(f"bulk sync: seq {r.seq}, {heap.stats()['top']:,} bytes of image, "
                    f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
        return _rounds(console, heap, act, args, rng)
    finally:
        act.close()


def run_standby(args) -> int:
    """The standby role: mirrors, then carries on the rounds once promoted."""
    console, secret = start(args)
    # the rounds touch what they change, like the active's (explicit) heap
    sb = listen(console, "python -m tha demo", listen=args.listen or ("127.0.0.1", 7400),
                secret=secret, promote_after=args.promote_after,
                on_applied=print_applied(console), tracking="explicit")
    if sb is None:
        return 2
    act = None
    try:
        mirror(console, sb, until_promoted=True)
        if console.stop.is_set():
            return 0
        heap = sb.heap
        st = heap.stats()
        console.say(f"promoted: resuming as the active at seq {st['seq']}, "
                    f"epoch {st['epoch']}")
        standbys = args.standby or []
        try:
            act = Active(heap, standbys, secret=secret, ack=args.ack, timeout=args.timeout)
        except Error as e:
            console.say(f"python -m tha demo: error: {e}", err=True)
            return 2
        if standbys:
            console.say("replicating to " + ", ".join("%s:%d" % a for a in standbys))
        rng = random.Random(args.seed * 1000 + st["epoch"])
        return _rounds(console, heap, act, args, rng)
    finally:
        if act is not None:
            act.close()
        sb.close()


def add_parser(sub):
    p = sub.add_parser("demo", help="mirror an employee graph round by round",
                       description=__doc__, parents=[common_options()])
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
                        "(1s, 500ms, 2)")
    p.add_argument("--ack", choices=("none", "received", "applied"), default="applied",
                   help="what sync() waits for (default applied)")
    p.add_argument("--timeout", type=parse_duration, default=5.0, metavar="T",
                   help="sync() gives up after this long (default 5s)")
    p.add_argument("--interval", type=parse_duration, default=None, metavar="T",
                   help="pause between rounds (default 0.5s with --role, 0 with --local)")
    p.add_argument("--employees", type=int, default=10_000)
    p.add_argument("--depts", type=int, default=50)
    p.add_argument("--rounds", type=int, default=None,
                   help="default 5 with --local, 1000 with --role")
    p.add_argument("--changes", type=int, default=100,
                   help="employees changed per round")
    p.add_argument("--capacity", type=int, default=64, help="heap size, MiB")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    if args.role is None and not args.local:
        print("say --local (one process) or --role active/standby (two processes)")
        return 2
    if args.rounds is None:
        args.rounds = 5 if args.local else 1000
    if args.interval is None:
        args.interval = 0.0 if args.local else 0.5
    if args.local:
        return run_local(args)
    return run_active(args) if args.role == "active" else run_standby(args)
