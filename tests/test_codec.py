"""Frames: round trips, and every kind of bad input refused with a clear
error while the target heap stays exactly as it was."""
import random
import struct

import pytest

import tha

from conftest import (HOOKS, RICH_CDEF, SMALL_CDEF, edit_header, header,
                      pointer_words, reseal, runs, state)

CAP = 1 << 20


def _pair(schema):
    src = tha.Heap(schema, CAP, tracking="explicit")
    boss = src.new("struct emp", name=b"boss", id=1, salary=100.0)
    d = src.new("struct dept", name=b"eng", id=9)
    e = src.new("struct emp", name=b"ann", id=2, salary=50.0)
    e.mgr, e.dept, boss.reports[0] = boss, d, e
    src.touch(e), src.touch(boss)
    src.roots["boss"] = boss
    mirror = tha.Heap(schema, CAP)
    mirror.apply(src.snapshot())
    return src, mirror, e


@pytest.fixture
def pair(small_schema):
    return _pair(small_schema)


def _refused(heap, frame, exc, *words):
    before = state(heap)
    with pytest.raises(exc) as ei:
        heap.apply(frame)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))
    assert state(heap) == before
    return ei.value


def test_round_trip_at_another_base(pair):
    src, mirror, e = pair
    assert mirror.base != src.base
    assert mirror.dump() == src.dump()
    ffi = mirror.schema.ffi
    assert ffi.string(mirror.roots["boss"].reports[0].dept.name) == b"eng"
    e.salary = 51.0
    src.touch(e, "salary")
    d = src.delta()
    assert header(d)["kind"] == 2 and header(d)["seq"] == 2
    mirror.apply(d)
    assert mirror.roots["boss"].reports[0].salary == 51.0
    assert mirror.stats()["seq"] == src.stats()["seq"] == 2
    empty = src.delta()  # nothing dirty: a valid empty delta
    assert header(empty)["nruns"] == 0
    mirror.apply(empty)
    assert mirror.dump() == src.dump()


def test_into_buffer(pair):
    src, mirror, e = pair
    e.id = 77
    src.touch(e)
    buf = bytearray(src.frame_size("delta") + 10)
    view = src.delta(buf)
    mirror.apply(view)
    assert mirror.roots["boss"].reports[0].id == 77
    with pytest.raises(tha.Error, match="buffer"):
        src.snapshot(bytearray(10))
    assert src.stats()["seq"] == 2  # the failed encode changed nothing


def test_garbage(pair):
    src, mirror, _ = pair
    rng = random.Random(1)
    for n in (0, 1, 50, 95, 96, 97, 500, 5000):
        _refused(mirror, bytes(rng.randrange(256) for _ in range(n)), tha.FrameError)
    _refused(mirror, b"\0" * 200, tha.FrameError, "not a tha frame")
    _refused(mirror, b"THAF" + bytes(200), tha.ChecksumError, "header checksum")
    good = src.snapshot()
    _refused(mirror, good[:4] + bytes(rng.randrange(256) for _ in range(300)),
             tha.ChecksumError, "header checksum")
    with pytest.raises(tha.FrameError):
        tha.Heap.from_snapshot(b"garbage" * 30)


def _every_prefix(heap, frame):
    before = state(heap)
    view = memoryview(frame)
    for n in range(len(frame)):
        with pytest.raises(tha.FrameError) as ei:
            heap.apply(view[:n])
        assert "truncated" in str(ei.value), (n, str(ei.value))
    assert state(heap) == before


def test_every_truncated_prefix_of_a_delta(pair):
    src, mirror, e = pair
    e.salary, e.mgr = 7.0, src.schema.ffi.NULL
    src.touch(e)
    d = src.delta()
    _every_prefix(mirror, d)
    mirror.apply(d)
    assert mirror.dump() == src.dump()


def test_every_truncated_prefix_of_a_snapshot(small_schema):
    src = tha.Heap(small_schema, CAP, tracking="explicit")
    src.roots["x"] = src.new("struct dept", name=b"x")
    snap = src.snapshot()
    target = tha.Heap(small_schema, CAP)
    target.roots["mine"] = target.new("struct emp", id=3)
    _every_prefix(target, snap)
    _refused(target, snap + b"\0" * 8, tha.FrameError, "padded")
    target.apply(snap)
    assert target.dump() == src.dump()


def test_single_bit_flips_of_a_delta(pair):
    src, mirror, e = pair
    e.salary, e.mgr = 8.0, e
    src.touch(e)
    d = src.delta()
    before = state(mirror)
    for i in range(len(d)):
        bad = bytearray(d)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(tha.FrameError) as ei:
            mirror.apply(bytes(bad))
        if 4 <= i:
            assert isinstance(ei.value, tha.ChecksumError), (i, str(ei.value))
            assert "checksum" in str(ei.value)
    assert state(mirror) == before
    mirror.apply(d)
    assert mirror.dump() == src.dump()


