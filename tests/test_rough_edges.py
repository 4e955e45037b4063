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


@pytest.mark.parametrize("frame", ["hello", 5, None, [1, 2]])
def test_apply_of_what_is_not_bytes(frame):
    heap = tha.Heap(tha.Schema(CDEF))
    with pytest.raises(tha.InvalidArgument, match="apply: a frame is bytes"):
        heap.apply(frame)
    with pytest.raises(tha.InvalidArgument, match="from_snapshot: a frame is bytes"):
        tha.Heap.from_snapshot(frame)


def test_snapshot_into_a_bad_buffer():
    heap = tha.Heap(tha.Schema(CDEF))
    with pytest.raises(tha.InvalidArgument, match="writable buffer"):
        heap.snapshot(out=b"\0" * (1 << 20))
    with pytest.raises(tha.InvalidArgument, match="holds 10 bytes"):
        heap.snapshot(out=bytearray(10))


def test_a_pointer_from_another_schemas_heap_in_an_initializer():
    a, b = tha.Heap(tha.Schema(CDEF)), tha.Heap(tha.Schema(CDEF))
    other = b.new("struct emp")
    with pytest.raises(tha.InvalidArgument, match="field 'mgr'"):
        a.new("struct emp", mgr=other)
    assert a.stats()["live_objects"] == 0
