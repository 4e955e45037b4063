"""Same-address heaps from Python: tha.Heap(same_address=True / base=...),
untyped allocations (new_raw), snapshots and checkpoints that come back at
their base, refusals that name the addresses, and a tha.Standby in another
process mirroring a same-address Active twice (the second bulk sync lands
on the base its mirror holds and replaces the image in place)."""

import errno
import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest

import tha
from tha._ffi import ffi as _cffi, lib
from tha.durability import checkpoint_info
from tha.replication import Active

CDEF = """
struct item { uint64_t key; struct item *next; void *blob; };
"""

# one base per test, far from what the loader and malloc use
BASE = {name: 0x230000000000 + i * 0x1000000000 for i, name in enumerate(
    ["at", "raw", "mirror", "mismatch", "ckpt", "standby"])}


def build(heap, n):
    """A list of n items; each blob is raw bytes pointing at its item, at
    the next blob and at itself."""
    ffi = heap.schema.ffi
    head, next_blob = ffi.NULL, ffi.NULL
    keep = []
    for i in reversed(range(n)):
        it = heap.new("struct item", key=i)
        blob = heap.new_raw(32)
        words = ffi.cast("void **", blob)
        words[0] = it
        words[1] = next_blob
        words[2] = words + 3
        words[3] = ffi.cast("void *", 0x5EED0000 + i)
        it.next = head
        it.blob = blob
        head, next_blob = it, blob
        keep.append((it, blob))
    heap.roots["list"] = head
    return head


def walk(heap):
    """The keys of the list, checking every blob's pointers on the way."""
    ffi = heap.schema.ffi
    addr = lambda p: int(ffi.cast("uintptr_t", p))  # noqa: E731
    it, keys = heap.roots["list"], []
    while it != ffi.NULL:
        w = ffi.cast("void **", it.blob)
        assert addr(w[0]) == addr(it)
        assert addr(w[2]) == addr(w + 3)
        assert addr(w[3]) == 0x5EED0000 + it.key
        if it.next != ffi.NULL:
            assert addr(w[1]) == addr(it.next.blob)
        keys.append(it.key)
        it = it.next
    return keys


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


def test_heap_at_base_and_taken(schema):
    h = tha.Heap(schema, 4 << 20, tracking="explicit", base=BASE["at"])
    assert h.base == BASE["at"]
    assert h.stats()["same_address"] is True
    with pytest.raises(tha.OSFailure) as e:
        tha.Heap(schema, 4 << 20, base=BASE["at"])
    assert e.value.errno == errno.EEXIST
    assert f"0x{BASE['at']:x}" in str(e.value) and "taken" in str(e.value)
    with pytest.raises(tha.InvalidArgument, match="multiple of 64 KiB"):
        tha.Heap(schema, 4 << 20, base=BASE["at"] + 4096)
    assert tha.Heap(schema, 4 << 20).stats()["same_address"] is False


def test_new_raw_needs_same_address(schema):
    with pytest.raises(tha.StateError, match="same-address heap"):
        tha.Heap(schema, 4 << 20).new_raw(16)
    h = tha.Heap(schema, 4 << 20, base=BASE["raw"])
    b = h.new_raw(100)
    b[99] = 7
    assert h.objects()[0]  # the walk sees it
    h.check()
    with pytest.raises(tha.InvalidArgument):
        h.new_raw(0)


def test_mirror_from_snapshot(schema):
    a = tha.Heap(schema, 4 << 20, tracking="diff", base=BASE["mirror"])
    head = build(a, 20)
    snap = a.snapshot()
    head.next.next = head.next.next.next        # drop the third item ...
    blob1 = schema.ffi.cast("void **", head.next.blob)
    blob1[1] = head.next.next.blob              # ... from the blob chain too
    delta = a.delta()
    info = _cffi.new("tha_frame_info_t *")
    assert lib.tha_frame_info(snap, len(snap), info) == 0
    assert info.base == BASE["mirror"] and info.version == 2
    del head, blob1, a
    gc.collect()  # the source's address is free again
    b = tha.Heap.from_snapshot(snap, tracking="explicit")
    assert b.base == BASE["mirror"]
    assert walk(b) == list(range(20))
    b.apply(delta)
    assert walk(b) == [0, 1] + list(range(3, 20))
    b.check()
    assert len(b.leaks()) == 2  # the dropped item and its blob


def test_mismatch_refused(schema):
    a = tha.Heap(schema, 4 << 20, base=BASE["mismatch"])
    build(a, 3)
    r = tha.Heap(schema, 4 << 20)
    with pytest.raises(tha.SchemaMismatch, match="same-address heap at 0x"):
        r.apply(a.snapshot())
    with pytest.raises(tha.SchemaMismatch, match="relocatable heap"):
        a.apply(r.snapshot())


def test_checkpoint_load_at_base(schema, tmp_path):
    path = tmp_path / "ck"
    a = tha.Heap(schema, 4 << 20, base=BASE["ckpt"])
    build(a, 10)
    a.checkpoint(path)
    assert checkpoint_info(path)["base"] == BASE["ckpt"]
    with pytest.raises(tha.OSFailure, match="taken"):
        tha.Heap.load(path)
    del a
    gc.collect()
    b = tha.Heap.load(path)
    assert b.base == BASE["ckpt"] and walk(b) == list(range(10))


STANDBY = textwrap.dedent("""
    import json, sys
    sys.path[:0] = [{tests!r}]
    import tha
    from tha.replication import Standby
    from test_same_address import walk
    sb = Standby(tracking="explicit", reserve={reserve!r})
    print(sb.address[1], flush=True)
    heaps = []
    for line in sys.stdin:
        seq = int(line)
        ok = sb.wait_for(seq, 20)
        heaps.append(sb.heap)
        print(json.dumps({{"ok": ok, "base": sb.heap.base, "keys": walk(sb.heap),
                          "same": heaps[0] is sb.heap,
                          "bulks": sb.bulk_syncs,
                          "reserved": sb.status()["reserved"],
                          "check": sb.heap.check() is None}}), flush=True)
    sb.close()
""")


@pytest.mark.parametrize("reserve", [None, 4 << 20], ids=["fresh", "reserve"])
def test_python_standby_in_another_process(schema, reserve):
    """With reserve= the first bulk sync's heap takes the touched pages onto
    the active's base."""
    code = STANDBY.format(tests=os.path.dirname(__file__), reserve=reserve)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        for round_, n in enumerate((30, 12)):
            heap = tha.Heap(schema, 8 << 20, tracking="explicit", base=BASE["standby"])
            head = build(heap, n + 1)
            with Active(heap, [("127.0.0.1", port)]) as act:
                act.sync()                  # bulk
                head.key = 100              # then a delta
                heap.touch(head, "key")
                schema.ffi.cast("void **", head.blob)[3] = schema.ffi.cast(
                    "void *", 0x5EED0000 + 100)
                heap.touch(head.blob)       # the whole untyped allocation
                r = act.sync(ack="applied")
                proc.stdin.write(f"{r.seq}\n")
                proc.stdin.flush()
                got = json.loads(proc.stdout.readline())
            assert got["ok"] and got["base"] == BASE["standby"]
            assert got["keys"] == [100] + list(range(1, n + 1))
            assert got["bulks"] == round_ + 1
            assert got["same"]  # the second bulk sync took the image in place
            assert got["reserved"] == 0 and got["check"]
            del head, act
            heap = None
            gc.collect()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
