"""Stateful property test: random allocator, field, pointer and root
operations on an explicitly tracked heap, mirrored by delta and snapshot
frames into heaps at other base addresses. Whenever the mirrors have caught
up they must dump equal to the source and navigate to the same values."""
import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

import os

import tha
from tha.bench import writer as _writer

from conftest import HOOKS, RICH_CDEF

CAP = 4 << 20
_SCHEMA = tha.Schema(RICH_CDEF, functions=HOOKS)
PTR_FIELDS = ("mgr", "dept", "note", "any", "home.office", "past[0].office",
              "past[1].office") + tuple(f"reports[{i}]" for i in range(4))


class Mirroring(RuleBasedStateMachine):
    TRACKING = "explicit"  # every write below is followed by a touch()
    MECHANISM = None       # wp: forced through THA_WP_MECHANISM ("mprotect")

    @initialize()
    def setup(self):
        self.schema = _SCHEMA
        self.ffi = self.schema.ffi
        if self.MECHANISM:
            os.environ["THA_WP_MECHANISM"] = self.MECHANISM
        try:
            self.src = tha.Heap(self.schema, CAP, tracking=self.TRACKING)
        finally:
            os.environ.pop("THA_WP_MECHANISM", None)
        if self.MECHANISM:
            assert self.src.stats()["tracking_mechanism"] == self.MECHANISM
        self.writer = _writer.load()
        if self.TRACKING != "explicit":
            # transparent modes: the writes must be found with no touch at all
            self.src.touch = _no_touch
        self.mirrors = [tha.Heap(self.schema, CAP)]
        self.mirrors[0].apply(self.src.snapshot())
        self.objs = []        # [(kind, cdata of the first element, count)]
        self.synced = True

    # -- helpers -----------------------------------------------------------

    def _pick(self, data, kind):
        cands = [o for o in self.objs if o[0] == kind]
        if not cands:
            return None
        return data.draw(st.sampled_from(cands))

    def _element(self, data, kind):
        """An element pointer (interior for arrays) of a live object of kind."""
        o = self._pick(data, kind)
        if o is None:
            return None
        return o[1] + data.draw(st.integers(0, o[2] - 1))

    def _touch(self, data, p, field):
        how = data.draw(st.sampled_from(["field", "element", "whole"]))
        if how == "field":
            self.src.touch(p, field)
        elif how == "element":
            self.src.touch(p)  # interior or first element: that element
        else:
            self.src.touch(self._owner(p))
        self.synced = False

    def _owner(self, p):
        off = self.src.offset_of(p)
        for _k, q, n in self.objs:
            start = self.src.offset_of(q)
            if start <= off < start + n * self.ffi.sizeof(self.ffi.typeof(q).item):
                return q
        raise AssertionError("element of no live object")

    # -- allocation --------------------------------------------------------

    @rule(count=st.sampled_from([1, 1, 1, 3, 8, 40]), name=st.binary(max_size=31),
          salary=st.floats(allow_nan=False, width=64))
    def new_emp(self, count, name, salary):
        p = self.src.new("struct emp", count=count if count > 1 else None,
                         name=name, salary=salary)
        self.objs.append(("emp", p, count))
        self.synced = False

    @rule(id=st.integers(0, 2**32 - 1), name=st.binary(max_size=31))
    def new_dept(self, id, name):
        self.objs.append(("dept", self.src.new("struct dept", id=id, name=name), 1))
        self.synced = False

    @rule(n=st.integers(1, 300), fill=st.binary(min_size=1, max_size=8))
    def new_buf(self, n, fill):
        p = self.src.new("char", count=n)
        self.ffi.buffer(p, n)[:] = (fill * n)[:n]
        self.src.touch(p)
        self.objs.append(("buf", p, n))
        self.synced = False

    @precondition(lambda self: self.objs)
    @rule(data=st.data())
    def free(self, data):
        kind, p, n = data.draw(st.sampled_from(self.objs))
        start = self.src.offset_of(p)
        end = start + n * self.ffi.sizeof(self.ffi.typeof(p).item)
        for name, off in list(self.src.roots.offsets().items()):
            if start <= off < end:
                del self.src.roots[name]
        # Like a careful application, clear what points into it first.
        for k, q, m in self.objs:
            if k != "emp":
                continue
            for i in range(m):
                for f in PTR_FIELDS:
                    path = f.replace("]", "").replace("[", ".").split(".")
                    cur = q[i]
                    for part in path[:-1]:
                        cur = cur[int(part)] if part.isdigit() else getattr(cur, part)
                    last = path[-1]
                    v = cur[int(last)] if last.isdigit() else getattr(cur, last)
                    a = int(self.ffi.cast("uintptr_t", v))
                    if a and start <= a - self.src.base < end:
                        if last.isdigit():
                            cur[int(last)] = self.ffi.NULL
                        else:
                            setattr(cur, last, self.ffi.NULL)
                        self.src.touch(q + i, f)
        self.objs.remove((kind, p, n))
        self.src.free(p)
        self.synced = False

    # -- field writes ------------------------------------------------------

    @precondition(lambda self: any(o[0] == "emp" for o in self.objs))
    @rule(data=st.data())
    def write_scalar(self, data):
        p = self._element(data, "emp")
        which = data.draw(st.sampled_from(
            ["id", "salary", "name", "grid", "v", "home.zip", "past", "bits"]))
        if which == "id":
            p.id = data.draw(st.integers(0, 2**32 - 1))
            field = "id"
        elif which == "salary":
            p.salary = data.draw(st.floats(allow_nan=False))
            field = "salary"
        elif which == "name":
            p.name = data.draw(st.binary(max_size=31))
            field = "name"
        elif which == "grid":
            i, j = data.draw(st.integers(0, 1)), data.draw(st.integers(0, 2))
            p.grid[i][j] = data.draw(st.integers(-2**15, 2**15 - 1))
            field = f"grid[{i}][{j}]"
        elif which == "v":
            if data.draw(st.booleans()):
                p.v.i = data.draw(st.integers(-2**31, 2**31 - 1))
            else:
                p.v.raw[7] = data.draw(st.integers(0, 255))
            field = "v"
        elif which == "home.zip":
            p.home.zip = data.draw(st.integers(0, 99999))
            field = "home.zip"
        elif which == "past":
            i = data.draw(st.integers(0, 1))
            p.past[i].street = data.draw(st.binary(max_size=23))
            field = f"past[{i}].street"
        else:
            p.level = data.draw(st.integers(0, 7))
            p.delta = data.draw(st.integers(-16, 15))
            p.flag = data.draw(st.integers(0, 1))
            field = data.draw(st.sampled_from(["level", "delta", "flag"]))
        self._touch(data, p, field)

    @precondition(lambda self: any(o[0] == "buf" for o in self.objs))
    @rule(data=st.data())
    def write_buf(self, data):
        kind, p, n = self._pick(data, "buf")
        i = data.draw(st.integers(0, n - 1))
        p[i] = data.draw(st.binary(min_size=1, max_size=1))
        if data.draw(st.booleans()):
            self.src.touch(p + i)
        else:
            self.src.touch(p)
        self.synced = False

    @precondition(lambda self: any(o[0] in ("emp", "buf") for o in self.objs))
    @rule(data=st.data())
    def write_via_c(self, data):
        """Compiled code writes (memcpy in a separately built library):
        a scalar field of an emp, or a stretch of a buffer."""
        kinds = sorted({o[0] for o in self.objs} & {"emp", "buf"})
        if data.draw(st.sampled_from(kinds)) == "emp":
            p = self._element(data, "emp")
            which = data.draw(st.sampled_from(["id", "salary", "name"]))
            new = self.ffi.new("struct emp *")
            setattr(new, which, {"id": data.draw(st.integers(0, 2**32 - 1)),
                                 "salary": data.draw(st.floats(allow_nan=False)),
                                 "name": data.draw(st.binary(max_size=31))}[which])
            off = self.ffi.offsetof("struct emp", which)
            size = {"id": 4, "salary": 8, "name": 32}[which]
            dst = self.src.base + self.src.offset_of(p) + off
            src = int(self.ffi.cast("uintptr_t", new)) + off
            self.writer.tw_copy(_writer.ptr(dst), _writer.ptr(src), size)
            self._touch(data, p, which)
        else:
            _k, p, n = self._pick(data, "buf")
            i = data.draw(st.integers(0, n - 1))
            chunk = data.draw(st.binary(min_size=1, max_size=n - i))
            self.writer.tw_copy(_writer.ptr(self.src.base + self.src.offset_of(p) + i),
                                chunk, len(chunk))
            self.src.touch(p)
            self.synced = False

    @precondition(lambda self: any(o[0] == "emp" for o in self.objs))
    @rule(data=st.data())
    def rewire(self, data):
        p = self._element(data, "emp")
        which = data.draw(st.sampled_from(
            ["mgr", "dept", "reports", "note", "any", "home.office", "past", "hook"]))
        null = data.draw(st.integers(0, 5)) == 0
        NULL = self.ffi.NULL
        if which in ("mgr", "reports"):
            t = self._element(data, "emp")
            if which == "mgr":
                p.mgr, field = NULL if null else t, "mgr"
            else:
                i = data.draw(st.integers(0, 3))
                p.reports[i], field = NULL if null else t, f"reports[{i}]"
        elif which in ("dept", "home.office", "past"):
            d = self._element(data, "dept")
            v = NULL if null or d is None else d
            if which == "dept":
                p.dept, field = v, "dept"
            elif which == "home.office":
                p.home.office, field = v, "home.office"
            else:
                i = data.draw(st.integers(0, 1))
                p.past[i].office, field = v, f"past[{i}].office"
        elif which in ("note", "any"):
            o = self._pick(data, "buf")
            if which == "any" and data.draw(st.booleans()):
                o = self._pick(data, "emp")
            if o is None or null:
                v = NULL
            else:
                v = self.ffi.cast("char *", o[1]) + data.draw(
                    st.integers(0, o[2] * self.ffi.sizeof(self.ffi.typeof(o[1]).item) - 1))
            setattr(p, which, v)
            field = which
        else:
            p.hook = NULL if null else HOOKS[data.draw(st.sampled_from(sorted(HOOKS)))]
            field = "hook"
        self._touch(data, p, field)

    @precondition(lambda self: any(o[0] == "emp" for o in self.objs))
    @rule(data=st.data(), name=st.sampled_from(["boss", "ceo", "x", "team"]))
    def set_root(self, data, name):
        self.src.roots[name] = self._element(data, "emp")
        self.synced = False

    @precondition(lambda self: len(self.src.roots) > 0)
    @rule(data=st.data())
    def del_root(self, data):
        del self.src.roots[data.draw(st.sampled_from(sorted(self.src.roots)))]
        self.synced = False

    # -- frames ------------------------------------------------------------

    @rule()
    def sync_delta(self):
        d = self.src.delta()
        for m in self.mirrors:
            m.apply(d)
        self.synced = True

    @rule(data=st.data())
    def sync_snapshot(self, data):
        s = self.src.snapshot()
        for m in self.mirrors:
            m.apply(s)
        if data.draw(st.booleans()) and len(self.mirrors) < 3:
            self.mirrors.append(tha.Heap.from_snapshot(s, functions=HOOKS))
        self.synced = True

    # -- checks ------------------------------------------------------------

    def _nav(self, heap, p, depth=2):
        """Plain data reached from p through its pointers, as the app sees it."""
        ffi = heap.schema.ffi

        def off(q):
            return None if q == ffi.NULL else heap.offset_of(q)

        out = {"id": p.id, "salary": p.salary, "name": ffi.string(p.name),
               "grid": [list(r) for r in p.grid], "v": p.v.i, "bits":
               (p.level, p.delta, p.flag), "zip": p.home.zip,
               "hook": heap.schema.function_name(int(ffi.cast("uintptr_t", p.hook)))
               if p.hook != ffi.NULL else None}
        if p.dept != ffi.NULL:
            out["dept"] = (ffi.string(p.dept.name), p.dept.id)
        if p.home.office != ffi.NULL:
            out["office"] = ffi.string(p.home.office.name)
        if p.note != ffi.NULL:
            out["note"] = (off(p.note), p.note[0])
        out["any"] = off(p.any)
        if depth:
            out["mgr"] = None if p.mgr == ffi.NULL else self._nav(heap, p.mgr, depth - 1)
            out["reports"] = [None if r == ffi.NULL else self._nav(heap, r, depth - 1)
                              for r in p.reports]
        return out

    @invariant()
    def heap_is_sound(self):
        if hasattr(self, "src"):
            self.src.check()

    @invariant()
    def mirrors_match(self):
        if not getattr(self, "synced", False):
            return
        want = self.src.dump()
        nav = {n: self._nav(self.src, p) for n, p in self.src.roots.items()}
        for m in self.mirrors:
            assert m.base != self.src.base
            assert m.dump() == want
            assert m.stats()["seq"] == self.src.stats()["seq"]
            assert {n: self._nav(m, p) for n, p in m.roots.items()} == nav
            if "boss" in m.roots and m.roots["boss"].mgr != m.schema.ffi.NULL \
                    and m.roots["boss"].mgr.dept != m.schema.ffi.NULL:
                assert m.schema.ffi.string(m.roots["boss"].mgr.dept.name) == \
                    self.ffi.string(self.src.roots["boss"].mgr.dept.name)
            m.check()

    def teardown(self):
        if hasattr(self, "src"):
            self.sync_delta()
            self.mirrors_match()


def _no_touch(*args, **kwargs):
    pass


class MirroringDiff(Mirroring):
    """The same random programs on a diff-tracked heap, never touching."""
    TRACKING = "diff"


class MirroringWp(Mirroring):
    """wp with the best mechanism (userfaultfd async WP here), never touching."""
    TRACKING = "wp"


class MirroringWpMprotect(Mirroring):
    """wp through mprotect + SIGSEGV, never touching."""
    TRACKING = "wp"
    MECHANISM = "mprotect"


_SETTINGS = settings(
    max_examples=150, stateful_step_count=50, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
Mirroring.TestCase.settings = _SETTINGS
MirroringDiff.TestCase.settings = _SETTINGS
MirroringWp.TestCase.settings = _SETTINGS
MirroringWpMprotect.TestCase.settings = _SETTINGS
TestMirroring = Mirroring.TestCase
TestMirroringDiff = MirroringDiff.TestCase
TestMirroringWp = MirroringWp.TestCase
TestMirroringWpMprotect = MirroringWpMprotect.TestCase