def test_wrong_schema_snapshot_names_field(small_schema):
    other = tha.Schema(SMALL_CDEF.replace("double salary", "float salary"))
    src = tha.Heap(other, CAP)
    src.roots["e"] = src.new("struct emp")
    target = tha.Heap(small_schema, CAP)
    target.roots["e"] = target.new("struct emp", id=1)
    e = _refused(target, src.snapshot(), tha.SchemaMismatch, "salary", "emp")
    assert isinstance(e, tha.Error)


def test_wrong_schema_delta_fingerprint(pair):
    _src, mirror, _ = pair
    other = tha.Schema(SMALL_CDEF.replace("double salary", "float salary"))
    src2 = tha.Heap(other, CAP, tracking="explicit")
    src2.new("struct emp")
    _refused(mirror, src2.delta(), tha.SchemaMismatch, "fingerprint")


def test_delta_out_of_sequence(pair):
    src, mirror, e = pair
    e.id = 10
    src.touch(e)
    d2 = src.delta()
    e.id = 11
    src.touch(e)
    d3 = src.delta()
    _refused(mirror, d3, tha.SequenceError, "seq 3 out of sequence", "needs 2")
    mirror.apply(d2)
    _refused(mirror, d2, tha.SequenceError, "out of sequence")   # replayed
    mirror.apply(d3)
    _refused(mirror, d3, tha.SequenceError, "out of sequence")
    assert mirror.dump() == src.dump()


def test_delta_from_another_lineage(small_schema, pair):
    _src, mirror, _ = pair
    stranger, _m, e = _pair(small_schema)
    e.id = 5
    stranger.touch(e)
    d = stranger.delta()
    assert header(d)["seq"] == mirror.stats()["seq"] + 1  # only lineage differs
    _refused(mirror, d, tha.SequenceError, "another frame series")


def test_stale_epoch(pair):
    """A newer epoch (crafted: no promotion from Python yet) fences frames of
    the older one."""
    src, mirror, e = pair
    snap = edit_header(src.snapshot(), epoch=5)
    mirror.apply(snap)
    assert mirror.stats()["epoch"] == 5
    e.id = 12
    src.touch(e)
    _refused(mirror, src.delta(), tha.StaleEpoch, "epoch 0", "epoch 5")
    _refused(mirror, src.snapshot(), tha.StaleEpoch, "epoch 0")


def test_out_of_range_pointer_offset(pair):
    src, mirror, e = pair
    e.mgr = e
    src.touch(e)
    d = src.delta()
    words = pointer_words(d)
    assert words
    top = header(d)["top"]
    for value in (top + 8, 1 << 40, (1 << 63) | 7):
        bad = bytearray(d)
        struct.pack_into("<Q", bad, words[0][0], value)
        _refused(mirror, reseal(bad), tha.FrameError, "out of range"
                 if value >> 63 else "past the image end")
    snap = src.snapshot()
    (pos, _off, _v) = pointer_words(snap)[0]
    bad = bytearray(snap)
    struct.pack_into("<Q", bad, pos, header(snap)["top"] + 64)
    _refused(mirror, reseal(bad), tha.FrameError, "past the image end")
    # a pointer mask on allocator metadata
    bad = bytearray(snap)
    (_p, _o, _n, mask, _data) = runs(snap)[0]
    bad[mask] = 1
    _refused(mirror, reseal(bad), tha.FrameError, "allocator metadata")


def test_out_of_range_run_offsets(pair):
    src, mirror, e = pair
    e.id = 99
    src.touch(e)
    d = src.delta()
    (pos, off, nb, _m, _d) = runs(d)[0]
    top = header(d)["top"]
    for new_off, words in ((top, "out of range"), (top - 64 * (nb - 1) if nb > 1
                                                   else top + 64, "out of range"),
                           (off + 8, "out of range"), (1 << 62, "out of range")):
        bad = bytearray(d)
        struct.pack_into("<Q", bad, pos, new_off)
        _refused(mirror, reseal(bad), tha.FrameError, words)
    bad = bytearray(d)
    struct.pack_into("<Q", bad, pos + 8, 1 << 40)  # nblocks past the end
    _refused(mirror, reseal(bad), tha.FrameError, "out of range")
    bad = bytearray(d)
    struct.pack_into("<Q", bad, pos + 8, 0)
    _refused(mirror, reseal(bad), tha.FrameError, "out of range")
    # header fields that disagree with the body
    _refused(mirror, edit_header(d, nruns=header(d)["nruns"] + 1), tha.FrameError,
             "truncated")
    _refused(mirror, edit_header(d, nblocks=header(d)["nblocks"] + 1), tha.FrameError,
             "blocks")
    _refused(mirror, edit_header(d, top=top + 4096 * 1000), tha.FrameError)
    _refused(mirror, edit_header(d, version=99), tha.FrameError, "version")
    _refused(mirror, edit_header(d, kind=7), tha.FrameError, "kind")
    mirror.apply(d)
    assert mirror.dump() == src.dump()


