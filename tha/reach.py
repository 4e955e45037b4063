"""Where pointers lead: leaks, allocations no root reaches (``Heap.leaks()``,
``Heap.collect()``), dangling pointers, and words that look like forgotten
pointer fields (``Heap.lint()``, warned of by ``Heap.check()``).

The marking runs in C (``tha_leaks``/``tha_collect`` in csrc/src/reach.c):
from the roots through each type's relocation table, interior pointers
counting as references to their allocation, function pointers and integers
never. The lint is ``tha_heap_lint`` (csrc/src/typecheck.c). This module
turns their answers into :class:`Leak` and :class:`Lint` records.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

from ._ffi import ffi as _cffi, lib
from .errors import PointerWarning


class Leak(NamedTuple):
    """One unreachable allocation."""

    type: str     # 'struct emp', 'char', ...
    count: int    # elements
    offset: int   # region offset of the first element
    bytes: int    # payload bytes (count x element size)


def find_leaks(heap) -> list:
    """Every unreachable allocation of ``heap`` in address order. The caller
    holds the heap's lock."""
    n = _cffi.new("size_t *")
    st = _cffi.new("tha_stats_t *")
    heap._check(lib.tha_heap_stats(heap._h, st))
    cap = 256 + st.live_objects // 32  # a guess; a second mark if it was short
    while True:
        out = _cffi.new("tha_leak_t[]", cap)
        heap._check(lib.tha_leaks(heap._h, out, cap, n))
        if n[0] <= cap:
            break
        cap = n[0]  # rare: mark again with room for all of them
    schema = heap.schema
    names: dict = {}
    leaks = []
    for i in range(n[0]):
        lk = out[i]
        name = names.get(lk.type_id)
        if name is None:
            name = names[lk.type_id] = schema.type_name(schema.ctype_of(lk.type_id))
        leaks.append(Leak(name, lk.count, lk.offset, lk.bytes))
    return leaks


def first_dangling(heap) -> str | None:
    """'struct emp @0x4008[2].mgr -> 0x10: not inside a live allocation'
    for the first data pointer (in address order) into the image but not
    into a live allocation, or None (tha_heap_dangling: no dump, O(pointer
    slots)). The caller holds the heap's lock."""
    slot, target = _cffi.new("uint64_t *"), _cffi.new("uint64_t *")
    if not heap._check(lib.tha_heap_dangling(heap._h, slot, target)):
        return None
    return f"{describe(heap, slot[0])} -> 0x{target[0]:x}: not inside a live allocation"


def describe(heap, off: int) -> str:
    """'struct emp @0x4008', 'struct emp @0x4008[3].salary' for region offset
    off, or '0x1234 (not a live allocation)': one lookup, no dump. The
    caller holds the heap's lock."""
    obj = _cffi.new("tha_obj_t *")
    if lib.tha_heap_lookup(heap._h, _cffi.cast("void *", heap._base + off), obj):
        return f"0x{off:x} (not a live allocation)"
    schema = heap.schema
    ctype = schema.ctype_of(obj.type_id)
    k, rel = divmod(off - obj.offset, obj.size)
    return (f"{schema.type_name(ctype)} @0x{obj.offset:x}" + (f"[{k}]" if obj.count > 1 else "")
            + field_path(ctype, rel, schema.ffi))


def field_path(ctype, rel: int, ffi) -> str:
    """'.salary', '.reports[2]', '.home.street+3' for byte rel of ctype."""
    out = ""
    while rel:
        if ctype.kind == "struct":
            for name, f in ctype.fields:
                fsize = ffi.sizeof(f.type) if f.bitsize < 0 else 0
                if f.offset <= rel < f.offset + fsize:
                    out += "." + name
                    rel -= f.offset
                    ctype = f.type
                    break
            else:
                return out + f"+{rel}"
        elif ctype.kind == "array":
            k, rel = divmod(rel, ffi.sizeof(ctype.item))
            out += f"[{k}]"
            ctype = ctype.item
        else:
            return out + f"+{rel}"
    return out


def collect(heap) -> int:
    """Frees every unreachable allocation; bytes freed. Caller holds the lock."""
    freed = _cffi.new("uint64_t *")
    heap._check(lib.tha_collect(heap._h, freed))
    return freed[0]


class Lint(NamedTuple):
    """A word no field covers that holds an address in the heap."""

    type: str     # of the allocation holding it: 'struct emp'
    object: int   # region offset of that allocation
    element: int  # its element holding the word
    at: int       # byte offset of the word in the element
    offset: int   # region offset of the word
    target: int   # region offset the word holds
    message: str  # 'struct emp @0x4008[2] bytes 40..47: not covered by any field, ...'


def find_lint(heap, limit: int | None = None) -> tuple:
    """(the first ``limit`` findings of tha_heap_lint, all if None, as Lint
    records in address order; how many there are). The caller holds the
    heap's lock."""
    n = _cffi.new("size_t *")
    heap._check(lib.tha_heap_lint(heap._h, _cffi.NULL, 0, n))
    cap = n[0] if limit is None else min(n[0], limit)
    if not cap:
        return [], n[0]
    out = _cffi.new("tha_lint_t[]", cap)
    heap._check(lib.tha_heap_lint(heap._h, out, cap, n))  # read-only: same answer
    schema, names, found = heap.schema, {}, []
    for i in range(min(cap, n[0])):
        r = out[i]
        name = names.get(r.type_id)
        if name is None:
            name = names[r.type_id] = schema.type_name(schema.ctype_of(r.type_id))
        found.append(Lint(name, r.object, r.element, r.at, r.offset, r.value - heap._base,
                          _cffi.string(r.what).decode(errors="replace")))
    return found, n[0]


# heap.check() looks at this many findings at most: one warning per word of
# a type, however many objects repeat it
WARN_LIMIT = 10_000


def warn_lint(heap, stacklevel: int) -> None:
    """One PointerWarning per (type, word offset) among the findings, with
    how many objects hold one there. The caller holds the heap's lock."""
    found, total = find_lint(heap, WARN_LIMIT)
    groups: dict = {}
    for f in found:
        groups.setdefault((f.type, f.at), []).append(f)
    for (type_, _at), fs in groups.items():
        count = len(fs)
        warnings.warn(PointerWarning(
            f"{fs[0].message} [in {count:,} object{'s' if count != 1 else ''} of {type_}; "
            "heap.lint() lists them]"), stacklevel=stacklevel + 1)
    if total > len(found):
        warnings.warn(PointerWarning(
            f"{total - len(found):,} more words like these not shown (heap.lint() "
            "lists all of them)"), stacklevel=stacklevel + 1)
