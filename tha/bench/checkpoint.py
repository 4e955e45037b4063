"""``python -m tha bench --checkpoint``: checkpoint write and load against a
plain sequential write/read of the same bytes to the same disk, same run.

A heap of SIZE bytes (default 256 MiB) is filled with 1 MiB char arrays
(random bytes) and a linked graph of ``struct emp``. Then, K times each:

  write baseline   what a user does to replace a file durably: 1 MiB
                   write()s of as many bytes as the checkpoint file, from a
                   pre-faulted buffer, into a temp file in the same
                   directory, fsync, rename over the previous baseline file
                   (same size), directory fsync
  checkpoint       ``heap.checkpoint(path)``: temp file, segments, fsync,
                   rename over the previous checkpoint, directory fsync
  read baseline    1 MiB readinto()s of that file into a reused buffer
  read into fresh  the same file read into a fresh anonymous mapping of its
                   size: what restoring the bytes (not just streaming them
                   past) costs, page faults included, as load must pay
  load             ``Heap.load(path, schema=..., check=False,
                   tracking="explicit")``: header, schema, every segment
                   verified and applied into a new heap (``--tracking``
                   picks the loaded heap's mode: wp/diff also fill a shadow)

Both replace an existing file of the same size, so both pay for freeing the
old one inside rename (the disk is often mounted with ``discard``; on ext4
the old inode's blocks and page cache go at the rename, ~0.1-0.2 s per GiB).
Before each round both old files are dropped from the page cache, and the
two alternate which goes first: on a VM the cost of write() is mostly
getting page-cache pages, which depends on what was freed just before (the
old baseline deleted before the clock hands its hot pages to the next
write; pages the host has reclaimed fault in at ~0.5 GB/s).

Before each read the file's pages are dropped from the page cache
(posix_fadvise DONTNEED after the fsync), so both reads come from the disk.
The baseline reads into one reused 1 MiB buffer; load also has to fault in
(zero) the fresh pages of the new heap, which on a VM whose host reclaims
freed guest memory costs as much as the copy.
Reported: best and median seconds, GB/s and the ratio checkpoint/baseline
throughput (target >= 0.70 for both); load is given against both read
baselines.
"""

from __future__ import annotations

import mmap
import os
import statistics
import tempfile
import time

from ..heap import Heap
from ..schema import Schema
from .workload import SCHEMA, machine

TARGET = 0.70
CHUNK = 1 << 20


