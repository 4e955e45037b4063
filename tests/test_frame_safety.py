"""Issue 9: what apply, a bulk sync or load accepts is a sound heap.

Frames with valid checksums that rewrite allocator metadata are refused
(FrameError naming what is wrong) and the heap stays as it was; a checkpoint
whose image has a corrupt region header is refused by Heap.load (with or
without check=). Each scenario runs in a child process: before the fix they
ended in SIGSEGV/SIGBUS, which must not take the test run down with them."""
import subprocess
import sys
import textwrap

PRELUDE = """
import struct, sys
sys.path.insert(0, %r)
import tha
from conftest import SMALL_CDEF, reseal, runs
CAP = 1 << 20
NPAGES = CAP // 4096
ROOTS_OFF = 1152                      # align(sizeof(tha__region_t), 64)
PAGEMAP_OFF = ROOTS_OFF + 256 * 64
DATA_OFF = (PAGEMAP_OFF + NPAGES * 8 + 4095) // 4096 * 4096
""" % (str(__import__("pathlib").Path(__file__).parent),)


def run_isolated(body: str) -> str:
    code = PRELUDE + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"child exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_delta_rewriting_a_free_list_is_refused():
    out = run_isolated("""
        schema = tha.Schema(SMALL_CDEF)
        src = tha.Heap(schema, CAP, tracking="explicit")
        es = [src.new("struct emp", id=i) for i in range(5)]
        src.roots["boss"] = es[0]
        src.free(es[2])
        mirror = tha.Heap(schema, CAP)
        mirror.apply(src.snapshot())
        src.new("struct emp", id=9)      # the slab record travels in the delta
        d = bytearray(src.delta())
        hit = [data for _p, off, nb, _m, data in runs(d) if off <= DATA_OFF < off + nb * 64]
        assert hit, "the slab record is not in the delta"
        pos = hit[0] + DATA_OFF - [off for _p, off, nb, _m, data in runs(d)
                                   if off <= DATA_OFF < off + nb * 64][0]
        good = bytes(d)
        struct.pack_into("<Q", d, pos, 1 << 40)   # slab.free
        before = mirror.dump()
        try:
            mirror.apply(reseal(d))
        except tha.FrameError as e:
            assert "free list" in str(e) and "0x10000000000" in str(e), str(e)
            print("refused:", e)
        else:
            raise AssertionError("accepted")
        assert mirror.dump() == before
        mirror.check()
        mirror.apply(good)
        mirror.new("struct emp", id=10)
        mirror.new("struct emp", id=11)
        mirror.check()
        print("ok")
    """)
    assert "refused:" in out and out.rstrip().endswith("ok")


def test_snapshot_with_a_wild_class_list_is_refused():
    out = run_isolated("""
        schema = tha.Schema(SMALL_CDEF)
        src = tha.Heap(schema, CAP, tracking="explicit")
        src.roots["boss"] = src.new("struct emp", id=1)
        mirror = tha.Heap(schema, CAP)
        snap = bytearray(src.snapshot())
        (_p, _o, _n, _m, data) = runs(snap)[0]
        struct.pack_into("<Q", snap, data + 88 + 8 * 7, 1 << 41)   # class_slabs[7]
        before = mirror.dump()
        try:
            mirror.apply(reseal(snap))
        except tha.FrameError as e:
            assert "slab list" in str(e), str(e)
            print("refused:", e)
        assert mirror.dump() == before
        mirror.new("struct emp")
        mirror.check()
        print("ok")
    """)
    assert "refused:" in out and out.rstrip().endswith("ok")


def test_load_refuses_a_corrupt_region_header(tmp_path):
    out = run_isolated(f"""
        from tha._ffi import ffi, lib
        schema = tha.Schema(SMALL_CDEF)
        for field, value in ((24, 1 << 40), (40, 1 << 40), (88 + 32 * 8, 999)):
            h = tha.Heap(schema, CAP, tracking="explicit")
            h.roots["e"] = h.new("struct emp", id=1)
            p = ffi.cast("uint64_t *", h.base + field)
            keep, p[0] = p[0], value          # pagemap_off / roots_off / nepochs
            path = {str(tmp_path)!r} + "/c%d" % field
            h.checkpoint(path)
            p[0] = keep
            for check in (True, False):
                try:
                    g = tha.Heap.load(path, schema=schema, check=check)
                except tha.CorruptHeap as e:
                    print("refused:", e)
                else:
                    g.dump()
                    raise AssertionError("loaded")
        print("ok")
    """)
    assert out.count("refused:") == 6 and out.rstrip().endswith("ok")


def test_an_image_of_the_old_region_layout_is_refused_by_name(tmp_path):
    # layout version 2 put span payloads at +8; this build's are at +64: an
    # old snapshot or checkpoint is refused as a version mismatch, not
    # applied (its objects would be read 56 bytes off)
    import struct as st
    import pytest
    import tha
    from tha._ffi import ffi
    from conftest import SMALL_CDEF, reseal, runs
    CAP = 1 << 20
    schema = tha.Schema(SMALL_CDEF)
    h = tha.Heap(schema, CAP, tracking="explicit")
    h.roots["e"] = h.new("struct emp", id=1)
    snap = bytearray(h.snapshot())
    _pos, off, _nb, _mask, data = runs(snap)[0]
    assert off == 0 and snap[data:data + 8] == b"THAREGN3"
    snap[data:data + 8] = b"THAREGN2"
    with pytest.raises(tha.VersionMismatch, match="layout version 2"):
        tha.Heap(schema, CAP, tracking="explicit").apply(reseal(snap))
    p = ffi.cast("uint64_t *", h.base)
    keep, p[0] = p[0], st.unpack("<Q", b"THAREGN2")[0]
    path = str(tmp_path / "old")
    h.checkpoint(path)
    p[0] = keep
    for check in (True, False):
        with pytest.raises(tha.VersionMismatch, match="layout version 2"):
            tha.Heap.load(path, schema=schema, check=check)
