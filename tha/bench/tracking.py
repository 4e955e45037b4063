"""``python -m tha bench --tracking``: what transparent tracking costs.

A heap holding one 256 MiB array, every page present. For each dirty
pattern (writes clustered on 0.1%, 1%, 10%, 100% of the pages, one 8-byte
store per 64-byte block of each; or scattered over 1% of the 64-byte
blocks, one store each) and each mode, it times:

  writes   the stores, made by compiled code (tha/bench/writer.py), right
           after a frame (so wp has just re-protected everything), relative to
           the same stores into an explicit heap (no tracking at all)
  delta    ``heap.delta()`` into a preallocated buffer (find the changes,
           encode them), relative to one memcmp of two equal 256 MiB buffers
           measured in the same run
  scan     the part of delta() that finds changes (``frame_size``), in GB/s
           of the region; for diff this is the shadow compare

Targets (issue 4): diff scan >= 70% of memcmp bandwidth; wp with 1% of the
pages written >= 10x faster delta() than diff; first write to a page
<= 2 us in wp. Best of K rounds; only same-run ratios mean anything.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import time
from array import array

from ..heap import Heap
from ..schema import Schema
from . import writer as _writer
from .workload import clock, machine

SIZE = 256 << 20
PAGE = 4096
PATTERNS = [("0.1% pages", "pages", 0.001), ("1% pages", "pages", 0.01),
            ("10% pages", "pages", 0.10), ("100% pages", "pages", 1.0),
            ("1% blocks", "blocks", 0.01)]
MODES = [("explicit", None), ("diff", None), ("wp", None), ("wp", "mprotect")]


def offsets(kind: str, frac: float, seed: int = 1):
    """8-aligned offsets into the array: one word per block of a clustered
    stretch of pages, or one word in each of a random set of blocks."""
    if kind == "pages":
        npages = max(1, round(SIZE // PAGE * frac))
        first = (SIZE // PAGE - npages) // 2
        return array("Q", range(first * PAGE, (first + npages) * PAGE, 64))
    nblocks = SIZE // 64
    pick = sorted(random.Random(seed).sample(range(nblocks), round(nblocks * frac)))
    return array("Q", (b * 64 + 8 * (b % 8) for b in pick))


def _heap(tracking, mech):
    if mech:
        os.environ["THA_WP_MECHANISM"] = mech
    try:
        return Heap(Schema("struct pad { char c; };"), SIZE + (16 << 20), tracking=tracking)
    finally:
        os.environ.pop("THA_WP_MECHANISM", None)


def run(repeat: int = 5, patterns=PATTERNS) -> dict:
    w = _writer.load()
    wffi = _writer.ffi
    # memcmp baseline: two equal, present 256 MiB buffers
    a, b = bytearray(b"\x01") * SIZE, bytearray(b"\x01") * SIZE
    pa, pb = wffi.from_buffer(a), wffi.from_buffer(b)
    memcmp = min(clock(w.tw_memcmp, pa, pb, SIZE) for _ in range(repeat))
    del pa, pb, a, b
    out_buf = bytearray(SIZE + SIZE // 64 + (1 << 20))
    results = {"memcmp_s": memcmp, "rows": {}}
    offs = {name: offsets(kind, frac) for name, kind, frac in patterns}
    for tracking, mech in MODES:
        h = _heap(tracking, mech)
        label = h.stats()["tracking_mechanism"]
        if tracking == "wp" and mech is None and label != "uffd-wp-async":
            continue  # this kernel has no async WP; auto is diff here
        arr = h.new("char", count=SIZE)
        base = _writer.ptr(h.base + h.offset_of(arr))
        fill = bytes(range(256)) * 4096  # 1 MiB, no zero pages anywhere
        for off in range(0, SIZE, len(fill)):  # every page present
            w.tw_copy(base + off, fill, len(fill))
        h.delta(out=out_buf)
        h.delta(out=out_buf)
        for name, _kind, _frac in patterns:
            o = offs[name]
            po = wffi.from_buffer("uint64_t[]", o)
            wt, dt, st = [], [], []
            for r in range(repeat):
                h.delta(out=out_buf)  # protect (wp), level the shadow
                w.tw_write_words(base, po, len(o), (2 * r + 7) << 32)
                t0 = time.perf_counter()
                h.frame_size("delta")  # only finds the changes
                st.append(time.perf_counter() - t0)
                h.delta(out=out_buf)
                t0 = time.perf_counter()
                w.tw_write_words(base, po, len(o), (2 * r + 8) << 32)
                t1 = time.perf_counter()
                h.delta(out=out_buf)  # what an application calls
                t2 = time.perf_counter()
                wt.append(t1 - t0)
                dt.append(t2 - t1)
            results["rows"][(label, name)] = {
                "write_s": min(wt), "scan_s": min(st), "delta_s": min(dt),
                "write_med_s": statistics.median(wt), "delta_med_s": statistics.median(dt),
                "stores": len(o),
                "pages": len({x // PAGE for x in o})}
        del arr, h
        gc.collect()
    return results


def report(res: dict, repeat: int, out=sys.stdout) -> None:
    m = machine()
    mc = res["memcmp_s"]
    print(f"tha tracking benchmark: 256 MiB array, best of {repeat}; memcmp of "
          f"256 MiB {mc * 1e3:.2f} ms ({SIZE / mc / 1e9:.1f} GB/s)", file=out)
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['system']}, "
          f"Python {m['python']}", file=out)
    rows = res["rows"]
    print(f"{'mechanism':<15}{'writes on':<12}{'write ms':>9}{'vs untracked':>13}"
          f"{'us/page':>8}{'delta ms':>9}{'vs memcmp':>10}{'scan GB/s':>10}", file=out)
    for (label, name), r in rows.items():
        base = rows.get(("explicit", name))
        rel = r["write_s"] / base["write_s"] if base else float("nan")
        extra = (r["write_s"] - base["write_s"]) / r["pages"] * 1e6 if base else 0
        print(f"{label:<15}{name:<12}{r['write_s'] * 1e3:>9.3f}{rel:>12.1f}x"
              f"{extra:>8.2f}{r['delta_s'] * 1e3:>9.3f}{r['delta_s'] / mc:>9.2f}x"
              f"{SIZE / r['scan_s'] / 1e9:>10.1f}", file=out)
    diff = rows.get(("shadow-diff", "0.1% pages"))
    if diff:
        bw = mc / diff["scan_s"]
        print(f"diff scan = {bw:.0%} of memcmp bandwidth (target >= 70%, "
              f"{'ok' if bw >= 0.7 else 'BELOW TARGET'})", file=out)
    for label in ("uffd-wp-async", "mprotect"):
        wp, d = rows.get((label, "1% pages")), rows.get(("shadow-diff", "1% pages"))
        base = rows.get(("explicit", "1% pages"))
        if wp and d:
            sp = d["delta_s"] / wp["delta_s"]
            first = (wp["write_s"] - base["write_s"]) / wp["pages"] * 1e6
            print(f"{label}: delta with 1% of pages written {sp:.0f}x faster than diff "
                  f"(target >= 10x, {'ok' if sp >= 10 else 'BELOW TARGET'}); first "
                  f"write to a page {first:.2f} us (target <= 2 us, "
                  f"{'ok' if first <= 2 else 'ABOVE TARGET'})", file=out)


def main(repeat: int = 5) -> int:
    res = run(repeat)
    report(res, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
