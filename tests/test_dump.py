"""dump() reads each type's bytes with one struct per element; the result
must be exactly what reading the cdata field by field gives (the fallback
path, tha.dump._converter), for every kind of field."""
import math

import cffi

import tha
from tha._ffi import ffi as tha_ffi, lib as tha_lib
from tha import dump as D

CDEF = """
enum colour { RED, GREEN, BLUE };
enum sign { NEG = -5, POS = 5 };
union num { int32_t i; float f; uint8_t b[6]; };
struct leaf { char tag[5]; int16_t v; };
struct all {
    int8_t i8; uint8_t u8; int16_t i16; uint16_t u16; int32_t i32; uint32_t u32;
    int64_t i64; uint64_t u64; char c; signed char sc; unsigned char uc; _Bool ok;
    short s; unsigned short us; int i; unsigned u; long l; unsigned long ul;
    long long ll; unsigned long long ull; size_t sz; intptr_t ip;
    float f; double d; enum colour col; enum sign sg; union num n;
    struct leaf leaves[3]; int grid[2][3]; struct leaf *lp; struct all *self;
    void (*fn)(void); void (*unbound)(void); char name[7];
};
struct bits { uint32_t a : 3; uint32_t b : 13; int c; };
"""


def reference(heap):
    """The cdata reading of every object (what dump() gave before it
    unpacked bytes)."""
    schema, base, out = heap.schema, heap._base, []
    end = base + heap.stats()["capacity"]
    cursor = tha_ffi.new("uint64_t *")
    o = tha_ffi.new("tha_obj_t *")
    while tha_lib.tha_heap_next(heap._h, cursor, o):
        ctype = schema.ctype_of(o.type_id)
        p = schema.ffi.cast(schema.ffi.getctype(ctype, "*"), o.ptr)
        if ctype.cname == "char":
            value = schema.ffi.buffer(p, o.count)[:]
        else:
            conv = D._converter(schema, ctype, base, end)
            value = [conv(p[i]) for i in range(o.count)]
        out.append({"offset": o.offset, "type": schema.type_name(ctype),
                    "count": o.count, "value": value})
    return out


_cb_ffi = cffi.FFI()
FN = _cb_ffi.callback("void(void)", lambda: None)  # lives as long as the module


def test_every_field_kind_dumps_as_cdata_reads_it():
    schema = tha.Schema(CDEF, functions={"fn": FN})
    heap = tha.Heap(schema)
    cb = heap.schema.ffi.cast("void(*)(void)", int(_cb_ffi.cast("uintptr_t", FN)))
    a = heap.new("struct all", count=3)
    for k in range(3):
        x = a[k]
        x.i8, x.u8, x.i16, x.u16 = -7 - k, 250, -30000, 65000
        x.i32, x.u32, x.i64, x.u64 = -2**31, 2**32 - 1, -2**63, 2**64 - 1 - k
        x.c, x.sc, x.uc, x.ok = b"q", -128, 255, bool(k % 2)
        x.s, x.us, x.i, x.u, x.l, x.ul = -1, 1, -2, 2, -3, 3
        x.ll, x.ull, x.sz, x.ip = -4, 4, 5, -6
        x.f = [1.5, float("nan"), float("-inf")][k]
        x.d = [math.pi, float("nan"), -0.0][k]
        x.col, x.sg = k, -5 if k else 5
        x.n.f = 2.5
        x.leaves[1].tag = b"abcd"
        x.leaves[2].v = -9
        x.grid[1][2] = 42 + k
        x.name = b"n" * 7
        x.self = a + (k + 1) % 3
        x.fn = cb if k != 1 else heap.schema.ffi.NULL
        x.unbound = heap.schema.ffi.cast("void(*)(void)", 0x1234 + k)
    leaf = heap.new("struct leaf", tag=b"lf", v=3)
    a[0].lp = leaf
    b = heap.new("struct bits", count=2, a=5, b=1000, c=-1)
    heap.new("char", count=11)
    heap.new("double", count=4)[2] = float("nan")
    heap.new("int", count=1)[0] = -77
    heap.roots["a"] = a
    heap.touch(a)
    got = heap.dump()
    assert got["objects"] == reference(heap)
    assert got["roots"] == {"a": a_offset(heap, a)}
    # the fast path did run for the plain types, the fallback for bit fields
    plans = {v[0]: v for (tid, base), v in schema._dump_plans.items()}
    assert plans["struct all"][4] is not None and plans["struct leaf"][4] is not None
    assert plans["struct bits"][5] is not None
    del b


def a_offset(heap, p):
    return int(heap.schema.ffi.cast("uintptr_t", p)) - heap._base


def test_dumps_of_two_mirrors_are_equal_and_nan_bits_kept():
    schema = tha.Schema(CDEF)
    h1 = tha.Heap(schema)
    d = h1.new("double", count=3)
    d[0] = float("nan")
    d[1] = -float("nan")
    h1.roots["d"] = d
    h1.touch(d)
    h2 = tha.Heap(tha.Schema(CDEF))
    h2.apply(h1.snapshot())
    v1, v2 = h1.dump(), h2.dump()
    assert v1 == v2
    vals = v1["objects"][0]["value"]
    assert isinstance(vals[0], str) and vals[0].startswith("nan:") and vals[0] != vals[1]
