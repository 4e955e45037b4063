"""Schemas of thousands of types: built from a cdef, carried as bytes (what a
standby, a snapshot and a checkpoint load do), and used by a heap, with the
same fingerprint and layouts on both sides. Behaviour only: the cost is in
bench/test_bench_schema.py."""
import pytest

import tha
from tha.bench.schema import cdef, type_name

N = 3000


@pytest.fixture(scope="module")
def big():
    return tha.Schema(cdef(N))


def test_every_type_registered(big):
    names = big.type_names()
    assert len(names) == N
    assert sorted(names) == sorted(type_name(i) for i in range(N))


def test_from_bytes_round_trip(big):
    data = big.to_bytes()
    back = tha.Schema.from_bytes(data)
    assert back.fingerprint == big.fingerprint
    assert back.compare(big) is None
    assert back.to_bytes() == data
    assert back.type_names() == big.type_names()
    for i in range(0, N, 97):
        t = type_name(i)
        assert back.type_id(t) == big.type_id(t)
        assert back.ffi.sizeof(t) == big.ffi.sizeof(t)
        for field in ("id", "name", "v"):
            assert back.ffi.offsetof(t, field) == big.ffi.offsetof(t, field)


def test_ctypes_are_cffis_own(big):
    """What the schema hands out is the ctype cffi itself gives for the name."""
    for i in (0, 4, 9, 1234, N - 1):
        t = type_name(i)
        assert big.ctype(t) is big.ffi.typeof(t)
        assert big.pointer_type(big.ctype(t)) is big.ffi.typeof(t + " *")
    for i in (0, 4, 1234, N - 1):
        assert big.ctype(f"t{i}") is big.ffi.typeof(f"struct t{i}")  # a bare tag
    assert big.ctype("t7_t") is big.ffi.typeof("struct t7")  # a typedef
    assert big.type_name(big.ctype("t7_t")) == "struct t7"
    assert big.ctype("unsigned long") is big.ffi.typeof("unsigned long")
    assert big.type_id("long") == big.type_id("int64_t")
    with pytest.raises(tha.NotFound):
        big.type_id(f"t{N}")


def test_heap_of_a_big_schema(big, tmp_path):
    heap = tha.Heap(big, 16 << 20)
    objs = {}
    for i in (0, 2, 3, 4, 9, 24, 2999):
        objs[i] = heap.new(type_name(i), id=i)
    objs[4].p2 = objs[3]        # t{i}.p2 is a t{i-1} *, p1 a t{7i+3} *
    objs[3].p1 = objs[24]
    objs[4].inner.id = 77       # t4 holds t3 by value
    objs[4].pair[1].p2 = objs[2]  # t3.p2 is a t2 *: in an array by value
    heap.roots["four"] = objs[4]
    assert sorted(o.id for o in heap.objects()) == [0, 2, 3, 4, 9, 24, 2999]

    mirror = tha.Heap.from_snapshot(heap.snapshot())  # schema from the frame
    assert mirror.schema.fingerprint == big.fingerprint
    four = mirror.roots["four"]
    assert four.id == 4 and four.inner.id == 77 and four.p2.p1.id == 24
    assert four.pair[1].p2.id == 2
    assert mirror.dump() == heap.dump()

    heap.checkpoint(tmp_path / "big.tha")
    loaded = tha.Heap.load(tmp_path / "big.tha")  # schema from the file
    assert loaded.schema.fingerprint == big.fingerprint
    assert loaded.roots["four"].p2.id == 3
    assert loaded.dump() == heap.dump()


def test_deep_nesting_by_value_round_trips():
    """3,000 structs each holding the previous one by value: laid out
    innermost first, so neither side recurses through the chain."""
    depth = 3000
    decls = ["struct d0 { int32_t x; struct d0 *self; };"]
    decls += [f"struct d{i} {{ struct d{i - 1} in; int32_t x; }};"
              for i in range(1, depth)]
    s = tha.Schema("\n".join(decls))
    back = tha.Schema.from_bytes(s.to_bytes())
    assert back.fingerprint == s.fingerprint
    top = f"struct d{depth - 1}"
    # d0 is 16 bytes (8-aligned); each level adds an int32 padded to 8
    assert back.ffi.sizeof(top) == s.ffi.sizeof(top) == 16 + 8 * (depth - 1)
    h = tha.Heap(back, 16 << 20)
    obj = h.new(top)
    obj.x = 5
    h.roots["top"] = obj
    h.check()
    mirror = tha.Heap.from_snapshot(h.snapshot())
    assert mirror.roots["top"].x == 5
