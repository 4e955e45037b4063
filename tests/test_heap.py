"""Heap: allocation, objects, stats, roots, touch, lifetimes, errors."""
import gc

import pytest

import tha
from tha._ffi import lib

from conftest import HOOKS, RICH_CDEF, SMALL_CDEF, state


@pytest.fixture
def heap(small_schema):
    return tha.Heap(small_schema, 1 << 20, tracking="explicit")


def test_new_with_fields(heap):
    ffi = heap.schema.ffi
    e = heap.new("struct emp", name=b"ann", id=7, salary=1.5)
    assert ffi.typeof(e) is ffi.typeof("struct emp *")
    assert ffi.string(e.name) == b"ann" and e.id == 7 and e.salary == 1.5
    assert e.mgr == ffi.NULL and list(e.reports) == [ffi.NULL] * 4
    d = heap.new("dept", id=3)  # tag without keyword
    assert d.id == 3
    with pytest.raises(tha.Error, match="struct emp"):
        heap.new("struct emp", nosuch=1)
    with pytest.raises(tha.NotFound):
        heap.new("struct nope")
    for bad in (0, -1, 1 << 32, 2.0):
        with pytest.raises(tha.Error, match="count"):
            heap.new("struct emp", count=bad)
    assert heap.stats()["live_objects"] == 2  # the failed new freed its object


def test_count_arrays(heap):
    team = heap.new("struct emp", count=8, id=5)
    assert all(team[i].id == 5 for i in range(8))
    team[7].salary = 2.0
    (obj,) = [o for o in heap.dump()["objects"] if o["count"] == 8]
    assert obj["type"] == "struct emp" and len(obj["value"]) == 8
    assert obj["value"][7]["salary"] == 2.0
    assert heap.offset_of(team + 3) == heap.offset_of(team) + 3 * heap.schema.ffi.sizeof(
        "struct emp")
    buf = heap.new("char", count=100)
    buf[0:3] = b"xyz"
    raw = [o for o in heap.dump()["objects"] if o["type"] == "char"]
    assert raw[0]["value"][:3] == b"xyz" and len(raw[0]["value"]) == 100
    big = heap.new("struct emp", count=200)  # a page span, not a slab slot
    big[199].id = 9
    assert heap.objects("struct emp")[-1][199].id == 9


def test_objects_by_type(heap):
    es = [heap.new("struct emp", id=i) for i in range(5)]
    ds = [heap.new("struct dept", id=i) for i in range(3)]
    got = heap.objects("struct emp")
    assert sorted(e.id for e in got) == list(range(5))
    assert {heap.offset_of(e) for e in got} == {heap.offset_of(e) for e in es}
    assert len(heap.objects("dept")) == 3 and len(heap.objects()) == 8
    heap.free(ds[1])
    assert sorted(d.id for d in heap.objects("struct dept")) == [0, 2]


def test_stats(heap):
    st = heap.stats()
    for k in ("capacity", "committed", "top", "live_objects", "live_bytes",
              "dirty_blocks", "seq", "epoch", "lineage", "frames_encoded",
              "bytes_encoded", "frames_applied", "bytes_applied", "tracking", "base"):
        assert k in st
    assert st["capacity"] == 1 << 20 and st["tracking"] == "explicit"
    assert st["base"] == heap.base and st["live_objects"] == 0
    e = heap.new("struct emp")
    size = heap.schema.ffi.sizeof("struct emp")
    st = heap.stats()
    assert st["live_objects"] == 1 and st["live_bytes"] == size
    f = heap.snapshot()
    st = heap.stats()
    assert st["seq"] == 1 and st["frames_encoded"] == 1
    assert st["bytes_encoded"] == len(f) and st["dirty_blocks"] == 0
    heap.free(e)
    assert heap.stats()["live_objects"] == 0 and heap.stats()["dirty_blocks"] > 0
    with pytest.raises(tha.Error, match="tracking"):
        tha.Heap(heap.schema, 1 << 20, tracking="nope")
    st = tha.Heap(heap.schema, 1 << 20).stats()  # auto: wp where the kernel has it
    assert (st["tracking"], st["tracking_mechanism"]) in (
        ("wp", "uffd-wp-async"), ("diff", "shadow-diff"))


