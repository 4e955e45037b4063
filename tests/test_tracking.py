"""Transparent tracking (diff, wp through userfaultfd or mprotect): plain
writes from threads, from compiled code and from the kernel reach the
mirror with no touch(); the SIGSEGV handler chains to the one installed
before it; scattered writes do not exhaust the process's mappings."""
import os
import subprocess
import sys
import textwrap
import threading
import time
from array import array
from pathlib import Path

import pytest

import tha
from tha.bench import writer as _writer

from conftest import SMALL_CDEF

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = tha.Schema(SMALL_CDEF + "struct slot { uint64_t v[8]; };")

# (tracking, forced mechanism, expected mechanism)
MODES = [("diff", None, "shadow-diff"), ("wp", None, "uffd-wp-async"),
         ("wp", "mprotect", "mprotect")]
IDS = ["diff", "wp-uffd", "wp-mprotect"]


def make_heap(tracking, mechanism=None, capacity=16 << 20, schema=SCHEMA):
    if mechanism:
        os.environ["THA_WP_MECHANISM"] = mechanism
    try:
        return tha.Heap(schema, capacity, tracking=tracking)
    finally:
        os.environ.pop("THA_WP_MECHANISM", None)


def uffd_available():
    h = make_heap("auto", capacity=1 << 20)
    return h.stats()["tracking_mechanism"] == "uffd-wp-async"


def check_mode(heap, want):
    got = heap.stats()["tracking_mechanism"]
    if want == "uffd-wp-async" and got != want:
        pytest.skip("userfaultfd asynchronous write-protect not available here")
    assert got == want


def mirror_of(src):
    m = tha.Heap(src.schema, src.stats()["capacity"], tracking="explicit")
    m.apply(src.snapshot())
    return m


def address(heap, p):
    return heap.base + heap.offset_of(p)


def test_auto_reports_mode_and_mechanism():
    st = tha.Heap(SCHEMA, 1 << 20).stats()
    if uffd_available():
        assert (st["tracking"], st["tracking_mechanism"]) == ("wp", "uffd-wp-async")
    else:
        assert (st["tracking"], st["tracking_mechanism"]) == ("diff", "shadow-diff")
    st = tha.Heap(SCHEMA, 1 << 20, tracking="explicit").stats()
    assert (st["tracking"], st["tracking_mechanism"]) == ("explicit", "explicit")


@pytest.mark.parametrize("tracking,force,want", MODES, ids=IDS)
def test_threads_disjoint_and_overlapping(tracking, force, want):
    """Two C threads (GIL released) store into their own slots and into
    shared ones while the main thread takes deltas; after they stop, one
    more delta and the mirror equals the source: nothing was lost."""
    src = make_heap(tracking, force)
    check_mode(src, want)
    m = mirror_of(src)
    w = _writer.load()
    own = [src.new("struct slot", count=512) for _ in range(2)]  # 32 KiB each
    shared = src.new("struct slot", count=512)
    m.apply(src.delta())
    stop = threading.Event()
    rounds = [0, 0]

    def run(k):
        while not stop.is_set():
            rounds[k] += 1
            tag = (k + 1) << 16 | rounds[k]
            # every 8th word of the own array (one per slot), then the
            # shared array with a different stride per thread
            w.tw_spin(_writer.ptr(address(src, own[k]), "uint64_t *"), 512, 8, 3, tag)
            w.tw_spin(_writer.ptr(address(src, shared), "uint64_t *") + k,
                      1024 + 512 * k, 3 + k, 2, tag)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        end = time.monotonic() + 0.3
        while time.monotonic() < end or min(rounds) < 20:
            m.apply(src.delta())
    finally:
        stop.set()
        for t in threads:
            t.join()
    m.apply(src.delta())
    assert min(rounds) > 0
    assert m.dump() == src.dump()
    assert bytes(m.schema.ffi.buffer(
        m.schema.ffi.cast("char *", m.base + src.offset_of(shared)), 512 * 64)) == \
        bytes(src.schema.ffi.buffer(shared, 512 * 64))
    assert src.frame_size("delta") == 96  # and nothing left over


