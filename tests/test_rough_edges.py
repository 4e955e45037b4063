"""What a newcomer hit in the first minutes (issue 10): each a clean
tha.Error naming the thing, never a builtin exception or a silent default."""
import pytest

import tha

CDEF = "struct emp { char name[32]; uint32_t id; struct emp *mgr; };"


@pytest.mark.parametrize("cap", [-1, 0, 100, (1 << 20) - 1, 1 << 60])
def test_capacity_out_of_range_says_the_range(cap):
    with pytest.raises(tha.InvalidArgument, match=f"capacity {cap} bytes is outside 1 MiB"):
        tha.Heap(tha.Schema(CDEF), capacity=cap)


@pytest.mark.parametrize("cap", ["64M", 1.5, True, None])
def test_capacity_must_be_an_int(cap):
    with pytest.raises(tha.InvalidArgument, match="capacity must be a number of bytes"):
        tha.Heap(tha.Schema(CDEF), capacity=cap)


def test_capacity_bounds_are_accepted():
    assert tha.Heap(tha.Schema(CDEF), capacity=1 << 20).stats()["capacity"] == 1 << 20


def test_schema_must_be_a_schema():
    with pytest.raises(tha.Error, match="schema must be a tha.Schema, not str"):
        tha.Heap(CDEF)


@pytest.mark.parametrize("fields, what", [
    ({"name": b"x" * 40}, "field 'name'"),
    ({"id": -1}, "field 'id'"),
    ({"id": "seven"}, "field 'id'"),
    ({"nope": 1}, "field 'nope'"),
    ({"mgr": 5}, "field 'mgr'"),
])
def test_a_failing_initializer_frees_what_it_took(fields, what):
    heap = tha.Heap(tha.Schema(CDEF))
    before = heap.stats()["live_objects"]
    with pytest.raises(tha.InvalidArgument, match=f"new struct emp: {what}"):
        heap.new("struct emp", count=3, **fields)
    assert heap.stats()["live_objects"] == before
    heap.check()


def test_count_must_be_sane():
    heap = tha.Heap(tha.Schema(CDEF))
    for bad in (0, -1, 1 << 32, "3"):
        with pytest.raises(tha.InvalidArgument, match="count must be an int"):
            heap.new("struct emp", count=bad)
