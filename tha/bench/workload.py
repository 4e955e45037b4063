"""What the benchmarks share: the emp/dept schema, the graph of N
``struct emp`` (source heap, in-sync mirror, reused buffers) that the codec
and replication benchmarks measure, the machine description every report
prints, and a clock.
"""

from __future__ import annotations

import os
import platform
import random
import time
from array import array

from ..heap import Heap
from ..schema import Schema

SCHEMA = """
struct dept { char name[32]; uint32_t id; };
struct emp { char name[32]; uint32_t id; double salary;
             struct emp *mgr; struct dept *dept; struct emp *reports[4]; };
"""
EMP_WORDS = 12          # sizeof(struct emp) / 8
EMP_SIZE = 8 * EMP_WORDS
DEPT_SIZE = 36
EMPS_PER_DEPT = 250


# ---- the graph ------------------------------------------------------------

class Graph:
    """Source heap, its emp/dept arrays, an in-sync mirror and the buffers
    every measurement reuses (allocated and faulted once)."""

    def __init__(self, n: int = 1_000_000, dirty_pct: float = 1.0, seed: int = 1,
                 clustered: bool = False, base: int | None = None, mirror: bool = True):
        """``base``: the source is a same-address heap there (its frames
        then need a mirror at the same base: ``mirror=False`` makes none,
        for a caller that applies them after the source is gone)."""
        if n < 2:
            raise ValueError("need at least 2 emps")
        self.n = n
        self.schema = Schema(SCHEMA)
        ndepts = max(1, n // EMPS_PER_DEPT)
        capacity = ((n * EMP_SIZE + ndepts * DEPT_SIZE) * 9 // 8 + (8 << 20))
        self.capacity = capacity
        self.heap = Heap(self.schema, capacity=capacity, tracking="explicit", base=base)
        self.depts = self.heap.new("struct dept", count=ndepts)
        self.emps = self.heap.new("struct emp", count=n)
        self._wire(ndepts)
        self.heap.touch(self.emps)  # the whole array: written behind the heap's back
        self.mirror = Heap(self.schema, capacity=capacity, tracking="explicit") \
            if mirror else None
        self.snap_size = self.heap.frame_size("snapshot")
        self.snap_buf = bytearray(self.snap_size + 4096)
        self.delta_buf = bytearray(self.snap_size + 4096)
        if mirror:
            self.sync()
        # The dirty set: scattered emps, never element 0 (touching the start
        # of an allocation marks all of it).
        k = max(1, round(n * dirty_pct / 100))
        if clustered:  # one contiguous stretch in the middle of the array
            first = max(1, (n - k) // 2)
            self.dirty = list(range(first, min(n, first + k)))
        else:
            self.dirty = sorted(random.Random(seed).sample(range(1, n), min(k, n - 1)))
        self.clustered = clustered
        self.dirty_pct = dirty_pct
        self._round = 0
        # memcpy baseline buffers: the snapshot's byte count, pre-faulted.
        self.cp_src = bytearray(b"\x5a") * self.snap_size
        self.cp_dst = bytearray(self.snap_size)

    def _wire(self, ndepts: int) -> None:
        """Writes the whole emp array as one image built column by column
        (array slices with a stride), then copies it in: a second or so for
        1M emps, against minutes for per-field cffi writes."""
        n, ffi = self.n, self.schema.ffi
        ebase = self.heap.base + self.heap.offset_of(self.emps)
        dbase = self.heap.base + self.heap.offset_of(self.depts)
        img = array("Q", bytes(n * EMP_SIZE))
        w = EMP_WORDS
        img[0::w] = array("Q", range(0x6d65, 0x6d65 + (n << 16), 1 << 16))  # "em"+i
        img[4::w] = array("Q", range(n))                                      # id
        sal = array("d", map(float, range(50_000, 50_000 + n)))
        img[5::w] = array("Q", sal.tobytes())                                 # salary
        # A 4-ary tree: emp p manages 4p+1..4p+4; emp c's manager is (c-1)//4.
        for k in range(4):
            first = 1 + k                     # first child through slot k
            kids = len(range(first, n, 4))    # children reached via slot k
            parents = array("Q", range(ebase, ebase + kids * EMP_SIZE, EMP_SIZE))
            img[first * w + 6::4 * w] = parents                               # mgr
            col = array("Q", range(ebase + first * EMP_SIZE,
                                   ebase + (first + 4 * kids) * EMP_SIZE, 4 * EMP_SIZE))
            img[8 + k:(kids) * w + 8 + k:w] = col                             # reports[k]
        depts = array("Q", range(dbase, dbase + ndepts * DEPT_SIZE, DEPT_SIZE))
        reps = -(-n // ndepts)
        img[7::w] = (depts * reps)[:n]                                        # dept
        ffi.memmove(self.emps, img, len(img) * 8)
        for i in range(ndepts):
            self.depts[i].id = i
            self.depts[i].name = b"dept%d" % i

    # -- steps -------------------------------------------------------------

    def sync(self) -> None:
        """Brings the mirror level with the source through a snapshot."""
        self.mirror.apply(self.heap.snapshot(out=self.snap_buf))

    def touch_dirty(self) -> None:
        """Changes every emp of the dirty set (salary and manager) and
        touches it, as an application in explicit mode would."""
        self._round += 1
        emps, heap, r = self.emps, self.heap, self._round
        for i in self.dirty:
            e = emps + i
            e.salary = float(r)
            e.mgr = emps + ((i + r) % self.n)
            heap.touch(e)

    def memcpy(self) -> None:
        self.schema.ffi.memmove(self.cp_dst, self.cp_src, self.snap_size)

    def snapshot(self):
        return self.heap.snapshot(out=self.snap_buf)

    def delta(self):
        return self.heap.delta(out=self.delta_buf)

    def check_mirror(self) -> None:
        """The mirror equals the source: snapshot bodies (everything after
        the header: schema, region header, allocator state, objects with
        pointers as offsets) byte for byte, plus a sample of typed reads.
        Re-syncs afterwards (encoding the mirror bumps its sequence)."""
        ffi = self.schema.ffi
        for i in (1, self.n // 2, self.n - 1) + tuple(self.dirty[:3]):
            a, off = self.emps[i], self.heap.offset_of(self.emps + i)
            b = ffi.cast("struct emp *", self.mirror.base + off)
            assert (a.id, a.salary) == (b.id, b.salary), i
            assert self.heap.offset_of(a.mgr) == self.mirror.offset_of(b.mgr), i
            assert self.heap.offset_of(a.dept) == self.mirror.offset_of(b.dept), i
        hdr = 96
        mine = memoryview(self.heap.snapshot())[hdr:]
        theirs = memoryview(self.mirror.snapshot())[hdr:]
        assert mine == theirs, "mirror differs from the source"
        self.sync()


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def clock(fn, *args) -> float:
    """Seconds one call of fn(*args) takes."""
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t
