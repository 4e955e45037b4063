"""dump(): a heap as plain Python data, pointers as region offsets.

Two heaps dump equal exactly when they mirror each other, whatever their
base addresses. With a schema that declares data externs or tag masks, a
pointer outside the region reads as what travels for it: ``"&name+off"``
inside a bound extern, ``"NULL|0x1"`` for a tagged NULL. Each C type gets a plan once per schema and base: its
element's bytes as one ``struct.Struct`` (fields at their cffi offsets,
padding skipped) and a compiled function turning the unpacked tuple into
the value (dicts for structs, lists for arrays, offsets for pointers), so
an object costs one ``iter_unpack`` and one call per element, not one cffi
access per field. Types the byte form cannot express (bit fields, wide
chars, long double, flexible arrays) fall back to reading cdata field by
field; both paths give the same values.
"""

from __future__ import annotations

import gc
import struct

from ._ffi import ffi as _cffi, lib
from .errors import CorruptHeap


# tha_obj_t as the walk returns it: ptr, offset, type_id, count, size
_OBJ = struct.Struct("<QQIIQ")
_BATCH = 4096


def dump_heap(heap) -> dict:
    """{'roots': {name: offset}, 'objects': [{offset, type, count, value}]}.
    The caller holds the heap's lock. The cyclic collector is paused while
    the result is built: it makes containers only, no cycles, and the
    collector's passes over them were half the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _dump(heap)
    finally:
        if enabled:
            gc.enable()


def _dump(heap) -> dict:
    schema, base, h = heap.schema, heap._base, heap._h
    plans = schema.__dict__.setdefault("_dump_plans", {})
    st = _cffi.new("tha_stats_t *")
    lib.tha_heap_stats(h, st)
    # the whole image as one buffer: objects are read at their offsets
    image = memoryview(_cffi.buffer(_cffi.cast("char *", base), st.top))
    cursor = _cffi.new("uint64_t *")
    batch = _cffi.new("tha_obj_t[]", _BATCH)
    assert _cffi.sizeof("tha_obj_t") == _OBJ.size
    objects = []
    append = objects.append
    while True:
        n = lib.tha_py_next_batch(h, cursor, batch, _BATCH)
        if not n:
            break
        for _, off, tid, count, _ in _OBJ.iter_unpack(_cffi.buffer(batch, n * _OBJ.size)):
            plan = plans.get((tid, base))
            if plan is None:
                plan = plans[(tid, base)] = _plan_for(schema, tid, base,
                                                      base + st.capacity)
            name, size, one, many, build, cdata_conv = plan
            if build is not None:
                if count == 1:
                    value = [build(one(image, off))]
                else:
                    value = [build(t) for t in many(image[off:off + size * count])]
            elif one is not None:  # char: the bytes themselves
                value = image[off:off + count].tobytes()
            else:
                p = schema.ffi.cast(cdata_conv[0], base + off)
                conv = cdata_conv[1]
                try:
                    value = [conv(p[i]) for i in range(count)]
                except ValueError as e:  # cffi refuses e.g. a _Bool holding 2
                    raise CorruptHeap(f"dump: {name} @0x{off:x}: {e}") from None
            append({"offset": off, "type": name, "count": count, "value": value})
    cur = _cffi.new("uint32_t *")
    rname = _cffi.new("const char **")
    ptr = _cffi.new("void **")
    roots = {}
    while lib.tha_root_next(h, cur, rname, ptr):
        roots[_cffi.string(rname[0]).decode()] = (
            int(_cffi.cast("uintptr_t", ptr[0])) - base)
    return {"roots": roots, "objects": objects}


def census(heap) -> dict:
    """{type_id: [objects, elements, bytes]} of the live allocations, from
    the batched walk alone (no values read). The caller holds the lock."""
    out: dict = {}
    cursor = _cffi.new("uint64_t *")
    batch = _cffi.new("tha_obj_t[]", _BATCH)
    while True:
        n = lib.tha_py_next_batch(heap._h, cursor, batch, _BATCH)
        if not n:
            return out
        for _, _, tid, count, size in _OBJ.iter_unpack(_cffi.buffer(batch, n * _OBJ.size)):
            t = out.get(tid)
            if t is None:
                t = out[tid] = [0, 0, 0]
            t[0] += 1
            t[1] += count
            t[2] += size * count


def _outside(schema, base: int):
    """The value of a pointer word outside the region: None for NULL, what
    travels for an extern or a tagged NULL, else (a stray pointer) its
    distance from the base, as without externs."""
    def value(addr: int):
        if not addr:
            return None
        hit = schema.extern_at(addr)
        if hit is not None:
            return f"&{hit[0]}+{hit[1]}"
        if addr <= 7:
            return f"NULL|0x{addr:x}"
        return addr - base
    return value


def _float(v: float):
    if v != v:  # NaN never equals itself: compare its bits instead
        return "nan:" + struct.pack("<d", v).hex()
    return v


def _plan_for(schema, type_id: int, base: int, end: int):
    """(type name, element size, unpack_from of one element, iter_unpack
    of many, tuple -> value; or for char: a true ``one`` and no build; or
    for the fallback: (pointer ctype, cdata converter)). [base, end): the
    region."""
    ffi = schema.ffi
    ctype = schema.ctype_of(type_id)
    name, size = schema.type_name(ctype), ffi.sizeof(ctype)
    if ctype.cname == "char":
        return name, size, True, None, None, None
    flat = _Flat(schema, base, end)
    try:
        expr = flat.value(ctype, 0)
    except _NoByteForm:
        return name, size, None, None, None, (schema.pointer_type(ctype),
                                              _converter(schema, ctype, base, end))
    element = struct.Struct(flat.struct_format(size))
    return name, size, element.unpack_from, element.iter_unpack, flat.compile(expr), None


class _NoByteForm(Exception):
    """The type holds something struct cannot unpack as cffi reads it."""


# struct codes of the scalars cffi reads as Python ints, by (size, signed)
_INT_CODES = {(1, True): "b", (1, False): "B", (2, True): "h", (2, False): "H",
              (4, True): "i", (4, False): "I", (8, True): "q", (8, False): "Q"}


class _Flat:
    """Lays a type out as consecutive struct fields (offset, code) and
    writes the Python expression that rebuilds its value from the tuple
    ``t`` of a whole element."""

    def __init__(self, schema, base: int, end: int):
        self.schema, self.ffi, self.base = schema, schema.ffi, base
        self.items = []           # (offset, struct code), in offset order
        self.env = {"F": _float, "B": base, "E": end, "P": _outside(schema, base),
                    "FN": self._function_name}

    def _function_name(self, addr: int):
        if not addr:
            return None
        return self.schema.function_name(addr) or f"<unbound 0x{addr:x}>"

    def _item(self, off: int, code: str) -> str:
        self.items.append((off, code))
        return f"t[{len(self.items) - 1}]"

    def value(self, ctype, off: int) -> str:
        ffi, kind = self.ffi, ctype.kind
        if kind == "struct":
            parts = []
            for fname, f in ctype.fields:
                if f.bitsize != -1:
                    raise _NoByteForm
                parts.append(f"{fname!r}: {self.value(f.type, off + f.offset)}")
            return "{" + ", ".join(parts) + "}"
        if kind == "union":
            return self._item(off, f"{ffi.sizeof(ctype)}s")
        if kind == "array":
            if ctype.length is None:
                raise _NoByteForm
            item = ctype.item
            if item.cname == "char":
                return self._item(off, f"{ctype.length}s")
            step = ffi.sizeof(item)
            return "[" + ", ".join(self.value(item, off + i * step)
                                   for i in range(ctype.length)) + "]"
        if kind == "pointer":
            t = self._item(off, "Q")
            if self.schema.outside_pointers:  # externs or tag bits: one more test
                return f"({t} - B if B <= {t} < E else P({t}))"
            return f"({t} - B if {t} else None)"
        if kind == "function":
            return f"FN({self._item(off, 'Q')})"
        if kind == "enum":
            signed = int(ffi.cast(ctype, -1)) < 0
            return self._item(off, _INT_CODES[(ffi.sizeof(ctype), signed)])
        if kind != "primitive":
            raise _NoByteForm
        cname, size = ctype.cname, ffi.sizeof(ctype)
        if cname == "char":
            return self._item(off, "c")
        if cname == "_Bool":
            return self._item(off, "?")
        if cname in ("float", "double"):  # NaN != NaN: its bits (_float)
            t = self._item(off, "f" if cname == "float" else "d")
            return f"({t} if {t} == {t} else F({t}))"
        if cname == "long double" or "wchar" in cname or cname.startswith("char"):
            raise _NoByteForm
        signed = int(ffi.cast(ctype, -1)) < 0
        code = _INT_CODES.get((size, signed))
        if code is None:
            raise _NoByteForm
        return self._item(off, code)

    def struct_format(self, size: int) -> str:
        """Little-endian, no implicit alignment: padding as explicit bytes."""
        fmt, at = ["<"], 0
        for off, code in self.items:
            if off > at:
                fmt.append(f"{off - at}x")
            fmt.append(code)
            at = off + struct.calcsize("<" + code)
        if size > at:
            fmt.append(f"{size - at}x")
        return "".join(fmt)

    def compile(self, expr: str):
        # expr is built only from field names (repr'd) and our own names
        return eval(f"lambda t: {expr}", dict(self.env))


def _converter(schema, ctype, base: int, end: int):
    """A function turning one cdata value of ctype into plain data (the
    fallback for types without a byte form)."""
    ffi = schema.ffi
    kind = ctype.kind
    if kind == "struct":
        fields = [(name, _converter(schema, f.type, base, end))
                  for name, f in ctype.fields]
        return lambda cd: {name: conv(getattr(cd, name)) for name, conv in fields}
    if kind == "union":
        size = ffi.sizeof(ctype)
        return lambda cd: ffi.buffer(ffi.addressof(cd), size)[:]
    if kind == "array":
        item = ctype.item
        if item.cname == "char":
            return lambda cd: ffi.buffer(cd)[:]
        conv = _converter(schema, item, base, end)
        return lambda cd: [conv(x) for x in cd]
    if kind == "pointer":
        outside = _outside(schema, base)

        def pointer(cd):
            addr = int(ffi.cast("uintptr_t", cd))
            return addr - base if base <= addr < end else outside(addr)
        return pointer
    if kind == "function":
        def function(cd):
            addr = int(ffi.cast("uintptr_t", cd))
            if not addr:
                return None
            return schema.function_name(addr) or f"<unbound 0x{addr:x}>"
        return function
    if ctype.cname in ("float", "double"):
        return _float
    return lambda v: v