@pytest.mark.parametrize("tracking,force,want", MODES, ids=IDS)
def test_growth_and_big_writes_without_touch(tracking, force, want):
    """Fresh pages committed between frames are tracked from the start;
    only the 64-byte blocks that really changed travel."""
    src = make_heap(tracking, force, capacity=64 << 20)
    check_mode(src, want)
    m = mirror_of(src)
    ffi = src.schema.ffi
    for r in range(5):
        big = src.new("char", count=3 << 20)  # commits fresh pages
        m.apply(src.delta())
        ffi.memmove(big + 4096 * r, b"x" * 100, 100)  # 100 B: 2 or 3 blocks
        big[(3 << 20) - 1] = b"y"
        d = src.delta()
        assert len(d) < 96 + 4 * (16 + 8 + 64) + 64, len(d)
        m.apply(d)
        assert m.dump() == src.dump()


@pytest.mark.parametrize("tracking,force,want", MODES, ids=IDS)
def test_kernel_writes_into_the_heap(tracking, force, want):
    """read() into the heap: diff and uffd find it; mprotect cannot (the
    kernel's copy hits a read-only page and read() fails with EFAULT)."""
    src = make_heap(tracking, force)
    check_mode(src, want)
    m = mirror_of(src)
    buf = src.new("char", count=10000)
    m.apply(src.delta())
    r, wfd = os.pipe()
    try:
        os.write(wfd, b"k" * 6000)
        view = src.schema.ffi.buffer(buf + 3000, 6000)
        if want == "mprotect":
            with pytest.raises(OSError) as e:
                os.readv(r, [view])
            assert e.value.errno == 14  # EFAULT
            return
        assert os.readv(r, [view]) == 6000
    finally:
        os.close(r)
        os.close(wfd)
    m.apply(src.delta())
    assert m.dump() == src.dump()


def test_mprotect_every_other_page_of_512_mib():
    """65,536 writable islands would pass vm.max_map_count (65,530): the
    handler coarsens first, and the delta still mirrors exactly."""
    n = 512 << 20
    src = make_heap("wp", "mprotect", capacity=n + (8 << 20))
    assert src.stats()["tracking_mechanism"] == "mprotect"
    big = src.new("char", count=n)
    m = tha.Heap(SCHEMA, n + (8 << 20), tracking="explicit")
    m.apply(src.snapshot())
    w = _writer.load()
    offs = _writer.ffi.from_buffer("uint64_t[]", array("Q", range(8, n, 8192)))  # every other page
    base = address(src, big)
    w.tw_write_words(_writer.ptr(base), offs, len(offs), 1 << 40)
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    assert maps < 40000, maps
    d = src.delta()
    m.apply(d)
    mb = m.base + src.offset_of(big)
    assert w.tw_memcmp(_writer.ptr(mb), _writer.ptr(base), n) == 0
    # the next frame is small again and the region is protected again
    big[12345] = b"z"
    assert len(src.delta()) < 1024


FAULT_SCRIPT = """
import ctypes, os, sys
os.environ["THA_WP_MECHANISM"] = "mprotect"
import tha
s = tha.Schema("struct emp { uint32_t id; };")
h = tha.Heap(s, 4 << 20, tracking="wp")
assert h.stats()["tracking_mechanism"] == "mprotect"
e = h.new("struct emp")
h.delta()
e.id = 7                       # a fault inside the region: handled
assert len(h.delta()) > 96
print("handled", flush=True)
ctypes.string_at(16)           # a fault outside: faulthandler's turn
"""


def test_foreign_fault_reaches_faulthandler():
    p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", FAULT_SCRIPT],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.stdout.strip() == "handled", p.stderr
    assert "Fatal Python error: Segmentation fault" in p.stderr, p.stderr
    assert p.returncode == -11


def test_foreign_fault_without_handler_dies_by_sigsegv():
    p = subprocess.run([sys.executable, "-c", FAULT_SCRIPT],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.stdout.strip() == "handled", p.stderr
    assert p.returncode == -11


UNPRIV_SCRIPT = """
import tha
s = tha.Schema("struct emp { uint32_t id; };")
h = tha.Heap(s, 4 << 20)
m = tha.Heap(s, 4 << 20, tracking="explicit")
m.apply(h.snapshot())
e = h.new("struct emp"); m.apply(h.delta())
e.id = 42; m.apply(h.delta())
assert m.dump() == h.dump()
st = h.stats()
print(st["tracking"], st["tracking_mechanism"])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_unprivileged_user_gets_uffd():
    """vm.unprivileged_userfaultfd = 0 refuses userfaultfd to non-root,
    except with UFFD_USER_MODE_ONLY, which is all async WP needs."""
    if not uffd_available():
        pytest.skip("no userfaultfd async WP")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME="/tmp")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", UNPRIV_SCRIPT], capture_output=True,
                       text=True, timeout=60, cwd="/tmp", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["wp", "uffd-wp-async"]