def build(size: int):
    schema = Schema(SCHEMA)
    heap = Heap(schema, size + (size >> 3) + (64 << 20), tracking="auto")
    n = max(1000, size // 64 // 96)  # 1/64 of the bytes are pointer-rich
    team = heap.new("struct emp", count=n)
    for i in range(0, n, 97):
        team[i].mgr = team + i // 2
        team[i].reports[0] = team + (i * 7) % n
    heap.roots["team"] = team
    rnd = os.urandom(CHUNK)
    left = size - n * 96
    k = 0
    while left >= CHUNK:
        b = heap.new("char", count=CHUNK)
        heap.schema.ffi.memmove(b, rnd, CHUNK)
        heap.roots[f"b{k % 200}"] = b
        left -= CHUNK
        k += 1
    return schema, heap


def _drop_cache(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _plain_write(path, nbytes: int, buf) -> None:
    """Durable replace of path: temp file, write, fsync, rename, dir fsync."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(buf)
        left = nbytes
        while left:
            n = os.write(fd, view[: min(left, CHUNK)])
            left -= n
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _plain_read(path, buf) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return total
            total += n


def _plain_read_fresh(path, nbytes: int):
    """Reads the file into a new anonymous mapping of its size; returns it."""
    m = mmap.mmap(-1, max(nbytes, 1))
    view, total = memoryview(m), 0
    with open(path, "rb", buffering=0) as f:
        while total < nbytes:
            n = f.readinto(view[total:total + CHUNK])
            if not n:
                break
            total += n
    view.release()
    if total != nbytes:
        raise AssertionError(f"read {total} of {nbytes} bytes")
    return m


def run(size: int = 256 << 20, repeat: int = 3, directory: str | None = None,
        tracking: str = "explicit") -> dict:
    schema, heap = build(size)
    d = tempfile.mkdtemp(prefix="tha-bench-ckpt-", dir=directory)
    ckpt, plain = os.path.join(d, "state.tha"), os.path.join(d, "plain.bin")
    buf = bytearray(os.urandom(CHUNK))
    times = {"write": [], "checkpoint": [], "read": [], "read_fresh": [], "load": []}
    try:
        heap.checkpoint(ckpt)  # warm-up, and the size to compare with
        nbytes = os.path.getsize(ckpt)
        _plain_write(plain, nbytes, buf)  # the file the first round replaces
        for i in range(repeat):
            _drop_cache(plain)
            _drop_cache(ckpt)
            for which in (("write", "checkpoint") if i % 2 == 0
                          else ("checkpoint", "write")):
                t0 = time.perf_counter()
                if which == "write":
                    _plain_write(plain, nbytes, buf)
                else:
                    heap.checkpoint(ckpt)
                times[which].append(time.perf_counter() - t0)
            _drop_cache(plain)
            t0 = time.perf_counter()
            assert _plain_read(plain, buf) == nbytes
            times["read"].append(time.perf_counter() - t0)
            _drop_cache(plain)
            t0 = time.perf_counter()
            fresh = _plain_read_fresh(plain, nbytes)
            times["read_fresh"].append(time.perf_counter() - t0)
            fresh.close()
            _drop_cache(ckpt)
            t0 = time.perf_counter()
            loaded = Heap.load(ckpt, schema=schema, check=False, tracking=tracking)
            times["load"].append(time.perf_counter() - t0)
            del loaded
        loaded = Heap.load(ckpt, schema=schema, check=False)
        t0 = time.perf_counter()
        loaded.check()
        check_s = time.perf_counter() - t0
        if loaded.roots.offsets() != heap.roots.offsets():
            raise AssertionError("the loaded heap differs")
        del loaded
    finally:
        for p in (ckpt, plain, plain + ".tmp"):
            if os.path.exists(p):
                os.unlink(p)
        for p in os.listdir(d):
            os.unlink(os.path.join(d, p))
        os.rmdir(d)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"image_bytes": heap.stats()["top"], "file_bytes": nbytes, "repeat": repeat,
            "best": best, "median": med, "check_s": check_s,
            "write_ratio": best["write"] / best["checkpoint"],
            "load_ratio": best["read"] / best["load"],
            "write_ratio_median": med["write"] / med["checkpoint"],
            "load_ratio_median": med["read"] / med["load"],
            "load_fresh_ratio": best["read_fresh"] / best["load"],
            "load_fresh_ratio_median": med["read_fresh"] / med["load"],
            "machine": machine(), "directory": directory or tempfile.gettempdir(),
            "tracking": tracking}


def report(res: dict, out=None) -> None:
    import sys
    out = out or sys.stdout
    gb = res["file_bytes"] / 1e9
    out.write(f"checkpoint of a {res['image_bytes'] / (1 << 20):.0f} MiB image "
              f"({res['file_bytes']} bytes on disk) in {res['directory']}, "
              f"best/median of {res['repeat']}\n")
    rows = [("write+fsync (baseline)", "write"), ("checkpoint()", "checkpoint"),
            ("read, cold (baseline)", "read"),
            ("read into fresh memory, cold", "read_fresh"),
            (f"Heap.load(), cold, {res.get('tracking', 'explicit')}", "load")]
    for label, k in rows:
        b, m = res["best"][k], res["median"][k]
        out.write(f"  {label:28s} {b * 1e3:9.1f} ms {m * 1e3:9.1f} ms "
                  f"{gb / b:7.2f} GB/s\n")
    for k, label in (("write", "checkpoint / plain write"), ("load", "load / plain read"),
                     ("load_fresh", "load / read into fresh")):
        r, rm = res[f"{k}_ratio"], res[f"{k}_ratio_median"]
        ok = "ok" if r >= TARGET else "BELOW TARGET"
        out.write(f"  {label:26s} {r:5.2f} (median {rm:5.2f}; target {TARGET:.2f}) {ok}\n")
    if res.get("check_s") is not None:
        out.write(f"  heap.check() after load: {res['check_s'] * 1e3:.1f} ms (not in load)\n")
    m = res["machine"]
    out.write(f"  machine: {m}\n")
