"""dump(): a heap as plain Python data, pointers as region offsets.

Two heaps dump equal exactly when they mirror each other, whatever their
base addresses. Converters are built once per C type and cached on the
schema, so a dump costs one closure call per field.
"""

from __future__ import annotations

import struct

from ._ffi import ffi as _cffi, lib


def dump_heap(heap) -> dict:
    """{'roots': {name: offset}, 'objects': [{offset, type, count, value}]}.
    The caller holds the heap's lock."""
    schema, base = heap.schema, heap._base
    convs = schema.__dict__.setdefault("_dump_converters", {})
    cursor = _cffi.new("uint64_t *")
    obj = _cffi.new("tha_obj_t *")
    objects = []
    while lib.tha_heap_next(heap._h, cursor, obj):
        ctype = schema.ctype_of(obj.type_id)
        key = (ctype, base)
        conv = convs.get(key)
        if conv is None:
            conv = convs[key] = _converter(schema, ctype, base)
        p = schema.ffi.cast(schema.pointer_type(ctype), obj.ptr)
        if ctype.cname == "char":
            value = schema.ffi.buffer(p, obj.count)[:]
        else:
            value = [conv(p[i]) for i in range(obj.count)]
        objects.append({"offset": obj.offset, "type": schema.type_name(ctype),
                        "count": obj.count, "value": value})
    cur = _cffi.new("uint32_t *")
    name = _cffi.new("const char **")
    ptr = _cffi.new("void **")
    roots = {}
    while lib.tha_root_next(heap._h, cur, name, ptr):
        roots[_cffi.string(name[0]).decode()] = (
            int(_cffi.cast("uintptr_t", ptr[0])) - base)
    return {"roots": roots, "objects": objects}


def _float(v: float):
    if v != v:  # NaN never equals itself: compare its bits instead
        return "nan:" + struct.pack("<d", v).hex()
    return v


def _converter(schema, ctype, base: int):
    """A function turning one cdata value of ctype into plain data."""
    ffi = schema.ffi
    kind = ctype.kind
    if kind == "struct":
        fields = [(name, _converter(schema, f.type, base))
                  for name, f in ctype.fields]
        return lambda cd: {name: conv(getattr(cd, name)) for name, conv in fields}
    if kind == "union":
        size = ffi.sizeof(ctype)
        return lambda cd: ffi.buffer(ffi.addressof(cd), size)[:]
    if kind == "array":
        item = ctype.item
        if item.cname == "char":
            return lambda cd: ffi.buffer(cd)[:]
        conv = _converter(schema, item, base)
        return lambda cd: [conv(x) for x in cd]
    if kind == "pointer":
        def pointer(cd):
            addr = int(ffi.cast("uintptr_t", cd))
            return addr - base if addr else None
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
