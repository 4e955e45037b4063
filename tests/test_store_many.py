"""heap.store_many(): a batch of field writes in one C call, marked changed
(explicit tracking needs no touch), everything checked before a byte is
written."""
import array

import pytest
from hypothesis import given, settings, strategies as st

import tha

CDEF = """
struct dept { char name[32]; uint32_t id; };
struct addr { uint16_t zip; int8_t floor; };
struct emp {
    char name[32]; uint32_t id; double salary; struct emp *mgr;
    struct dept *dept; struct addr addr; int32_t scores[3]; unsigned flag : 1;
    struct emp *buddy; /* tha: tag_mask=0x1 */
    int (*hook)(int);
};
"""
N = 1000


def pair(tracking="explicit"):
    schema = tha.Schema(CDEF)
    a = tha.Heap(schema, tracking=tracking)
    es = a.new("struct emp", count=N)
    ds = a.new("struct dept", count=10)
    a.roots["es"] = es
    a.roots["ds"] = ds
    b = tha.Heap(tha.Schema(CDEF))
    b.apply(a.snapshot())
    return a, b, es, ds


def test_numbers_from_a_buffer_and_from_a_list_reach_the_mirror():
    a, b, es, _ = pair()
    idx = array.array("Q", range(3, N, 7))
    a.store_many(es, "salary", idx, array.array("d", [i * 1.5 for i in idx]))
    a.store_many(es, "id", idx, [i + 100 for i in idx])
    a.store_many(es, "addr.zip", range(5, 9), [1, 2, 3, 4])
    a.store_many(es, "scores[2]", [0, N - 1], array.array("i", [-7, 7]))
    b.apply(a.delta())           # explicit tracking, no touch: store_many marked
    mb = b.roots["es"]
    for i in range(N):
        assert mb[i].salary == (i * 1.5 if i in idx else 0.0)
        assert mb[i].id == (i + 100 if i in idx else 0)
    assert [mb[i].addr.zip for i in range(4, 10)] == [0, 1, 2, 3, 4, 0]
    assert (mb[0].scores[2], mb[N - 1].scores[2], mb[1].scores[2]) == (-7, 7, 0)
    a.check()
    b.check()


def test_pointers_from_target_indexes_are_relocated_on_the_mirror():
    a, b, es, ds = pair()
    a.store_many(es, "mgr", [1, 2, 3], array.array("Q", [0, 0, 2]), target=es)
    a.store_many(es, "dept", range(N), [i % 10 for i in range(N)], target=ds)
    a.store_many(es, "mgr", [5, 6], [None, 2**64 - 1], target=es)  # NULL both ways
    assert es[3].mgr == es + 2 and es[7].dept == ds + 7
    b.apply(a.delta())
    mb, md = b.roots["es"], b.roots["ds"]
    assert mb[1].mgr == mb + 0 and mb[3].mgr == mb + 2
    assert mb[N - 1].dept == md + (N - 1) % 10
    assert mb[5].mgr == b.schema.ffi.NULL and mb[6].mgr == b.schema.ffi.NULL
    b.check()


def test_an_element_pointer_and_a_range_start_where_p_points():
    a, b, es, _ = pair()
    a.store_many(es + 10, "id", range(3), [1, 2, 3])
    assert [es[i].id for i in range(9, 14)] == [0, 1, 2, 3, 0]


@pytest.mark.parametrize("tracking", ["diff", "wp", "auto"])
def test_other_tracking_modes_find_the_writes(tracking):
    a, b, es, _ = pair(tracking)
    a.store_many(es, "salary", range(0, N, 3), [2.5] * len(range(0, N, 3)))
    b.apply(a.delta())
    assert [b.roots["es"][i].salary for i in range(6)] == [2.5, 0, 0, 2.5, 0, 0]


def _unchanged(a, es):
    assert all(es[i].salary == 0 and es[i].mgr == a.schema.ffi.NULL for i in range(N))
    assert len(a.delta()) == len(a.delta())  # nothing was marked either


