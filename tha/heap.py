"""Heap: a tha region seen from Python.

Objects are cffi cdata pointing straight into the region, typed by the
schema's ``ffi``; reading and writing them costs what cffi costs. Cdata
returned by ``new()``, ``roots[...]`` and ``objects()`` keep the heap alive.
One lock per heap serialises calls into C (the GIL is released inside them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Union

# What the typed API means by its argument kinds (cdata has no static type)
CData = Any                                   # a cffi pointer into the heap
Buffer = Union[bytes, bytearray, memoryview]  # a frame's bytes
PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[int, int], None]         # progress(done, total)

from . import durability, reach
from ._ffi import ffi as _cffi, lib
from .dump import dump_heap
from .errors import Error, InvalidArgument, InvalidPointer, NotFound, check
from .schema import Schema, _functions_declared

_TRACKING = {"auto": lib.THA_TRACK_AUTO, "explicit": lib.THA_TRACK_EXPLICIT,
             "diff": lib.THA_TRACK_DIFF, "wp": lib.THA_TRACK_WP}
_TRACKING_NAMES = {v: k for k, v in _TRACKING.items()}


def _frame_buffer(what: str, frame):
    """A frame's bytes for C, or InvalidArgument naming what it got."""
    if isinstance(frame, str):
        raise InvalidArgument(f"{what}: a frame is bytes (bytes, bytearray, "
                              "memoryview), not str")
    try:
        return _cffi.from_buffer(frame)
    except TypeError:
        raise InvalidArgument(f"{what}: a frame is bytes (bytes, bytearray, "
                              f"memoryview), not {type(frame).__name__}") from None


# what tha_heap_create accepts (csrc/src/arena.c): capacities are rounded
# up to 64 KiB; C's 0 ("the default") is spelled out in Python
MIN_CAPACITY, MAX_CAPACITY = 1 << 20, 1 << 44


def _check_capacity(capacity) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise InvalidArgument(f"Heap: capacity must be a number of bytes (int), "
                            f"not {type(capacity).__name__}")
    if not MIN_CAPACITY <= capacity <= MAX_CAPACITY:
        raise InvalidArgument(f"Heap: capacity {capacity} bytes is outside 1 MiB "
                            f"({MIN_CAPACITY}) .. 16 TiB ({MAX_CAPACITY})")


def _check_tracking(tracking) -> None:
    if tracking not in _TRACKING:
        raise InvalidArgument(f"tracking must be one of {sorted(_TRACKING)}, not {tracking!r}")