def test_roots_mapping(heap):
    ffi = heap.schema.ffi
    e = heap.new("struct emp", id=1)
    team = heap.new("struct emp", count=4)
    team[2].id = 22
    roots = heap.roots
    assert len(roots) == 0 and list(roots) == [] and "boss" not in roots
    roots["boss"] = e
    roots["third"] = team + 2  # an interior pointer
    assert len(roots) == 2 and set(roots) == {"boss", "third"}
    assert "boss" in roots and "nope" not in roots
    assert ffi.typeof(roots["boss"]) is ffi.typeof("struct emp *")
    assert roots["boss"].id == 1 and roots["third"].id == 22
    assert roots.offsets() == {"boss": heap.offset_of(e), "third": heap.offset_of(team + 2)}
    roots["boss"] = team  # replace
    assert roots["boss"].id == 0 and len(roots) == 2
    del roots["boss"]
    assert list(roots) == ["third"]
    assert dict(roots.items())["third"].id == 22
    with pytest.raises(KeyError):
        roots["boss"]
    with pytest.raises(tha.Error):
        del roots["boss"]
    with pytest.raises(tha.InvalidPointer, match="NULL"):
        roots["x"] = ffi.NULL
    with pytest.raises(tha.InvalidPointer):
        roots["x"] = None
    with pytest.raises(tha.Error, match="root name"):
        roots["n" * 100] = e
    outside = ffi.new("struct emp *")
    with pytest.raises(tha.InvalidPointer, match="not an address in this heap"):
        roots["x"] = outside
    assert "x" not in roots


def test_roots_missing_name(heap):
    with pytest.raises(KeyError) as ei:
        heap.roots["missing"]
    assert isinstance(ei.value, tha.Error) and isinstance(ei.value, tha.NotFound)
    assert "missing" in str(ei.value)


def test_touch_variants():
    """Only touched bytes travel with tracking='explicit'."""
    s = tha.Schema(RICH_CDEF, functions=HOOKS)
    h = tha.Heap(s, 1 << 20, tracking="explicit")
    m = tha.Heap(s, 1 << 20)
    team = h.new("struct emp", count=6)
    h.roots["team"] = team
    m.apply(h.snapshot())

    def sync():
        m.apply(h.delta())
        return m.dump() == h.dump()

    team[0].id = 1
    assert not sync()          # untouched: not carried
    h.touch(team)              # whole allocation
    assert sync()
    team[3].salary = 3.5
    h.touch(team + 3)          # interior pointer: that element
    assert sync()
    team[4].grid[1][2] = -7
    h.touch(team + 4, "grid[1][2]")
    assert sync()
    team[5].home.zip = 90210
    h.touch(team + 5, "home.zip")
    assert sync()
    team[2].level, team[2].delta = 5, -3   # bitfields: their storage unit
    h.touch(team + 2, "level")
    assert sync()
    team[1].reports[2] = team + 5
    h.touch(team + 1, "reports[2]")
    assert sync()
    assert m.roots["team"][1].reports[2].home.zip == 90210
    # a field touch covers only that field
    team[1].id, team[1].salary = 11, 1.25
    h.touch(team + 1, "salary")
    m.apply(h.delta())
    assert m.roots["team"][1].salary == 1.25
    h.touch(team + 1, "id")
    assert sync()
    with pytest.raises(tha.NotFound):
        h.touch(team, "nope")
    with pytest.raises(tha.InvalidPointer):
        h.touch(s.ffi.new("struct emp *"))
    with pytest.raises(tha.InvalidPointer):
        h.touch("not a pointer")
    h.free(h.new("struct dept"))


def test_objects_keep_heap_alive(small_schema):
    e = tha.Heap(small_schema, 1 << 20).new("struct emp", id=42)
    gc.collect()
    assert e.id == 42
    e.name = b"still here"
    team = tha.Heap(small_schema, 1 << 20).objects  # bound method holds it
    gc.collect()
    assert team() == []
    h = tha.Heap(small_schema, 1 << 20)
    h.roots["r"] = h.new("struct emp", id=5)
    r = h.roots["r"]
    objs = h.objects()
    del h
    gc.collect()
    assert r.id == 5 and objs[0].id == 5


# ---- errors ------------------------------------------------------------------

def test_free_errors(heap):
    ffi = heap.schema.ffi
    e = heap.new("struct emp")
    team = heap.new("struct emp", count=4)
    before = state(heap)
    with pytest.raises(tha.InvalidPointer, match="interior pointer"):
        heap.free(team + 3)
    outside = ffi.new("struct emp *")
    with pytest.raises(tha.InvalidPointer, match="not an address in this heap"):
        heap.free(outside)
    heap.roots["boss"] = e
    before = state(heap)
    with pytest.raises(tha.StateError, match="root 'boss'"):
        heap.free(e)
    assert state(heap) == before
    del heap.roots["boss"]
    heap.free(e)
    before = state(heap)
    with pytest.raises(tha.InvalidPointer, match="double free"):
        heap.free(e)
    assert state(heap) == before
    heap.roots["mid"] = team + 2
    with pytest.raises(tha.StateError, match="root 'mid'"):
        heap.free(team)
    heap.check()