BAD = [
    # (call, error, words the message must name)
    (lambda a, es, ds: a.store_many(es, "salary", [0, N], [1.0, 2.0]),
     tha.InvalidPointer, ["index 1000", "struct emp"]),
    (lambda a, es, ds: a.store_many(es + 999, "salary", [0, 1], [1.0, 2.0]),
     tha.InvalidPointer, ["index 1"]),
    (lambda a, es, ds: a.store_many(es, "salary", [0, 1], [1.0]),
     tha.InvalidArgument, ["2 indexes", "1 value"]),
    (lambda a, es, ds: a.store_many(es, "salary", [0, 1], array.array("f", [1, 2])),
     tha.InvalidArgument, ["salary", "double"]),
    (lambda a, es, ds: a.store_many(es, "salary", [0], ["x"]),
     tha.InvalidArgument, ["salary", "double"]),
    (lambda a, es, ds: a.store_many(es, "id", [0], [-1]),
     tha.InvalidArgument, ["id", "uint32_t"]),
    (lambda a, es, ds: a.store_many(es, "nope", [0], [1]),
     tha.NotFound, ["nope"]),
    (lambda a, es, ds: a.store_many(es, "name", [0], [b"x"]),
     tha.InvalidArgument, ["name", "char[32]"]),
    (lambda a, es, ds: a.store_many(es, "flag", [0], [1]),
     tha.InvalidArgument, ["flag", "bitfield"]),
    (lambda a, es, ds: a.store_many(es, "hook", [0], [0], target=es),
     tha.InvalidArgument, ["hook", "function"]),
    (lambda a, es, ds: a.store_many(es, "buddy", [0], [0], target=es),
     tha.InvalidArgument, ["buddy", "tag"]),
    (lambda a, es, ds: a.store_many(es, "mgr", [0], [1]),
     tha.InvalidArgument, ["mgr", "target"]),
    (lambda a, es, ds: a.store_many(es, "salary", [0], [1], target=es),
     tha.InvalidArgument, ["salary", "target"]),
    (lambda a, es, ds: a.store_many(es, "mgr", [0], [0], target=ds),
     tha.InvalidPointer, ["struct dept", "struct emp"]),
    (lambda a, es, ds: a.store_many(es, "mgr", [0, 1], [3, N], target=es),
     tha.InvalidPointer, ["target index 1000"]),
    (lambda a, es, ds: a.store_many(es, "mgr", [0], [-2], target=es),
     tha.InvalidPointer, ["target"]),
    (lambda a, es, ds: a.store_many(a.schema.ffi.cast("struct emp *", ds), "mgr", [0],
                                    [0], target=es),
     tha.InvalidPointer, ["struct emp *", "holds struct dept"]),
    (lambda a, es, ds: a.store_many(es, "mgr", [0], [0],
                                    target=a.schema.ffi.cast("struct emp *", ds)),
     tha.InvalidPointer, ["target", "holds struct dept"]),
    (lambda a, es, ds: a.store_many(a.schema.ffi.cast("struct emp *",
                                                      a.schema.ffi.cast("char *", es) + 8),
                                    "salary", [0], [1.0]),
     tha.InvalidPointer, ["not at an element's start"]),
    (lambda a, es, ds: a.store_many(es, "salary", [-1], [1.0]),
     tha.InvalidPointer, ["index"]),
    (lambda a, es, ds: a.store_many("es", "salary", [0], [1.0]),
     tha.InvalidPointer, ["str"]),
]


@pytest.mark.parametrize("call,error,words", BAD)
def test_bad_input_is_refused_whole_and_named(call, error, words):
    a, b, es, ds = pair()
    a.delta()
    with pytest.raises(error) as ei:
        call(a, es, ds)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))
    _unchanged(a, es)


def test_a_target_in_another_heap_is_refused():
    a, _, es, _ = pair()
    other, _, oes, _ = pair()
    with pytest.raises(tha.InvalidPointer, match="not an address in this heap"):
        a.store_many(es, "mgr", [0], [0], target=oes)
    _unchanged(a, es)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, N - 1), st.floats(allow_nan=False),
                          st.integers(0, N - 1) | st.none()), max_size=200))
def test_same_as_writing_each_element_then_touching_it(writes):
    a, b, es, _ = pair()
    c = tha.Heap(tha.Schema(CDEF), tracking="explicit")
    ces = c.new("struct emp", count=N)
    idx = [i for i, _, _ in writes]
    a.store_many(es, "salary", idx, array.array("d", [s for _, s, _ in writes]))
    a.store_many(es, "mgr", idx, [g for _, _, g in writes], target=es)
    for i, s, g in writes:               # later writes to one index win, in order
        ces[i].salary = s
        ces[i].mgr = ces + g if g is not None else c.schema.ffi.NULL
    b.apply(a.delta())
    mb = b.roots["es"]
    for i in set(idx):
        assert mb[i].salary == ces[i].salary
        want = None if ces[i].mgr == c.schema.ffi.NULL else ces[i].mgr - ces
        got = None if mb[i].mgr == b.schema.ffi.NULL else mb[i].mgr - mb
        assert got == want
    b.check()