class Heap:
    """A tracked region of ``capacity`` bytes holding objects of ``schema``."""

    # durability state (tha/durability.py); class defaults so every way of
    # making a Heap has them
    _log_path = None
    _log_syncer = None
    _checkpoint_path = None
    load_report = None  # a tha.LoadReport after Heap.load

    def __init__(self, schema: Schema, capacity: int = 64 << 20,
                 tracking: str = "auto", log: PathLike | None = None,
                 fsync: str = "always", *, same_address: bool = False,
                 base: int | None = None):
        """``same_address=True`` (or a ``base``) maps the region at ``base``
        (a multiple of 64 KiB below 2**48; None: C's THA_BASE_DEFAULT) and
        makes it a same-address heap: its frames carry raw addresses, apply
        only to a heap at that base (a mirror in another process), and it
        may hold untyped allocations (new_raw). An address that is taken is
        refused (OSFailure, errno EEXIST) naming what holds it."""
        _check_tracking(tracking)
        if not isinstance(schema, Schema):
            raise InvalidArgument(f"Heap: schema must be a tha.Schema, not {type(schema).__name__}")
        _check_capacity(capacity)
        if base is not None and (isinstance(base, bool) or not isinstance(base, int)
                                 or base <= 0 or base % lib.THA_BASE_ALIGN
                                 or base >= 1 << 48):
            raise InvalidArgument(f"Heap: base must be a multiple of 64 KiB in "
                                  f"(0, 2**48), not {base!r}")
        self.schema = schema
        self._lock = threading.RLock()  # replication drivers re-enter it
        out = _cffi.new("tha_heap_t **")
        if same_address or base is not None:
            at = _cffi.cast("void *", base or 0)
            rc = lib.tha_heap_create_at(out, schema._c, capacity, _TRACKING[tracking], at)
            # every failure is named by the schema (the address, its occupant)
            check(rc, lambda: lib.tha_schema_errmsg(schema._c))
        else:
            rc = lib.tha_heap_create(out, schema._c, capacity, _TRACKING[tracking])
            # ESCHEMA: a type larger than the capacity, named by the schema
            check(rc, (lambda: lib.tha_schema_errmsg(schema._c))
                  if rc == lib.THA_ESCHEMA else None)
        self._h = _cffi.gc(out[0], lib.tha_heap_destroy)
        self._base = int(_cffi.cast("uintptr_t", lib.tha_heap_base(self._h)))
        self.roots = Roots(self)
        if log is not None:  # a new heap: the log file must be new or empty
            self.attach_log(log, fsync)

    @classmethod
    def _adopt(cls, heap_c, lock, functions=None, externs=None) -> "Heap":
        """Wraps a C heap made elsewhere (a bulk sync); the wrapper owns it
        and uses ``lock``. Its schema comes from the heap itself. The heap is
        owned from the first line: if this raises (a schema this process
        cannot lay out), it is destroyed with the exception."""
        heap_c = _cffi.gc(heap_c, lib.tha_heap_destroy)
        size = _cffi.new("size_t *")
        c_schema = lib.tha_heap_schema(heap_c)
        check(lib.tha_schema_serialize(c_schema, _cffi.NULL, 0, size))
        buf = _cffi.new("char[]", size[0])
        check(lib.tha_schema_serialize(c_schema, buf, size[0], size))
        schema = Schema.from_bytes(_cffi.buffer(buf, size[0])[:])
        # only the names this schema declares: a standby's bindings may name
        # more (tha_schema_bind_from leaves those out the same way)
        declared = _functions_declared(schema._c)
        for name, fn in (functions or {}).items():
            if name in declared:
                schema.bind(name, fn)
        declared = schema.externs()
        for name, target in (externs or {}).items():
            if name in declared:
                schema.bind_extern(name, target[0] if isinstance(target, tuple)
                                   else target)
        heap = cls.__new__(cls)
        heap.schema = schema
        heap._lock = lock
        heap._h = heap_c
        heap._base = int(_cffi.cast("uintptr_t", lib.tha_heap_base(heap._h)))
        heap.roots = Roots(heap)
        return heap

    @classmethod
    def from_snapshot(cls, frame: Buffer, capacity: int | None = None,
                      functions: dict | None = None,
                      tracking: str = "auto", externs: dict | None = None) -> "Heap":
        """A new heap holding a snapshot frame; the schema comes from the frame
        (a same-address heap's snapshot: at the frame's base, OSFailure EEXIST
        if that is taken). ``functions`` binds the frame's function names in
        this process (a function-pointer field that holds one cannot be
        applied unbound), ``externs`` its data externs (name -> cdata or
        address, see Schema). ``tracking`` as for ``Heap()``."""
        _check_tracking(tracking)
        buf = _frame_buffer("from_snapshot", frame)
        info = _cffi.new("tha_frame_info_t *")
        msg = _cffi.new("char[256]")
        out = _cffi.new("tha_schema_t **")
        check(lib.tha_frame_schema(buf, len(buf), out, msg, 256), lambda: msg)
        schema = Schema("", functions, externs=externs,
                        _c=_cffi.gc(out[0], lib.tha_schema_release))
        check(lib.tha_frame_info(buf, len(buf), info))
        # a same-address heap's snapshot: at its base or nowhere
        heap = cls(schema, capacity or info.capacity, tracking=tracking,
                   base=info.base or None)
        heap.apply(frame)
        return heap

    @classmethod
    def load(cls, path: PathLike, *, schema: Schema | None = None,
             log: PathLike | None = None, functions: dict | None = None,
             tracking: str = "auto", progress: Progress | None = None,
             check: bool = True, externs: dict | None = None) -> "Heap":
        """A heap restored from a checkpoint file, at whatever address this
        process maps it (a same-address heap's checkpoint: at its base). The schema comes from the file; with ``schema`` the
        file's is compared to it first (SchemaMismatch names the differing
        field) and the heap uses it (its function and extern bindings);
        ``functions`` and ``externs`` bind names in either. ``log``: a
        delta log replayed on top up to its first torn, corrupt or
        out-of-sequence frame; ``heap.load_report`` (a tha.LoadReport) says
        what was replayed and where it stopped. ``progress(done, total)`` is
        called as the image streams in. ``check`` runs heap.check() on the
        result. The log is not attached: call attach_log(log) to continue
        it (its torn tail is cut then)."""
        _check_tracking(tracking)
        schema, heap_c, report = durability.load(
            path, schema=schema, log=log, functions=functions, externs=externs,
            tracking=_TRACKING[tracking], progress=progress, check_heap=check)
        heap = cls.__new__(cls)
        heap._init_from_c(schema, heap_c)
        heap.load_report = report
        heap._checkpoint_path = path
        return heap

    def _init_from_c(self, schema: Schema, heap_c) -> None:
        """Wraps a C heap made by tha_heap_load; the wrapper owns it."""
        self.schema = schema
        self._lock = threading.RLock()
        self._h = _cffi.gc(heap_c, lib.tha_heap_destroy)
        self._base = int(_cffi.cast("uintptr_t", lib.tha_heap_base(self._h)))
        self.roots = Roots(self)

    # -- plumbing ----------------------------------------------------------

    def _check(self, rc: int) -> int:
        return check(rc, lambda: lib.tha_heap_errmsg(self._h))

    def _addr(self, p) -> int:
        if isinstance(p, int) and not isinstance(p, bool):
            return p
        if isinstance(p, (str, bytes, bool)) or p is None:
            raise InvalidPointer(f"expected a cdata pointer into the heap, "
                                 f"got {type(p).__name__}")
        try:
            return int(self.schema.ffi.cast("uintptr_t", p))
        except TypeError:
            raise InvalidPointer(f"expected a cdata pointer into the heap, "
                                 f"got {type(p).__name__}") from None

    def _keep(self, p):
        """p, holding a reference to this heap for as long as it lives."""
        return self.schema.ffi.gc(p, self._release_view)

    def _release_view(self, _p) -> None:  # the bound method keeps self alive
        pass

    def _typed(self, addr: int, obj=None):
        """Typed cdata for addr (an element of the allocation holding it)."""
        if obj is None:
            obj = self._lookup(addr)
        ctype = self.schema.ctype_of(obj.type_id)
        return self._keep(self.schema.ffi.cast(self.schema.pointer_type(ctype), addr))

    def _lookup(self, addr: int):
        obj = _cffi.new("tha_obj_t *")
        rc = lib.tha_heap_lookup(self._h, _cffi.cast("void *", addr), obj)
        if rc == lib.THA_EFOREIGN:
            raise InvalidPointer(f"0x{addr:x} is not an address in this heap")
        if rc:
            raise InvalidPointer(f"offset 0x{addr - self._base:x} is not inside a "
                                 "live allocation")
        return obj

    # -- objects -----------------------------------------------------------

    def new(self, type: str, count: int | None = None, **fields: Any) -> CData:
        """Allocates ``count`` zeroed elements of ``type`` (one if None) and
        returns a typed pointer to the first. ``fields`` initialise every
        element."""
        ctype = self.schema.ctype(type)
        tid = self.schema.type_id(ctype)
        n = 1 if count is None else count
        if not isinstance(n, int) or n < 1 or n >= 1 << 32:
            raise InvalidArgument(f"new {type}: count must be an int in 1..2**32-1, "
                                  f"not {count!r}")
        out = _cffi.new("void **")
        with self._lock:
            self._check(lib.tha_heap_alloc(self._h, tid, n, out))
            p = self.schema.ffi.cast(self.schema.pointer_type(ctype), out[0])
            if fields:
                k = None
                try:
                    for i in range(n):
                        for k, v in fields.items():
                            setattr(p[i], k, v)
                except Exception as e:  # any initializer: nothing is kept
                    lib.tha_heap_free(self._h, out[0])
                    raise InvalidArgument(f"new {self.schema.type_name(ctype)}: field "
                                          f"{k!r}: {e}") from None
        return self._keep(p)

    def new_raw(self, nbytes: int) -> CData:
        """An untyped allocation of ``nbytes`` zeroed bytes (THA_T_RAW), as a
        ``uint8_t *``: bytes whose layout tha does not know (a library's
        state, pointers inside). Only a same-address heap takes one (else
        StateError): it travels byte for byte and means the same on a mirror
        at the same base. heap.check() does not look inside; leaks() scans it
        conservatively (every aligned word that holds an address inside a
        live allocation reaches it)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or \
                not 1 <= nbytes < 1 << 32:
            raise InvalidArgument(f"new_raw: nbytes must be an int in 1..2**32-1, "
                                  f"not {nbytes!r}")
        out = _cffi.new("void **")
        with self._lock:
            self._check(lib.tha_heap_alloc(self._h, lib.THA_T_RAW, nbytes, out))
        return self._keep(self.schema.ffi.cast("uint8_t *", out[0]))

    def free(self, p: CData) -> None:
        """Frees the allocation that ``p`` (as returned by new()) starts."""
        with self._lock:
            self._check(lib.tha_heap_free(self._h, _cffi.cast("void *", self._addr(p))))

    def set_tracking(self, tracking: str) -> None:
        """Switches how this heap finds changes ("auto", "wp", "diff",
        "explicit", as for ``Heap()``), e.g. a mirror that becomes an active.
        Changes count from now: diff and wp take the image as it is as
        their baseline; blocks already dirty (touched, or found by the old
        mode) still travel in the next frame. No other thread may write the
        heap during the call."""
        _check_tracking(tracking)
        with self._lock:
            self._check(lib.tha_heap_set_tracking(self._h, _TRACKING[tracking]))

    def touch(self, p: CData, field: str | None = None) -> None:
        """Marks what ``p`` points to as changed (only needed with
        tracking='explicit'). ``p`` from new() marks the whole allocation;
        an interior pointer (``team + 3``) marks that element; ``field``
        ('salary', 'reports[2]', 'addr.street') narrows it to one field."""
        addr = self._addr(p)
        ffi = self.schema.ffi
        with self._lock:
            if field is not None:
                off, size = _field_span(ffi, p, field)
                rc = lib.tha_heap_touch(self._h, _cffi.cast("void *", addr + off), size)
            else:
                obj = self._lookup(addr)
                size = 0 if obj.offset + self._base == addr else obj.size
                rc = lib.tha_heap_touch(self._h, _cffi.cast("void *", addr), size)
            self._check(rc)

    def touch_many(self, p: CData, indexes: Iterable[int] | Buffer | None = None,
                   field: str | None = None) -> None:
        """Marks elements ``p[i]`` for each ``i`` in ``indexes`` as changed,
        or only their ``field`` (as for touch()), in one call: explicit
        tracking at about the cost of the writes. ``p`` points at an element
        of an allocation (from new(..., count=N), or ``team + k``);
        ``indexes`` is a ``range``, any sequence of ints, or a buffer of
        uint64 (array('Q'), numpy); None means every element from ``p`` to
        the allocation's end. Every index is checked before anything is
        marked."""
        ffi = self.schema.ffi
        with self._lock:
            addr, item, stride, index, n = self._elements("touch_many", p, indexes)
            off, size = (0, stride) if field is None else _field_span(ffi, p, field)
            rc = _cffi.new("int *")
            lib.tha_py_touch_each(self._h, addr + off, stride, size, index, n, rc)
            if rc[0]:
                self._check(rc[0])

    def store_many(self, p: CData, field: str | None, indexes: Iterable[int] | Buffer,
                   values: Iterable | Buffer, *, target: CData | None = None) -> None:
        """``p[indexes[j]].field = values[j]`` for every j, in one C call,
        and what it wrote marked changed (explicit tracking needs no touch):
        a batch of writes at C speed instead of a cffi write per element.
        ``p`` and ``indexes`` as for touch_many(). ``field`` is a path
        ('salary', 'addr.zip', 'scores[2]') to a number (integer, float,
        enum) or to a pointer; None (or '') writes the elements themselves,
        of an array of pointers (``new("struct ent *", n)``) or numbers. Numbers: ``values`` is a buffer of the
        field's C type (array('d') for a double, array('I') for a
        uint32_t, numpy) or a sequence of numbers. Pointers: ``target``
        points at an element of an array of the pointed-to type and
        ``values`` are element indexes into it (uint64, as ``indexes``):
        the field gets ``target + values[j]``, or NULL for None or 2**64-1.
        Repeated indexes are written in order (the last wins). Every index
        and value is checked before a byte is written."""
        ffi = self.schema.ffi
        with self._lock:
            addr, item, stride, index, n = self._elements("store_many", p, indexes)
            self._holds("store_many", addr, item)
            off, ftype, owner, last = _field_type(ffi, p, item, field)
            what = f"store_many: {item.cname}" + (f".{field}" if field else "")
            tfirst, tstride = 0, 0
            if ftype.kind == "pointer":
                if owner is not None and self.schema.tag_mask(owner, last):
                    raise InvalidArgument(f"{what} is a tagged pointer (tag_mask): "
                                          "write it element by element")
                if target is None:
                    raise InvalidArgument(f"{what} is a pointer: give target= (an "
                                          "array of its type) and element indexes "
                                          "into it as values")
                tfirst, tstride, vals = self._targets(what, ftype.item, target, values, n)
            else:
                if target is not None:
                    raise InvalidArgument(f"{what} is not a pointer field: target= "
                                          "is for pointer fields only")
                vals = _numbers(what, ffi, ftype, values, n)
            rc = lib.tha_py_store_each(self._h, addr, stride, off, ffi.sizeof(ftype),
                                       index, n, vals[0], tfirst, tstride)
            if rc:
                self._check(rc)

    def _elements(self, what: str, p: CData, indexes):
        """(address of p, element ctype, stride, uint64 index array or NULL,
        count) for a batch over the elements of p's allocation from p on,
        every index checked against them. Under the lock."""
        addr = self._addr(p)
        ffi = self.schema.ffi
        try:
            item = ffi.typeof(p).item
            stride = ffi.sizeof(item)
        except (TypeError, AttributeError, KeyError, ValueError):
            raise InvalidPointer(f"{what}: expected a typed pointer to an "
                                 f"element, got {type(p).__name__}") from None
        start = addr
        obj = self._lookup(addr)
        end = self._base + obj.offset + obj.size * obj.count
        avail = (end - addr) // stride
        index, n = _cffi.NULL, avail
        if indexes is not None:
            if isinstance(indexes, range) and indexes.step == 1:
                lo, hi = indexes.start, indexes.stop - 1
                n = max(0, indexes.stop - indexes.start)  # len() overflows past 2**63
                if n and lo >= 0 and hi < avail:
                    addr += lo * stride
            else:
                index = _uint64s(what, "indexes", indexes)
                n = len(index)
                j = lib.tha_py_first_over(index, n, avail, 0)
                lo, hi = 0, (index[j] if j < n else 0)
            if n and (lo < 0 or hi >= avail):
                bad = lo if lo < 0 else hi
                raise InvalidPointer(
                    f"{what}: index {bad} is outside the {avail} "
                    f"{item.cname} elements from offset "
                    f"0x{start - self._base:x} to the allocation's end")
        return addr, item, stride, index, n

    def _holds(self, what: str, addr: int, item) -> None:
        """That addr is an element of an allocation of item (what the heap
        holds there, not what the cdata was cast to): a field written by
        the batch is then a field the mirror relocates as such."""
        obj = self._lookup(addr)
        try:
            held = self.schema.ctype_of(obj.type_id)
        except KeyError:
            held = None
        if held is None or held.cname != item.cname or \
                (addr - self._base - obj.offset) % self.schema.ffi.sizeof(held):
            raise InvalidPointer(f"{what}: a {item.cname} * at offset "
                                 f"0x{addr - self._base:x}, but the allocation there holds "
                                 f"{held.cname if held is not None else 'untyped bytes'}"
                                 + ("" if held is None or held.cname != item.cname
                                    else " (not at an element's start)"))

    def _targets(self, what: str, want, target, values, n: int):
        """(first address, stride, (uint64 addresses-to-be,)) of the pointer
        values: element indexes into target's allocation, checked."""
        ffi = self.schema.ffi
        try:
            titem = ffi.typeof(target).item
        except (TypeError, AttributeError, KeyError, ValueError):
            raise InvalidPointer(f"{what}: target must be a typed pointer to an "
                                 f"element, got {type(target).__name__}") from None
        taddr = self._addr(target)
        obj = self._lookup(taddr)
        if titem.cname != want.cname:
            raise InvalidPointer(f"{what} points to {want.cname}, but target is "
                                 f"a {titem.cname} *")
        self._holds(f"{what}: target", taddr, titem)
        tstride = ffi.sizeof(titem)
        avail = (self._base + obj.offset + obj.size * obj.count - taddr) // tstride
        if not _is_buffer(values):
            values = [NULL_INDEX if v is None else v for v in values]
        tindex = _uint64s(what, "target indexes", values)
        _same_count(what, n, len(tindex))
        bad = lib.tha_py_first_over(tindex, len(tindex), avail, 1)
        if bad < len(tindex):
            raise InvalidPointer(f"{what}: target index {tindex[bad]} (value {bad}) is "
                                 f"outside the {avail} {titem.cname} elements from "
                                 f"offset 0x{taddr - self._base:x} to the allocation's "
                                 "end (2**64-1 or None: NULL)")
        return taddr, tstride, (int(_cffi.cast("uintptr_t", tindex)), tindex)

    def touch_range(self, p: CData, nbytes: int) -> None:
        """Marks ``nbytes`` from ``p`` changed wherever they lie (across
        allocations and the free space between them): explicit tracking when
        a library wrote somewhere in a range and nobody knows which objects."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes < 1 << 64:
            raise InvalidArgument(f"touch_range: nbytes must be an int in 0..2**64-1, "
                                  f"not {nbytes!r}")
        with self._lock:
            self._check(lib.tha_heap_touch_range(self._h, _cffi.cast("void *", self._addr(p)),
                                                 nbytes))

    def touch_all(self) -> None:
        """Marks the whole image changed: the next delta carries all of it."""
        with self._lock:
            self._check(lib.tha_heap_touch_all(self._h))

    def objects(self, type: str | None = None) -> list:
        """Typed pointers to every live allocation (of ``type``), by address."""
        want = None if type is None else self.schema.type_id(type)
        cursor = _cffi.new("uint64_t *")
        obj = _cffi.new("tha_obj_t *")
        out = []
        with self._lock:
            while lib.tha_heap_next(self._h, cursor, obj):
                if want is None or obj.type_id == want:
                    out.append(self._typed(self._base + obj.offset, obj))
        return out

    def offset_of(self, p: CData) -> int:
        """Region offset of a pointer into this heap."""
        addr = self._addr(p)
        if not addr:
            raise InvalidPointer("NULL has no offset")
        return addr - self._base

    @property
    def base(self) -> int:
        """Address the region is mapped at in this process."""
        return self._base

    # -- frames ------------------------------------------------------------

    def _encode(self, kind: int, out):
        size = _cffi.new("size_t *")
        n = _cffi.new("size_t *")
        with self._lock:
            self.roots._refresh()
            self._check(lib.tha_heap_frame_size(self._h, kind, size))
            if out is None:
                buf = bytearray(size[0])
            else:
                buf = out
                try:
                    have = len(memoryview(buf))
                    cbuf = _cffi.from_buffer(buf, require_writable=True)
                except (TypeError, BufferError):
                    raise InvalidArgument("out= must be a writable buffer (bytearray, "
                                          f"memoryview), not {type(out).__name__}") from None
                if have < size[0]:
                    raise InvalidArgument(f"output buffer holds {have} bytes; "
                                          f"the frame needs {size[0]}")
            self._check(lib.tha_heap_encode(self._h, kind, _cffi.from_buffer(buf)
                                            if out is None else cbuf, size[0], n))
        if out is None:
            return bytes(buf)
        return memoryview(buf)[: n[0]]

    def snapshot(self, out: bytearray | memoryview | None = None) -> bytes | memoryview:
        """The whole image as a frame (bytes). With ``out`` (a writable buffer
        of frame_size('snapshot') bytes or more) it is encoded in place and a
        memoryview of the frame is returned."""
        return self._encode(lib.THA_FRAME_SNAPSHOT, out)

    def delta(self, out: bytearray | memoryview | None = None) -> bytes | memoryview:
        """Every block changed since the previous frame, as a frame."""
        return self._encode(lib.THA_FRAME_DELTA, out)

    def frame_size(self, kind: str = "delta") -> int:
        size = _cffi.new("size_t *")
        k = {"snapshot": lib.THA_FRAME_SNAPSHOT, "delta": lib.THA_FRAME_DELTA}[kind]
        with self._lock:
            self._check(lib.tha_heap_frame_size(self._h, k, size))
        return size[0]

    def apply(self, frame: Buffer) -> None:
        """Applies a snapshot or the next delta; verified whole first, so on
        any error the heap is unchanged."""
        buf = _frame_buffer("apply", frame)
        with self._lock:
            self._check(lib.tha_heap_apply(self._h, buf, len(buf)))

    # -- inspection --------------------------------------------------------

    def dump(self) -> dict:
        """Every root and live object as plain data, pointers as region
        offsets: equal on two heaps exactly when they mirror each other."""
        with self._lock:
            return dump_heap(self)

    def check(self, *, lint: bool = True) -> None:
        """Verifies every allocator invariant and pointer of the image
        (raises CorruptHeap naming the first problem), then that every
        pointer holds the start of an object of its declared type or of one
        nested in another object, char and void pointers anywhere in a live
        allocation (raises SchemaMismatch naming the field, its object, what
        it points into and the declared type; the rule is tha.h's, at
        tha_heap_check_types). With ``lint``, then warns
        (``tha.PointerWarning``, one warning per word of a type) of words
        no field covers that hold addresses in the heap: forgotten pointer
        fields, which a mirror would get raw (``lint()`` lists them)."""
        with self._lock:
            self._check(lib.tha_heap_check(self._h))
            self._check(lib.tha_heap_check_types(self._h))
            if lint:
                reach.warn_lint(self, stacklevel=2)

    def lint(self) -> list:
        """Every word no field covers (padding, bytes left out of the
        schema) that holds an address in the heap, in address order, as
        ``tha.Lint(type, object, element, at, offset, target, message)``."""
        with self._lock:
            return reach.find_lint(self)[0]

    def set_debug(self, *, types: bool) -> None:
        """types=True: every frame this heap encodes checks the pointers it
        carries as check() does, raising SchemaMismatch (and changing
        nothing) at the first of the wrong type; off by default (a cost per
        pointer word of each frame)."""
        with self._lock:
            self._check(lib.tha_heap_set_debug(self._h, lib.THA_DEBUG_TYPES if types else 0))

    def leaks(self) -> list:
        """Every allocation no root reaches, in address order, as
        ``tha.Leak(type, count, offset, bytes)`` records. Marks from the
        roots through the relocation tables: any address inside an
        allocation (``team + 3``, a ``char *`` into a buffer) keeps it;
        function pointers, integers and cdata held by Python do not."""
        with self._lock:
            return reach.find_leaks(self)

    def collect(self) -> int:
        """Frees what ``leaks()`` reports, as ``free()`` would (the next
        delta carries it to mirrors); returns the payload bytes freed.
        Cdata still held by Python for those objects dangle afterwards."""
        with self._lock:
            return reach.collect(self)

    # -- durability (tha/durability.py, csrc/src/checkpoint.c, log.c, load.c)

    def checkpoint(self, path: PathLike, progress: Progress | None = None) -> None:
        """Writes the heap to ``path`` atomically (temp file, fsync, rename,
        fsync of the directory): a crash leaves the old file or the new one.
        Streams the image in ~1 MiB segment frames; ``progress(done, total)``
        is called after each. Does not touch seq or dirty bits, so
        replication and the delta log go on as if it had not happened. The
        heap's lock is held throughout (writers through cdata should pause:
        the file is a consistent image only if nothing writes meanwhile)."""
        cb, ctx, keep = durability.progress_args(progress)
        with self._lock:
            self.roots._refresh()
            self._check(lib.tha_heap_checkpoint(self._h, os.fsencode(path), cb, ctx))
            self._checkpoint_path = path
        del keep

    def attach_log(self, path: PathLike, fsync: str = "always") -> None:
        """Appends every frame this heap makes (delta(), snapshot(), an
        Active's sync) or applies to the delta log at ``path``, before the
        frame takes effect: a frame the log could not take is not made (the
        call raises; seq and dirty bits are unchanged; the next call
        retries). ``fsync``: 'always' (each frame), 'every 100ms' (at most
        that much is unsynced; a thread syncs an idle log), 'never'. An
        existing log must end at this heap's seq (as after Heap.load(..,
        log=path)); its torn tail is cut."""
        ms = durability.parse_fsync(fsync)
        with self._lock:
            self._check(lib.tha_heap_attach_log(self._h, os.fsencode(path), ms))
            self._log_path = path
            if ms > 0:
                self._log_syncer = durability.LogSyncer(self, ms)

    def detach_log(self) -> None:
        """Syncs and closes the delta log; frames are no longer logged."""
        with self._lock:
            syncer, self._log_syncer = self._log_syncer, None
            self._log_path = None
            rc = lib.tha_heap_detach_log(self._h)
        if syncer is not None:
            syncer.stop()
        self._check(rc)

    def sync_log(self) -> None:
        """fdatasync of the frames appended to the log since the last one."""
        with self._lock:
            self._check(lib.tha_heap_sync_log(self._h))

    def compact(self, path: PathLike | None = None,
                progress: Progress | None = None) -> None:
        """Folds the delta log into a checkpoint: checkpoint(path) (default:
        the last path checkpointed to or loaded from), then the log is
        replaced atomically by an empty one that follows the new checkpoint."""
        path = path if path is not None else self._checkpoint_path
        if path is None:
            raise Error("compact: no checkpoint path: pass one (no checkpoint "
                        "was written or loaded yet)")
        cb, ctx, keep = durability.progress_args(progress)
        with self._lock:
            self.roots._refresh()
            self._check(lib.tha_heap_compact(self._h, os.fsencode(path), cb, ctx))
            self._checkpoint_path = path
        del keep

    def stats(self) -> dict:
        st = _cffi.new("tha_stats_t *")
        with self._lock:
            self._check(lib.tha_heap_stats(self._h, st))
        d = {k: getattr(st, k) for k in (
            "capacity", "committed", "top", "live_objects", "live_bytes",
            "dirty_blocks", "seq", "epoch", "lineage", "frames_encoded",
            "bytes_encoded", "frames_applied", "bytes_applied")}
        d["tracking"] = _TRACKING_NAMES.get(st.tracking, str(st.tracking))
        # how changes are found: uffd-wp-async, mprotect, shadow-diff, explicit
        d["tracking_mechanism"] = _cffi.string(
            lib.tha_heap_tracking_name(self._h)).decode()
        d["base"] = self._base
        d["same_address"] = bool(st.same_address)  # its frames need a mirror at base
        return d

    def history(self) -> list:
        """The heap's epoch history, oldest first: ``{"epoch", "start_seq",
        "id"}`` per epoch (frames after start_seq, up to the next entry's,
        were encoded in it). It is part of the image: mirrors, bulk syncs
        and checkpoints carry it; a node resumes from another only along it."""
        out = _cffi.new("tha_epoch_info_t[32]")
        with self._lock:
            n = lib.tha_heap_history(self._h, out, 32)
            return [{"epoch": out[i].epoch, "start_seq": out[i].start_seq,
                     "id": out[i].id} for i in range(min(n, 32))]

    def set_epoch(self, epoch: int) -> None:
        """Begins a newer epoch at the current seq (what a promotion does):
        frames of older epochs are refused from now on."""
        with self._lock:
            self._check(lib.tha_heap_set_epoch(self._h, epoch))

    def __repr__(self) -> str:
        st = self.stats()
        return (f"<tha.Heap {st['live_objects']} objects, {st['top']} of "
                f"{st['capacity']} bytes, seq {st['seq']}>")


class Roots(MutableMapping):
    """Named entry points into the heap, stored inside the region (so they
    mirror). Values are typed pointers; ``del`` removes a root."""

    def __init__(self, heap: Heap):
        self._heap = heap
        self._bound: dict = {}   # name -> getter, read before every frame

    def bind(self, name: str, getter: Callable[[], Any] | None) -> None:
        """The root ``name`` follows ``getter()`` (a typed pointer, or None to
        have no such root), read before every delta, snapshot, checkpoint and
        ``Active.sync()``: swap two variables and the mirror follows, no
        assignment to ``roots``. ``getter`` None unbinds (the root stays)."""
        if not isinstance(name, str) or not 0 < len(name.encode()) < lib.THA_ROOT_NAME_MAX:
            raise InvalidArgument(f"roots.bind: a root name is a str of 1.."
                                  f"{lib.THA_ROOT_NAME_MAX - 1} bytes, not {name!r}")
        if getter is not None and not callable(getter):
            raise InvalidArgument(f"roots.bind('{name}'): getter must be callable")
        if getter is None:
            if self._bound.pop(name, None) is None:
                raise NotFound(f"no root bound as {name!r}")
            return
        self._set_from(name, getter)  # works once before it is kept
        self._bound[name] = getter

    def _refresh(self) -> None:
        """Sets each bound root from its getter (before a frame is made)."""
        for name, getter in list(self._bound.items()):
            self._set_from(name, getter)

    def _set_from(self, name: str, getter) -> None:
        try:
            p = getter()
        except Exception as e:  # the application's code: named, not swallowed
            raise Error(f"root '{name}': its bound getter raised "
                        f"{type(e).__name__}: {e}") from e
        h = self._heap
        if p is None or (not isinstance(p, int) and p == h.schema.ffi.NULL):
            if name in self:
                del self[name]
            return
        try:
            self[name] = p
        except Error as e:
            raise type(e)(f"root '{name}' bound to {getter!r}: {e}") from None

    def __setitem__(self, name: str, p) -> None:
        h = self._heap
        if p is None or isinstance(p, (int, str, bytes)) or p == h.schema.ffi.NULL:
            raise InvalidPointer(f"root '{name}': needs a typed pointer into the heap "
                                 f"(NULL: use del), not {p!r}")
        with h._lock:
            h._check(lib.tha_root_set(h._h, name.encode(),
                                      _cffi.cast("void *", h._addr(p))))

    def __getitem__(self, name: str):
        h = self._heap
        out = _cffi.new("void **")
        with h._lock:
            if lib.tha_root_get(h._h, name.encode(), out) != 0:
                raise NotFound(f"no root named {name!r}")
            return h._typed(int(_cffi.cast("uintptr_t", out[0])))

    def __delitem__(self, name: str) -> None:
        h = self._heap
        with h._lock:
            if lib.tha_root_set(h._h, name.encode(), _cffi.NULL) != 0:
                raise NotFound(f"no root named {name!r}")

    def _items(self) -> list:
        h = self._heap
        cursor = _cffi.new("uint32_t *")
        name = _cffi.new("const char **")
        p = _cffi.new("void **")
        out = []
        with h._lock:
            while lib.tha_root_next(h._h, cursor, name, p):
                out.append((_cffi.string(name[0]).decode(),
                            int(_cffi.cast("uintptr_t", p[0]))))
        return out

    def offsets(self) -> dict:
        """{name: region offset}."""
        base = self._heap._base
        return {n: a - base for n, a in self._items()}

    def __iter__(self):
        return iter([n for n, _ in self._items()])

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return f"<tha roots {sorted(self.offsets())}>"


def _field_span(ffi, p, field: str):
    """(offset, bytes) of ``field`` in the struct ``p`` points to; a bitfield
    spans its whole storage unit (cffi cannot take its address)."""
    path = _field_path(field)
    try:
        try:
            return (ffi.offsetof(ffi.typeof(p).item, *path),
                    ffi.sizeof(ffi.typeof(ffi.addressof(p[0], *path)).item))
        except TypeError:
            if not path or not isinstance(path[-1], str):
                raise
            owner = ffi.typeof(p).item if len(path) == 1 else \
                ffi.typeof(ffi.addressof(p[0], *path[:-1])).item
            bits = dict(owner.fields or ())[path[-1]]
            base = ffi.offsetof(ffi.typeof(p).item, *path[:-1]) if len(path) > 1 else 0
            return base + bits.offset, ffi.sizeof(bits.type)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError):
        raise NotFound(f"touch: {ffi.typeof(p).cname} has no field {field!r}") from None


def _field_path(field: str) -> list:
    """'addr.street[3]' -> ['addr', 'street', 3] for ffi.offsetof."""
    out = []
    for part in field.replace("]", "").split("."):
        name, *idx = part.split("[")
        if name:
            out.append(name)
        out.extend(int(i) for i in idx)
    return out


NULL_INDEX = (1 << 64) - 1   # store_many(target=...): this index stores NULL
_INT_FORMATS = "bBhHiIlLqQnN?"


def _is_buffer(obj) -> bool:
    if isinstance(obj, (str, range, list, tuple)):
        return False
    try:
        memoryview(obj)
    except TypeError:
        return False
    return True


def _uint64s(what: str, name: str, values):
    """values as a uint64_t[] cdata: a uint64 buffer as it is (no copy),
    anything else as ints from 0 up."""
    try:
        mv = memoryview(values)
        if mv.itemsize != 8 or mv.format not in ("Q", "<Q", "=Q", "L", "<L", "=L"):
            raise TypeError
        return _cffi.from_buffer("uint64_t[]", values)
    except TypeError:
        try:
            return _cffi.new("uint64_t[]", list(values))
        except (TypeError, OverflowError):
            raise InvalidPointer(f"{what}: {name} must be ints from 0 up") from None


def _same_count(what: str, n: int, got: int) -> None:
    if got != n:
        raise InvalidArgument(f"{what}: {n} index{'es' if n != 1 else ''} but {got} "
                              f"value{'s' if got != 1 else ''}")


def _field_type(ffi, p, item, field: str):
    """(offset, ctype, owner struct ctype, last name) of a field path of
    item for store_many: a number or a pointer, not a bitfield."""
    if not field:  # the element itself: an array of pointers (or numbers)
        if item.kind in ("struct", "union"):
            raise InvalidArgument(f"store_many: {item.cname} is a struct: name the "
                                  "field to write")
        return _checked_store_type(f"store_many: {item.cname}", item) + (None, None)
    path = _field_path(field)
    where = f"store_many: {item.cname}.{field}"
    try:
        owner = item if len(path) == 1 else \
            ffi.typeof(ffi.addressof(p[0], *path[:-1])).item
        bits = dict(owner.fields or ()).get(path[-1]) if isinstance(path[-1], str) \
            else None
        if bits is None or bits.bitsize in (-1, None):
            off = ffi.offsetof(item, *path)
            ftype = ffi.typeof(ffi.addressof(p[0], *path)).item
    except (KeyError, TypeError, IndexError, AttributeError, ValueError):
        raise NotFound(f"store_many: {item.cname} has no field {field!r}") from None
    if bits is not None and bits.bitsize not in (-1, None):
        raise InvalidArgument(f"{where} is a bitfield: write it element by element")
    return (off, *_checked_store_type(where, ftype)[1:], owner,
            path[-1] if isinstance(path[-1], str) else None)


def _checked_store_type(where: str, ftype) -> tuple:
    """(0, ftype) if store_many writes ftype (a number or a data pointer)."""
    if ftype.kind == "function" or (ftype.kind == "pointer"
                                    and ftype.item.kind == "function"):
        raise InvalidArgument(f"{where} is a function pointer: write it element by "
                              "element (a registered function)")
    if ftype.kind not in ("primitive", "enum", "pointer"):
        raise InvalidArgument(f"{where} is a {ftype.cname}: store_many writes "
                              "numbers and pointers")
    if ftype.kind == "primitive" and ftype.cname in ("char", "wchar_t", "char16_t",
                                                      "char32_t"):
        raise InvalidArgument(f"{where} is a {ftype.cname}: store_many writes "
                              "numbers and pointers")
    return 0, ftype


def _numbers(what: str, ffi, ftype, values, n: int):
    """(address, keepalive) of n values of the number type ftype: a buffer
    of that C type as it is, or a sequence converted (range-checked) by cffi."""
    size = ffi.sizeof(ftype)
    if _is_buffer(values):
        mv = memoryview(values)
        fmt = mv.format.lstrip("@=<")
        is_float = ftype.kind == "primitive" and ftype.cname in ("float", "double")
        if ftype.kind == "primitive" and not is_float:
            signed = int(ffi.cast(ftype, -1)) < 0 if ftype.cname != "_Bool" else False
        else:
            signed = None
        ok = (mv.ndim == 1 and mv.contiguous and mv.itemsize == size and len(fmt) == 1
              and ((is_float and fmt in "fd")
                   or (not is_float and fmt in _INT_FORMATS
                       and (signed is None or fmt.isupper() != signed or fmt == "?"))))
        if not ok:
            raise InvalidArgument(f"{what} is a {ftype.cname}: a buffer of values must "
                                  f"hold that type ({size}-byte items), not format "
                                  f"{mv.format!r} of {mv.itemsize} bytes")
        _same_count(what, n, len(mv))
        buf = _cffi.from_buffer(values)
        return int(_cffi.cast("uintptr_t", buf)), buf
    try:
        arr = ffi.new(ffi.getctype(ftype, "[]"), list(values))
    except (TypeError, OverflowError, ValueError) as e:
        raise InvalidArgument(f"{what} is a {ftype.cname}: values must be numbers "
                              f"that fit it ({e})") from None
    _same_count(what, n, len(arr))
    return int(ffi.cast("uintptr_t", arr)), arr