def test_out_of_capacity_keeps_heap_usable(small_schema):
    h = tha.Heap(small_schema, 1 << 20, tracking="explicit")
    mirror = tha.Heap(small_schema, 1 << 20)
    keep = []
    with pytest.raises(tha.CapacityError, match="capacity") as ei:
        for i in range(100000):
            keep.append(h.new("struct emp", count=16, id=i))
    assert isinstance(ei.value, MemoryError) and isinstance(ei.value, tha.Error)
    with pytest.raises(tha.CapacityError):
        h.new("struct emp", count=1 << 20)
    h.check()
    for p in keep[::2]:
        h.free(p)
    again = h.new("struct emp", count=16, id=-1 & 0xFFFFFFFF)
    h.roots["again"] = again
    mirror.apply(h.snapshot())
    assert mirror.dump() == h.dump()
    assert mirror.roots["again"].id == 0xFFFFFFFF
    h.check()
    mirror.check()


def test_exception_hierarchy():
    for name in tha.__all__:
        obj = getattr(tha, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, tha.Error), name
    assert issubclass(tha.NotFound, KeyError)
    assert issubclass(tha.CapacityError, MemoryError)
    assert issubclass(tha.FrameError, ValueError)
    assert issubclass(tha.ChecksumError, tha.FrameError)
    assert issubclass(tha.SequenceError, tha.FrameError)
    assert issubclass(tha.StaleEpoch, tha.FrameError)
    e = tha.errors.error_for(lib.THA_ECHECKSUM, "detail")
    assert isinstance(e, tha.ChecksumError) and e.code == lib.THA_ECHECKSUM
    assert str(e) == "detail"
    assert isinstance(tha.errors.error_for(-12), tha.CapacityError)  # ENOMEM
    assert isinstance(tha.errors.error_for(-2), tha.OSFailure)


def test_bad_capacity(small_schema):
    with pytest.raises(tha.Error):
        tha.Heap(small_schema, 1024)  # below the minimum


def test_roots_bound_to_variables_follow_them():
    """roots.bind(name, getter): swapping two variables is mirrored with no
    assignment to roots (the seed demo's "exchange lists")."""
    s = tha.Schema("struct node { int v; struct node *next; };")
    a = tha.Heap(s, tracking="explicit")
    lists = {"l1": a.new("struct node", v=1), "l2": a.new("struct node", v=2)}
    a.roots.bind("list1", lambda: lists["l1"])
    a.roots.bind("list2", lambda: lists["l2"])
    b = tha.Heap(tha.Schema("struct node { int v; struct node *next; };"))
    b.apply(a.snapshot())
    assert b.roots["list1"].v == 1
    lists["l1"], lists["l2"] = lists["l2"], lists["l1"]
    b.apply(a.delta())
    assert b.roots["list1"].v == 2 and b.roots["list2"].v == 1
    lists["l2"] = None                      # no such root any more
    b.apply(a.delta())
    assert "list2" not in b.roots
    with tha.Standby() as sb, tha.Active(a, [sb.address]) as act:
        act.sync()
        lists["l1"], lists["l2"] = None, lists["l1"]
        r = act.sync()
        assert sb.wait_for(r.seq)
        assert "list1" not in sb.heap.roots and sb.heap.roots["list2"].v == 2
    a.roots.bind("list1", None)
    with pytest.raises(tha.NotFound):
        a.roots.bind("list1", None)


REC_CDEF = """
struct rec { char name[32]; uint32_t id; double salary; struct rec *mgr;
             struct rec *peer; };
"""


def test_span_payloads_are_block_aligned():
    # element i of an array of 64-byte structs in a span is block i of its
    # payload: a write to one record dirties one block, and a delta of one
    # touched record carries one block, not the two it straddled at +8
    s = tha.Schema(REC_CDEF)
    assert s.ffi.sizeof("struct rec") == 64
    h = tha.Heap(s, 4 << 20, tracking="explicit")
    a = h.new("struct rec", 1000)  # 64,000 bytes: a page span
    small = h.new("struct rec")    # a slab slot: payload at +8 as before
    addr = int(s.ffi.cast("uintptr_t", a))
    assert (addr - h.base) % 64 == 0
    assert (int(s.ffi.cast("uintptr_t", small)) - h.base) % 16 == 8
    h.snapshot()
    a[7].salary = 2.5
    a[7].mgr = a + 3
    h.touch(a + 7)
    assert h.stats()["dirty_blocks"] == 1
    d = h.delta()
    from conftest import runs
    assert [(off, nb) for _pos, off, nb, _m, _d in runs(d)] == [(addr - h.base + 7 * 64, 1)]
    m = tha.Heap.from_snapshot(h.snapshot(), tracking="explicit")
    assert addr - h.base in [m.offset_of(o) for o in m.objects("struct rec")]
    m.check()
    h.roots["a"] = a
    assert [l.offset for l in h.leaks()] == [h.offset_of(small)]
    h.roots["s"] = small
    del h.roots["a"]
    assert [(l.offset, l.count) for l in h.leaks()] == [(addr - h.base, 1000)]
    del h.roots["s"]
    h.free(a)
    h.free(small)
    assert h.stats()["live_objects"] == 0
    b = h.new("struct rec", 1000)  # the recycled span reads zero, padding too
    assert int(s.ffi.cast("uintptr_t", b)) == addr and b[0].salary == 0
    h.check()
