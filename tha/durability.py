"""Checkpoints and the delta log, for :class:`tha.Heap` (C: checkpoint.c,
log.c, load.c).

``heap.checkpoint(path)`` writes an atomic snapshot file; ``Heap.load(path,
log=...)`` reads one back at any address and replays a delta log on top;
``heap.attach_log(path, fsync=...)`` appends every frame the heap makes or
applies; ``heap.compact()`` folds the log into a new checkpoint.

Below tha/heap.py: Heap calls these helpers, which take a heap (or a C
heap handle) and never import Heap.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from dataclasses import dataclass

from ._ffi import ffi as _cffi, lib
from .errors import InvalidArgument, check
from .schema import Schema


@dataclass(frozen=True)
class LoadReport:
    """What ``Heap.load`` did: the checkpoint's seq, the seq reached, the log
    frames replayed and skipped, and where and why replay stopped
    (``stop_code`` 0 and ``clean`` True when the whole log was good)."""

    path: str
    log: str | None
    checkpoint_seq: int
    seq: int
    frames_applied: int
    frames_skipped: int
    log_end: int          # offset just past the last good frame
    log_size: int
    stop_code: int        # 0, or THA_EFRAME (torn), THA_ECHECKSUM, THA_ESEQ, ...
    stop_offset: int      # first byte of the frame replay stopped at
    stop_seq: int         # its seq; 0 when its header was unreadable
    message: str

    @property
    def clean(self) -> bool:
        return self.stop_code == 0

    @property
    def skipped_bytes(self) -> int:
        """Bytes of the log after the valid prefix (not replayed)."""
        return self.log_size - self.log_end if self.log else 0

    def __str__(self) -> str:
        s = f"checkpoint seq {self.checkpoint_seq} -> seq {self.seq}"
        if self.log:
            s += (f"; log: {self.frames_applied} frames replayed, "
                  f"{self.frames_skipped} skipped")
            if not self.clean:
                s += f"; stopped: {self.message}"
        return s


def _report(c, path, log) -> LoadReport:
    return LoadReport(path=os.fspath(path), log=None if log is None else os.fspath(log),
                      checkpoint_seq=c.checkpoint_seq, seq=c.seq,
                      frames_applied=c.frames_applied, frames_skipped=c.frames_skipped,
                      log_end=c.log_end, log_size=c.log_size, stop_code=c.stop_code,
                      stop_offset=c.stop_offset, stop_seq=c.stop_seq,
                      message=_cffi.string(c.msg).decode(errors="replace"))


# ---- progress ----------------------------------------------------------------

@_cffi.def_extern()
def tha_py_progress(ctx, done, total):
    fn = _cffi.from_handle(ctx)
    try:
        fn(done, total)
    except Exception:  # noqa: BLE001 - a callback must not unwind through C
        pass


def progress_args(progress):
    """(C callback, ctx, keepalive) for an optional ``progress(done, total)``."""
    if progress is None:
        return _cffi.NULL, _cffi.NULL, None
    if not callable(progress):
        raise InvalidArgument(f"progress must be callable, not {type(progress).__name__}")
    handle = _cffi.new_handle(progress)
    return lib.tha_py_progress, handle, handle


# ---- fsync policy ------------------------------------------------------------

_EVERY = re.compile(r"^every\s*(\d+(?:\.\d+)?)\s*(ms|s)$")


def parse_fsync(policy) -> int:
    """'always' -> 0, 'never' -> -1, 'every 100ms' / 'every 2s' -> ms."""
    if policy == "always":
        return lib.THA_LOG_FSYNC_ALWAYS
    if policy == "never":
        return lib.THA_LOG_FSYNC_NEVER
    m = _EVERY.match(str(policy).strip()) if isinstance(policy, str) else None
    if m:
        ms = float(m.group(1)) * (1000 if m.group(2) == "s" else 1)
        if ms >= 1:
            return int(ms)
    raise InvalidArgument(f"fsync must be 'always', 'never' or 'every N ms' "
                f"(e.g. 'every 100ms'), not {policy!r}")


class LogSyncer:
    """For ``fsync='every N ms'``: a daemon thread that syncs the log every
    N ms, so an idle heap's last frames reach the disk too (the C side only
    syncs at an append). Holds the heap weakly."""

    def __init__(self, heap, period_ms: int):
        self._heap = weakref.ref(heap)
        self._period = period_ms / 1000.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tha-log-sync",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            heap = self._heap()
            if heap is None:
                return
            with heap._lock:
                if getattr(heap, "_log_path", None) is None:
                    return
                # a failure breaks the log: the next frame reports it
                lib.tha_heap_sync_log(heap._h)
            heap = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


# ---- operations (called by Heap) ---------------------------------------------

def checkpoint_info(path) -> dict:
    """The header of a checkpoint file (seq, epoch, lineage, capacity, top,
    segments, file_bytes, fingerprint, version; base: a same-address heap's
    base, 0 if relocatable) without reading the image."""
    info = _cffi.new("tha_checkpoint_info_t *")
    msg = _cffi.new("char[256]")
    check(lib.tha_checkpoint_info(os.fsencode(path), info, _cffi.NULL, msg, 256),
          lambda: msg)
    return {k: getattr(info, k) for k in ("version", "fingerprint", "lineage", "epoch",
                                          "seq", "capacity", "top", "segments",
                                          "file_bytes", "base")}


def file_schema(path, functions=None, externs=None):
    """The Schema a checkpoint carries (functions and externs bound from
    ``functions`` and ``externs``)."""
    info = _cffi.new("tha_checkpoint_info_t *")
    msg = _cffi.new("char[256]")
    out = _cffi.new("tha_schema_t **")
    check(lib.tha_checkpoint_info(os.fsencode(path), info, out, msg, 256), lambda: msg)
    return Schema("", functions, externs=externs,
                  _c=_cffi.gc(out[0], lib.tha_schema_release))


def load(path, *, tracking: int, schema=None, log=None, functions=None,
         progress=None, check_heap=True, externs=None):
    """tha_heap_load: (schema, C heap handle, LoadReport); ``tracking`` is
    the C mode (THA_TRACK_*). Heap.load wraps the handle."""
    if schema is None:
        schema = file_schema(path, functions, externs)
    else:
        for name, fn in (functions or {}).items():
            schema.bind(name, fn)
        for name, target in (externs or {}).items():
            schema.bind_extern(name, target)
    opt = _cffi.new("tha_load_options_t *")
    keep = [os.fsencode(path)]
    opt.schema = schema._c
    opt.tracking = tracking
    if log is not None:
        keep.append(_cffi.new("char[]", os.fsencode(log)))
        opt.log = keep[-1]
    opt.progress, opt.progress_ctx, handle = progress_args(progress)
    opt.check = 1 if check_heap else 0
    rep = _cffi.new("tha_load_report_t *")
    out = _cffi.new("tha_heap_t **")
    check(lib.tha_heap_load(out, keep[0], opt, rep), lambda: rep.msg)
    del handle
    return schema, out[0], _report(rep, path, log)
