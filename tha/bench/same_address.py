"""``python -m tha bench --same-address``: applying the frames of a
same-address heap (raw addresses, applied as a straight copy after the
verify) against a relocatable heap's (offsets, rebased word by word) and
against memcpy of the same bytes.

The graph of tha/bench/workload.py (N ``struct emp``, every pointer wired)
is built twice, once relocatable and once same-address at BASE. Its frames
are recorded: a snapshot, then K deltas of PCT% of the emps (touched, as
in explicit mode). A same-address mirror must live at its source's base,
which the source holds while it lives in this process, so the source is
destroyed before the frames are applied to a mirror made at the same base
(the relocatable one gets the same treatment, so both are timed alike);
the two mirrors then take their frames side by side, alternating: the
snapshot once to fault the pages in, K more times (warm), the K deltas in
order. The mirror's final snapshot body must equal the
source's last one byte for byte. memcpy: ``ffi.memmove`` of each frame's
length between two pre-faulted buffers, the same bytes in one stretch (a
delta's apply writes them scattered over the image). ``bench/`` measures
the same under pytest-benchmark. Times are the process's CPU time
(``time.process_time``: both codec threads count), medians.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

from ..heap import Heap
from .workload import Graph, machine

BASE = 0x280000000000  # far from what the loader and malloc use
MODES = ("relocatable", "same-address")


def record(objects: int, dirty_pct: float, repeat: int, same: bool) -> dict:
    """The frames of one source heap (then gone), with their encode times."""
    g = Graph(objects, dirty_pct, base=BASE if same else None, mirror=False)
    t0 = _now()
    view = g.snapshot()
    enc_snap = _now() - t0
    snap = bytes(view)
    deltas, enc_delta = [], []
    for _ in range(repeat):
        g.touch_dirty()
        t0 = _now()
        d = g.delta()
        enc_delta.append(_now() - t0)
        deltas.append(bytes(d))
    out = {"schema": g.schema, "capacity": g.capacity, "snapshot": snap,
           "deltas": deltas, "final": bytes(g.heap.snapshot()),
           "encode_snapshot_s": enc_snap, "encode_delta_s": enc_delta}
    del g, view
    gc.collect()  # the source's region (and base) go
    return out


# CPU time of the process (every thread): on a shared machine wall time
# doubles from one minute to the next, CPU time much less.
_now = time.process_time


def _clock(fn, *args) -> float:
    t = _now()
    fn(*args)
    return _now() - t


def replay(recs: dict, repeat: int) -> dict:
    """Applies each mode's recording to its own mirror (the same-address one
    at BASE), the modes alternating frame by frame so that a noisy
    neighbour slows both alike; memcpy of the same bytes beside each apply."""
    mirrors = {m: Heap(recs[m]["schema"], capacity=recs[m]["capacity"],
                       tracking="explicit", base=BASE if m == "same-address" else None)
               for m in MODES}
    size = max(len(r["snapshot"]) for r in recs.values())
    src, dst = bytearray(b"\x5a") * size, bytearray(size)
    ffi = recs[MODES[0]]["schema"].ffi
    res = {m: {"apply_snapshot_s": [], "apply_delta_s": [], "memcpy_snapshot_s": [],
               "memcpy_delta_s": []} for m in MODES}
    for m in MODES:  # the first snapshot faults the mirror's pages in
        res[m]["apply_snapshot_cold_s"] = _clock(mirrors[m].apply, recs[m]["snapshot"])
    for _ in range(repeat):
        for m in MODES:
            snap = recs[m]["snapshot"]
            res[m]["apply_snapshot_s"].append(_clock(mirrors[m].apply, snap))
            res[m]["memcpy_snapshot_s"].append(_clock(ffi.memmove, dst, src, len(snap)))
    for i in range(repeat):
        for m in MODES:
            d = recs[m]["deltas"][i]
            res[m]["apply_delta_s"].append(_clock(mirrors[m].apply, d))
            res[m]["memcpy_delta_s"].append(_clock(ffi.memmove, dst, src, len(d)))
    hdr = 96
    for m in MODES:
        if memoryview(mirrors[m].snapshot())[hdr:] != memoryview(recs[m]["final"])[hdr:]:
            raise AssertionError(f"the {m} mirror differs from its source")
        mirrors[m].check()
        r = recs[m]
        res[m].update(encode_snapshot_s=r["encode_snapshot_s"],
                      encode_delta_s=r["encode_delta_s"], snapshot_bytes=len(r["snapshot"]),
                      delta_bytes=statistics.median(len(d) for d in r["deltas"]))
    del mirrors
    gc.collect()
    return res


def run(objects: int = 1_000_000, dirty_pct: float = 1.0, repeat: int = 7) -> dict:
    """Both modes recorded, then replayed side by side: {"modes", "info"}."""
    recs = {m: record(objects, dirty_pct, repeat, m == "same-address") for m in MODES}
    info = {"objects": objects, "dirty_pct": dirty_pct, "repeat": repeat,
            "machine": machine()}
    return {"modes": replay(recs, repeat), "info": info}


def _med(v) -> float:
    return statistics.median(v) if isinstance(v, list) else v


def report(res: dict, out=sys.stdout) -> None:
    info, modes = res["info"], res["modes"]
    m, r = info["machine"], modes["relocatable"]
    print(f"tha same-address benchmark: {info['objects']:,} struct emp "
          f"({r['snapshot_bytes'] / 1e6:.1f} MB snapshot, {r['delta_bytes'] / 1e6:.2f} MB "
          f"delta of {info['dirty_pct']:g}% scattered), CPU time, medians of "
          f"{info['repeat']}",
          file=out)
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['system']}, "
          f"Python {m['python']}", file=out)
    print(f"{'mode':<14}{'snap apply ms':>14}{'(cold)':>9}{'/memcpy':>9}"
          f"{'delta apply ms':>16}{'/memcpy':>9}{'snap enc ms':>13}{'delta enc ms':>14}",
          file=out)
    for mode in MODES:
        x = modes[mode]
        sa, da = _med(x["apply_snapshot_s"]), _med(x["apply_delta_s"])
        print(f"{mode:<14}{sa * 1e3:>14.2f}{x['apply_snapshot_cold_s'] * 1e3:>9.1f}"
              f"{sa / _med(x['memcpy_snapshot_s']):>9.2f}{da * 1e3:>16.3f}"
              f"{da / _med(x['memcpy_delta_s']):>9.2f}"
              f"{x['encode_snapshot_s'] * 1e3:>13.2f}{_med(x['encode_delta_s']) * 1e3:>14.3f}",
              file=out)
    s = modes["same-address"]
    print(f"same-address apply / relocatable apply: snapshot "
          f"{_med(s['apply_snapshot_s']) / _med(r['apply_snapshot_s']):.2f}, delta "
          f"{_med(s['apply_delta_s']) / _med(r['apply_delta_s']):.2f}", file=out)
