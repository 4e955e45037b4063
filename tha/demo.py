"""The demo: an employee/department graph mutated in rounds and mirrored.

``--local`` mirrors into a second heap in this process (the replication
issue adds the two-process roles). Each round changes a few employees,
encodes a delta, applies it to the mirror and prints what moved.
"""

from __future__ import annotations

import random
import time

from .heap import Heap
from .schema import Schema

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


def add_parser(sub):
    p = sub.add_parser("demo", help="mirror an employee graph round by round",
                       description=__doc__)
    p.add_argument("--local", action="store_true",
                   help="mirror into a second heap in this process")
    p.add_argument("--employees", type=int, default=10_000)
    p.add_argument("--depts", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--changes", type=int, default=100,
                   help="employees changed per round")
    p.add_argument("--capacity", type=int, default=64, help="heap size, MiB")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=_run)
    return p


def _run(args) -> int:
    if not args.local:
        print("only --local is available in this version: the two-process "
              "roles (--role active/standby) come with replication")
        return 2
    return run_local(args)
