"""``python -m tha bench --leaks``: leak detection over N separate objects.

Allocates N ``struct emp`` one by one (N allocations, not one array), wires
the live ones into a 4-ary tree through ``mgr`` and ``reports[4]`` with one
root, and leaves every 100th allocation unreachable (each pointing into the
live tree, so marking must not follow garbage → live edges backwards).
Then times, interleaved round by round:

  walk            ``tha_leaks`` with the roots removed: nothing to mark, so
                  the sweep alone (every live object visited once): the
                  baseline a mark cannot beat
  leaks (C)       ``tha_leaks`` with the root: mark + sweep, counting only
  heap.leaks()    the Python call: mark + sweep + one ``tha.Leak`` per leak

and reports objects per second (all N objects / time) and the ratio to the
walk, for the tree laid out in allocation order and shuffled over the
addresses (a cache miss per object). ``collect()`` of the garbage is timed
once at the end of each.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

from .._ffi import ffi as _cffi, lib
from ..heap import Heap
from ..schema import Schema
from .workload import SCHEMA

GARBAGE_EVERY = 100  # allocation i is garbage when i % 100 == 99


class LeakGraph:
    def __init__(self, n: int = 1_000_000, shuffled: bool = False):
        self.n = n
        self.shuffled = shuffled
        self.schema = Schema(SCHEMA)
        ffi = self.schema.ffi
        size = ffi.sizeof("struct emp")
        slot = -(-(size + 8) // 16) * 16
        self.heap = heap = Heap(self.schema, capacity=n * slot * 9 // 8 + (16 << 20),
                                tracking="explicit")
        tid = self.schema.type_id("struct emp")
        out = _cffi.new("void **")
        outp = _cffi.cast("uintptr_t *", out)
        alloc, h = lib.tha_heap_alloc, heap._h
        addrs = []
        for _ in range(n):
            rc = alloc(h, tid, 1, out)
            if rc:
                heap._check(rc)
            addrs.append(outp[0])
        base = heap.base
        top = heap.stats()["top"]
        words = memoryview(ffi.buffer(ffi.cast("char *", base), top)).cast("Q")
        mgr = ffi.offsetof("struct emp", "mgr") // 8
        reports = ffi.offsetof("struct emp", "reports") // 8
        live = [a for i, a in enumerate(addrs) if i % GARBAGE_EVERY != GARBAGE_EVERY - 1]
        if shuffled:  # tree order unrelated to address order
            random.Random(1).shuffle(live)
        for k in range(1, len(live)):
            child, parent = live[k], live[(k - 1) // 4]
            words[(child - base) // 8 + mgr] = parent
            words[(parent - base) // 8 + reports + (k - 1) % 4] = child
        for i in range(GARBAGE_EVERY - 1, n, GARBAGE_EVERY):  # garbage -> live
            words[(addrs[i] - base) // 8 + mgr] = addrs[i // 2]
        words.release()
        self.root = live[0]
        self.live = len(live)
        self.garbage = n - len(live)
        heap.roots["boss"] = self.root
        self._count = _cffi.new("size_t *")

    def walk(self) -> int:
        """tha_leaks with no roots: the sweep alone; every object reported."""
        heap = self.heap
        del heap.roots["boss"]
        try:
            t = time.perf_counter()
            heap._check(lib.tha_leaks(heap._h, _cffi.NULL, 0, self._count))
            dt = time.perf_counter() - t
        finally:
            heap.roots["boss"] = self.root
        assert self._count[0] == self.n
        return dt

    def leaks_c(self) -> float:
        heap = self.heap
        t = time.perf_counter()
        heap._check(lib.tha_leaks(heap._h, _cffi.NULL, 0, self._count))
        dt = time.perf_counter() - t
        assert self._count[0] == self.garbage
        return dt

    def leaks_py(self) -> float:
        t = time.perf_counter()
        found = self.heap.leaks()
        dt = time.perf_counter() - t
        assert len(found) == self.garbage
        return dt


def run(n: int = 1_000_000, repeat: int = 5) -> dict:
    """Both layouts: the tree in allocation order, then shuffled."""
    out = {"objects": n, "repeat": repeat, "layouts": {}}
    for layout in ("ordered", "shuffled"):
        t0 = time.perf_counter()
        g = LeakGraph(n, shuffled=layout == "shuffled")
        setup_s = time.perf_counter() - t0
        times = {"walk": [], "leaks_c": [], "leaks_py": []}
        for _ in range(repeat):
            times["walk"].append(g.walk())
            times["leaks_c"].append(g.leaks_c())
            times["leaks_py"].append(g.leaks_py())
        t = time.perf_counter()
        freed = g.heap.collect()
        collect_s = time.perf_counter() - t
        assert g.heap.leaks() == []
        out["live"], out["garbage"] = g.live, g.garbage
        out["layouts"][layout] = {"setup_s": setup_s, "times": times,
                                  "collect_s": collect_s, "collect_bytes": freed,
                                  "summary": summarize(times, n, g.live)}
        del g
    return out


def summarize(times: dict, n: int, live: int) -> dict:
    rows = {}
    walk_best = min(times["walk"])
    for k, v in times.items():
        best, med = min(v), statistics.median(v)
        rows[k] = {"best_s": best, "median_s": med,
                   "objects_per_s": n / best,
                   "vs_walk": walk_best / best}
    return rows


def report(res: dict, machine: dict, out=sys.stdout) -> None:
    print(f"tha leak detection: {res['objects']:,} struct emp allocations "
          f"({res['live']:,} reachable from one root, {res['garbage']:,} garbage), "
          f"best/median of {res['repeat']}", file=out)
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}, "
          f"Python {machine['python']}", file=out)
    print(f"{'layout':<10}{'operation':<16}{'best ms':>10}{'median ms':>11}"
          f"{'Mobjects/s':>12}{'vs walk':>9}", file=out)
    names = {"walk": "walk (sweep)", "leaks_c": "leaks (C)", "leaks_py": "heap.leaks()"}
    for layout, lr in res["layouts"].items():
        for k, r in lr["summary"].items():
            print(f"{layout:<10}{names[k]:<16}{r['best_s'] * 1e3:>10.1f}"
                  f"{r['median_s'] * 1e3:>11.1f}{r['objects_per_s'] / 1e6:>12.1f}"
                  f"{r['vs_walk']:>8.0%}", file=out)
    for layout, lr in res["layouts"].items():
        print(f"{layout}: collect() of {res['garbage']:,} objects "
              f"({lr['collect_bytes']:,} bytes) in {lr['collect_s'] * 1e3:.1f} ms", file=out)
