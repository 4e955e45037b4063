"""heap.touch_many(): explicit tracking of a batch of elements in one call."""
import array

import pytest

import tha

CDEF = """
struct emp { char name[32]; uint32_t id; double salary; struct emp *mgr; };
"""


def pair():
    schema = tha.Schema(CDEF)
    a = tha.Heap(schema, tracking="explicit")
    es = a.new("struct emp", count=1000)
    for i in range(1000):
        es[i].id = i
    a.roots["es"] = es
    a.touch(es)
    b = tha.Heap(tha.Schema(CDEF))
    b.apply(a.snapshot())
    return a, b, es


def mirrored(b):
    return [e.id for e in _elems(b)], [e.salary for e in _elems(b)]


def _elems(b):
    es = b.roots["es"]
    return [es[i] for i in range(1000)]


@pytest.mark.parametrize("kind", ["range", "list", "array", "numpy", "all"])
def test_touched_elements_reach_the_mirror_and_only_they(kind):
    a, b, es = pair()
    idx = list(range(10, 1000, 97))
    for i in range(1000):
        es[i].salary = 1.0 + i           # written everywhere ...
    if kind == "range":
        a.touch_many(es, range(10, 20))
        idx = list(range(10, 20))
    elif kind == "list":
        a.touch_many(es, idx)
    elif kind == "array":
        a.touch_many(es, array.array("Q", idx))
    elif kind == "numpy":
        np = pytest.importorskip("numpy")
        a.touch_many(es, np.array(idx, dtype=np.uint64))
    else:
        a.touch_many(es + 500)           # every element from 500 on
        idx = list(range(500, 1000))
    b.apply(a.delta())                   # ... but only the touched travel
    sal = mirrored(b)[1]
    came = {i for i in range(1000) if sal[i]}
    # tracking is per 64-byte block: a neighbour sharing one may come too
    near = {j for i in idx for j in (i - 1, i, i + 1)}
    assert set(idx) <= came <= near, sorted(came - near)


def test_a_field_narrows_each_element():
    a, b, es = pair()
    for i in range(1000):
        es[i].salary = 2.0
        es[i].id = 5000 + i
    a.touch_many(es, [3, 700], field="salary")
    b.apply(a.delta())
    ids, sal = mirrored(b)
    assert sal[3] == sal[700] == 2.0
    assert sum(1 for s_ in sal if s_) <= 4     # the blocks of two 8-byte fields
    assert ids[500] == 500 and ids[0] == 0


def test_bad_indexes_are_refused_before_anything_is_marked():
    a, b, es = pair()
    es[0].salary = 9.0
    with pytest.raises(tha.InvalidPointer, match="index 1000 is outside the 1000"):
        a.touch_many(es, [0, 1000])
    with pytest.raises(tha.InvalidPointer, match="index 500 is outside the 500"):
        a.touch_many(es + 500, range(0, 501))
    with pytest.raises(tha.InvalidPointer):
        a.touch_many(es, [-1])
    with pytest.raises(tha.InvalidPointer, match="ints"):
        a.touch_many(es, ["x"])
    with pytest.raises(tha.NotFound):
        a.touch_many(es, [1], field="nope")
    assert a.stats()["dirty_blocks"] == 0  # nothing was marked
    a.touch_many(es, [])                    # nothing to do


def test_touch_range_across_allocations_and_touch_all():
    schema = tha.Schema(CDEF)
    a = tha.Heap(schema, tracking="explicit")
    es = [a.new("struct emp", id=i) for i in range(6)]
    a.roots["first"] = es[0]
    b = tha.Heap(tha.Schema(CDEF))
    b.apply(a.snapshot())
    for i, e in enumerate(es):
        e.salary = 10.0 + i                       # written by "a library"
    lo = a.offset_of(es[1])
    a.touch_range(es[1], a.offset_of(es[3]) + 56 - lo)
    b.apply(a.delta())
    def salary(i):
        return b.schema.ffi.cast("struct emp *", b.base + a.offset_of(es[i])).salary
    assert [salary(i) for i in (1, 2, 3)] == [11.0, 12.0, 13.0]
    assert salary(5) == 0.0
    a.touch_all()
    b.apply(a.delta())
    assert [salary(i) for i in range(6)] == [10.0 + i for i in range(6)]
    b.check()
    with pytest.raises(tha.InvalidPointer, match="not inside the heap's data"):
        a.touch_range(a.base, 64)
    with pytest.raises(tha.InvalidArgument):
        a.touch_range(es[0], -1)


def test_attack_findings_on_touch_and_roots():
    """From an outside review: each was a builtin exception, a silent wrong
    mark, or a root removed by a 0."""
    a, b, es = pair()
    with pytest.raises(tha.InvalidPointer):
        a.touch_many(a.offset_of(es) + a.base, [1])     # an int, not a typed pointer
    a.touch_many(es, array.array("i", [1, 0]))          # int32 indexes: both, as ints
    with pytest.raises(tha.InvalidPointer):
        a.touch_many(es, range(0, 2 ** 70))             # no OverflowError
    with pytest.raises(tha.InvalidArgument):
        a.touch_range(es, 2 ** 64)
    with pytest.raises(tha.InvalidPointer):
        a.touch_range("x", 2)
    with pytest.raises(tha.InvalidPointer):
        a.roots["es"] = 0                               # used to delete the root
    assert "es" in a.roots
    with pytest.raises(tha.InvalidArgument):
        a.roots.bind("n" * 56, lambda: es)
    with pytest.raises(tha.Error, match="getter raised ZeroDivisionError"):
        a.roots.bind("r", lambda: 1 / 0)
    a.delta()                                           # a failed bind is not kept
    with pytest.raises(tha.InvalidArgument):
        tha.Active(a, ["host:\u00b2"])