def test_snapshot_into_too_small_heap(small_schema):
    src = tha.Heap(small_schema, 4 << 20)
    keep = [src.new("struct emp", count=30) for _ in range(100)]
    src.roots["k"] = keep[0]
    small = tha.Heap(small_schema, 1 << 20)
    small.roots["s"] = small.new("struct dept")
    e = _refused(small, src.snapshot(), tha.CapacityError, "capacity")
    assert isinstance(e, MemoryError)
    roomy = tha.Heap.from_snapshot(src.snapshot())
    assert roomy.dump() == src.dump()


def test_foreign_pointer_on_encode(pair):
    src, mirror, e = pair
    ffi = src.schema.ffi
    outside = ffi.new("struct emp *")
    e.id = 31
    e.mgr = ffi.cast("struct emp *", outside)
    src.touch(e)
    before = src.stats()
    for encode in (src.delta, src.snapshot):
        with pytest.raises(tha.InvalidPointer) as ei:
            encode()
        assert "mgr" in str(ei.value) and "struct emp" in str(ei.value)
    after = src.stats()
    assert after["seq"] == before["seq"]
    assert after["dirty_blocks"] == before["dirty_blocks"] > 0
    e.mgr = ffi.NULL          # fix the field: the earlier write still travels
    src.touch(e, "mgr")
    mirror.apply(src.delta())
    assert mirror.dump() == src.dump()
    assert mirror.roots["boss"].reports[0].id == 31


def test_foreign_function_pointer_on_encode():
    s = tha.Schema(RICH_CDEF, functions=HOOKS)
    h = tha.Heap(s, CAP, tracking="explicit")
    e = h.new("struct emp")
    h.roots["e"] = e
    e.hook = s.ffi.cast("void(*)(void)", 0x1234)
    with pytest.raises(tha.InvalidPointer, match="hook"):
        h.snapshot()
    e.hook = HOOKS["pong"]
    m = tha.Heap.from_snapshot(h.snapshot(), functions=HOOKS)
    assert m.dump() == h.dump()
    assert m.dump()["objects"][0]["value"][0]["hook"] == "pong"
    # a mirror that has not bound 'pong' refuses, naming it
    with pytest.raises(tha.FrameError, match="pong"):
        tha.Heap.from_snapshot(h.snapshot())


def test_from_snapshot_needs_no_schema(rich_schema):
    h = tha.Heap(rich_schema, 2 << 20, tracking="explicit")
    e = h.new("struct emp", name=b"ann", level=5, delta=-3)
    buf = h.new("char", count=16)
    buf[0:5] = b"hello"
    e.note, e.any = buf + 1, buf
    e.v.f = 1.5
    e.grid[1][2] = 12
    h.roots["ann"] = e
    m = tha.Heap.from_snapshot(h.snapshot())
    assert m.base != h.base and m.stats()["capacity"] == 2 << 20
    assert m.dump() == h.dump()
    r = m.roots["ann"]
    ffi = m.schema.ffi
    assert ffi.string(r.note) == b"ello" and r.level == 5 and r.delta == -3
    assert r.v.f == 1.5 and r.grid[1][2] == 12
    assert m.offset_of(r.any) == h.offset_of(buf)


def test_a_run_count_past_the_body_sizes_nothing():
    # apply indexes a frame's runs as it checks them; a header claiming
    # more runs than the body can hold is refused as truncated (not an
    # allocation of 4 billion index entries), and the heap takes the honest
    # frame after it
    s = tha.Schema(SMALL_CDEF)
    h = tha.Heap(s, 1 << 20, tracking="explicit")
    e = h.new("struct emp", id=1)
    h.roots["e"] = e
    m = tha.Heap.from_snapshot(h.snapshot(), tracking="explicit")
    e.id = 2
    h.touch(e)
    d = h.delta()
    for n in (0xFFFFFFFF, 1 << 20, header(d)["nruns"] + 1):
        with pytest.raises(tha.FrameError, match="truncated"):
            m.apply(edit_header(d, nruns=n))
    m.apply(d)
    m.check()
    assert m.roots["e"].id == 2
