"""Big runs (>= 16 MiB) are encoded, verified and applied by two threads:
the frames must be byte-identical to the one-thread ones, and errors in
either half must still be found and reported for the first bad word."""

import pytest

import tha

CDEF = """struct node { uint64_t id; struct node *next; double w[5]; };"""
N = 300_000  # 300k x 56 B = 16.8 MB in one array: a single run over 16 MiB


@pytest.fixture(scope="module")
def big():
    schema = tha.Schema(CDEF)
    heap = tha.Heap(schema, capacity=64 << 20, tracking="explicit")
    ns = heap.new("struct node", count=N)
    ffi = schema.ffi
    for i in range(0, N, 997):
        ns[i].id = i
        ns[i].next = ns + (i * 7919) % N
    heap.touch(ns)
    heap.roots["nodes"] = ns
    return heap, ns


@pytest.fixture(autouse=True)
def restore_threads():
    yield
    tha.set_threads(2)


def frames(heap):
    tha.set_threads(1)
    one = heap.snapshot()
    tha.set_threads(2)
    two = heap.snapshot()
    return one, two


def test_two_threads_encode_the_same_bytes(big):
    heap, _ = big
    one, two = frames(heap)
    assert len(one) > 16 << 20
    assert one[96:] == two[96:]  # headers differ only in seq


@pytest.mark.parametrize("threads", [1, 2])
def test_apply_with_either_thread_count(big, threads):
    heap, ns = big
    tha.set_threads(threads)
    mirror = tha.Heap(heap.schema, capacity=64 << 20)
    mirror.apply(heap.snapshot())
    got = mirror.roots["nodes"]
    for i in (0, 997, 997 * 250, (N - 1) // 997 * 997):
        assert got[i].id == i
        assert mirror.offset_of(got[i].next) == heap.offset_of(ns[i].next)
    mirror.check()


@pytest.mark.parametrize("where", [0.25, 0.75])
def test_corruption_in_either_half_is_caught(big, where):
    heap, _ = big
    frame = bytearray(heap.snapshot())
    mirror = tha.Heap(heap.schema, capacity=64 << 20)
    before = mirror.dump()
    frame[int(len(frame) * where)] ^= 0x10
    with pytest.raises(tha.ChecksumError):
        mirror.apply(frame)
    assert mirror.dump() == before


@pytest.mark.parametrize("index", [10, N - 10])
def test_foreign_pointer_in_either_half_names_the_field(big, index):
    heap, ns = big
    ffi = heap.schema.ffi
    keep = ns[index].next
    outside = ffi.new("struct node *")
    ns[index].next = outside
    heap.touch(ns + index, "next")
    try:
        with pytest.raises(tha.InvalidPointer, match="field next"):
            heap.snapshot()
    finally:
        ns[index].next = keep
    heap.snapshot()  # and nothing was lost: it encodes again once fixed
